//! `revo serve` and the operator commands, as a user runs them: embedded and cluster mode,
//! graceful stop, kill -9, NATS down, replay verify, bad configuration.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point; tasks are joined by the test

mod common;

use common::*;
use revo_events::EventLog;
use revo_events::{EventStore, ExpectedVersion};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_serve_answers_health_and_stops_cleanly() {
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let served = Served::start(&[("REVO_DATA_DIR", &data)]).await;

    assert_eq!(http_get(served.port, "/health/live").await.unwrap().0, 200);
    let (status, body) = http_get(served.port, "/health").await.unwrap();
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["mode"], "embedded");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["components"]["store"]["status"], "ok");
    assert_eq!(health["components"]["bus"]["status"], "ok");
    let (_, metrics) = http_get(served.port, "/metrics").await.unwrap();
    for name in [
        "revo_event_append_seconds_bucket",
        "revo_event_commit_batch_events",
        "revo_relay_lag_seconds",
        "revo_projection_lag_events",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    let (status, body) = http_get(served.port, "/no/such/route").await.unwrap();
    assert_eq!(status, 404);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "not_found");

    // A second server on the same data directory is refused.
    let port = free_port().to_string();
    let (code, _, stderr) = output(&mut revo_cmd(
        &["serve", "--listen", &format!("127.0.0.1:{port}")],
        &[("REVO_DATA_DIR", &data)],
    ));
    assert_ne!(code, 0);
    assert!(stderr.contains("another `revo serve`"), "{stderr}");

    assert!(served.stop().await.success());
    let (code, out, _) = output(&mut revo_cmd(
        &["events", "tail"],
        &[("REVO_DATA_DIR", &data)],
    ));
    assert_eq!(code, 0);
    let types: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event_type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // The first start also creates the `admin` user, and says so in the audit log.
    assert_eq!(
        types,
        vec![
            "node.started",
            "user.created",
            "audit.recorded",
            "node.stopped"
        ]
    );
    let (code, out, err) = output(&mut revo_cmd(
        &["replay", "verify", "nodes"],
        &[("REVO_DATA_DIR", &data)],
    ));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = output(&mut revo_cmd(
        &["replay", "list"],
        &[("REVO_DATA_DIR", &data)],
    ));
    assert_eq!(code, 0);
    // The projections folded the stop before the node exited: checkpoint 4 (start, the first
    // admin and its audit record, stop).
    for name in ["nodes", "users"] {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap();
        let position: i64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert_eq!(position, 4, "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_serve_survives_kill_9_between_commit_and_publish() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let url = nats_url();
    // Events committed while no relay runs.
    let store = db.store().await;
    let total = 30_000;
    for chunk in 0..(total / 500) {
        let events = (0..500)
            .map(|i| event("x", (chunk * 500 + i) as u64))
            .collect();
        store
            .append(req(
                "bulk",
                &format!("b{}", chunk % 7),
                ExpectedVersion::Any,
                events,
            ))
            .await
            .unwrap();
    }
    let served = Served::start(&cluster_env(&db, &nats, &url)).await;
    // Kill -9 as soon as publishing has begun.
    stream_envelopes(&nats, 1).await;
    served.signal("-KILL");
    drop(served);
    let restarted = Served::start(&cluster_env(&db, &nats, &url)).await;
    // Both runs' node.started, the first admin and its audit record, every bulk event,
    // exactly once, in per-stream order.
    let envs = stream_envelopes(&nats, total + 4).await;
    assert_exactly_once_in_order(&envs, total + 4);
    assert!(restarted.stop().await.success());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_nats_down_appends_commit_and_the_relay_catches_up() {
    let dir = TempDir::new();
    let port = free_port();
    let nats_url = format!("nats://127.0.0.1:{port}");
    let start_nats = || {
        std::process::Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-js",
                "-sd",
                dir.path().to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server on PATH")
    };
    let mut nats_proc = start_nats();
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let served = Served::start(&cluster_env(&db, &nats, &nats_url)).await;

    nats_proc.kill().unwrap();
    nats_proc.wait().unwrap();
    let (status, body) = eventually(20, || async {
        let r = http_get(served.port, "/health/ready").await.ok()?;
        (r.0 == 503).then_some(r)
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("bus"), "{body}");
    // The store does not need the bus.
    let store = db.store().await;
    for i in 0..50 {
        store
            .append(req(
                "offline",
                "o",
                ExpectedVersion::Exact(i),
                vec![event("x", i as u64)],
            ))
            .await
            .unwrap();
    }
    let mut nats_proc = start_nats();
    eventually(30, || async {
        (http_get(served.port, "/health/ready").await.ok()?.0 == 200).then_some(())
    })
    .await;
    let client = async_nats::connect(&nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let count = eventually(30, || async {
        let mut s = js.get_stream(nats.stream()).await.ok()?;
        let n = s.info().await.ok()?.state.messages;
        (n >= 53).then_some(n)
    })
    .await;
    assert_eq!(
        count, 53,
        "node.started + the first admin and its audit record + 50 offline appends, no duplicates"
    );
    assert!(served.stop().await.success());
    store.close().await;
    let _ = nats_proc.kill();
    let _ = nats_proc.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuild_and_verify_report_drift_and_corruption() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let url = nats_url();
    let env = cluster_env(&db, &nats, &url);
    // Two nodes come and go; the live projection folds them.
    for _ in 0..2 {
        let s = Served::start(&env).await;
        assert!(s.stop().await.success());
    }
    let (code, out, err) = output(&mut revo_cmd(&["replay", "rebuild", "nodes"], &env));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("generation 2"), "{out}");
    let (code, out, _) = output(&mut revo_cmd(&["replay", "verify", "nodes"], &env));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verified: 2 rows"), "{out}");

    let mut conn = db.conn().await;
    sqlx::query("UPDATE read_model_rows SET doc = jsonb_set(doc, '{hostname}', '\"tampered\"') WHERE projection = 'nodes'")
        .execute(&mut conn)
        .await
        .unwrap();
    let (code, out, _) = output(&mut revo_cmd(&["replay", "verify", "nodes"], &env));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DRIFTED") && out.contains("tampered"), "{out}");
    // A rebuild repairs it.
    assert_eq!(
        output(&mut revo_cmd(&["replay", "rebuild", "nodes"], &env)).0,
        0
    );
    assert_eq!(
        output(&mut revo_cmd(&["replay", "verify", "nodes"], &env)).0,
        0
    );

    // A stored event that cannot be decoded stops replay and tail, naming it.
    let bad_id = uuid::Uuid::now_v7();
    let pos: i64 = sqlx::query_scalar(
        "INSERT INTO events (event_id, stream_type, stream_id, version, event_type, schema, occurred_at, payload) \
         VALUES ($1, 'node', 'broken', 1, 'node.started', 1, now(), '\\xc1'::bytea) RETURNING position",
    )
    .bind(bad_id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let (code, _, err) = output(&mut revo_cmd(&["replay", "rebuild", "nodes"], &env));
    assert_ne!(code, 0);
    assert!(
        err.contains(&bad_id.to_string()) && err.contains(&format!("position {pos}")),
        "{err}"
    );
    let (code, _, err) = output(&mut revo_cmd(&["events", "tail"], &env));
    assert_ne!(code, 0);
    assert!(err.contains(&bad_id.to_string()), "{err}");
    let (code, _, err) = output(&mut revo_cmd(
        &[
            "events",
            "tail",
            "--stream-type",
            "node",
            "--stream-id",
            "broken",
        ],
        &env,
    ));
    assert_ne!(code, 0);
    assert!(err.contains(&format!("position {pos}")), "{err}");
    // A filter that excludes the corrupt event is not stopped by it.
    let (code, out, err) = output(&mut revo_cmd(
        &["events", "tail", "--stream-type", "projection"],
        &env,
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "two rebuilds recorded: {out}");
}

#[tokio::test]
async fn bad_configuration_is_refused_at_start() {
    let (code, _, err) = output(&mut revo_cmd(
        &["migrate"],
        &[("REVO_DATBASE_URL", "postgres://x")],
    ));
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown environment variable") && err.contains("REVO_DATBASE_URL"),
        "{err}"
    );

    let dir = TempDir::new();
    let file = dir.path().join("revo.toml");
    std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let (code, _, err) = output(&mut revo_cmd(
        &["migrate", "--config", file.to_str().unwrap()],
        &[],
    ));
    assert_eq!(code, 2);
    assert!(err.contains("unknown field"), "{err}");

    let (code, _, err) = output(&mut revo_cmd(
        &["migrate"],
        &[("REVO_DATABASE_URL", "postgres://127.0.0.1/x")],
    ));
    assert_eq!(code, 2);
    assert!(err.contains("REVO_NATS_URL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_database_from_a_newer_build() {
    let db = TestDb::migrated().await;
    let mut conn = db.conn().await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', true, '\\x00'::bytea, 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let nats = TestNats::new();
    let url = nats_url();
    let port = free_port().to_string();
    let (code, _, err) = output(&mut revo_cmd(
        &["serve", "--listen", &format!("127.0.0.1:{port}")],
        &cluster_env(&db, &nats, &url),
    ));
    assert_eq!(code, 2);
    assert!(err.contains("newer Revo"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_unreachable_appends_fail_fast_and_write_nothing() {
    let db = TestDb::migrated().await;
    let proxy = Proxy::start().await;
    let via_proxy = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(via_proxy, db.url, "test expects Postgres at 127.0.0.1:5432");
    let store = revo::db::PgStore::open(
        revo::db::postgres::PgStoreConfig::new(via_proxy),
        revo::db::StoreMetrics::unregistered().unwrap(),
    )
    .await
    .unwrap();
    store
        .append(req(
            "pg",
            "1",
            ExpectedVersion::Exact(0),
            vec![event("x", 1)],
        ))
        .await
        .unwrap();
    proxy.cut();
    let started = std::time::Instant::now();
    let err = store
        .append(req(
            "pg",
            "1",
            ExpectedVersion::Exact(1),
            vec![event("x", 2), event("x", 3)],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            revo_events::StoreError::Unavailable(_)
                | revo_events::StoreError::CommitUnknown(_)
                | revo_events::StoreError::Backend(_)
        ),
        "{err:?}"
    );
    eprintln!("append failed after {:?}: {err}", started.elapsed());
    // Nothing half-written: the direct connection sees only the first event.
    let direct = db.store().await;
    assert_eq!(read_everything(direct.as_ref()).await.len(), 1);
    store.close().await;
    direct.close().await;
}

/// The health endpoints read the store probe's latest result and never query the database
/// themselves: a flood of readiness probes (public, unauthenticated) costs Postgres nothing, and
/// an unreachable Postgres still shows in readiness within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_floods_cost_the_database_nothing_and_an_outage_still_shows() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let proxy = Proxy::start().await;
    let via_proxy = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let url = nats_url();
    let mut env = cluster_env(&db, &nats, &url);
    env.retain(|(k, _)| *k != "REVO_DATABASE_URL");
    env.push(("REVO_DATABASE_URL", via_proxy.as_str()));
    let served = Served::start(&env).await;
    let mut conn = db.conn().await;
    let start = transactions(&mut conn).await;
    let quiet = transactions(&mut conn).await - start;
    let client = reqwest::Client::new();
    let ready = served.url("/health/ready");
    for _ in 0..50 {
        let calls = (0..20).map(|_| client.get(&ready).send());
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.unwrap().status(), 200);
        }
    }
    let flooded = transactions(&mut conn).await - start - quiet;
    eprintln!("transactions: {quiet} in a quiet window, {flooded} in one with 1,000 probes");
    // A probe per call would be 2,000 transactions (ping and schema check for each of 1,000).
    assert!(
        flooded < quiet + 500,
        "1,000 readiness probes cost {flooded} transactions (a quiet window: {quiet})"
    );
    drop(conn);

    proxy.cut();
    let body = eventually(20, || async {
        let r = http_get(served.port, "/health/ready").await.ok()?;
        (r.0 == 503).then_some(r.1)
    })
    .await;
    assert!(body.contains("store is not ready"), "{body}");
    drop(served);
}

/// The database's transactions so far. Backends report their counts when idle, at the latest
/// 10 s later (Postgres 15's `PGSTAT_IDLE_INTERVAL`), so this reads them 11 s after the window.
async fn transactions(conn: &mut sqlx::PgConnection) -> i64 {
    tokio::time::sleep(Duration::from_secs(11)).await;
    sqlx::query_scalar::<_, i64>(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database \
         WHERE datname = current_database()",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// A TCP forwarder to Postgres that can be cut, to make Postgres unreachable for one client.
struct Proxy {
    port: u16,
    stop: tokio_util::sync::CancellationToken,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    c = listener.accept() => match c { Ok(c) => c, Err(_) => return },
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Proxy { port, stop }
    }

    /// Drops every connection and refuses new ones.
    fn cut(&self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_subscriber_decodes_events_from_a_cluster_node() {
    let python = std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", "import nats, msgpack"])
        .status()
        .unwrap();
    assert!(
        probe.success(),
        "{python} lacks nats-py and msgpack: run scripts/test.sh, which installs them"
    );
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let url = nats_url();
    let served = Served::start(&cluster_env(&db, &nats, &url)).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/subscriber.py");
    let (code, out, err) = output(std::process::Command::new(&python).args([
        script,
        "--url",
        &url,
        "--prefix",
        nats.subjects.prefix(),
        "--count",
        "2",
        "--timeout",
        "30",
    ]));
    assert_eq!(code, 0, "{out}{err}");
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["event_type"], "node.started");
    assert_eq!(line["stream_type"], "node");
    assert_eq!(line["payload"]["mode"], "cluster");
    assert_eq!(line["payload"]["node_id"], line["stream_id"]);
    // The first admin: ids reach Python as strings.
    let line: serde_json::Value = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
    assert_eq!(line["event_type"], "user.created");
    assert_eq!(line["stream_id"], "admin");
    assert!(uuid::Uuid::try_parse(line["payload"]["user_id"].as_str().unwrap()).is_ok());
    assert!(served.stop().await.success());
}
