//! Real-time collaboration end to end: the WebSocket protocol with Python `websockets`
//! clients across two `revo serve` edges on one Postgres and NATS (and in embedded mode), a
//! dead edge's users going offline, and stock Yjs clients (npm `yjs`, `y-websocket`)
//! editing one document, whose update corpus yrs replays to the same text.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use std::path::PathBuf;

use common::*;
use yrs::updates::decoder::Decode;
use yrs::{GetString, Transact};

fn python() -> String {
    std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn script(name: &str) -> String {
    format!("{}/tests/realtime/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut std::process::Command) -> String {
    let (code, out, err) = output(cmd);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_across_two_edges_then_the_projections_verify() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let url = nats_url();
    let mut env = cluster_env(&db, &nats, &url);
    env.push(("REVO_ADMIN_PASSWORD", ADMIN_PW));
    let a = Served::start(&env).await;
    let b = Served::start(&env).await;
    let out = run(std::process::Command::new(python()).args([
        &script("protocol.py"),
        &a.url(""),
        &b.url(""),
        ADMIN_PW,
    ]));
    assert!(out.contains("ok revoked token closes its socket"), "{out}");
    // The rooms and presence projections, rebuilt from zero, equal the live ones.
    for p in ["rooms", "presence"] {
        let (code, out, err) = output(&mut revo_cmd(&["replay", "verify", p], &env));
        assert_eq!(code, 0, "{p}: {out}\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_in_embedded_mode() {
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let env = [
        ("REVO_DATA_DIR", data.as_str()),
        ("REVO_ADMIN_PASSWORD", ADMIN_PW),
    ];
    let a = Served::start(&env).await;
    let out = run(std::process::Command::new(python()).args([
        &script("protocol.py"),
        &a.url(""),
        &a.url(""),
        ADMIN_PW,
    ]));
    assert!(out.contains("ok recovery by offset"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_edges_users_go_offline_and_nothing_it_acknowledged_is_lost() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let url = nats_url();
    let mut env = cluster_env(&db, &nats, &url);
    env.push(("REVO_ADMIN_PASSWORD", ADMIN_PW));
    let a = Served::start(&env).await;
    let mut b = Served::start(&env).await;
    let pid = b.child.id().to_string();
    let out = run(std::process::Command::new(python()).args([
        &script("dead_edge.py"),
        &a.url(""),
        &b.url(""),
        &pid,
        ADMIN_PW,
    ]));
    assert!(out.contains("ok dead edge"), "{out}");
    let _ = b.child.wait();
    let (code, out, err) = output(&mut revo_cmd(&["replay", "verify", "presence"], &env));
    assert_eq!(code, 0, "{out}\n{err}");
}

/// The npm packages of tests/realtime/package.json, installed once under the cache.
fn node_dir() -> PathBuf {
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
    let dir = cache.join("revo").join("node");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::fs::read(script("package.json")).unwrap();
    let installed = std::fs::read(dir.join("package.json")).ok();
    if installed.as_ref() != Some(&manifest) || !dir.join("node_modules/y-websocket").exists() {
        std::fs::write(dir.join("package.json"), &manifest).unwrap();
        run(std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir));
    }
    // ES modules resolve packages next to the script.
    std::fs::copy(script("yjs.mjs"), dir.join("yjs.mjs")).unwrap();
    dir
}

fn text_of(update: &[u8]) -> String {
    let doc = yrs::Doc::new();
    let t = doc.get_or_insert_text("t");
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(update).unwrap())
        .unwrap();
    let txn = doc.transact();
    t.get_string(&txn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_yjs_clients_edit_one_document_across_edges_and_yrs_agrees() {
    use base64::Engine;
    let node = node_dir();
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let url = nats_url();
    let mut env = cluster_env(&db, &nats, &url);
    env.push(("REVO_ADMIN_PASSWORD", ADMIN_PW));
    let a = Served::start(&env).await;
    let b = Served::start(&env).await;
    let out = run(std::process::Command::new("node")
        .arg(node.join("yjs.mjs"))
        .args([&a.url(""), &b.url(""), ADMIN_PW])
        .current_dir(&node));
    let result: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let text = result["text"].as_str().unwrap();
    assert!(text.chars().count() > 150, "{text}");

    // The clients' updates, applied through yrs, give JavaScript's text.
    let b64 = base64::engine::general_purpose::STANDARD;
    let doc = yrs::Doc::with_options(yrs::Options {
        offset_kind: yrs::OffsetKind::Utf16,
        ..Default::default()
    });
    let t = doc.get_or_insert_text("t");
    for u in result["corpus"].as_array().unwrap() {
        let bytes = b64.decode(u.as_str().unwrap()).unwrap();
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(&bytes).unwrap())
            .unwrap();
    }
    assert_eq!(t.get_string(&doc.transact()), text);

    // A third edge loads the document from the store (snapshot, then later updates): the
    // replayed document equals the live one.
    let c = Served::start(&env).await;
    let api = Api::new(&c);
    let token = result["alice"].as_str().unwrap();
    let room = result["room"].as_str().unwrap();
    let r = api
        .call("GET", &format!("/rooms/{room}/docs/notes"), Some(token), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let state = b64.decode(r.body["update"].as_str().unwrap()).unwrap();
    assert_eq!(text_of(&state), text);
    // Snapshots were taken (more than 100 updates), and the history shows the updates.
    let r = api
        .call(
            "GET",
            &format!("/rooms/{room}/events?after=0&limit=1000"),
            Some(token),
            None,
        )
        .await;
    let updates = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "doc.update")
        .count();
    assert!(updates > 100, "{updates} updates");
    let mut conn = db.conn().await;
    let snapshots: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE stream_type = 'room' AND event_type = 'room.doc_snapshot'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(snapshots >= 1, "no snapshot was taken");
    drop((a, b, c));
}
