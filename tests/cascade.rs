//! The confidence-gated cascade with the real default model: the engine's per-token
//! log-probabilities in OpenAI's format, a local answer served when it is confident and whole,
//! held back and escalated to the cloud (a stub speaking OpenAI's wire format) when it is not,
//! and both attempts in the log and the ledger.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use common::stub::{Script, Stub, Wire, TEXT};
use common::*;
use serde_json::{json, Value};

const QUESTION: &str = "What is the capital of France?";

fn catalog(gpt: &Stub) -> String {
    format!(
        r#"
[[models.catalog]]
name = "small"
provider = "local"
model = "smollm2"
priority = 1
context_window = 8192
max_output_tokens = 12

[[models.catalog]]
name = "gpt"
provider = "openai"
model = "gpt-4o-mini"
base_url = "{}"
api_key_env = "CASCADE_TEST_OPENAI_KEY"
priority = 2
input_usd_per_mtok = "0.15"
output_usd_per_mtok = "0.60"
"#,
        gpt.base_url()
    )
}

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": "small",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 12,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The SSE `data:` payloads of a streamed OpenAI answer, without `[DONE]`.
async fn stream_chunks(api: &Api, token: &str, body: &Value) -> Vec<Value> {
    let res = api
        .http
        .post(format!("{}/v1/chat/completions", api.base))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_logprobs_and_a_cascade_that_escalates_only_unsure_or_cut_answers() {
    let gpt = Stub::start(Wire::OpenAi, vec![Script::Answer]).await;
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let config = dir.path().join("revo.toml");
    std::fs::write(&config, catalog(&gpt)).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let env = [
        ("REVO_DATA_DIR", data.as_str()),
        ("REVO_ADMIN_PASSWORD", ADMIN_PW),
        ("REVO_CONFIG", config.as_str()),
        ("CASCADE_TEST_OPENAI_KEY", "sk-test"),
    ];
    import_smollm2(&env);
    let served = Served::start(&env).await;
    let api = Api::new(&served);
    let admin = api.login("admin", ADMIN_PW).await;
    let post = |path: &'static str, body: Value| api.call("POST", path, Some(&admin), Some(body));

    // OpenAI-format log-probabilities from the local model: one entry per generated token,
    // each with its likeliest alternatives, most likely first; greedy picks the first.
    let r = post(
        "/v1/chat/completions",
        chat(json!({"logprobs": true, "top_logprobs": 3})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let content = r.body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        content.len() as u64,
        r.body["usage"]["completion_tokens"].as_u64().unwrap(),
        "{}",
        r.body
    );
    let mut joined = String::new();
    for t in &content {
        let lp = t["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0, "{t}");
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{t}");
        assert_eq!(
            top[0]["token"], t["token"],
            "greedy takes the likeliest: {t}"
        );
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
        assert!(top
            .windows(2)
            .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        let bytes: Vec<u8> = t["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(bytes, t["token"].as_str().unwrap().as_bytes());
        joined.push_str(t["token"].as_str().unwrap());
    }
    assert_eq!(joined, r.body["choices"][0]["message"]["content"]);
    // Without asking, none (and none computed).
    let plain = post("/v1/chat/completions", chat(json!({}))).await;
    assert_eq!(plain.body["choices"][0]["logprobs"], Value::Null);
    // Streamed: the same tokens, riding with the text they complete.
    let chunks = stream_chunks(
        &api,
        &admin,
        &chat(json!({"logprobs": true, "top_logprobs": 3, "stream": true})),
    )
    .await;
    let streamed: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(streamed, content);

    // A cloud model's log-probabilities pass through, whole and streamed, in the same format.
    let words: Vec<&str> = TEXT.split_inclusive(' ').collect();
    let cloud = chat(json!({"model": "gpt", "logprobs": true, "top_logprobs": 1}));
    let r = post("/v1/chat/completions", cloud.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let content = r.body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    let tokens: Vec<&str> = content
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, words);
    assert!((content[2]["logprob"].as_f64().unwrap() + 0.3).abs() < 1e-6);
    assert_eq!(content[0]["top_logprobs"][0]["token"], words[0]);
    let sent = gpt.requests.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        (&sent["logprobs"], &sent["top_logprobs"]),
        (&json!(true), &json!(1))
    );
    let mut streaming = cloud.clone();
    streaming["stream"] = json!(true);
    let chunks = stream_chunks(&api, &admin, &streaming).await;
    let streamed: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(streamed, content);
    let requests_before_cascade = gpt.requests.lock().unwrap().len();

    // `/ai/generate`'s `prompt` is one user turn: the local chat model answers it through its
    // template (as the README's first example does).
    let r = post(
        "/ai/generate",
        json!({"prompt": QUESTION, "max_tokens": 12, "temperature": 0, "force_local": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body["text"].as_str().unwrap().contains("Paris"),
        "{}",
        r.body
    );

    // The cascade with a bar every answer reaches: the local answer is served, with its
    // confidence (the geometric mean of its tokens' probabilities).
    let r = post(
        "/ai/generate",
        json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12, "temperature": 0, "route": "cascade",
               "confidence_threshold": 0.0, "logprobs": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["model"], "small", "{}", r.body);
    let c = r.body["confidence"].as_f64().unwrap();
    let tokens = r.body["logprobs"]["content"].as_array().unwrap();
    let mean: f64 = tokens
        .iter()
        .map(|t| t["logprob"].as_f64().unwrap())
        .sum::<f64>()
        / tokens.len() as f64;
    assert!((c - mean.exp()).abs() < 1e-6, "{c} vs {}", mean.exp());
    assert!(c > 0.0 && c < 1.0, "{c}");
    assert_eq!(r.body["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(gpt.requests.lock().unwrap().len(), requests_before_cascade);

    // A bar above it: held back and escalated; the caller never sees the local text.
    let unsure = json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12, "temperature": 0,
                        "route": "cascade", "confidence_threshold": 1.0});
    let r = post("/ai/generate", unsure.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (&r.body["model"], &r.body["text"]),
        (&json!("gpt"), &json!(TEXT))
    );
    let attempts = r.body["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{}", r.body);
    assert_eq!(
        (
            &attempts[0]["model"],
            &attempts[0]["outcome"],
            &attempts[0]["error"]
        ),
        (
            &json!("small"),
            &json!("escalated"),
            &json!("low_confidence")
        )
    );
    assert!((attempts[0]["confidence"].as_f64().unwrap() - c).abs() < 1e-6);
    assert_eq!(attempts[1]["outcome"], "completed");
    // Streamed, the same: the first thing the caller hears is the cloud model.
    let res = api
        .http
        .post(format!("{}/ai/generate", api.base))
        .bearer_auth(&admin)
        .json(&json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12, "temperature": 0,
                      "route": "cascade", "confidence_threshold": 1.0, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-revo-model"], "gpt");
    let body = res.text().await.unwrap();
    let first = body.split("\n\n").next().unwrap();
    assert!(
        first.starts_with("event: started") && first.contains("\"gpt\""),
        "{body}"
    );
    let streamed_text: String = body
        .split("\n\n")
        .filter(|e| e.starts_with("event: token"))
        .map(|e| {
            let d: Value =
                serde_json::from_str(e.lines().nth(1).unwrap().strip_prefix("data: ").unwrap())
                    .unwrap();
            d["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(streamed_text, TEXT);

    // An answer cut short by the local model's own cap (12 tokens, below the 64 asked) is not a
    // whole one: escalated as `truncated`, to a model that may finish it.
    let long = json!({"messages": [{"role": "user", "content": "Describe Paris in three sentences."}],
                      "max_tokens": 64, "temperature": 0, "route": "cascade",
                      "confidence_threshold": 0.0});
    let r = post("/ai/generate", long).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["model"], "gpt", "{}", r.body);
    assert_eq!(r.body["attempts"][0]["error"], "truncated");
    // Cut by the request's own max_tokens, any model would be cut alike: served locally.
    let r = post(
        "/ai/generate",
        json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 1, "temperature": 0,
               "route": "cascade", "confidence_threshold": 0.0}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (&r.body["model"], &r.body["finish_reason"]),
        (&json!("small"), &json!("length"))
    );

    // Forced local, the local model is the last tier: nothing to escalate to, so it serves,
    // with its confidence recorded.
    let r = post(
        "/ai/generate",
        json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12, "temperature": 0, "route": "cascade",
               "confidence_threshold": 1.0, "force_local": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["model"], "small");
    assert!(r.body["confidence"].as_f64().is_some(), "{}", r.body);

    // The OpenAI-compatible endpoint takes the cascade as extra body fields.
    let r = post(
        "/v1/chat/completions",
        chat(json!({"model": "auto", "route": "cascade", "confidence_threshold": 1.0})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["model"], "gpt");

    // Bad input: a clear 422 and nothing sent anywhere.
    let sent_before = gpt.requests.lock().unwrap().len();
    for (path, body) in [
        ("/ai/generate", json!({"prompt": "x", "route": "fastest"})),
        (
            "/ai/generate",
            json!({"prompt": "x", "route": "cascade", "confidence_threshold": 1.5}),
        ),
        (
            "/ai/generate",
            json!({"prompt": "x", "route": "cascade", "confidence_threshold": -0.1}),
        ),
        (
            "/ai/generate",
            json!({"prompt": "x", "confidence_threshold": 0.5}),
        ),
        (
            "/ai/generate",
            json!({"prompt": "x", "logprobs": true, "top_logprobs": 21}),
        ),
        ("/ai/generate", json!({"prompt": "x", "top_logprobs": 2})),
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": 99})),
        ),
        (
            "/v1/chat/completions",
            chat(json!({"route": "cascade", "confidence_threshold": "high"})),
        ),
    ] {
        let r = post(path, body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert!(!r.code().is_empty(), "{}", r.body);
    }
    assert_eq!(gpt.requests.lock().unwrap().len(), sent_before);

    // Counted: escalations by model and reason, and in the ledger (held back, not failed).
    let metrics = api.text("/metrics").await;
    for reason in ["low_confidence", "truncated"] {
        let line =
            format!("revo_router_cascade_escalations_total{{model=\"small\",reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    let m = eventually(10, || async {
        let r = api
            .call("GET", "/ai/metrics?by=model", Some(&admin), None)
            .await;
        (r.body["total"]["escalated_attempts"] == 4).then_some(r.body)
    })
    .await;
    assert_eq!(m["total"]["failed_attempts"], 0, "{m}");
    assert!(served.stop().await.success());

    // Both attempts are in the log, the held-back one with its signal, and the ledger
    // rebuilt from the events equals the live one.
    let env = [
        ("REVO_DATA_DIR", data.as_str()),
        ("REVO_CONFIG", config.as_str()),
    ];
    let (_, out, _) = output(&mut revo_cmd(
        &["events", "tail", "--stream-type", "generation"],
        &env,
    ));
    let escalated: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["payload"]["outcome"] == "escalated")
        .collect();
    assert_eq!(escalated.len(), 4, "{out}");
    assert!(escalated
        .iter()
        .all(|e| e["payload"]["escalation"].is_string() && e["payload"]["model"] == "small"));
    assert!(escalated
        .iter()
        .any(|e| e["payload"]["confidence"].as_f64().is_some_and(|c| c < 1.0)));
    let (code, out, err) = output(&mut revo_cmd(
        &["replay", "cost", "--by", "model", "--format", "json"],
        &env,
    ));
    assert_eq!(code, 0, "{err}");
    let replayed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(replayed["total"], m["total"]);
    let (code, out, _) = output(&mut revo_cmd(&["replay", "verify", "ledger"], &env));
    assert_eq!(code, 0, "{out}");
}
