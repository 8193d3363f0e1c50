//! The router against stub providers speaking OpenAI's, llama.cpp's and Anthropic's wire
//! formats: the free local server first, the cloud when asked or when it must, exact costs
//! from each provider's usage semantics, retries, failover, the circuit breaker, timeouts,
//! cut streams, a client that leaves, and the ledger equal to what the stubs billed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use std::time::Duration;

use common::stub::{Script, Stub, Wire, OUTPUT_TOKENS, TEXT};
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};

struct Setup {
    _dir: TempDir,
    served: Served,
    api: Api,
    token: String,
    local: Stub,
    gpt: Stub,
    claude: Stub,
    data: String,
    config: String,
}

async fn setup(router: &str) -> Setup {
    let local = Stub::start(Wire::LlamaCpp, vec![Script::Answer]).await;
    let gpt = Stub::start(Wire::OpenAi, vec![Script::Answer]).await;
    let claude = Stub::start(Wire::Anthropic, vec![Script::Answer]).await;
    let toml = format!(
        r#"
[router]
max_retries = 2
{router}

[[models.catalog]]
name = "lcpp"
provider = "openai-compatible"
model = "llama-3.1-8b"
base_url = "{}"
priority = 1
context_window = 8192

[[models.catalog]]
name = "gpt"
provider = "openai"
model = "gpt-4o"
base_url = "{}"
api_key_env = "ROUTER_TEST_OPENAI_KEY"
priority = 2
input_usd_per_mtok = "2.50"
cached_input_usd_per_mtok = "1.25"
output_usd_per_mtok = "10.00"
capabilities = ["chat", "tools"]

[[models.catalog]]
name = "claude"
provider = "anthropic"
model = "claude-3-5-sonnet-20241022"
base_url = "{}"
api_key_env = "ROUTER_TEST_ANTHROPIC_KEY"
priority = 3
input_usd_per_mtok = "3.00"
cached_input_usd_per_mtok = "0.30"
cache_write_usd_per_mtok = "3.75"
output_usd_per_mtok = "15.00"
"#,
        local.base_url(),
        gpt.base_url(),
        claude.base_url()
    );
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let config = dir.path().join("revo.toml");
    std::fs::write(&config, toml).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let env = [
        ("REVO_DATA_DIR", data.as_str()),
        ("REVO_ADMIN_PASSWORD", ADMIN_PW),
        ("REVO_CONFIG", config.as_str()),
        ("ROUTER_TEST_OPENAI_KEY", "sk-openai-test"),
        ("ROUTER_TEST_ANTHROPIC_KEY", "sk-ant-test"),
    ];
    let served = Served::start(&env).await;
    let api = Api::new(&served);
    let token = api.login("admin", ADMIN_PW).await;
    Setup {
        _dir: dir,
        served,
        api,
        token,
        local,
        gpt,
        claude,
        data,
        config,
    }
}

impl Setup {
    async fn generate(&self, body: Value) -> Reply {
        self.api
            .call("POST", "/ai/generate", Some(&self.token), Some(body))
            .await
    }

    /// Reads `/ai/generate` with `stream: true` as (event, data) pairs.
    async fn generate_stream(&self, body: Value) -> (u16, Vec<(String, Value)>) {
        let res = self
            .api
            .http
            .post(format!("{}/ai/generate", self.api.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let events = text
            .split("\n\n")
            .filter(|b| !b.trim().is_empty())
            .map(|b| {
                let name = b
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap_or("")
                    .to_owned();
                let data = b
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .map(|d| serde_json::from_str(d).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                (name, data)
            })
            .collect();
        (status, events)
    }

    async fn metrics(&self, query: &str) -> Value {
        let r = self
            .api
            .call(
                "GET",
                &format!("/ai/metrics{query}"),
                Some(&self.token),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    /// Waits until the ledger holds `requests` answered requests.
    async fn ledger_with(&self, requests: u64) -> Value {
        eventually(10, || async {
            let m = self.metrics("").await;
            (m["total"]["requests"].as_u64() == Some(requests)).then_some(m)
        })
        .await
    }
}

/// `n × price` for each kind, in µUSD per million tokens, as dollars.
fn dollars(micro_per_mtok_tokens: u128) -> String {
    revo_events::Usd::from_picos(micro_per_mtok_tokens).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_cloud_on_request_exact_costs_and_a_ledger_equal_to_the_bill() {
    let s = setup("").await;

    // Auto: the free local server answers; llama.cpp's timings are its usage.
    let r = s
        .generate(json!({"prompt": "What is the capital of France?"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["model"], "lcpp");
    assert_eq!(r.body["provider"], "openai-compatible");
    assert_eq!(r.body["served_locally"], true);
    assert_eq!(r.body["text"], TEXT);
    assert_eq!(r.body["cost_usd"], "0");
    assert_eq!(r.body["usage"]["input_tokens"], 176);
    assert_eq!(r.body["usage"]["cache_read_tokens"], 1024);
    assert_eq!(r.header("x-revo-model"), Some("lcpp"));
    assert_eq!(r.header("x-revo-served-locally"), Some("true"));
    // The local server got no key (it has none) and an OpenAI-dialect body.
    let sent = s.local.requests.lock().unwrap()[0].clone();
    assert_eq!(sent["model"], "llama-3.1-8b");
    assert_eq!(
        sent["messages"][0]["content"],
        "What is the capital of France?"
    );
    assert_eq!(sent["_auth"], Value::Null);

    // OpenAI, asked for by name: prompt_tokens include the cached ones, priced apart.
    let r = s
        .generate(json!({"messages": [{"role": "user", "content": "hi"}], "model_preference": "gpt", "max_tokens": 64}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["provider"], "openai");
    assert_eq!(r.body["served_locally"], false);
    // 176 × 2.50 + 1,024 × 1.25 + 40 × 10.00 = 2,120 µUSD per million = $0.00212.
    let gpt_cost = dollars(176 * 2_500_000 + 1024 * 1_250_000 + 40 * 10_000_000);
    assert_eq!(gpt_cost, "0.00212");
    assert_eq!(r.body["cost_usd"], gpt_cost.as_str());
    assert_eq!(r.header("x-revo-cost-usd"), Some(gpt_cost.as_str()));
    let sent = s.gpt.requests.lock().unwrap()[0].clone();
    assert_eq!(sent["_auth"], "Bearer sk-openai-test");
    assert_eq!(sent["max_completion_tokens"], 64);

    // Anthropic, streamed: input excludes cache reads and writes; output is cumulative.
    let (status, events) = s
        .generate_stream(json!({"prompt": "hi", "model_preference": "claude", "stream": true}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(events[0].0, "started");
    assert_eq!(events[0].1["model"], "claude");
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "token")
        .map(|(_, d)| d["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, TEXT);
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "completed", "{events:?}");
    // 100 × 3.00 + 1,000 × 0.30 + 100 × 3.75 + 40 × 15.00 = 1,575 → $0.001575.
    let claude_cost = dollars(100 * 3_000_000 + 1000 * 300_000 + 100 * 3_750_000 + 40 * 15_000_000);
    assert_eq!(done["cost_usd"], claude_cost.as_str());
    assert_eq!(done["usage"]["cache_write_tokens"], 100);
    assert_eq!(done["usage"]["output_tokens"], OUTPUT_TOKENS);
    assert_eq!(s.claude.requests.lock().unwrap()[0]["_auth"], "sk-ant-test");

    // The ledger equals the bill, to the unit; savings are priced at the reference (gpt).
    let m = s.ledger_with(3).await;
    let total_cost = revo_events::Usd::parse(&gpt_cost)
        .unwrap()
        .checked_add(revo_events::Usd::parse(&claude_cost).unwrap())
        .unwrap();
    assert_eq!(m["total"]["cost_usd"], total_cost.to_string().as_str());
    let billed_in: u64 = [&s.local, &s.gpt, &s.claude]
        .iter()
        .map(|st| st.total_billed().input)
        .sum();
    assert_eq!(m["total"]["tokens"]["input"], billed_in);
    assert_eq!(m["total"]["served_locally"], 1);
    assert_eq!(m["savings"]["reference_model"], "gpt");
    let by_model: Vec<&str> = m["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    assert_eq!(by_model, ["claude", "gpt", "lcpp"]);

    // Recommendations from the ledger: both cloud requests fit the local server's window;
    // a month budget is forecast from the window's pace.
    let me = s.api.me(&s.token).await;
    let admin_id = me.body["user"]["id"].as_str().unwrap().to_owned();
    let b = s
        .api
        .call(
            "POST",
            "/budgets",
            Some(&s.token),
            Some(json!({"scope": "user", "id": admin_id, "period": "month", "limit_usd": "10.00"})),
        )
        .await;
    assert_eq!(b.status, 201, "{}", b.body);
    let o = s
        .api
        .call(
            "POST",
            "/ai/optimize",
            Some(&s.token),
            Some(json!({"window_days": 7})),
        )
        .await;
    assert_eq!(o.status, 200, "{}", o.body);
    assert_eq!(o.body["cloud_requests"], 2, "{}", o.body);
    assert_eq!(o.body["spend_usd"], total_cost.to_string().as_str());
    let recs = o.body["recommendations"].as_array().unwrap();
    let run_locally: Vec<(&str, &str)> = recs
        .iter()
        .filter(|r| r["kind"] == "run_locally")
        .map(|r| {
            (
                r["model"].as_str().unwrap(),
                r["local_model"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        run_locally,
        [("claude", "lcpp"), ("gpt", "lcpp")],
        "{}",
        o.body
    );
    let gpt_rec = recs.iter().find(|r| r["model"] == "gpt").unwrap();
    assert_eq!(gpt_rec["savings_usd"], gpt_cost.as_str());
    let f = &o.body["forecasts"][0];
    assert_eq!(
        (&f["period"], &f["limit_usd"]),
        (&json!("month"), &json!("10"))
    );
    assert!(f["projected_usd"].is_string(), "{f}");
    // No body at all is the defaults; bad windows and bodies are refused.
    let res = s
        .api
        .http
        .post(format!("{}/ai/optimize", s.api.base))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for bad in [
        json!({"window_days": 0}),
        json!({"window_days": 91}),
        json!({"window": 7}),
        json!({"window_days": "seven"}),
    ] {
        let r = s
            .api
            .call("POST", "/ai/optimize", Some(&s.token), Some(bad.clone()))
            .await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    // A developer sees only their own (empty) ledger and no one else's budgets.
    let pw = "a-password-for-the-router-test";
    s.api.create_user(&s.token, "dev", pw, &["developer"]).await;
    let dev = s.api.login("dev", pw).await;
    let r = s
        .api
        .call("POST", "/ai/optimize", Some(&dev), Some(json!({})))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (&r.body["requests"], &r.body["forecasts"]),
        (&json!(0), &json!([]))
    );
    let r = s
        .api
        .call(
            "POST",
            "/ai/optimize",
            Some(&dev),
            Some(json!({"user_id": admin_id})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // The same figures from the raw events, by `revo replay cost`.
    s.served.stop().await;
    let env = [
        ("REVO_DATA_DIR", s.data.as_str()),
        ("REVO_CONFIG", s.config.as_str()),
    ];
    let (code, out, err) = output(&mut revo_cmd(
        &["replay", "cost", "--by", "provider", "--format", "json"],
        &env,
    ));
    assert_eq!(code, 0, "{err}");
    let replayed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(replayed["total"], m["total"]);
    assert_eq!(replayed["savings"], m["savings"]);
    let (code, out, err) = output(&mut revo_cmd(&["replay", "cost"], &env));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("served locally: 33.3% of requests"), "{out}");
    let (code, out, _) = output(&mut revo_cmd(&["replay", "verify", "ledger"], &env));
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_then_fail_over_and_open_the_breaker_while_bad_requests_do_not() {
    let s = setup("").await;
    s.local
        .set_scripts(vec![Script::Status(500, "server_error", vec![])]);

    // Three tries at the local server (one and two retries), then the next model.
    let r = s.generate(json!({"prompt": "hi"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["model"], "gpt");
    assert_eq!(s.local.hits(), 3);
    let attempts = r.body["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    assert!(attempts[..3].iter().all(|a| a["outcome"] == "failed"));
    // Three failures in a row opened its breaker: the next request skips it at once.
    let models = s.api.call("GET", "/ai/models", Some(&s.token), None).await;
    let lcpp = &models.body["models"][0];
    assert_eq!(lcpp["breaker"], "open", "{lcpp}");
    assert_eq!(lcpp["status"], "unavailable");
    let r = s.generate(json!({"prompt": "hi"})).await;
    assert_eq!(r.body["model"], "gpt");
    assert_eq!(s.local.hits(), 3);
    // force_local has nothing left to use.
    let r = s
        .generate(json!({"prompt": "hi", "force_local": true}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (503, "no_model_available"),
        "{}",
        r.body
    );

    // A 400 is the request's fault: no retry, no other model, no breaker.
    s.gpt
        .set_scripts(vec![Script::Status(400, "invalid_request_error", vec![])]);
    let before = (s.gpt.hits(), s.claude.hits());
    let r = s
        .generate(json!({"prompt": "hi", "model_preference": "gpt"}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, "upstream_rejected"),
        "{}",
        r.body
    );
    assert_eq!((s.gpt.hits(), s.claude.hits()), (before.0 + 1, before.1));
    let models = s.api.call("GET", "/ai/models", Some(&s.token), None).await;
    assert_eq!(models.body["models"][1]["breaker"], "closed");

    // A 429 with retry-after-ms is retried on the same model, after the wait it asked for.
    let n = s.claude.hits();
    s.claude.set_scripts(
        std::iter::repeat_n(Script::Answer, n)
            .chain([
                Script::Status(429, "rate_limit_error", vec![("retry-after-ms", "150")]),
                Script::Answer,
            ])
            .collect(),
    );
    let t0 = std::time::Instant::now();
    let r = s
        .generate(json!({"prompt": "hi", "model_preference": "claude", "fallback_allowed": false}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert_eq!(s.claude.hits(), n + 2);
    assert_eq!(r.body["attempts"].as_array().unwrap().len(), 2);

    // An exhausted quota is not retried: straight to the next model.
    s.gpt
        .set_scripts(vec![Script::Status(429, "insufficient_quota", vec![])]);
    let (g, c) = (s.gpt.hits(), s.claude.hits());
    let r = s
        .generate(json!({"prompt": "hi", "model_preference": "gpt"}))
        .await;
    assert_eq!(r.body["model"], "claude", "{}", r.body);
    assert_eq!((s.gpt.hits(), s.claude.hits()), (g + 1, c + 1));

    // Without fallback, a failing model is an error that names what happened.
    let r = s
        .generate(json!({"prompt": "hi", "model_preference": "gpt", "fallback_allowed": false}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (502, "upstream_rate_limited"),
        "{}",
        r.body
    );

    // Refusals before anything is sent: unknown model, bad parameters, bad cost limit.
    let r = s
        .generate(json!({"prompt": "hi", "model_preference": "nope"}))
        .await;
    assert_eq!((r.status, r.code()), (404, "model_not_found"));
    let r = s
        .generate(json!({"prompt": "hi", "cost_limit": "-1"}))
        .await;
    assert_eq!((r.status, r.code()), (422, "invalid_parameter"));
    let r = s.generate(json!({"prompt": "hi", "temperature": 3})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_parameter"));
    let r = s.generate(json!({"prompt": "hi", "messages": []})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_parameter"));
    let r = s
        .generate(json!({"prompt": "hi", "route": "fastest"}))
        .await;
    assert_eq!((r.status, r.code()), (422, "invalid_parameter"));

    // A provider refusing Revo's key: its message (which quotes part of the operator's key
    // at OpenAI) never reaches the caller.
    s.gpt.set_scripts(
        std::iter::repeat_n(Script::Answer, s.gpt.hits())
            .chain([Script::Status(401, "invalid_api_key", vec![])])
            .collect(),
    );
    let r = s
        .generate(json!({"prompt": "hi", "model_preference": "gpt", "fallback_allowed": false}))
        .await;
    assert_eq!(r.status, 502, "{}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("refused Revo's credentials") && !message.contains("stub 401"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_limits_cap_output_and_timeouts_cuts_and_departures_are_recorded() {
    let s = setup("first_token_timeout_ms = 800\nidle_timeout_ms = 800").await;

    // cost_limit: the prompt "hi", one user message, costs at most 2 tokens and 8 for the
    // message's role markers: 10 × $2.50/M = $0.000025; $0.0001 leaves $0.000075, 7 output
    // tokens at $10/M. The cap is what gpt is asked for.
    let r = s
        .generate(json!({"prompt": "hi", "model_preference": "gpt", "cost_limit": "0.0001"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = s.gpt.requests.lock().unwrap().last().unwrap().clone();
    assert_eq!(sent["max_completion_tokens"], 7);
    // A limit below the prompt's own worst case skips the model; free models still serve.
    let r = s
        .generate(json!({"prompt": "hi", "cost_limit": "0.000000000001"}))
        .await;
    assert_eq!(r.body["model"], "lcpp", "{}", r.body);
    let r = s
        .generate(json!({"prompt": "hi", "model_preference": "gpt", "fallback_allowed": false, "cost_limit": "0.000000000001"}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (503, "no_model_available"),
        "{}",
        r.body
    );

    // A first token that never comes: timed out, then the next model, transparently.
    s.local.set_scripts(vec![Script::Stall]);
    let t0 = std::time::Instant::now();
    let r = s.generate(json!({"prompt": "hi", "max_tokens": 8})).await;
    assert_eq!(r.body["model"], "gpt", "{}", r.body);
    assert!(r.body["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("first_token"));
    assert!(t0.elapsed() < Duration::from_secs(20));

    // A stream cut after two pieces: the client has text, so it gets an error event, and
    // the attempt is recorded with its usage unreported.
    s.claude.set_scripts(vec![Script::Cut(2)]);
    let (status, events) = s
        .generate_stream(json!({"prompt": "hi", "model_preference": "claude", "stream": true}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(events.iter().filter(|(n, _)| n == "token").count(), 2);
    let (last, err) = events.last().unwrap();
    assert_eq!(last, "error", "{events:?}");
    assert_eq!(err["code"], "upstream_broken");
    // An error event mid-stream, the same way.
    s.claude.set_scripts(vec![Script::ErrorEvent(1)]);
    let (_, events) = s
        .generate_stream(json!({"prompt": "hi", "model_preference": "claude", "stream": true}))
        .await;
    assert_eq!(events.last().unwrap().0, "error", "{events:?}");

    // A client that leaves after the first piece: the answer is still read to its end, so
    // the ledger holds what the provider billed.
    s.gpt.set_scripts(vec![Script::Answer]);
    let billed_before = s.gpt.total_billed();
    let res = s
        .api
        .http
        .post(format!("{}/ai/generate", s.api.base))
        .bearer_auth(&s.token)
        .json(&json!({"prompt": "hi", "model_preference": "gpt", "stream": true}))
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    let _ = body.next().await;
    drop(body);
    let m = eventually(10, || async {
        let m = s.metrics("?by=model").await;
        let gpt = m["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["key"] == "gpt")
            .cloned()?;
        let billed = s.gpt.total_billed();
        (billed.output > billed_before.output
            && gpt["tokens"]["output"].as_u64() == Some(billed.output))
        .then_some(m)
    })
    .await;
    // The cut streams reported no usage, and say so.
    assert_eq!(m["total"]["unreported_usage"], 2, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_and_anthropic_sdks_work_unchanged() {
    let s = setup("").await;
    let pw = "a-password-for-the-sdk-test";
    let me = s.api.create_user(&s.token, "dev", pw, &["developer"]).await;
    let dev = s.api.login("dev", pw).await;
    let (_, key) = s.api.create_key(&dev, json!({"name": "sdk"})).await;
    let python = std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/official_sdks.py");
    // A second key whose budget is spent, for the refusal the SDKs must not retry.
    let (spent_id, spent) = s.api.create_key(&dev, json!({"name": "spent"})).await;
    let r = s
        .api
        .call(
            "POST",
            "/budgets",
            Some(&s.token),
            Some(json!({"scope": "key", "id": spent_id, "period": "month", "limit_usd": "0"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let before = s.gpt.hits();
    let (code, out, err) =
        output(std::process::Command::new(python).args([script, &s.api.base, &key, TEXT, &spent]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("anthropic stream ok"), "{out}");
    assert!(out.contains("budget refusals ok"), "{out}");
    // Each SDK sent its refused request once: no retries.
    let metrics = s.api.text("/metrics").await;
    for route in ["/v1/chat/completions", "/v1/messages"] {
        let line = format!(
            "revo_http_requests_total{{method=\"POST\",route=\"{route}\",status=\"402\"}} 1"
        );
        assert!(metrics.contains(&line), "{route}: {metrics}");
    }
    assert_eq!(
        s.gpt.hits(),
        before + 1,
        "only the SDK's own gpt chat reached gpt"
    );
    // A viewer may not generate, through any of the compatible APIs.
    s.api.create_user(&s.token, "viewer", pw, &["viewer"]).await;
    let viewer = s.api.login("viewer", pw).await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/ai/generate", json!({"prompt": "hi"})),
    ] {
        let r = s.api.call("POST", path, Some(&viewer), Some(body)).await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    // The key's requests are in its own ledger and its owner's; another developer sees none
    // of them, and may not ask for someone else's. A key sees only its own requests.
    let m = s.api.call("GET", "/ai/metrics", Some(&key), None).await;
    assert!(
        m.body["total"]["requests"].as_u64().unwrap() >= 4,
        "{}",
        m.body
    );
    let owner = s.api.call("GET", "/ai/metrics", Some(&dev), None).await;
    assert_eq!(owner.body["total"]["requests"], m.body["total"]["requests"]);
    let m = s.api.call("GET", "/ai/metrics", Some(&spent), None).await;
    assert_eq!(m.body["total"]["requests"], 0, "{}", m.body);
    s.api
        .create_user(&s.token, "other", pw, &["developer"])
        .await;
    let other = s.api.login("other", pw).await;
    let m = s.api.call("GET", "/ai/metrics", Some(&other), None).await;
    assert_eq!(m.body["total"]["requests"], 0, "{}", m.body);
    let r = s
        .api
        .call(
            "GET",
            &format!("/ai/metrics?user_id={me}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    let r = s
        .api
        .call("GET", "/ai/metrics?from=yesterday", Some(&other), None)
        .await;
    assert_eq!((r.status, r.code()), (422, "invalid_parameter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cascade_judges_a_local_server_by_the_log_probabilities_it_returns() {
    let s = setup("").await;
    // The llama.cpp-like stub gives each of its 8 words -0.1 × (i + 1): a confidence of
    // exp(-0.45) ≈ 0.64.
    let cascade =
        |bar: f64| json!({"prompt": "hi", "route": "cascade", "confidence_threshold": bar});
    let r = s.generate(cascade(0.6)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["model"], "lcpp", "{}", r.body);
    let c = r.body["confidence"].as_f64().unwrap();
    assert!((c - (-0.45f64).exp()).abs() < 1e-4, "{c}");
    let sent = s.local.requests.lock().unwrap().last().unwrap().clone();
    assert_eq!(sent["logprobs"], true, "the cascade asked for them: {sent}");
    let r = s.generate(cascade(0.7)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["model"], "gpt", "{}", r.body);
    assert_eq!(
        (
            &r.body["attempts"][0]["outcome"],
            &r.body["attempts"][0]["error"]
        ),
        (&json!("escalated"), &json!("low_confidence"))
    );
    // Without the cascade nothing is asked for.
    let r = s.generate(json!({"prompt": "hi"})).await;
    assert_eq!(r.body["model"], "lcpp");
    let sent = s.local.requests.lock().unwrap().last().unwrap().clone();
    assert_eq!(sent.get("logprobs"), None, "{sent}");
}
