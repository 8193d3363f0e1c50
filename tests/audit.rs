//! The audit log (issue #25) against a running cluster edge: each audited action's record
//! with its actor, a flood of failed sign-ins folded within its bound, the hash chain checked
//! by `revo audit verify` (and broken by an edit in the store), `revo audit export`, who may
//! read `/audit`, and the live tail over the WebSocket.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use std::time::Duration;

use common::*;
use revo_events::family::audit::{AuditEvent, AUDIT_LOG, AUDIT_STREAM};
use revo_events::{EventFamily, EventMeta};
use serde_json::{json, Value};

struct Edge {
    _dir: TempDir,
    db: TestDb,
    nats: TestNats,
    url: String,
    served: Served,
    api: Api,
    admin: String,
}

async fn edge() -> Edge {
    let dir = TempDir::new();
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let url = nats_url();
    let served = {
        let mut env = cluster_env(&db, &nats, &url);
        env.push(("REVO_ADMIN_PASSWORD", ADMIN_PW));
        Served::start(&env).await
    };
    let api = Api::new(&served);
    let admin = api.login("admin", ADMIN_PW).await;
    Edge {
        _dir: dir,
        db,
        nats,
        url,
        served,
        api,
        admin,
    }
}

impl Edge {
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let env = cluster_env(&self.db, &self.nats, &self.url);
        output(&mut revo_cmd(args, &env))
    }

    /// Every record `GET /audit` gives with `query`, following the cursor.
    async fn records(&self, cred: &str, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let sep = if query.is_empty() { "" } else { "&" };
            let r = self
                .api
                .call(
                    "GET",
                    &format!("/audit?{query}{sep}after={after}&limit=50"),
                    Some(cred),
                    None,
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            let page = r.body["records"].as_array().unwrap().clone();
            out.extend(page.iter().map(|x| x["record"].clone()));
            match r.body["next"].as_i64() {
                Some(n) => after = n,
                None => return out,
            }
        }
    }

    /// Waits until `pred` holds for the records of `query`.
    async fn wait_for(&self, query: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let recs = self.records(&self.admin, query).await;
            if pred(&recs) {
                return recs;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "audit records never matched: {recs:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn has(recs: &[Value], action: &str, actor: &str, outcome: &str) -> bool {
    recs.iter().any(|r| {
        r["action"] == action && r["actor"]["username"] == actor && r["outcome"] == outcome
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audited_action_is_recorded_with_its_actor_and_the_chain_verifies() {
    let e = edge().await;
    let admin = e.admin.clone();
    let api = &e.api;
    // The first start's admin, by the system.
    e.wait_for("action=system.bootstrap", |r| r.len() == 1)
        .await;

    let dana_id = api
        .create_user(&admin, "dana", "dana-password-123", &["developer"])
        .await;
    let dana = api.login("dana", "dana-password-123").await;
    let r = api
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "dana", "password": "wrong-password"})),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = api
        .call(
            "PATCH",
            &format!("/users/{dana_id}"),
            Some(&admin),
            Some(json!({"roles": ["viewer"]})),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = api
        .call(
            "PATCH",
            &format!("/users/{dana_id}"),
            Some(&admin),
            Some(json!({"roles": ["developer"], "password": "dana-password-456"})),
        )
        .await;
    assert_eq!(r.status, 200);
    let dana = {
        let _ = dana;
        api.login("dana", "dana-password-456").await
    };
    let (key_id, _) = api
        .create_key(&dana, json!({"name": "ci", "roles": ["viewer"]}))
        .await;
    let r = api
        .call("DELETE", &format!("/keys/{key_id}"), Some(&dana), None)
        .await;
    assert_eq!(r.status, 204);
    // Refused for lack of permission.
    let r = api.call("GET", "/users", Some(&dana), None).await;
    assert_eq!(r.status, 403);
    let b = api
        .call(
            "POST",
            "/budgets",
            Some(&admin),
            Some(json!({"scope": "user", "id": dana_id, "period": "day", "limit_usd": "1"})),
        )
        .await;
    assert_eq!(b.status, 201);
    let budget = b.body["id"].as_str().unwrap().to_owned();
    let r = api
        .call("DELETE", &format!("/budgets/{budget}"), Some(&admin), None)
        .await;
    assert_eq!(r.status, 204);
    let wf = api
        .call(
            "POST",
            "/workflows",
            Some(&dana),
            Some(json!({"name": "w", "steps": [{"id": "ok", "type": "approval"}]})),
        )
        .await;
    let wf = wf.body["id"].as_str().unwrap().to_owned();
    let run = api
        .call(
            "POST",
            &format!("/workflows/{wf}/execute"),
            Some(&dana),
            Some(json!({})),
        )
        .await;
    let run = run.body["id"].as_str().unwrap().to_owned();
    common::eventually(10, || async {
        let r = api
            .call("POST", &format!("/runs/{run}/approve"), Some(&dana), None)
            .await;
        (r.status == 200).then_some(())
    })
    .await;
    let r = api
        .call("DELETE", &format!("/workflows/{wf}"), Some(&dana), None)
        .await;
    assert_eq!(r.status, 204);
    let room = api
        .call("POST", "/rooms", Some(&admin), Some(json!({"name": "r"})))
        .await;
    let room = room.body["id"].as_str().unwrap().to_owned();
    let r = api
        .call(
            "POST",
            &format!("/rooms/{room}/members"),
            Some(&admin),
            Some(json!({"user_id": dana_id, "role": "member"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = api
        .call(
            "PATCH",
            &format!("/rooms/{room}/members/{dana_id}"),
            Some(&admin),
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api
        .call("POST", "/auth/logout-all", Some(&dana), None)
        .await;
    assert_eq!(r.status, 204);

    let expected = [
        ("user.created", "admin", "success"),
        ("auth.login", "dana", "success"),
        ("auth.login", "dana", "failure"),
        ("user.roles_changed", "admin", "success"),
        ("user.password_changed", "admin", "success"),
        ("key.created", "dana", "success"),
        ("key.revoked", "dana", "success"),
        ("access.denied", "dana", "denied"),
        ("budget.created", "admin", "success"),
        ("budget.deleted", "admin", "success"),
        ("workflow.created", "dana", "success"),
        ("run.approved", "dana", "success"),
        ("workflow.deleted", "dana", "success"),
        ("room.member_added", "admin", "success"),
        ("room.role_changed", "admin", "success"),
        ("auth.logout_all", "dana", "success"),
    ];
    let recs = e
        .wait_for("", |r| expected.iter().all(|(a, who, o)| has(r, a, who, o)))
        .await;
    // Details where they matter.
    let roles = recs
        .iter()
        .find(|r| r["action"] == "user.roles_changed")
        .unwrap();
    assert_eq!(roles["detail"]["roles_before"], "developer", "{roles}");
    assert_eq!(roles["detail"]["roles_after"], "viewer");
    assert_eq!(roles["target"], format!("user:{dana_id}"));
    let denied = recs
        .iter()
        .find(|r| r["action"] == "access.denied")
        .unwrap();
    assert_eq!(denied["target"], "GET /users");
    assert_eq!(denied["detail"]["permission"], "users:read");
    assert_eq!(denied["client"], "127.0.0.1");
    assert!(denied["request_id"].is_string());
    let failed = recs
        .iter()
        .find(|r| r["action"] == "auth.login" && r["outcome"] == "failure")
        .unwrap();
    assert_eq!(failed["detail"]["reason"], "invalid_credentials");
    // Filters.
    let only = e.records(&admin, "action=auth.&outcome=failure").await;
    assert!(only
        .iter()
        .all(|r| r["outcome"] == "failure" && r["action"].as_str().unwrap().starts_with("auth.")));
    assert_eq!(
        e.records(&admin, &format!("target=room:{room}"))
            .await
            .len(),
        2
    );
    let r = api.call("GET", "/audit?limit=0", Some(&admin), None).await;
    assert_eq!((r.status, r.code()), (422, "invalid_parameter"));

    // The chain verifies; export gives every record with its hashes.
    let (code, out, err) = e.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("audit log verifies"), "{out}");
    let (code, out, err) = e.cli(&["audit", "export"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= expected.len());
    for w in lines.windows(2) {
        assert_eq!(w[1]["prev_sha256"], w[0]["sha256"]);
    }

    // One record changed in the store: verify names it.
    let mut c = e.db.conn().await;
    let (payload,): (Vec<u8>,) = sqlx::query_as(
        "SELECT payload FROM events WHERE stream_type = $1 AND stream_id = $2 AND version = 3",
    )
    .bind(AUDIT_STREAM)
    .bind(AUDIT_LOG)
    .fetch_one(&mut c)
    .await
    .unwrap();
    let AuditEvent::Recorded {
        mut entry,
        prev_sha256,
        sha256,
    } = revo_events::family::decode_raw::<AuditEvent>("audit.recorded", 1, &payload).unwrap();
    entry.outcome = "success".into();
    entry.action = "nothing.happened".into();
    let forged = AuditEvent::Recorded {
        entry,
        prev_sha256,
        sha256,
    }
    .to_new_event(EventMeta::default())
    .unwrap();
    sqlx::query(
        "UPDATE events SET payload = $1 WHERE stream_type = $2 AND stream_id = $3 AND version = 3",
    )
    .bind(forged.payload)
    .bind(AUDIT_STREAM)
    .bind(AUDIT_LOG)
    .execute(&mut c)
    .await
    .unwrap();
    let (code, out, _) = e.cli(&["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("broken at record 3"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failed_sign_ins_is_folded_within_its_bound() {
    let mut e = edge().await;
    let sends = (0..60).map(|_| {
        e.api.call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "ghost", "password": "nope-nope-nope"})),
        )
    });
    let replies = futures::future::join_all(sends).await;
    assert!(replies.iter().all(|r| r.status == 401 || r.status == 429));
    // At once: one record per reason (the failures before the throttle, and the throttled).
    let recs = e
        .wait_for("action=auth.login&outcome=failure", |r| !r.is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recs2 = e
        .records(&e.admin, "action=auth.login&outcome=failure")
        .await;
    assert!(recs2.len() <= 2, "{recs2:#?}");
    assert!(recs
        .iter()
        .all(|r| r["actor"]["username"] == "ghost" && r["count"] == 1));
    // The rest are written as one folded record per reason when the window closes (here, at
    // shutdown), with their count: every attempt is accounted for.
    assert!(e.served.stop_ref().await.success());
    let (code, out, err) = e.cli(&["audit", "export"]);
    assert_eq!(code, 0, "{err}");
    let ghost: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "auth.login" && r["actor"]["username"] == "ghost")
        .collect();
    assert!(ghost.len() <= 4, "{ghost:#?}");
    let total: u64 = ghost.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 60, "{ghost:#?}");
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Edge {
    /// A WebSocket of the user `cred` authenticates, with `extra` headers.
    async fn socket(&self, cred: &str, extra: &[(&'static str, &str)]) -> Socket {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let me = self.api.me(cred).await.body["user"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut req = format!("ws://127.0.0.1:{}/ws/{me}", self.served.port)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {cred}").parse().unwrap());
        for (k, v) in extra {
            req.headers_mut().insert(*k, v.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req).await.unwrap().0
    }
}

async fn send(ws: &mut Socket, v: Value) {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The first frame (within 10 s each) for which `done` holds; every frame before it is
/// checked by `skip` first.
async fn frame_until(
    ws: &mut Socket,
    done: impl Fn(&Value) -> bool,
    skip: impl Fn(&Value),
) -> Value {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let f: Value = serde_json::from_str(&t).unwrap();
            if done(&f) {
                return f;
            }
            skip(&f);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_read_the_audit_log_and_nothing_else_and_hear_it_live() {
    let e = edge().await;
    let api = &e.api;
    let aid = api
        .create_user(&e.admin, "audra", "audra-password-1", &["auditor"])
        .await;
    api.create_user(&e.admin, "dev", "dev-password-1234", &["developer"])
        .await;
    let audra = api.login("audra", "audra-password-1").await;
    let dev = api.login("dev", "dev-password-1234").await;
    assert_eq!(
        api.call("GET", "/audit", Some(&audra), None).await.status,
        200
    );
    for path in [
        "/users",
        "/keys",
        "/workflows",
        "/rooms",
        "/ai/metrics",
        "/budgets",
    ] {
        let r = api.call("GET", path, Some(&audra), None).await;
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{path}");
    }
    let r = api.call("GET", "/audit", Some(&dev), None).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));

    // The live tail: an administrator's WebSocket subscribed to `audit` hears a new record.
    let mut ws = e.socket(&e.admin, &[]).await;
    send(&mut ws, json!({"type": "subscribe", "topics": ["audit"]})).await;
    frame_until(&mut ws, |f| f["type"] == "subscribed", |_| {}).await;
    let r = api
        .call(
            "PATCH",
            &format!("/users/{aid}"),
            Some(&e.admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.status, 200);
    let f = frame_until(
        &mut ws,
        |f| f["type"] == "audit.record" && f["action"] == "user.disabled",
        |_| {},
    )
    .await;
    assert_eq!(f["target"], format!("user:{aid}"));

    // A developer may not subscribe.
    let mut ws = e.socket(&dev, &[]).await;
    send(&mut ws, json!({"type": "subscribe", "topics": ["audit"]})).await;
    let f = frame_until(
        &mut ws,
        |f| f["type"] == "error",
        |f| assert_ne!(f["type"], "subscribed"),
    )
    .await;
    assert_eq!(f["code"], "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_decisions_over_the_websocket_are_audited_with_their_source() {
    let e = edge().await;
    let api = &e.api;
    let wf = api
        .call(
            "POST",
            "/workflows",
            Some(&e.admin),
            Some(json!({"name": "w", "steps": [{"id": "ok", "type": "approval"}]})),
        )
        .await;
    let wf = wf.body["id"].as_str().unwrap().to_owned();
    let run = api
        .call(
            "POST",
            &format!("/workflows/{wf}/execute"),
            Some(&e.admin),
            Some(json!({})),
        )
        .await;
    let run = run.body["id"].as_str().unwrap().to_owned();
    let mut ws = e.socket(&e.admin, &[("user-agent", "audit-test/1")]).await;
    common::eventually(10, || async {
        let r = api
            .call("GET", &format!("/runs/{run}"), Some(&e.admin), None)
            .await;
        (r.body["status"] == "waiting").then_some(())
    })
    .await;
    send(&mut ws, json!({"type": "workflow.approve", "run_id": run})).await;
    frame_until(
        &mut ws,
        |f| f["type"] == "workflow.decided",
        |f| assert_ne!(f["type"], "error", "{f}"),
    )
    .await;
    let recs = e
        .wait_for(&format!("target=run:{run}"), |r| !r.is_empty())
        .await;
    assert_eq!(recs[0]["action"], "run.approved");
    assert_eq!(recs[0]["actor"]["username"], "admin");
    assert_eq!(recs[0]["detail"]["via"], "websocket");
    assert_eq!(recs[0]["client"], "127.0.0.1");
    assert_eq!(recs[0]["user_agent"], "audit-test/1");
}
