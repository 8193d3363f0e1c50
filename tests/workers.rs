//! Model workers in cluster mode: `revo serve` sends generation requests over NATS to
//! `revo worker` processes, which batch concurrent requests; a killed worker is noticed within
//! the configured timeout; heartbeats announce each worker.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use serde_json::json;

/// Worker timeout given to the edge: a silent worker is lost after this long (three heartbeat
/// intervals, so a loaded CI machine does not lose a live worker).
const TIMEOUT_MS: u64 = 3000;

/// A running `revo worker`, killed on drop.
struct Worker(std::process::Child);

impl Worker {
    fn start(env: &[(&str, &str)]) -> Worker {
        let child = revo_cmd(&["worker", "--model", "smollm2"], env)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Worker(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_generate_through_workers_and_notice_a_dead_one() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let url = nats_url();
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let timeout = TIMEOUT_MS.to_string();
    let mut env = cluster_env(&db, &nats, &url);
    env.extend([
        ("REVO_DATA_DIR", data.as_str()),
        ("REVO_ADMIN_PASSWORD", ADMIN_PW),
        ("REVO_WORKER_TIMEOUT_MS", timeout.as_str()),
    ]);
    import_smollm2(&env);
    let edge = Served::start(&env).await;
    let api = Api::new(&edge);
    let admin = api.login("admin", ADMIN_PW).await;
    let call =
        |body: serde_json::Value| api.call("POST", "/v1/completions", Some(&admin), Some(body));

    // No worker yet: the model is known but unavailable; an unknown one is not found.
    let r = call(json!({"model": "smollm2", "prompt": "hi", "max_tokens": 1})).await;
    assert_eq!(
        (r.status, r.code()),
        (503, "model_unavailable"),
        "{}",
        r.body
    );
    let r = call(json!({"model": "nope", "prompt": "hi"})).await;
    assert_eq!((r.status, r.code()), (404, "model_not_found"), "{}", r.body);

    // A worker announces itself with heartbeats.
    let client = async_nats::connect(&url).await.unwrap();
    let mut beats = client
        .subscribe(format!("{}.sig.worker.smollm2", nats.subjects.prefix()))
        .await
        .unwrap();
    let mut worker = Worker::start(&env);
    let beat = tokio::time::timeout(Duration::from_secs(60), beats.next())
        .await
        .expect("a heartbeat")
        .unwrap();
    let beat: serde_json::Value = serde_json::from_slice(&beat.payload).unwrap();
    assert_eq!(beat["model"], "smollm2");
    assert_eq!(beat["loaded"], true);
    assert_eq!(beat["device"], "cpu");
    assert_eq!(beat["max_batch"], 16);
    let worker_id = beat["worker"].as_str().unwrap().to_owned();

    // Requests run concurrently on the worker, batched; each gets the reference tokens.
    let cases = cases();
    eventually(10, || async {
        let r = call(json!({"model": "smollm2", "prompt": "hi", "max_tokens": 1})).await;
        (r.status == 200).then_some(())
    })
    .await;
    let requests = cases.iter().map(|c| {
        call(json!({
            "model": "smollm2",
            "prompt": c["rendered_prompt"],
            "max_tokens": c["max_tokens"],
            "temperature": 0,
        }))
    });
    let replies = futures::future::join_all(requests).await;
    for (c, r) in cases.iter().zip(&replies) {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.body["choices"][0]["text"], c["completion"],
            "{}",
            c["prompt"]
        );
        assert_eq!(
            r.body["choices"][0]["finish_reason"], c["finish_reason"],
            "{}",
            c["prompt"]
        );
    }

    // Killed mid-generation: the stream ends with `worker_lost` within the timeout.
    let res = api
        .http
        .post(format!("{}/v1/completions", api.base))
        .bearer_auth(&admin)
        .json(&json!({"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: {"), "{first:?}");
    worker.kill();
    let killed = Instant::now();
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let noticed = killed.elapsed();
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.contains("\"code\":\"worker_lost\"") && rest.ends_with("data: [DONE]\n\n"),
        "{rest}"
    );
    assert!(
        noticed < Duration::from_millis(TIMEOUT_MS) + Duration::from_secs(5),
        "noticed after {noticed:?}"
    );
    // Its heartbeats stop, so new requests are refused at once.
    tokio::time::sleep(Duration::from_millis(TIMEOUT_MS)).await;
    let r = call(json!({"model": "smollm2", "prompt": "hi", "max_tokens": 1})).await;
    assert_eq!(
        (r.status, r.code()),
        (503, "model_unavailable"),
        "{}",
        r.body
    );

    // Every completed generation is an event naming the worker and its device.
    assert!(edge.stop().await.success());
    let (_, out, _) = output(&mut revo_cmd(
        &["events", "tail", "--stream-type", "generation"],
        &env,
    ));
    let generations: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let completed: Vec<&serde_json::Value> = generations
        .iter()
        .filter(|g| g["payload"]["outcome"] == "completed")
        .collect();
    assert!(completed.len() > cases.len(), "{out}");
    for g in &completed {
        assert_eq!(g["payload"]["node"], worker_id.as_str());
        assert_eq!(g["payload"]["device"], "cpu");
    }
    // The generation the kill cut short is recorded too, as failed with what it cost (0).
    assert!(
        generations
            .iter()
            .any(|g| g["payload"]["error_code"] == "upstream_error"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_needs_cluster_mode_and_a_known_model() {
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let (code, _, err) = output(&mut revo_cmd(
        &["worker", "--model", "smollm2"],
        &[("REVO_DATA_DIR", data.as_str())],
    ));
    assert_ne!(code, 0);
    assert!(err.contains("cluster mode"), "{err}");
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let url = nats_url();
    let mut env = cluster_env(&db, &nats, &url);
    env.push(("REVO_DATA_DIR", data.as_str()));
    let (code, _, err) = output(&mut revo_cmd(&["worker", "--model", "nope"], &env));
    assert_ne!(code, 0);
    assert!(err.contains("no model named `nope`"), "{err}");
    env.push(("REVO_MODEL_DEVICE", "tpu"));
    let (code, _, err) = output(&mut revo_cmd(&["worker", "--model", "nope"], &env));
    assert_ne!(code, 0);
    assert!(err.contains("device `tpu`"), "{err}");
}
