//! The findings of the 2026-12-08 security review (issue #25), each as the review's exploit
//! against a running cluster edge (real Postgres and NATS, a stub provider that records what
//! it receives). The finding's number is in each test's comment; each failed before its fix.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

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

/// Finding 1: templates that multiply their input by 256 at each level fail their step with
/// `template_error` instead of exhausting memory; outputs too large for an event fail their
/// step or run with `output_too_large` instead of wedging it in a retry loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_that_multiply_or_outgrow_an_event_fail_instead_of_crashing_or_wedging() {
    let mut e = Edge::start("", Wire::OpenAi).await;
    let admin = e.admin.clone();

    // The crash: t1 is 512 KiB, t2 would be 128 MiB and t3 32 GiB.
    let bomb = json!({"name": "bomb", "steps": [
        {"id": "t1", "type": "template", "template": fan("input.s", 256)},
        {"id": "t2", "type": "template", "template": fan("steps.t1.output", 256)},
        {"id": "t3", "type": "template", "template": fan("steps.t2.output", 256)},
    ]});
    let r = e
        .run_to_end(&admin, bomb, json!({"s": "x".repeat(2048)}))
        .await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "template_error", "{r}");
    assert_eq!(r["steps"]["t1"]["status"], "completed");
    assert_eq!(r["steps"]["t2"]["status"], "failed");
    e.alive().await;

    // One step of 256 × 8 KiB (2 MiB) was retried forever; now it fails at once.
    let one = json!({"name": "one", "steps": [
        {"id": "big", "type": "template", "template": fan("input.s", 256)},
    ]});
    let r = e
        .run_to_end(&admin, one, json!({"s": "y".repeat(8192)}))
        .await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "template_error", "{r}");

    // Two leaf steps of 640 KiB each fit alone; the run's output (both) does not.
    let leaves = json!({"name": "leaves", "steps": [
        {"id": "a", "type": "template", "template": fan("input.s", 80)},
        {"id": "b", "type": "template", "template": fan("input.s", 80)},
    ]});
    let r = e
        .run_to_end(&admin, leaves, json!({"s": "z".repeat(8192)}))
        .await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "output_too_large", "{r}");
    assert_eq!(r["steps"]["a"]["status"], "completed");

    // A map of 3 items × 640 KiB: each item fits, the aggregate does not.
    let map = json!({"name": "map", "steps": [
        {"id": "m", "type": "map", "items": "{{ input.list }}", "steps": [
            {"id": "t", "type": "template", "template": fan("input.s", 80)},
        ]},
    ]});
    let input = json!({"s": "w".repeat(8192), "list": [1, 2, 3]});
    let r = e.run_to_end(&admin, map, input).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "output_too_large", "{r}");
    e.alive().await;

    // Nothing keeps retrying after the runs ended: every run above is terminal in the list.
    let r = e.api.call("GET", "/runs", Some(&admin), None).await;
    let runs = r.body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "{}", r.body);
    assert!(runs.iter().all(|x| x["status"] == "failed"), "{}", r.body);
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

/// Finding 2: a key minted by a key is held to its parent's budget (and sees it listed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_minted_by_a_key_spends_within_every_ancestors_budget() {
    let e = Edge::start("", Wire::OpenAi).await;
    let admin = e.admin.clone();
    let (parent_id, parent) = e
        .api
        .create_key(&admin, json!({"name": "ci", "roles": ["developer"]}))
        .await;
    e.budget("key", &parent_id, "day", "0.01").await;
    let (status, body) = e.generate(&parent).await;
    assert_eq!(status, 402, "{body}");

    let (_, child) = e
        .api
        .create_key(&parent, json!({"name": "child", "roles": ["developer"]}))
        .await;
    let (_, grandchild) = e
        .api
        .create_key(&child, json!({"name": "grandchild"}))
        .await;
    for cred in [&child, &grandchild] {
        let (status, body) = e.generate(cred).await;
        assert_eq!(status, 402, "{body}");
        assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    }
    assert_eq!(e.stub.hits(), 0, "nothing reached the paid upstream");
    let mine = e
        .api
        .call("GET", "/users/me/budgets", Some(&grandchild), None)
        .await;
    let subjects: Vec<&str> = mine.body["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["subject_id"].as_str())
        .collect();
    assert!(
        subjects.contains(&parent_id.as_str()),
        "the parent's budget is listed for the grandchild: {}",
        mine.body
    );
    // The owner's token is not held to the keys' budgets.
    let (status, body) = e.generate(&admin).await;
    assert_eq!(status, 200, "{body}");
}

/// Finding 4: a priced answer that reports no usage is charged its worst case, marked
/// `usage_estimated`, and budgets hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_without_usage_are_charged_their_worst_case() {
    let e = Edge::start("", Wire::NoUsage).await;
    let admin = e.admin.clone();
    let me = e.user_id(&admin).await;
    e.budget("user", &me, "day", "0.05").await;
    let mut served = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let (status, body) = e.generate(&admin).await;
        match status {
            200 => {
                served.push(revo_events::Usd::parse(body["cost_usd"].as_str().unwrap()).unwrap())
            }
            402 => refused += 1,
            other => panic!("{other}: {body}"),
        }
    }
    assert!(refused > 0, "the budget never held: {served:?}");
    assert!(!served.is_empty());
    assert!(
        served.iter().all(|c| *c > revo_events::Usd::ZERO),
        "{served:?}"
    );
    let total = served
        .iter()
        .fold(revo_events::Usd::ZERO, |a, b| a.checked_add(*b).unwrap());
    assert!(total <= revo_events::Usd::parse("0.05").unwrap(), "{total}");
    // The ledger says which costs are estimates.
    let n = served.len() as u64;
    let m = eventually(10, || async {
        let m = e
            .api
            .call("GET", "/ai/metrics", Some(&admin), None)
            .await
            .body;
        (m["total"]["usage_estimated"].as_u64() == Some(n)).then_some(m)
    })
    .await;
    assert_eq!(m["total"]["cost_usd"], total.to_string(), "{m}");
}

/// Finding 3: revoking a run's key or disabling its owner cancels the run, with the reason,
/// before its next paid call or HTTP request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_stop_when_their_key_is_revoked_or_their_owner_disabled() {
    let e = Edge::start("", Wire::OpenAi).await;
    let admin = e.admin.clone();
    e.api
        .create_user(&admin, "dana", "dana-password-123", &["developer"])
        .await;
    let dana = e.api.login("dana", "dana-password-123").await;
    let dana_id = e.user_id(&dana).await;
    let (key_id, key) = e.api.create_key(&dana, json!({"name": "runner"})).await;
    let wf = e
        .workflow(
            &dana,
            json!({"name": "later", "steps": [
                {"id": "wait", "type": "sleep", "seconds": 2},
                {"id": "ask", "type": "generate", "prompt": "hi", "model": "paid",
                 "max_tokens": 10, "after": ["wait"]},
            ]}),
        )
        .await;
    let by_key = e.execute(&key, &wf, json!({})).await;
    let by_token = e
        .workflow(
            &dana,
            json!({"name": "held", "steps": [{"id": "ok", "type": "approval"}]}),
        )
        .await;
    let held = e.execute(&dana, &by_token, json!({})).await;

    let r = e
        .api
        .call("DELETE", &format!("/keys/{key_id}"), Some(&dana), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = e.ended(&dana, &by_key).await;
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(r["error"]["message"], "key_revoked", "{r}");

    let r = e
        .api
        .call(
            "PATCH",
            &format!("/users/{dana_id}"),
            Some(&admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = e.ended(&admin, &held).await;
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(r["error"]["message"], "owner_disabled", "{r}");

    // Past the sleep: the paid call never went out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(e.stub.hits(), 0);
}

/// Finding 10: a step `x_i0` and item 0 of a map `x` are two generations, both in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_ids_of_a_run_never_collide() {
    let e = Edge::start("", Wire::OpenAi).await;
    let admin = e.admin.clone();
    let wf = e
        .workflow(
            &admin,
            json!({"name": "ids", "steps": [
                {"id": "x_i0", "type": "generate", "prompt": "a", "model": "paid", "max_tokens": 10},
                {"id": "x", "type": "map", "items": "{{ input.list }}", "steps": [
                    {"id": "g", "type": "generate", "prompt": "b", "model": "paid", "max_tokens": 10},
                ]},
            ]}),
        )
        .await;
    let run = e.execute(&admin, &wf, json!({"list": [1]})).await;
    let r = e.ended(&admin, &run).await;
    assert_eq!(r["status"], "completed", "{r}");
    let cost = r["cost_usd"].as_str().unwrap().to_owned();
    let m = eventually(10, || async {
        let m = e
            .api
            .call("GET", "/ai/metrics", Some(&admin), None)
            .await
            .body;
        (m["total"]["requests"].as_u64() == Some(2)).then_some(m)
    })
    .await;
    assert_eq!(m["total"]["cost_usd"], cost.as_str(), "{m}");
}

/// Finding 15: an administrator reads another user's workflow but cannot change or archive
/// it; a budget deleted and set again keeps the period's spend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_do_not_rewrite_others_workflows_and_budgets_remember_their_spend() {
    let e = Edge::start("", Wire::OpenAi).await;
    let admin = e.admin.clone();
    e.api
        .create_user(&admin, "dana", "dana-password-123", &["developer"])
        .await;
    let dana = e.api.login("dana", "dana-password-123").await;
    let def = json!({"name": "mine", "steps": [{"id": "t", "type": "template", "template": "hi"}]});
    let wf = e.workflow(&dana, def.clone()).await;
    let r = e
        .api
        .call("GET", &format!("/workflows/{wf}"), Some(&admin), None)
        .await;
    assert_eq!(r.status, 200);
    let r = e
        .api
        .call("PUT", &format!("/workflows/{wf}"), Some(&admin), Some(def))
        .await;
    assert_eq!((r.status, r.code()), (403, "not_owner"), "{}", r.body);
    let r = e
        .api
        .call("DELETE", &format!("/workflows/{wf}"), Some(&admin), None)
        .await;
    assert_eq!((r.status, r.code()), (403, "not_owner"), "{}", r.body);
    let r = e
        .api
        .call("GET", &format!("/workflows/{wf}"), Some(&dana), None)
        .await;
    assert_eq!(r.body["version"], 1, "{}", r.body);

    // Spend, delete the budget, set it again: what was spent today still counts.
    let dana_id = e.user_id(&dana).await;
    let b = e.budget("user", &dana_id, "day", "1").await;
    let (status, body) = e.generate(&dana).await;
    assert_eq!(status, 200, "{body}");
    let spent = body["cost_usd"].as_str().unwrap().to_owned();
    let budget_id = b["id"].as_str().unwrap().to_owned();
    let r = e
        .api
        .call(
            "DELETE",
            &format!("/budgets/{budget_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let again = e.budget("user", &dana_id, "day", "1").await;
    assert_eq!(again["id"], budget_id.as_str());
    let shown = eventually(10, || async {
        let r = e
            .api
            .call("GET", "/users/me/budgets", Some(&dana), None)
            .await;
        let b = r.body["budgets"][0].clone();
        (b["spent_usd"].as_str() == Some(spent.as_str())).then_some(b)
    })
    .await;
    assert_eq!(shown["limit_usd"], "1");
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

/// Finding 8: the `generation` topic needs `generate`, and a key's session hears only that
/// key's generations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_progress_goes_only_to_who_may_read_it() {
    let e = Edge::start("", Wire::OpenAi).await;
    let admin = e.admin.clone();
    let me = e.user_id(&admin).await;
    let (_, viewer) = e
        .api
        .create_key(&admin, json!({"name": "ro", "roles": ["viewer"]}))
        .await;
    let (_, dev) = e
        .api
        .create_key(&admin, json!({"name": "dev", "roles": ["developer"]}))
        .await;

    let mut v = socket(&e, &me, &viewer).await;
    send(
        &mut v,
        json!({"type": "subscribe", "topics": ["generation"]}),
    )
    .await;
    let f = frame(&mut v, &["subscribed", "error"], 10).await.unwrap();
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{f}"
    );

    let mut k = socket(&e, &me, &dev).await;
    let mut t = socket(&e, &me, &admin).await;
    for s in [&mut k, &mut t] {
        send(s, json!({"type": "subscribe", "topics": ["generation"]})).await;
        assert_eq!(
            frame(s, &["subscribed"], 10).await.unwrap()["type"],
            "subscribed"
        );
    }
    // The token's generation: its sessions hear it, the key's do not.
    let (status, body) = e.generate(&admin).await;
    assert_eq!(status, 200, "{body}");
    let f = frame(&mut t, &["generation.completed"], 10).await.unwrap();
    assert_eq!(f["id"], body["id"]);
    // The key's own: its session hears it (and nothing of the token's came before it).
    let (status, mine) = e.generate(&dev).await;
    assert_eq!(status, 200, "{mine}");
    let f = frame(&mut k, &["generation.started", "generation.completed"], 10)
        .await
        .unwrap();
    assert_eq!(
        f["id"], mine["id"],
        "the key's session got another's generation: {f}"
    );
}

async fn join(s: &mut Socket, room: &str) -> Value {
    send(s, json!({"type": "room.join", "room": room})).await;
    frame(s, &["room.joined", "error"], 10).await.unwrap()
}

/// Finding 9: in a public room a demoted user who leaves comes back with the same role, and a
/// removed user stays out until an owner adds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_in_public_rooms_stick_across_leaving_and_rejoining() {
    let e = Edge::start("", Wire::OpenAi).await;
    let admin = e.admin.clone();
    let vid = e
        .api
        .create_user(&admin, "vic", "vic-password-123", &["developer"])
        .await;
    let rid = e
        .api
        .create_user(&admin, "rex", "rex-password-123", &["developer"])
        .await;
    let vic = e.api.login("vic", "vic-password-123").await;
    let rex = e.api.login("rex", "rex-password-123").await;
    let r = e
        .api
        .call(
            "POST",
            "/rooms",
            Some(&admin),
            Some(json!({"name": "lobby", "visibility": "public"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let room = r.body["id"].as_str().unwrap().to_owned();
    let mut v = socket(&e, &vid, &vic).await;
    assert_eq!(join(&mut v, &room).await["role"], "member");
    let mut x = socket(&e, &rid, &rex).await;
    assert_eq!(join(&mut x, &room).await["role"], "member");

    // Vic is made a viewer, leaves, and joins again: still a viewer, still cannot post.
    let r = e
        .api
        .call(
            "PATCH",
            &format!("/rooms/{room}/members/{vid}"),
            Some(&admin),
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = e
        .api
        .call(
            "DELETE",
            &format!("/rooms/{room}/members/{vid}"),
            Some(&vic),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let mut v = socket(&e, &vid, &vic).await;
    let f = join(&mut v, &room).await;
    assert_eq!(f["role"], "viewer", "{f}");
    send(
        &mut v,
        json!({"type": "message.send", "room": room, "client_id": "c1", "text": "hi"}),
    )
    .await;
    let f = frame(&mut v, &["message.ack", "error"], 10).await.unwrap();
    assert_eq!(f["code"], "forbidden", "{f}");

    // Rex is removed by the owner: he cannot simply join again.
    let r = e
        .api
        .call(
            "DELETE",
            &format!("/rooms/{room}/members/{rid}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let mut x = socket(&e, &rid, &rex).await;
    let f = join(&mut x, &room).await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("removed")),
        "{f}"
    );
    // Until the owner adds him back.
    let r = e
        .api
        .call(
            "POST",
            &format!("/rooms/{room}/members"),
            Some(&admin),
            Some(json!({"user_id": rid, "role": "member"})),
        )
        .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.body);
    assert_eq!(join(&mut x, &room).await["role"], "member");
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

/// Findings 5 and 7: a document stops at its size cap (`too_large`, nothing stored), a room
/// at its number of documents, and a viewer's write is refused before any document loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_capped_in_size_and_number() {
    let e = Edge::start(
        "[rooms]\nmax_doc_bytes = 20000\nmax_docs_per_room = 2",
        Wire::OpenAi,
    )
    .await;
    let admin = e.admin.clone();
    let me = e.user_id(&admin).await;
    let r = e
        .api
        .call(
            "POST",
            "/rooms",
            Some(&admin),
            Some(json!({"name": "docs"})),
        )
        .await;
    let room = r.body["id"].as_str().unwrap().to_owned();
    let mut s = socket(&e, &me, &admin).await;
    join(&mut s, &room).await;
    assert_eq!(
        doc_update(&mut s, &room, "a", 8000).await["type"],
        "doc.ack"
    );
    assert_eq!(
        doc_update(&mut s, &room, "a", 8000).await["type"],
        "doc.ack"
    );
    let f = doc_update(&mut s, &room, "a", 8000).await;
    assert_eq!(f["code"], "too_large", "{f}");
    let state = e
        .api
        .call("GET", &format!("/rooms/{room}/docs/a"), Some(&admin), None)
        .await;
    assert_eq!(state.status, 200, "{}", state.body);
    // The refusal stored nothing: the room's stored history (read from the store) holds the
    // two accepted updates and nothing after them.
    let h = e
        .api
        .call(
            "GET",
            &format!("/rooms/{room}/events?after=0&limit=1000"),
            Some(&admin),
            None,
        )
        .await;
    let updates = h.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["type"] == "doc.update")
        .count();
    assert_eq!(updates, 2, "{}", h.body);
    assert_eq!(h.body["more"], false);
    // A second document fits; a third name does not.
    assert_eq!(doc_update(&mut s, &room, "b", 10).await["type"], "doc.ack");
    let f = doc_update(&mut s, &room, "c", 10).await;
    assert_eq!(f["code"], "too_many_docs", "{f}");
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

/// Finding 6: y-websocket awareness obeys the 4 KiB and 30/s signal limits of JSON signals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn y_websocket_awareness_obeys_the_signal_limits() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let e = Edge::start("", Wire::OpenAi).await;
    let admin = e.admin.clone();
    let me = e.user_id(&admin).await;
    let r = e
        .api
        .call("POST", "/rooms", Some(&admin), Some(json!({"name": "aw"})))
        .await;
    let room = r.body["id"].as_str().unwrap().to_owned();
    let mut reader = socket(&e, &me, &admin).await;
    join(&mut reader, &room).await;
    let url = format!(
        "ws://127.0.0.1:{}/ws/{me}/yjs/{room}/doc?access_token={admin}",
        e.served.port
    );
    let (mut y, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // Over 4 KiB: dropped.
    let big = format!("{{\"user\":\"{}\"}}", "x".repeat(5000));
    y.send(Message::Binary(awareness(7, &big).into()))
        .await
        .unwrap();
    assert!(
        frame(&mut reader, &["doc.awareness"], 1).await.is_none(),
        "a 5 KB awareness state was relayed"
    );
    // A burst of 150 small ones: at most the burst and the rate's worth go through.
    let t0 = Instant::now();
    for i in 0..150u64 {
        let state = format!("{{\"cursor\":{i}}}");
        y.send(Message::Binary(awareness(7, &state).into()))
            .await
            .unwrap();
    }
    let sent_in = t0.elapsed().as_secs_f64();
    let mut relayed = 0;
    while frame(&mut reader, &["doc.awareness"], 1).await.is_some() {
        relayed += 1;
    }
    assert!(relayed > 0);
    let allowed = 60.0 + 30.0 * (sent_in + 0.5);
    assert!(
        (relayed as f64) <= allowed,
        "{relayed} awareness frames relayed in {sent_in:.2}s (at most {allowed})"
    );
}

/// Finding 11: workflows, rooms, connections and run followers per user are bounded, each
/// with its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_quotas_hold() {
    let e = Edge::start(
        "[workflows]\nmax_workflows_per_user = 2\nmax_followers_per_user = 1\n\n[rooms]\nmax_rooms_per_user = 1\nmax_connections_per_user = 2",
        Wire::OpenAi,
    )
    .await;
    let admin = e.admin.clone();
    let me = e.user_id(&admin).await;
    let def = json!({"name": "w", "steps": [{"id": "ok", "type": "approval"}]});
    let wf = e.workflow(&admin, def.clone()).await;
    e.workflow(&admin, def.clone()).await;
    let r = e
        .api
        .call("POST", "/workflows", Some(&admin), Some(def.clone()))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (429, "too_many_workflows"),
        "{}",
        r.body
    );

    let r = e
        .api
        .call("POST", "/rooms", Some(&admin), Some(json!({"name": "one"})))
        .await;
    assert_eq!(r.status, 201);
    let r = e
        .api
        .call("POST", "/rooms", Some(&admin), Some(json!({"name": "two"})))
        .await;
    assert_eq!((r.status, r.code()), (429, "too_many_rooms"), "{}", r.body);

    let _a = socket(&e, &me, &admin).await;
    let _b = socket(&e, &me, &admin).await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{}/ws/{me}", e.served.port)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!(
            "a third connection was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    drop(_a);

    let run = e.execute(&admin, &wf, json!({})).await;
    let follow = || {
        e.api
            .http
            .get(format!("{}/runs/{run}/events", e.api.base))
            .bearer_auth(&admin)
            .send()
    };
    let first = follow().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = follow().await.unwrap();
    assert_eq!(second.status(), 429);
    drop(first);
    // The slot comes back once the first follower is gone.
    let again = eventually(10, || async {
        let r = follow().await.unwrap();
        (r.status() == 200).then_some(r)
    })
    .await;
    drop(again);
}

/// Finding 12: `http` steps take credentials from configured secrets, resolved as the request
/// is sent; a credential written into a definition is refused, and none reaches an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_steps_send_secrets_that_no_event_holds() {
    const SECRET: &str = "sk-live-0123456789abcdef";
    let e = Edge::start_with(
        "[workflows]\nhttp_allow = [\"127.0.0.1:STUB_PORT\"]\nhttp_allow_private = [\"127.0.0.1/32\"]\n\n[workflows.secrets]\nupstream = \"HARDENING_UPSTREAM_TOKEN\"",
        Wire::OpenAi,
        &[("HARDENING_UPSTREAM_TOKEN", SECRET)],
    )
    .await;
    let admin = e.admin.clone();
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", e.stub.port);
    let step = |headers: Value, url: &str| {
        json!({"name": "call", "steps": [{"id": "h", "type": "http", "method": "POST", "url": url,
            "headers": headers, "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}]})
    };
    // Written out: refused, with the path.
    let r = e
        .api
        .call(
            "POST",
            "/workflows",
            Some(&admin),
            Some(step(
                json!({"Authorization": format!("Bearer {SECRET}")}),
                &url,
            )),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (422, "invalid_definition"),
        "{}",
        r.body
    );
    assert_eq!(
        r.body["error"]["problems"][0]["code"], "literal_secret",
        "{}",
        r.body
    );
    assert_eq!(
        r.body["error"]["problems"][0]["path"],
        "$.steps[0].headers.Authorization"
    );
    let r = e
        .api
        .call(
            "POST",
            "/workflows",
            Some(&admin),
            Some(step(json!({}), &format!("{url}?api_key={SECRET}"))),
        )
        .await;
    assert_eq!(
        r.body["error"]["problems"][0]["code"], "literal_secret",
        "{}",
        r.body
    );
    // An unknown secret, or one read outside an http request: refused.
    let r = e
        .api
        .call(
            "POST",
            "/workflows",
            Some(&admin),
            Some(step(
                json!({"Authorization": "Bearer {{ secrets.nope }}"}),
                &url,
            )),
        )
        .await;
    assert_eq!(
        r.body["error"]["problems"][0]["code"], "unknown_secret",
        "{}",
        r.body
    );
    let r = e
        .api
        .call(
            "POST",
            "/workflows",
            Some(&admin),
            Some(json!({"name": "leak", "steps": [
                {"id": "t", "type": "template", "template": "{{ secrets.upstream }}"}]})),
        )
        .await;
    assert_eq!(
        r.body["error"]["problems"][0]["code"], "unknown_variable",
        "{}",
        r.body
    );

    // Named: sent as the request goes out.
    let wf = e
        .workflow(
            &admin,
            step(
                json!({"Authorization": "Bearer {{ secrets.upstream }}"}),
                &url,
            ),
        )
        .await;
    let run = e.execute(&admin, &wf, json!({})).await;
    let r = e.ended(&admin, &run).await;
    assert_eq!(r["status"], "completed", "{r}");
    let got = e.stub.requests.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["_auth"], format!("Bearer {SECRET}"));
    // No event holds it: not the run's, not any other.
    let mut c = e._db.conn().await;
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM events WHERE position(convert_to($1, 'UTF8') in payload) > 0",
    )
    .bind(SECRET)
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(n, 0, "the secret is in {n} stored event(s)");
    assert!(!r.to_string().contains(SECRET));
}

/// Finding 15: retrying a run whose child run failed starts a new child (the failed one could
/// never pass), and the parent completes once the new child does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_a_run_recovers_a_failed_child() {
    let e = Edge::start("", Wire::OpenAi).await;
    let admin = e.admin.clone();
    let child = e
        .workflow(
            &admin,
            json!({"name": "child", "steps": [{"id": "ok", "type": "approval"}]}),
        )
        .await;
    let parent = e
        .workflow(
            &admin,
            json!({"name": "parent", "steps": [
                {"id": "c", "type": "workflow", "workflow_id": child, "input": {}}]}),
        )
        .await;
    let run = e.execute(&admin, &parent, json!({})).await;
    let waiting_child = |e: &Edge, run: String| {
        let admin = admin.clone();
        let api = e.api.clone();
        async move {
            eventually(10, || async {
                let r = api
                    .call("GET", &format!("/runs/{run}"), Some(&admin), None)
                    .await;
                let c = r.body["steps"]["c"]["child_run"].as_str()?.to_owned();
                let s = api
                    .call("GET", &format!("/runs/{c}"), Some(&admin), None)
                    .await;
                (s.body["status"] == "waiting").then_some(c)
            })
            .await
        }
    };
    let first = waiting_child(&e, run.clone()).await;
    let r = e
        .api
        .call("POST", &format!("/runs/{first}/reject"), Some(&admin), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = e.ended(&admin, &run).await;
    assert_eq!(r["status"], "failed", "{r}");
    let r = e
        .api
        .call("POST", &format!("/runs/{run}/retry"), Some(&admin), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let second = waiting_child(&e, run.clone()).await;
    assert_ne!(second, first, "the retry reused the failed child");
    let r = e
        .api
        .call(
            "POST",
            &format!("/runs/{second}/approve"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = e.ended(&admin, &run).await;
    assert_eq!(r["status"], "completed", "{r}");
}

/// Finding 13: browsers and y-websocket clients open sockets with a one-use ticket instead of
/// a long-lived credential in the URL; a socket opened so still ends when its credential
/// does; pages from origins not on `[http] allowed_origins` cannot open one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_open_with_one_use_tickets_from_allowed_origins() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let e = Edge::start(
        "[http]\nallowed_origins = [\"https://app.example.com\"]",
        Wire::OpenAi,
    )
    .await;
    let admin = e.admin.clone();
    let me = e.user_id(&admin).await;
    let (key_id, key) = e.api.create_key(&admin, json!({"name": "browser"})).await;
    let ticket = |cred: String| {
        let api = e.api.clone();
        async move {
            let r = api.call("POST", "/ws/tickets", Some(&cred), None).await;
            assert_eq!(r.status, 201, "{}", r.body);
            assert_eq!(r.body["expires_in"], 30);
            r.body["ticket"].as_str().unwrap().to_owned()
        }
    };
    let url = |t: &str| format!("ws://127.0.0.1:{}/ws/{me}?ticket={t}", e.served.port);
    let refused = |r: Result<(Socket, _), tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(other) => panic!("{other}"),
        Ok(_) => 101,
    };

    // Taken once.
    let t = ticket(key.clone()).await;
    let (mut s, _) = tokio_tungstenite::connect_async(url(&t)).await.unwrap();
    assert_eq!(
        frame(&mut s, &["welcome"], 10).await.unwrap()["type"],
        "welcome"
    );
    assert_eq!(
        refused(tokio_tungstenite::connect_async(url(&t)).await),
        401
    );
    assert_eq!(
        refused(tokio_tungstenite::connect_async(url("rwt_forged.sig")).await),
        401
    );
    // The socket ends when the key it was opened with is revoked.
    let r = e
        .api
        .call("DELETE", &format!("/keys/{key_id}"), Some(&admin), None)
        .await;
    assert_eq!(r.status, 204);
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(m) = s.next().await {
            if let Ok(Message::Close(Some(c))) = m {
                return u16::from(c.code);
            }
        }
        0
    })
    .await
    .unwrap();
    assert_eq!(closed, 4001);

    // y-websocket with a ticket: the server's sync step 1 arrives.
    let t = ticket(admin.clone()).await;
    let r = e
        .api
        .call("POST", "/rooms", Some(&admin), Some(json!({"name": "t"})))
        .await;
    let room = r.body["id"].as_str().unwrap().to_owned();
    let y = format!(
        "ws://127.0.0.1:{}/ws/{me}/yjs/{room}/doc?ticket={t}",
        e.served.port
    );
    let (mut y, _) = tokio_tungstenite::connect_async(y).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), y.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, Message::Binary(_)), "{first:?}");

    // Origins.
    let with_origin = |origin: &str| {
        let mut req = format!("ws://127.0.0.1:{}/ws/{me}", e.served.port)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {admin}").parse().unwrap());
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    assert_eq!(
        refused(tokio_tungstenite::connect_async(with_origin("https://evil.example")).await),
        403
    );
    assert_eq!(
        refused(tokio_tungstenite::connect_async(with_origin("https://app.example.com")).await),
        101
    );
}

/// Finding 5: what one user stores in documents, over every room, is bounded
/// (`[rooms] max_doc_bytes_per_user`); a refused update stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_stores_a_bounded_number_of_document_bytes_over_every_room() {
    let e = Edge::start(
        "[rooms]\nmax_doc_bytes = 100000\nmax_doc_bytes_per_user = 20000",
        Wire::OpenAi,
    )
    .await;
    let admin = e.admin.clone();
    let me = e.user_id(&admin).await;
    let mut s = socket(&e, &me, &admin).await;
    let mut rooms = Vec::new();
    for name in ["one", "two"] {
        let r = e
            .api
            .call("POST", "/rooms", Some(&admin), Some(json!({"name": name})))
            .await;
        let room = r.body["id"].as_str().unwrap().to_owned();
        join(&mut s, &room).await;
        rooms.push(room);
    }
    // 8 KB in each room: the edge's view of what the user stored follows each write.
    for room in &rooms {
        let ack = doc_update(&mut s, room, "d", 8000).await;
        assert_eq!(ack["type"], "doc.ack", "{ack}");
        let offset = ack["offset"].as_i64().unwrap();
        eventually(10, || async {
            let r = e
                .api
                .call("GET", &format!("/rooms/{room}"), Some(&admin), None)
                .await;
            (r.body["offset"].as_i64() >= Some(offset)).then_some(())
        })
        .await;
    }
    // A third 8 KB anywhere passes 20,000 bytes: refused, nothing stored.
    let f = doc_update(&mut s, &rooms[0], "other", 8000).await;
    assert_eq!(f["code"], "too_large", "{f}");
    assert!(f["message"].as_str().unwrap().contains("per user"), "{f}");
    let h = e
        .api
        .call(
            "GET",
            &format!("/rooms/{}/events?after=0", rooms[0]),
            Some(&admin),
            None,
        )
        .await;
    let updates = h.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["type"] == "doc.update")
        .count();
    assert_eq!(updates, 1, "{}", h.body);
    // Small updates still fit.
    assert_eq!(
        doc_update(&mut s, &rooms[1], "d", 100).await["type"],
        "doc.ack"
    );
}

/// Finding 7, the fold: a room's actor starts from the latest snapshot of its fold, on any
/// edge, and what it decides from (members, removed users, the messages one may edit) comes
/// back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_actor_starts_from_its_fold_snapshot_on_another_edge() {
    let e = Edge::start("[rooms]\nstate_snapshot_every = 10", Wire::OpenAi).await;
    let admin = e.admin.clone();
    let me = e.user_id(&admin).await;
    let bob_id = e
        .api
        .create_user(&admin, "bob", "bob-password-123", &["developer"])
        .await;
    let eve_id = e
        .api
        .create_user(&admin, "eve", "eve-password-123", &["developer"])
        .await;
    let r = e
        .api
        .call(
            "POST",
            "/rooms",
            Some(&admin),
            Some(json!({"name": "big", "visibility": "public",
                        "members": [{"user_id": bob_id, "role": "viewer"}, {"user_id": eve_id, "role": "member"}]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let room = r.body["id"].as_str().unwrap().to_owned();
    let r = e
        .api
        .call(
            "DELETE",
            &format!("/rooms/{room}/members/{eve_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let mut s = socket(&e, &me, &admin).await;
    join(&mut s, &room).await;
    let mut first = None;
    for i in 0..25 {
        send(
            &mut s,
            json!({"type": "message.send", "room": room, "client_id": format!("m{i}"), "text": format!("hello {i}")}),
        )
        .await;
        let ack = frame(&mut s, &["message.ack", "error"], 10).await.unwrap();
        assert_eq!(ack["type"], "message.ack", "{ack}");
        first.get_or_insert(ack["message_id"].as_str().unwrap().to_owned());
    }
    let mut c = e._db.conn().await;
    let (snapshots,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM events WHERE stream_type = 'room' AND stream_id = $1 AND event_type = 'room.state_snapshot'",
    )
    .bind(&room)
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert!(snapshots >= 1, "no fold snapshot was written");

    // Another edge: its room actor starts from the snapshot.
    let (edge2, api2) = e.another_edge().await;
    let ws2 = |user: &str, cred: &str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://127.0.0.1:{}/ws/{user}", edge2.port)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {cred}").parse().unwrap());
        req
    };
    let (mut o, _) = tokio_tungstenite::connect_async(ws2(&me, &admin))
        .await
        .unwrap();
    assert_eq!(join(&mut o, &room).await["role"], "owner");
    // The oldest message is still in the edit window.
    send(
        &mut o,
        json!({"type": "message.edit", "room": room, "message_id": first.unwrap(), "text": "edited"}),
    )
    .await;
    let f = frame(&mut o, &["message.ack", "error"], 10).await.unwrap();
    assert_eq!(f["type"], "message.ack", "{f}");
    // A retried send is still recognised.
    send(
        &mut o,
        json!({"type": "message.send", "room": room, "client_id": "m3", "text": "hello 3"}),
    )
    .await;
    let f = frame(&mut o, &["message.ack", "error"], 10).await.unwrap();
    assert_eq!(f["duplicate"], true, "{f}");
    let eve = api2.login("eve", "eve-password-123").await;
    let (mut v, _) = tokio_tungstenite::connect_async(ws2(&eve_id, &eve))
        .await
        .unwrap();
    assert_eq!(join(&mut v, &room).await["code"], "removed");
    let bob = api2.login("bob", "bob-password-123").await;
    let (mut b, _) = tokio_tungstenite::connect_async(ws2(&bob_id, &bob))
        .await
        .unwrap();
    assert_eq!(join(&mut b, &room).await["role"], "viewer");
}
