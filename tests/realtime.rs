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

/// A client program, killed if it runs past 5 minutes (a hung client must not hang CI).
fn client(program: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["300", program]);
    cmd
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
    let out =
        run(client(&python()).args([&script("protocol.py"), &a.url(""), &b.url(""), ADMIN_PW]));
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
    let out =
        run(client(&python()).args([&script("protocol.py"), &a.url(""), &a.url(""), ADMIN_PW]));
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
    let out = run(client(&python()).args([
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
    let out = run(client("node")
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
        .call(
            "GET",
            &format!("/rooms/{room}/docs/notes"),
            Some(token),
            None,
        )
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

/// The README's two terminal clients (examples/python/chat.py): they chat, see each other's
/// presence and typing, edit one document, and one reconnects to the other edge without
/// losing a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_chat_clients_across_two_edges() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let url = nats_url();
    let mut env = cluster_env(&db, &nats, &url);
    env.push(("REVO_ADMIN_PASSWORD", ADMIN_PW));
    let a = Served::start(&env).await;
    let b = Served::start(&env).await;
    let api = Api::new(&a);
    let admin = api.login("admin", ADMIN_PW).await;
    let pw = "a-long-password";
    let dana_id = api.create_user(&admin, "dana", pw, &["developer"]).await;
    let eli_id = api.create_user(&admin, "eli", pw, &["developer"]).await;
    let _ = dana_id;
    let dana = api.login("dana", pw).await;
    let r = api
        .call(
            "POST",
            "/rooms",
            Some(&dana),
            Some(serde_json::json!({"name": "team", "members": [{"user_id": eli_id, "role": "member"}]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let room = r.body["id"].as_str().unwrap().to_owned();
    let home = TempDir::new();
    let chat = format!("{}/examples/python/chat.py", env!("CARGO_MANIFEST_DIR"));
    let client = |edge: &Served, user: &str, args: &[&str]| {
        let mut cmd = client(&python());
        cmd.env("HOME", home.path())
            .arg(&chat)
            .args(["--url", &edge.url(""), "--username", user, "--password", pw])
            .args(["--room", &room])
            .args(args);
        cmd
    };
    // Both at once: dana on edge A, eli on edge B. Each waits 3 s after joining before
    // writing, so both are in the room when the other types (typing is ephemeral: a client
    // not yet joined would not see it).
    let mut d = client(
        &a,
        "dana",
        &[
            "--delay",
            "3",
            "--say",
            "hello from dana",
            "--edit",
            "Hi ",
            "--for",
            "4",
        ],
    );
    let mut e = client(
        &b,
        "eli",
        &[
            "--delay",
            "3",
            "--say",
            "hello from eli",
            "--edit",
            "there",
            "--for",
            "5",
        ],
    );
    let (dh, eh) = (
        std::thread::spawn(move || output(&mut d)),
        std::thread::spawn(move || output(&mut e)),
    );
    let (dout, eout) = (dh.join().unwrap(), eh.join().unwrap());
    assert_eq!(dout.0, 0, "{}\n{}", dout.1, dout.2);
    assert_eq!(eout.0, 0, "{}\n{}", eout.1, eout.2);
    let (dout, eout) = (dout.1, eout.1);
    assert!(dout.contains(": hello from eli"), "{dout}");
    assert!(eout.contains(": hello from dana"), "{eout}");
    assert!(
        dout.contains("is typing") && eout.contains("is typing"),
        "{dout}\n{eout}"
    );
    let doc_line = |out: &str| {
        out.lines()
            .rfind(|l| l.starts_with("doc notes: "))
            .unwrap_or_default()
            .to_owned()
    };
    let last = doc_line(&eout);
    assert!(last.contains("Hi ") && last.contains("there"), "{eout}");
    // Eli is away; dana writes; eli comes back on the other edge and gets exactly that.
    let (code, out, err) = output(&mut client(
        &a,
        "dana",
        &["--say", "while you were out", "--for", "1"],
    ));
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = output(&mut client(&a, "eli", &["--for", "2"]));
    assert_eq!(code, 0, "{out}\n{err}");
    let messages: Vec<&str> = out.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(messages.len(), 1, "{out}");
    assert!(messages[0].ends_with(": while you were out"), "{out}");
    // Presence: both are offline once their clients have gone (after the 3 s linger).
    eventually(15, || async {
        let r = api
            .call("GET", &format!("/rooms/{room}/presence"), Some(&dana), None)
            .await;
        r.body["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "offline")
            .then_some(())
    })
    .await;
}

/// A session subscribed to `generation` follows its user's routed requests (against a stub
/// OpenAI provider); another user's session sees nothing of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_progress_reaches_only_its_users_sessions() {
    use common::stub::{Script, Stub, Wire, TEXT};
    let gpt = Stub::start(Wire::OpenAi, vec![Script::Answer]).await;
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let config = dir.path().join("revo.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[models.catalog]]
name = "gpt"
provider = "openai"
model = "gpt-4o"
base_url = "{}"
api_key_env = "REALTIME_TEST_KEY"
input_usd_per_mtok = "2.50"
output_usd_per_mtok = "10.00"
"#,
            gpt.base_url()
        ),
    )
    .unwrap();
    let env = [
        ("REVO_DATA_DIR", data.as_str()),
        ("REVO_ADMIN_PASSWORD", ADMIN_PW),
        ("REVO_CONFIG", config.to_str().unwrap()),
        ("REALTIME_TEST_KEY", "sk-test"),
    ];
    let a = Served::start(&env).await;
    let out = run(client(&python()).args([&script("generation.py"), &a.url(""), ADMIN_PW, TEXT]));
    assert!(out.contains("ok generation progress"), "{out}");
}
