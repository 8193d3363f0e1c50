//! Test harness: every test gets its own Postgres database, its own NATS subject prefix (and so
//! its own JetStream stream) and its own temporary directory, all removed afterwards.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

pub mod stub;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use revo::db::postgres::{self, PgStoreConfig};
use revo::db::sqlite::SqliteStoreConfig;
use revo::db::{PgStore, SqliteStore, StoreMetrics};
use revo_events::{AppendRequest, EventMeta, EventStore, ExpectedVersion, NewEvent};
use revo_nats::{JetStreamBus, JetStreamConfig, Subjects};
use sqlx::Connection;
use uuid::Uuid;

pub fn pg_base() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A fresh Postgres database, dropped (with its connections) when this is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("revo_t_{}", Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg_base()))
            .await
            .expect("Postgres must run on 127.0.0.1:5432 (scripts/test.sh starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let url = format!("{}/{name}", pg_base());
        TestDb { name, url }
    }

    pub async fn migrated() -> TestDb {
        let db = TestDb::new().await;
        postgres::migrate(&db.url).await.unwrap();
        db
    }

    pub async fn store(&self) -> Arc<PgStore> {
        PgStore::open(
            PgStoreConfig::new(self.url.clone()),
            StoreMetrics::unregistered().unwrap(),
        )
        .await
        .unwrap()
    }

    pub async fn conn(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut admin) =
                    sqlx::PgConnection::connect(&format!("{}/postgres", pg_base())).await
                {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            })
        })
        .join();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("revo-test-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn sqlite_store(dir: &TempDir) -> Arc<SqliteStore> {
    SqliteStore::open(
        SqliteStoreConfig::in_dir(dir.path()),
        StoreMetrics::unregistered().unwrap(),
    )
    .await
    .unwrap()
}

/// A unique subject prefix (and so a unique JetStream stream); the stream is deleted on drop.
pub struct TestNats {
    pub subjects: Subjects,
    pub dedup: Duration,
}

impl TestNats {
    pub fn new() -> TestNats {
        TestNats {
            subjects: Subjects::new(&format!("t{}", &Uuid::now_v7().simple().to_string()[20..]))
                .unwrap(),
            dedup: Duration::from_secs(120),
        }
    }

    pub async fn bus(&self) -> JetStreamBus {
        JetStreamBus::connect(JetStreamConfig {
            url: nats_url(),
            subjects: self.subjects.clone(),
            dedup_window: self.dedup,
            connection_name: "revo-test".into(),
            limits: Default::default(),
        })
        .await
        .unwrap()
    }

    pub fn stream(&self) -> String {
        self.subjects.events_stream()
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let stream = self.stream();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(c) = async_nats::connect(nats_url()).await {
                    let js = async_nats::jetstream::new(c);
                    let _ = js.delete_stream(stream).await;
                }
            })
        })
        .join();
    }
}

/// A raw event with a small MessagePack payload.
pub fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.into(),
        schema: 1,
        occurred_at: chrono::Utc::now(),
        meta: EventMeta {
            actor: Some("user:test".into()),
            correlation_id: Some(Uuid::now_v7()),
            causation_id: None,
        },
        payload: rmp_serde::to_vec_named(&serde_json::json!({"type": event_type, "n": n})).unwrap(),
    }
}

pub fn req(
    stream_type: &str,
    stream_id: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> AppendRequest {
    AppendRequest::new(stream_type, stream_id, expected, events)
}

/// Reads every event committed so far. On Postgres, `read_all` holds back events while any
/// older transaction in the cluster (another test's, too) is still open, so this waits until the
/// head event has been read.
pub async fn read_everything(store: &dyn EventStore) -> Vec<revo_events::RecordedEvent> {
    let head = store.head_position().await.unwrap();
    let mut out = Vec::new();
    let mut after = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let batch = store.read_all(after, 1000).await.unwrap();
        match batch.last() {
            Some(last) => {
                after = last.position;
                out.extend(batch);
            }
            None if head == 0 || out.iter().any(|e| e.position == head) => return out,
            None => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "head {head} never became readable"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Polls `f` until it returns Some, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Relay metrics that nobody scrapes.
pub fn relay_metrics() -> revo_actors::RelayMetrics {
    revo::metrics::Metrics::new().unwrap().relay
}

/// Every message in a test's events stream, in stream order, decoded. Waits until the stream
/// holds at least `at_least` messages.
pub async fn stream_envelopes(nats: &TestNats, at_least: usize) -> Vec<revo_events::Envelope> {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = eventually(20, || {
        let js = js.clone();
        async move { js.get_stream(nats.stream()).await.ok() }
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = stream
            .info()
            .await
            .map(|i| i.state.messages as usize)
            .unwrap_or(0);
        if n >= at_least {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream has {n} of {at_least} messages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = stream.info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("stream message")
            .unwrap()
            .unwrap();
        let env = revo_events::codec::decode_wire(&m.payload).unwrap();
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.to_string());
        assert_eq!(
            id,
            Some(env.event_id.to_string()),
            "Nats-Msg-Id is the event id"
        );
        assert_eq!(
            m.subject.as_str(),
            nats.subjects
                .event(&env.stream_type, &env.stream_id)
                .unwrap()
        );
        out.push(env);
    }
    out
}

/// Each event id exactly once, and per stream in version order without gaps.
pub fn assert_exactly_once_in_order(envs: &[revo_events::Envelope], expected: usize) {
    use std::collections::{HashMap, HashSet};
    let ids: HashSet<_> = envs.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), envs.len(), "duplicates delivered");
    assert_eq!(envs.len(), expected, "events missing or extra");
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    for e in envs {
        let v = last
            .entry((e.stream_type.clone(), e.stream_id.clone()))
            .or_insert(0);
        assert_eq!(
            e.version,
            *v + 1,
            "stream {}/{} out of order",
            e.stream_type,
            e.stream_id
        );
        *v = e.version;
    }
}

/// JWT keys shared by the edges of a test cluster.
pub const TEST_JWT_KEYS: &str = "test:0123456789abcdef0123456789abcdef";

/// A free loopback port (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `revo` with a clean `REVO_*` environment plus `env`.
pub fn revo_cmd(args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_revo"));
    for (k, _) in std::env::vars() {
        if k.starts_with("REVO_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .env("REVO_LOG", "warn");
    cmd
}

/// A running `revo serve`, killed on drop.
pub struct Served {
    pub child: std::process::Child,
    pub port: u16,
}

impl Served {
    pub async fn start(env: &[(&str, &str)]) -> Served {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = revo_cmd(&["serve", "--listen", &listen], env)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut s = Served { child, port };
        s.wait_ready().await;
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("revo serve exited early: {status}");
            }
            if let Ok((200, _)) = http_get(self.port, "/health/ready").await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "revo serve never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        self.stop_ref().await
    }

    /// SIGTERM and wait for a clean exit, keeping the value (its drop then does nothing).
    pub async fn stop_ref(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "revo serve did not stop"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET over loopback: (status, body).
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad response"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The admin password tests give fresh installations.
pub const ADMIN_PW: &str = "admin-password-for-tests";

/// A JSON client for one edge.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

/// A response: status, headers and the body as JSON (`Null` when empty or not JSON).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Api {
    pub fn new(served: &Served) -> Api {
        Api {
            base: format!("http://127.0.0.1:{}", served.port),
            http: reqwest::Client::new(),
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    /// `method path` with an optional bearer credential and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.send(req).await
    }

    /// `GET /users/me` with `cred`.
    pub async fn me(&self, cred: &str) -> Reply {
        self.call("GET", "/users/me", Some(cred), None).await
    }

    /// A GET whose body is text (`/metrics`, `/docs`).
    pub async fn text(&self, path: &str) -> String {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        res.text().await.unwrap()
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let r = self
            .call(
                "POST",
                "/auth/login",
                None,
                Some(serde_json::json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(r.status, 200, "login {username}: {}", r.body);
        r.body["access_token"].as_str().unwrap().to_owned()
    }

    /// Creates a user (as `admin_token`) and returns its id.
    pub async fn create_user(
        &self,
        admin_token: &str,
        name: &str,
        pw: &str,
        roles: &[&str],
    ) -> String {
        let r = self
            .call(
                "POST",
                "/users",
                Some(admin_token),
                Some(serde_json::json!({"username": name, "password": pw, "roles": roles})),
            )
            .await;
        assert_eq!(r.status, 201, "create {name}: {}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    /// Issues a key (as `token`) and returns (key id, secret).
    pub async fn create_key(&self, token: &str, body: serde_json::Value) -> (String, String) {
        let r = self.call("POST", "/keys", Some(token), Some(body)).await;
        assert_eq!(r.status, 201, "create key: {}", r.body);
        (
            r.body["key"]["id"].as_str().unwrap().to_owned(),
            r.body["api_key"].as_str().unwrap().to_owned(),
        )
    }
}

/// Runs a command to completion: (exit code, stdout, stderr).
pub fn output(cmd: &mut std::process::Command) -> (i32, String, String) {
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The environment of a cluster-mode `revo serve` on this test's database and subjects.
pub fn cluster_env<'a>(
    db: &'a TestDb,
    nats: &'a TestNats,
    nats_url: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("REVO_DATABASE_URL", db.url.as_str()),
        ("REVO_NATS_URL", nats_url),
        ("REVO_NATS_PREFIX", nats.subjects.prefix()),
        ("REVO_JWT_KEYS", TEST_JWT_KEYS),
        // Tests run several edges at once against one Postgres (100 connections by default).
        ("REVO_DATABASE_MAX_CONNECTIONS", "8"),
        // A generated first password would go to ./revo-data/admin-password, which clusters of
        // tests running at once (each on its own database) would race to write.
        ("REVO_ADMIN_PASSWORD", ADMIN_PW),
    ]
}

/// The default model's GGUF (scripts/fetch-model.sh; scripts/test.sh fetches it).
pub fn smollm2() -> PathBuf {
    let path = revo_engine::default_model_path();
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model.sh",
        path.display()
    );
    path
}

/// Imports the default model as `smollm2` into the data directory `env` names.
pub fn import_smollm2(env: &[(&str, &str)]) {
    let gguf = smollm2();
    let (code, _, err) = output(&mut revo_cmd(
        &[
            "models",
            "import",
            gguf.to_str().unwrap(),
            "--name",
            "smollm2",
        ],
        env,
    ));
    assert_eq!(code, 0, "{err}");
}

/// A reference greedy completion of the default model, by prompt.
pub fn case(prompt: &str) -> serde_json::Value {
    include_str!("../../engine/tests/fixtures/smollm2/greedy-cases.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|c| c["prompt"] == prompt)
        .unwrap()
}

/// Every reference greedy completion of the default model.
pub fn cases() -> Vec<serde_json::Value> {
    include_str!("../../engine/tests/fixtures/smollm2/greedy-cases.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect()
}
