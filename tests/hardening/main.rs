//! The findings of the 2026-12-08 security review (issue #25), each as the review's exploit
//! against a running cluster edge (real Postgres and NATS, a stub provider that records what
//! it receives). The finding's number is in each test's comment; each failed before its fix.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod access;
mod budgets;
#[path = "../common/mod.rs"]
mod common;
mod rooms;
mod workflows;

use std::time::{Duration, Instant};

use common::stub::{Script, Stub, Wire};
use common::*;
use serde_json::{json, Value};

/// One cluster edge with its own database, subjects and revo.toml, and an OpenAI-wire stub
/// priced as the review priced it ($1000 per million tokens in and out).
struct Edge {
    _dir: TempDir,
    _db: TestDb,
    _nats: TestNats,
    served: Served,
    api: Api,
    stub: Stub,
    admin: String,
}

impl Edge {
    async fn start(extra_toml: &str, wire: Wire) -> Edge {
        Edge::start_with(extra_toml, wire, &[]).await
    }

    /// `extra_toml` may name the stub's port as `STUB_PORT`.
    async fn start_with(extra_toml: &str, wire: Wire, extra_env: &[(&str, &str)]) -> Edge {
        let stub = Stub::start(wire, vec![Script::Answer]).await;
        let extra_toml = extra_toml.replace("STUB_PORT", &stub.port.to_string());
        let toml = format!(
            r#"
{extra_toml}

[[models.catalog]]
name = "paid"
provider = "openai-compatible"
model = "paid"
base_url = "{}"
priority = 1
input_usd_per_mtok = "1000"
output_usd_per_mtok = "1000"
"#,
            stub.base_url()
        );
        let dir = TempDir::new();
        let config = dir.path().join("revo.toml");
        std::fs::write(&config, toml).unwrap();
        let config = config.to_str().unwrap().to_owned();
        let db = TestDb::migrated().await;
        let nats = TestNats::new();
        let url = nats_url();
        let mut env = cluster_env(&db, &nats, &url);
        env.push(("REVO_CONFIG", config.as_str()));
        env.push(("REVO_ADMIN_PASSWORD", ADMIN_PW));
        env.extend_from_slice(extra_env);
        let served = Served::start(&env).await;
        let api = Api::new(&served);
        let admin = api.login("admin", ADMIN_PW).await;
        Edge {
            _dir: dir,
            _db: db,
            _nats: nats,
            served,
            api,
            stub,
            admin,
        }
    }

    async fn workflow(&self, token: &str, def: Value) -> String {
        let r = self
            .api
            .call("POST", "/workflows", Some(token), Some(def))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    async fn execute(&self, token: &str, wf: &str, input: Value) -> String {
        let r = self
            .api
            .call(
                "POST",
                &format!("/workflows/{wf}/execute"),
                Some(token),
                Some(json!({ "input": input })),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    /// Polls the run until it has ended (30 s at most).
    async fn ended(&self, token: &str, run: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self
                .api
                .call("GET", &format!("/runs/{run}"), Some(token), None)
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            if ["completed", "failed", "cancelled"].contains(&r.body["status"].as_str().unwrap()) {
                return r.body;
            }
            assert!(Instant::now() < deadline, "run never ended: {}", r.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates a workflow, runs it with `input` and waits for the run to end.
    async fn run_to_end(&self, token: &str, def: Value, input: Value) -> Value {
        let wf = self.workflow(token, def).await;
        let run = self.execute(token, &wf, input).await;
        self.ended(token, &run).await
    }

    /// A second edge of the same cluster (database, subjects, configuration).
    async fn another_edge(&self) -> (Served, Api) {
        let url = nats_url();
        let config = self._dir.path().join("revo.toml");
        let config = config.to_str().unwrap().to_owned();
        let mut env = cluster_env(&self._db, &self._nats, &url);
        env.push(("REVO_CONFIG", config.as_str()));
        let served = Served::start(&env).await;
        let api = Api::new(&served);
        (served, api)
    }

    async fn alive(&mut self) {
        assert!(
            self.served.child.try_wait().unwrap().is_none(),
            "the edge died"
        );
        let r = self.api.call("GET", "/health/live", None, None).await;
        assert_eq!(r.status, 200);
    }
}

fn fan(reference: &str, n: usize) -> String {
    format!("{{{{ {reference} }}}}").repeat(n)
}

fn paid_request() -> Value {
    json!({"prompt": "hi", "max_tokens": 10, "model_preference": "paid", "fallback_allowed": false})
}

impl Edge {
    async fn generate(&self, cred: &str) -> (u16, Value) {
        let r = self
            .api
            .call("POST", "/ai/generate", Some(cred), Some(paid_request()))
            .await;
        (r.status, r.body)
    }

    async fn budget(&self, scope: &str, id: &str, period: &str, limit: &str) -> Value {
        let r = self
            .api
            .call(
                "POST",
                "/budgets",
                Some(&self.admin),
                Some(json!({"scope": scope, "id": id, "period": period, "limit_usd": limit})),
            )
            .await;
        assert!(r.status == 201 || r.status == 200, "{}", r.body);
        r.body
    }

    async fn user_id(&self, cred: &str) -> String {
        self.api.me(cred).await.body["user"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket session of `user` authenticated with `cred` (in the header).
async fn socket(e: &Edge, user: &str, cred: &str) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{}/ws/{user}", e.served.port)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {cred}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

async fn send(s: &mut Socket, v: Value) {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    s.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next frame of type `kind` (or `error`, which is returned as well) within `secs`.
async fn frame(s: &mut Socket, kinds: &[&str], secs: u64) -> Option<Value> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let m = tokio::time::timeout_at(deadline, s.next())
            .await
            .ok()??
            .ok()?;
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if kinds.contains(&v["type"].as_str().unwrap_or("")) {
                return Some(v);
            }
        }
    }
}

async fn join(s: &mut Socket, room: &str) -> Value {
    send(s, json!({"type": "room.join", "room": room})).await;
    frame(s, &["room.joined", "error"], 10).await.unwrap()
}

/// A Yjs update inserting `n` bytes of text (from a fresh client each time).
fn yjs_insert(n: usize) -> String {
    use base64::Engine;
    use yrs::{GetString, Text, Transact};
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, &"a".repeat(n));
    let _ = text.get_string(&txn);
    base64::engine::general_purpose::STANDARD.encode(txn.encode_update_v1())
}

async fn doc_update(s: &mut Socket, room: &str, doc: &str, n: usize) -> Value {
    let f = json!({"type": "doc.update", "room": room, "doc": doc, "update": yjs_insert(n)});
    send(s, f).await;
    frame(s, &["doc.ack", "error"], 10).await.unwrap()
}

/// A y-websocket awareness message carrying `state` (one client, clock 1).
fn awareness(client: u64, state: &str) -> Vec<u8> {
    fn varuint(out: &mut Vec<u8>, mut n: u64) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut update = Vec::new();
    varuint(&mut update, 1);
    varuint(&mut update, client);
    varuint(&mut update, 1);
    varuint(&mut update, state.len() as u64);
    update.extend_from_slice(state.as_bytes());
    let mut msg = vec![1u8];
    varuint(&mut msg, update.len() as u64);
    msg.extend_from_slice(&update);
    msg
}
