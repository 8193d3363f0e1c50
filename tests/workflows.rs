//! Durable workflows against the real Postgres and NATS, with stub model providers and a
//! local HTTP server for `http` steps: definitions and their validation, every step type,
//! approval, cancel, retry, idempotent execute, the run cost limit, a `map` over 100 items
//! with a concurrency limit, refused hosts, and two nodes where the one running a run is
//! killed with SIGKILL mid-step (the other finishes it without running a completed step
//! again) and a sleep that spans a restart of every node fires once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stub::{Script, Stub, Wire};
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tiny HTTP server for `http` steps: `/item/<n>` answers `{"n": n}` after 20 ms, counting
/// requests in flight; `/flaky` answers 500 while `failing` is set.
struct Target {
    port: u16,
    inflight: Arc<AtomicUsize>,
    max_inflight: Arc<AtomicUsize>,
    hits: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl Target {
    async fn start() -> Target {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let t = Target {
            port,
            inflight: Arc::default(),
            max_inflight: Arc::default(),
            hits: Arc::default(),
            failing: Arc::new(AtomicBool::new(true)),
        };
        let (inflight, max, hits, failing) = (
            t.inflight.clone(),
            t.max_inflight.clone(),
            t.hits.clone(),
            t.failing.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                let (inflight, max, hits, failing) =
                    (inflight.clone(), max.clone(), hits.clone(), failing.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = c.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    let head = String::from_utf8_lossy(&got).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    hits.fetch_add(1, Ordering::SeqCst);
                    let now = inflight.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    inflight.fetch_sub(1, Ordering::SeqCst);
                    let (status, body) = if path == "/flaky" && failing.load(Ordering::SeqCst) {
                        ("500 Internal Server Error", json!({"error": "down"}))
                    } else {
                        let n = path.rsplit('/').next().unwrap_or("").to_owned();
                        ("200 OK", json!({"n": n}))
                    };
                    let body = body.to_string();
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = c.write_all(resp.as_bytes()).await;
                });
            }
        });
        t
    }
}

struct Cluster {
    _dir: TempDir,
    db: TestDb,
    nats: TestNats,
    nats_url: String,
    config: String,
    gpt: Stub,
    target: Target,
}

impl Cluster {
    async fn new(gpt_scripts: Vec<Script>) -> Cluster {
        let gpt = Stub::start(Wire::OpenAi, gpt_scripts).await;
        let target = Target::start().await;
        let toml = format!(
            r#"
[workflows]
http_allow = ["127.0.0.1:{port}", "10.255.255.1"]
http_allow_private = ["127.0.0.1/32"]
max_active_runs_per_user = 20

[[models.catalog]]
name = "gpt"
provider = "openai"
model = "gpt-4o"
base_url = "{}"
api_key_env = "WF_TEST_OPENAI_KEY"
priority = 2
input_usd_per_mtok = "2.50"
cached_input_usd_per_mtok = "1.25"
output_usd_per_mtok = "10.00"
"#,
            gpt.base_url(),
            port = target.port,
        );
        let dir = TempDir::new();
        let config = dir.path().join("revo.toml");
        std::fs::write(&config, toml).unwrap();
        Cluster {
            config: config.to_str().unwrap().to_owned(),
            _dir: dir,
            db: TestDb::migrated().await,
            nats: TestNats::new(),
            nats_url: nats_url(),
            gpt,
            target,
        }
    }

    async fn node(&self) -> Served {
        let mut env = cluster_env(&self.db, &self.nats, &self.nats_url);
        env.push(("REVO_CONFIG", self.config.as_str()));
        env.push(("REVO_ADMIN_PASSWORD", ADMIN_PW));
        env.push(("WF_TEST_OPENAI_KEY", "sk-test"));
        Served::start(&env).await
    }

    /// Requests the stub got whose prompt contains `marker`.
    fn calls_with(&self, marker: &str) -> usize {
        self.gpt
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.to_string().contains(marker))
            .count()
    }
}

async fn create(api: &Api, token: &str, def: Value) -> String {
    let r = api.call("POST", "/workflows", Some(token), Some(def)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn execute(api: &Api, token: &str, wf: &str, input: Value) -> Value {
    let r = api
        .call(
            "POST",
            &format!("/workflows/{wf}/execute"),
            Some(token),
            Some(json!({ "input": input })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

/// Polls the run until `pred` holds (30 s at most).
async fn wait_run(
    api: &Api,
    token: &str,
    run: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = api
            .call("GET", &format!("/runs/{run}"), Some(token), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        if pred(&r.body) {
            return r.body;
        }
        assert!(Instant::now() < deadline, "run never {what}: {}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status_is(s: &'static str) -> impl Fn(&Value) -> bool {
    move |r: &Value| r["status"] == s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_checked_whole_versioned_archived_and_private() {
    let c = Cluster::new(vec![Script::Answer]).await;
    let node = c.node().await;
    let api = Api::new(&node);
    let admin = api.login("admin", ADMIN_PW).await;
    api.create_user(&admin, "dev", "dev-password-123", &["developer"])
        .await;
    api.create_user(&admin, "other", "other-password-123", &["developer"])
        .await;
    api.create_user(&admin, "look", "look-password-123", &["viewer"])
        .await;
    let dev = api.login("dev", "dev-password-123").await;
    let other = api.login("other", "other-password-123").await;
    let viewer = api.login("look", "look-password-123").await;

    // Every problem, with its path; nothing stored.
    let bad = json!({"name": "bad", "input": {"type": "object", "properties": {"text": {"type": "string"}}},
    "steps": [
        {"id": "a", "type": "template", "template": "{{ steps.b.output }}"},
        {"id": "b", "type": "template", "template": "{{ steps.a.output }}"},
        {"id": "c", "type": "generate", "prompt": "{{ steps.ghost.output }} {{ input.nope }}", "max_tokens": "lots"},
        {"id": "d", "type": "http", "url": "https://evil.example.net/x"},
        {"id": "e", "type": "teleport"}
    ]});
    let r = api.call("POST", "/workflows", Some(&dev), Some(bad)).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.code(), "invalid_definition");
    let problems: Vec<(String, String)> = r.body["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_owned(),
                p["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (path, code) in [
        ("$.steps[0]", "cycle"),
        ("$.steps[1]", "cycle"),
        ("$.steps[2].prompt", "unknown_step"),
        ("$.steps[2].prompt", "unknown_variable"),
        ("$.steps[2].max_tokens", "bad_type"),
        ("$.steps[3].url", "unknown_host"),
        ("$.steps[4].type", "bad_type"),
    ] {
        assert!(
            problems.iter().any(|(p, c)| p == path && c == code),
            "{path} {code} missing from {problems:?}"
        );
    }
    let r = api.call("GET", "/workflows", Some(&dev), None).await;
    assert_eq!(r.body["workflows"].as_array().unwrap().len(), 0);
    // Malformed bodies and unknown fields.
    let r = api
        .call(
            "POST",
            "/workflows",
            Some(&dev),
            Some(json!({"name": "x", "steps": [], "extra": 1})),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);

    // A good one, then a new version; runs keep theirs.
    let v1 = json!({"name": "greet", "steps": [{"id": "t", "type": "template", "template": "v1 {{ input.who }}"}]});
    let wf = create(&api, &dev, v1).await;
    let v2 = json!({"name": "greet", "steps": [{"id": "t", "type": "template", "template": "v2 {{ input.who }}"}]});
    let r = api
        .call("PUT", &format!("/workflows/{wf}"), Some(&dev), Some(v2))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    let r = api
        .call(
            "GET",
            &format!("/workflows/{wf}?version=1"),
            Some(&dev),
            None,
        )
        .await;
    assert_eq!(
        r.body["definition"]["steps"][0]["template"],
        "v1 {{ input.who }}"
    );
    let run = execute(&api, &dev, &wf, json!({"who": "Ada"})).await;
    assert_eq!(run["version"], 2);
    let run = wait_run(
        &api,
        &dev,
        run["id"].as_str().unwrap(),
        "completed",
        status_is("completed"),
    )
    .await;
    assert_eq!(run["output"], json!({"t": "v2 Ada"}));
    assert_eq!(run["steps"]["t"]["status"], "completed");

    // Others' workflows and runs are not found; viewers read but do not write.
    let r = api
        .call("GET", &format!("/workflows/{wf}"), Some(&other), None)
        .await;
    assert_eq!(r.status, 404);
    let r = api
        .call(
            "POST",
            &format!("/workflows/{wf}/execute"),
            Some(&other),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = api
        .call(
            "GET",
            &format!("/runs/{}", run["id"].as_str().unwrap()),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = api
        .call(
            "POST",
            &format!("/runs/{}/cancel", run["id"].as_str().unwrap()),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = api
        .call(
            "POST",
            "/workflows",
            Some(&viewer),
            Some(json!({"name": "v", "steps": []})),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = api.call("GET", "/runs", Some(&viewer), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["runs"].as_array().unwrap().len(), 0);
    // A developer's key scoped to viewer cannot execute.
    let (_, key) = api
        .create_key(&dev, json!({"name": "ro", "roles": ["viewer"]}))
        .await;
    let r = api
        .call(
            "POST",
            &format!("/workflows/{wf}/execute"),
            Some(&key),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 403);

    // Archived: no more runs.
    let r = api
        .call("DELETE", &format!("/workflows/{wf}"), Some(&dev), None)
        .await;
    assert_eq!(r.status, 204);
    let r = api
        .call(
            "POST",
            &format!("/workflows/{wf}/execute"),
            Some(&dev),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "archived");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_cancel_retry_idempotency_cost_limit_map_and_refused_hosts() {
    let c = Cluster::new(vec![Script::Answer]).await;
    let node = c.node().await;
    let api = Api::new(&node);
    let admin = api.login("admin", ADMIN_PW).await;
    api.create_user(&admin, "dev", "dev-password-123", &["developer"])
        .await;
    let dev = api.login("dev", "dev-password-123").await;

    // generate → extract → approval; the input is checked against its schema.
    let brief = json!({"name": "brief",
    "input": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    "steps": [
        {"id": "summary", "type": "generate", "model": "gpt", "prompt": "BRIEF Summarise: {{ input.text }}", "max_tokens": 64},
        {"id": "facts", "type": "extract", "from": "{\"summary\": {{ steps.summary.output | json }}, \"words\": 8}",
         "schema": {"type": "object", "required": ["summary", "words"], "properties": {"words": {"type": "integer"}}}},
        {"id": "ok", "type": "approval", "after": ["facts"]}
    ]});
    let wf = create(&api, &dev, brief).await;
    let r = api
        .call(
            "POST",
            &format!("/workflows/{wf}/execute"),
            Some(&dev),
            Some(json!({"input": {"text": 5}})),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.code(), "invalid_input");
    assert_eq!(r.body["error"]["problems"][0]["path"], "$.input.text");

    let run = execute(&api, &dev, &wf, json!({"text": "Paris facts"})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    let waiting = wait_run(&api, &dev, &id, "waiting", status_is("waiting")).await;
    let approval = &waiting["steps"]["ok"]["approval"];
    assert_eq!(approval["reason"], "step");
    let cost = waiting["cost_usd"].as_str().unwrap().to_owned();
    assert_ne!(cost, "0", "the generate step was billed: {waiting}");
    assert_eq!(approval["cost_so_far_usd"], cost);
    assert_eq!(waiting["steps"]["summary"]["cost_usd"], cost);
    assert_eq!(waiting["steps"]["facts"]["output"]["words"], 8);
    assert_eq!(
        waiting["steps"]["facts"]["output"]["summary"],
        common::stub::TEXT
    );
    // Approve: the run completes with the approval's decision as the last output.
    let r = api
        .call(
            "POST",
            &format!("/runs/{id}/approve"),
            Some(&dev),
            Some(json!({"comment": "fine"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = wait_run(&api, &dev, &id, "completed", status_is("completed")).await;
    assert_eq!(done["output"]["ok"]["approved"], true);
    assert_eq!(done["cost_usd"], cost);
    let r = api
        .call("POST", &format!("/runs/{id}/approve"), Some(&dev), None)
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    // The ledger holds the generate step's cost, tied to the run by its request id.
    let gen = done["steps"]["summary"]["generation"].as_str().unwrap();
    assert!(gen.contains(&id.replace('-', "")), "{gen}");

    // Reject: the run fails with `rejected`.
    let run = execute(&api, &dev, &wf, json!({"text": "again"})).await;
    let id2 = run["id"].as_str().unwrap().to_owned();
    wait_run(&api, &dev, &id2, "waiting", status_is("waiting")).await;
    let r = api
        .call("POST", &format!("/runs/{id2}/reject"), Some(&dev), None)
        .await;
    assert_eq!(r.status, 200);
    let failed = wait_run(&api, &dev, &id2, "failed", status_is("failed")).await;
    assert_eq!(failed["error"]["code"], "rejected");

    // Idempotent execute: the same key gives the same run, and runs nothing again.
    let hits = c.gpt.hits();
    let send = |key: &'static str| {
        api.http
            .post(format!("{}/workflows/{wf}/execute", api.base))
            .bearer_auth(&dev)
            .header("Idempotency-Key", key)
            .json(&json!({"input": {"text": "idem"}}))
    };
    let a = api.send(send("k-1")).await;
    let b = api.send(send("k-1")).await;
    assert_eq!((a.status, b.status), (201, 200), "{} {}", a.body, b.body);
    assert_eq!(a.body["id"], b.body["id"]);
    let idem = a.body["id"].as_str().unwrap().to_owned();
    wait_run(&api, &dev, &idem, "waiting", status_is("waiting")).await;
    assert_eq!(c.gpt.hits(), hits + 1);
    let r = api
        .call("POST", &format!("/runs/{idem}/cancel"), Some(&dev), None)
        .await;
    assert_eq!(r.status, 200);
    let r = api
        .call("GET", &format!("/runs/{idem}"), Some(&dev), None)
        .await;
    assert_eq!(r.body["status"], "cancelled");
    let r = api
        .call("POST", &format!("/runs/{idem}/cancel"), Some(&dev), None)
        .await;
    assert_eq!(r.status, 409);

    // Cancel a sleeping run.
    let sleepy = create(
        &api,
        &dev,
        json!({"name": "sleepy", "steps": [
        {"id": "nap", "type": "sleep", "seconds": 60},
        {"id": "after", "type": "template", "template": "woke", "after": ["nap"]}]}),
    )
    .await;
    let run = execute(&api, &dev, &sleepy, json!({})).await;
    let sid = run["id"].as_str().unwrap().to_owned();
    let w = wait_run(&api, &dev, &sid, "waiting", status_is("waiting")).await;
    assert!(w["steps"]["nap"]["fire_at"].is_string());
    let r = api
        .call("POST", &format!("/runs/{sid}/cancel"), Some(&dev), None)
        .await;
    assert_eq!(r.status, 200);
    let w = wait_run(&api, &dev, &sid, "cancelled", status_is("cancelled")).await;
    assert!(w["steps"].get("after").is_none());

    // The run's cost limit: the first model call spends it, the second is not started.
    let capped = |approval: bool| {
        let mut d = json!({"name": "capped", "cost_limit": "0.001", "steps": [
            {"id": "one", "type": "generate", "model": "gpt", "prompt": "CAP one", "max_tokens": 16},
            {"id": "two", "type": "generate", "model": "gpt", "prompt": "CAP two {{ steps.one.output }}", "max_tokens": 16}]});
        if approval {
            d["on_cost_limit"] = json!("approval");
        }
        d
    };
    let cap = create(&api, &dev, capped(false)).await;
    let hits = c.gpt.hits();
    let run = execute(&api, &dev, &cap, json!({})).await;
    let f = wait_run(
        &api,
        &dev,
        run["id"].as_str().unwrap(),
        "failed",
        status_is("failed"),
    )
    .await;
    assert_eq!(f["error"]["code"], "run_cost_limit", "{f}");
    assert_eq!(f["error"]["step"], "two");
    assert_eq!(f["steps"]["one"]["status"], "completed");
    assert_eq!(c.gpt.hits(), hits + 1, "the second call was never sent");
    // ... or waits for a person to allow it.
    let cap2 = create(&api, &dev, capped(true)).await;
    let run = execute(&api, &dev, &cap2, json!({})).await;
    let cid = run["id"].as_str().unwrap().to_owned();
    let w = wait_run(&api, &dev, &cid, "waiting", status_is("waiting")).await;
    assert_eq!(w["steps"]["two"]["approval"]["reason"], "cost_limit");
    let r = api
        .call("POST", &format!("/runs/{cid}/approve"), Some(&dev), None)
        .await;
    assert_eq!(r.status, 200);
    let done = wait_run(&api, &dev, &cid, "completed", status_is("completed")).await;
    assert_eq!(done["steps"]["two"]["status"], "completed");

    // A map over 100 items, at most 4 at a time, each an HTTP call.
    let port = c.target.port;
    let map = create(&api, &dev, json!({"name": "fan", "steps": [
        {"id": "each", "type": "map", "items": "{{ input.items }}", "concurrency": 4, "steps": [
            {"id": "get", "type": "http", "url": format!("http://127.0.0.1:{port}/item/{{{{ item }}}}")},
            {"id": "pick", "type": "template", "template": "{{ steps.get.output.body.n }}!"}]}]})).await;
    let items: Vec<u32> = (0..100).collect();
    let run = execute(&api, &dev, &map, json!({"items": items})).await;
    let done = wait_run(
        &api,
        &dev,
        run["id"].as_str().unwrap(),
        "completed",
        status_is("completed"),
    )
    .await;
    let out = done["output"]["each"].as_array().unwrap();
    assert_eq!(out.len(), 100);
    assert_eq!(out[42], "42!");
    assert_eq!(done["steps"]["each"]["items_completed"], 100);
    assert!(c.target.max_inflight.load(Ordering::SeqCst) <= 4);
    assert!(
        c.target.max_inflight.load(Ordering::SeqCst) >= 2,
        "items ran in parallel"
    );

    // A listed host that is a private address not listed as such: refused, never called.
    let refused = create(
        &api,
        &dev,
        json!({"name": "refused", "steps": [
        {"id": "h", "type": "http", "url": "http://10.255.255.1/x", "max_attempts": 1}]}),
    )
    .await;
    let run = execute(&api, &dev, &refused, json!({})).await;
    let f = wait_run(
        &api,
        &dev,
        run["id"].as_str().unwrap(),
        "failed",
        status_is("failed"),
    )
    .await;
    assert_eq!(f["error"]["code"], "host_refused", "{f}");

    // Retry from the failed step: a completed step is not run again.
    let flaky = create(
        &api,
        &dev,
        json!({"name": "flaky", "steps": [
        {"id": "first", "type": "http", "url": format!("http://127.0.0.1:{port}/item/first")},
        {"id": "second", "type": "http", "url": format!("http://127.0.0.1:{port}/flaky"),
         "after": ["first"], "max_attempts": 2, "retry_backoff_ms": 50}]}),
    )
    .await;
    let hits = c.target.hits.load(Ordering::SeqCst);
    let run = execute(&api, &dev, &flaky, json!({})).await;
    let rid = run["id"].as_str().unwrap().to_owned();
    let f = wait_run(&api, &dev, &rid, "failed", status_is("failed")).await;
    assert_eq!(f["error"]["code"], "http_status");
    assert_eq!(f["steps"]["second"]["attempts"], 2);
    assert_eq!(c.target.hits.load(Ordering::SeqCst), hits + 3);
    c.target.failing.store(false, Ordering::SeqCst);
    let r = api
        .call("POST", &format!("/runs/{rid}/retry"), Some(&dev), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = wait_run(&api, &dev, &rid, "completed", status_is("completed")).await;
    assert_eq!(done["steps"]["second"]["attempts"], 3);
    assert_eq!(done["steps"]["first"]["attempts"], 1);
    assert_eq!(c.target.hits.load(Ordering::SeqCst), hits + 4);

    // The run's events over SSE, from an offset.
    let body = api
        .http
        .get(format!("{}/runs/{rid}/events?after=0", api.base))
        .bearer_auth(&dev)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for kind in [
        "workflow.started",
        "workflow.step.failed",
        "workflow.retried",
        "workflow.completed",
    ] {
        assert!(
            body.contains(&format!("event: {kind}")),
            "{kind} missing from {body}"
        );
    }

    // SSE follows a live run: the stored frames first, then the approval and the end.
    let run = execute(&api, &dev, &wf, json!({"text": "live"})).await;
    let live = run["id"].as_str().unwrap().to_owned();
    wait_run(&api, &dev, &live, "waiting", status_is("waiting")).await;
    let sse = api
        .http
        .get(format!("{}/runs/{live}/events", api.base))
        .bearer_auth(&dev)
        .header("Last-Event-ID", "2")
        .send();
    let follower = tokio::spawn(async move { sse.await.unwrap().text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = api
        .call("POST", &format!("/runs/{live}/approve"), Some(&dev), None)
        .await;
    assert_eq!(r.status, 200);
    let body = tokio::time::timeout(Duration::from_secs(20), follower)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !body.contains("event: workflow.started"),
        "after offset 2: {body}"
    );
    for kind in [
        "workflow.step.completed",
        "workflow.approval.decided",
        "workflow.completed",
    ] {
        assert!(
            body.contains(&format!("event: {kind}")),
            "{kind} missing from {body}"
        );
    }

    // Runs by state, and the projections rebuild to the same state.
    let r = api
        .call("GET", "/runs?status=failed", Some(&dev), None)
        .await;
    assert!(r.body["runs"].as_array().unwrap().len() >= 3);
    let metrics = api.text("/metrics").await;
    assert!(
        metrics.contains("revo_workflow_runs{state=\"completed\"}"),
        "{metrics}"
    );
    drop(node);
    for p in ["workflows", "workflow_runs"] {
        let env = cluster_env(&c.db, &c.nats, &c.nats_url);
        let (code, out, err) = output(&mut revo_cmd(&["replay", "verify", p], &env));
        assert_eq!(code, 0, "replay verify {p}: {out}{err}");
    }
}

/// A run's event types, in order, from the store.
async fn event_types(db: &TestDb, run: &str) -> Vec<(String, String)> {
    let store = db.store().await;
    let evs = revo_events::EventLog::read_stream(store.as_ref(), "workflow_run", run, 1, 10_000)
        .await
        .unwrap();
    evs.iter()
        .map(|e| {
            let v: Value = revo_events::codec::decode_payload::<Value>(&e.envelope.payload)
                .unwrap_or(Value::Null);
            (e.envelope.event_type.clone(), v.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_run_finishes_elsewhere_and_a_sleep_spanning_a_full_restart_fires_once() {
    // The second step's call takes 4 s: the node is killed while it is in flight.
    let c = Cluster::new(vec![Script::Answer]).await;
    let a = c.node().await;
    let b = c.node().await;
    let api_a = Api::new(&a);
    let api_b = Api::new(&b);
    let admin = api_a.login("admin", ADMIN_PW).await;
    api_a
        .create_user(&admin, "dev", "dev-password-123", &["developer"])
        .await;
    let dev = api_a.login("dev", "dev-password-123").await;
    let wf = create(&api_a, &dev, json!({"name": "crash", "steps": [
        {"id": "s1", "type": "generate", "model": "gpt", "prompt": "STEP-ONE", "max_tokens": 16},
        {"id": "s2", "type": "generate", "model": "gpt", "prompt": "STEP-TWO {{ steps.s1.output }}", "max_tokens": 16},
        {"id": "s3", "type": "template", "template": "{{ steps.s2.output }}!"}]})).await;
    c.gpt
        .set_scripts(vec![Script::Answer, Script::Delay(4000), Script::Answer]);
    let run = execute(&api_a, &dev, &wf, json!({})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    // Wait until s2's call is in flight at the stub, then kill the node running the run.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.calls_with("STEP-TWO") == 0 {
        assert!(Instant::now() < deadline, "s2 never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = api_b
        .call("GET", &format!("/runs/{id}"), Some(&dev), None)
        .await;
    let owner_a = r.body["node"].as_str().unwrap().to_owned();
    a.signal("-KILL");
    let killed = Instant::now();
    drop(a);
    let done = wait_run(
        &api_b,
        &dev,
        &id,
        "completed on the other node",
        status_is("completed"),
    )
    .await;
    let took = killed.elapsed();
    assert_ne!(done["node"].as_str().unwrap(), owner_a);
    assert_eq!(done["output"]["s3"], format!("{}!", common::stub::TEXT));
    // s1 completed before the kill and was never called again; s2's lost attempt ran again.
    assert_eq!(c.calls_with("STEP-ONE"), 1);
    assert_eq!(c.calls_with("STEP-TWO"), 2);
    assert_eq!(done["steps"]["s1"]["attempts"], 1);
    assert_eq!(done["steps"]["s2"]["attempts"], 2);
    let types = event_types(&c.db, &id).await;
    let completed_s1 = types
        .iter()
        .filter(|(t, p)| t == "step.completed" && p.contains("\"s1\""))
        .count();
    assert_eq!(completed_s1, 1);
    let claims = types.iter().filter(|(t, _)| t == "run.claimed").count();
    assert_eq!(claims, 2, "{types:?}");
    eprintln!(
        "takeover after SIGKILL: run completed {:.2} s after the kill",
        took.as_secs_f64()
    );

    // A sleep that spans a restart of every node fires once.
    let nap = create(
        &api_b,
        &dev,
        json!({"name": "nap", "steps": [
        {"id": "z", "type": "sleep", "seconds": 3},
        {"id": "t", "type": "template", "template": "awake", "after": ["z"]}]}),
    )
    .await;
    let run = execute(&api_b, &dev, &nap, json!({})).await;
    let nid = run["id"].as_str().unwrap().to_owned();
    wait_run(&api_b, &dev, &nid, "waiting", status_is("waiting")).await;
    b.signal("-KILL");
    drop(b);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c1 = c.node().await;
    let c2 = c.node().await;
    let api_c = Api::new(&c1);
    let done = wait_run(
        &api_c,
        &dev,
        &nid,
        "completed after the restart",
        status_is("completed"),
    )
    .await;
    assert_eq!(done["output"]["t"], "awake");
    let types = event_types(&c.db, &nid).await;
    assert_eq!(
        types.iter().filter(|(t, _)| t == "timer.set").count(),
        1,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|(t, _)| t == "timer.fired").count(),
        1,
        "{types:?}"
    );
    drop((c1, c2));
}

/// The README's walk-through (examples/python/workflow.py) in embedded mode with the default
/// local model: create the three-step workflow, run it, follow it over the WebSocket, approve
/// it, and see its cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_workflow_summarises_locally_extracts_json_and_waits_for_approval() {
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let env = [
        ("REVO_DATA_DIR", data.as_str()),
        ("REVO_ADMIN_PASSWORD", ADMIN_PW),
    ];
    import_smollm2(&env);
    let served = Served::start(&env).await;
    let python = std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!("{}/examples/python/workflow.py", env!("CARGO_MANIFEST_DIR"));
    let url = served.url("");
    let (code, out, err) = output(std::process::Command::new("timeout").args([
        "300",
        &python,
        "-u",
        &script,
        "--url",
        &url,
        "--username",
        "admin",
        "--password",
        ADMIN_PW,
    ]));
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for line in [
        "[summary] started",
        "[card] completed",
        "waiting for approval",
        "[ok] approved",
        "workflow.completed: cost $0",
    ] {
        assert!(out.contains(line), "`{line}` missing from:\n{out}");
    }
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], "completed");
    assert_eq!(last["cost_usd"], "0");
    assert!(
        last["output"]["card"]["title"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{last}"
    );
    assert_eq!(last["output"]["approval"]["approved"], true);
}

/// Abuse: other users' runs over the WebSocket, a key without `workflows:write`, many
/// executes with one Idempotency-Key at once, oversized definitions and keys, forbidden
/// headers, a self-recursive workflow, and a user starting more runs than allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_is_refused_and_leaves_nothing_behind() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let c = Cluster::new(vec![Script::Answer]).await;
    let node = c.node().await;
    let api = Api::new(&node);
    let admin = api.login("admin", ADMIN_PW).await;
    let dev_id = api
        .create_user(&admin, "dev", "dev-password-123", &["developer"])
        .await;
    let other_id = api
        .create_user(&admin, "other", "other-password-123", &["developer"])
        .await;
    let dev = api.login("dev", "dev-password-123").await;
    let other = api.login("other", "other-password-123").await;
    let wf = create(
        &api,
        &dev,
        json!({"name": "ask", "steps": [{"id": "ok", "type": "approval"}]}),
    )
    .await;

    // Twenty executes with one key at once: one run.
    let sends = (0..20).map(|_| {
        api.send(
            api.http
                .post(format!("{}/workflows/{wf}/execute", api.base))
                .bearer_auth(&dev)
                .header("Idempotency-Key", "same")
                .json(&json!({})),
        )
    });
    let replies = futures::future::join_all(sends).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    assert_eq!(
        created,
        1,
        "{:?}",
        replies
            .iter()
            .map(|r| (r.status, r.body.clone()))
            .collect::<Vec<_>>()
    );
    assert!(replies.iter().all(|r| r.status == 201 || r.status == 200));
    let run = replies[0].body["id"].as_str().unwrap().to_owned();
    assert!(replies.iter().all(|r| r.body["id"] == run.as_str()));
    let r = api
        .call("GET", &format!("/runs?workflow_id={wf}"), Some(&dev), None)
        .await;
    assert_eq!(r.body["runs"].as_array().unwrap().len(), 1);
    let long = "k".repeat(300);
    let r = api
        .send(
            api.http
                .post(format!("{}/workflows/{wf}/execute", api.base))
                .bearer_auth(&dev)
                .header("Idempotency-Key", long.as_str())
                .json(&json!({})),
        )
        .await;
    assert_eq!((r.status, r.code()), (422, "invalid_parameter"));

    // Over the WebSocket: another user's run is not found; a key without workflows:write is
    // refused; the owner's approval lands.
    wait_run(&api, &dev, &run, "waiting", status_is("waiting")).await;
    let ws = |user: &str, cred: &str| {
        let mut req = format!("ws://127.0.0.1:{}/ws/{user}", node.port)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {cred}").parse().unwrap());
        req
    };
    let frame = |v: Value| Message::Text(v.to_string().into());
    async fn next_of(
        s: &mut (impl futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
                  + Unpin),
        kind: &str,
    ) -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), s.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == kind {
                    return v;
                }
            }
        }
    }
    let (mut o, _) = tokio_tungstenite::connect_async(ws(&other_id, &other))
        .await
        .unwrap();
    o.send(frame(
        json!({"type": "workflow.approve", "run_id": run, "id": 1}),
    ))
    .await
    .unwrap();
    let e = next_of(&mut o, "error").await;
    assert_eq!(e["code"], "run_not_found", "{e}");
    let (_, ro_key) = api
        .create_key(&dev, json!({"name": "ro", "roles": ["viewer"]}))
        .await;
    let (mut v, _) = tokio_tungstenite::connect_async(ws(&dev_id, &ro_key))
        .await
        .unwrap();
    v.send(frame(json!({"type": "workflow.approve", "run_id": run})))
        .await
        .unwrap();
    assert_eq!(next_of(&mut v, "error").await["code"], "forbidden");
    let (mut d, _) = tokio_tungstenite::connect_async(ws(&dev_id, &dev))
        .await
        .unwrap();
    d.send(frame(json!({"type": "subscribe", "topics": ["workflow"]})))
        .await
        .unwrap();
    next_of(&mut d, "subscribed").await;
    d.send(frame(
        json!({"type": "workflow.approve", "run_id": run, "comment": "ok", "id": 7}),
    ))
    .await
    .unwrap();
    let decided = next_of(&mut d, "workflow.decided").await;
    assert_eq!(decided["id"], 7);
    let done = next_of(&mut d, "workflow.completed").await;
    assert_eq!(done["run_id"], run.as_str());
    d.send(frame(json!({"type": "workflow.approve", "run_id": run})))
        .await
        .unwrap();
    assert_eq!(next_of(&mut d, "error").await["code"], "run_finished");

    // Definitions: too many steps, forbidden headers, a workflow that runs itself.
    let many: Vec<Value> = (0..201)
        .map(|i| json!({"id": format!("s{i}"), "type": "template", "template": "x"}))
        .collect();
    let r = api
        .call(
            "POST",
            "/workflows",
            Some(&dev),
            Some(json!({"name": "many", "steps": many})),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = api
        .call("POST", "/workflows", Some(&dev), Some(json!({"name": "h", "steps": [
            {"id": "h", "type": "http", "url": format!("http://127.0.0.1:{}/x", c.target.port), "headers": {"Host": "evil"}}]})))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        r.body["error"]["problems"][0]["path"],
        "$.steps[0].headers.Host"
    );
    let me = create(
        &api,
        &dev,
        json!({"name": "me", "steps": [{"id": "t", "type": "template", "template": "x"}]}),
    )
    .await;
    let r = api
        .call(
            "PUT",
            &format!("/workflows/{me}"),
            Some(&dev),
            Some(json!({"name": "me", "steps": [
            {"id": "again", "type": "workflow", "workflow_id": me}]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let run = execute(&api, &dev, &me, json!({})).await;
    let f = wait_run(
        &api,
        &dev,
        run["id"].as_str().unwrap(),
        "failed",
        status_is("failed"),
    )
    .await;
    assert!(
        f["error"]["message"].as_str().unwrap().contains("too deep"),
        "{f}"
    );
    let r = api.call("GET", "/runs", Some(&dev), None).await;
    let runs = r.body["runs"].as_array().unwrap();
    assert!(
        runs.len() <= 12,
        "nested runs stop at the depth limit: {}",
        runs.len()
    );

    // More active runs than a user may have: refused, nothing started.
    let nap = create(
        &api,
        &other,
        json!({"name": "nap", "steps": [{"id": "z", "type": "sleep", "seconds": 600}]}),
    )
    .await;
    for _ in 0..20 {
        execute(&api, &other, &nap, json!({})).await;
    }
    let r = api
        .call(
            "POST",
            &format!("/workflows/{nap}/execute"),
            Some(&other),
            Some(json!({})),
        )
        .await;
    assert_eq!((r.status, r.code()), (429, "too_many_runs"), "{}", r.body);
    // A fresh Idempotency-Key is no way around it.
    let r = api
        .send(
            api.http
                .post(format!("{}/workflows/{nap}/execute", api.base))
                .bearer_auth(&other)
                .header("Idempotency-Key", "fresh")
                .json(&json!({})),
        )
        .await;
    assert_eq!((r.status, r.code()), (429, "too_many_runs"), "{}", r.body);
    let r = api.call("GET", "/runs", Some(&other), None).await;
    assert_eq!(r.body["runs"].as_array().unwrap().len(), 20);
}
