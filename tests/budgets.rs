//! Budgets: set by admins, enforced by every edge through leases, never overspent however
//! many requests race through however many edges, and never blocking free local models.
//!
//! The stub bills exactly each request's worst case (a 2-byte prompt, 10 output tokens), so a
//! budget of 50 worst cases pays for exactly 50 requests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use std::collections::HashSet;

use common::stub::{Billed, Script, Stub, Wire};
use common::*;
use futures::future::join_all;
use revo_events::Usd;
use serde_json::{json, Value};

/// $1 per million tokens in and out: a request of one 2-byte message (2 tokens, and 8 for its
/// role markers at most) and 10 output tokens costs at most 20 µUSD, and the stub bills
/// exactly that.
const WORST: &str = "0.00002";

fn catalog(gpt: &Stub, local: &Stub) -> String {
    format!(
        r#"
[router]
budget_lease_ttl_ms = 2000

[[models.catalog]]
name = "gpt"
provider = "openai"
base_url = "{}"
api_key_env = "BUDGET_TEST_KEY"
priority = 1
input_usd_per_mtok = "1"
output_usd_per_mtok = "1"

[[models.catalog]]
name = "lcpp"
provider = "openai-compatible"
base_url = "{}"
priority = 2
"#,
        gpt.base_url(),
        local.base_url()
    )
}

async fn stubs() -> (Stub, Stub) {
    let gpt = Stub::start(Wire::OpenAi, vec![Script::Answer]).await;
    gpt.set_usage(Billed {
        input: 10,
        cache_read: 0,
        cache_write: 0,
        output: 10,
    });
    let local = Stub::start(Wire::LlamaCpp, vec![Script::Answer]).await;
    (gpt, local)
}

fn cloud_request() -> Value {
    json!({"prompt": "hi", "max_tokens": 10, "model_preference": "gpt", "fallback_allowed": false})
}

fn usd(s: &str) -> Usd {
    Usd::parse(s).unwrap()
}

/// Fires `n` cloud requests at once, spread over `apis`, with `key`: each status (0 when the
/// edge went away), and a refusal's body.
async fn race(apis: &[Api], key: &str, n: usize) -> Vec<(u16, Value)> {
    join_all((0..n).map(|i| {
        let api = apis[i % apis.len()].clone();
        let key = key.to_owned();
        async move {
            let sent = api
                .http
                .post(format!("{}/ai/generate", api.base))
                .bearer_auth(&key)
                .json(&cloud_request())
                .send()
                .await;
            match sent {
                Ok(res) => {
                    let status = res.status().as_u16();
                    let retry = res.headers().get("x-should-retry").cloned();
                    let mut body: Value = res.json().await.unwrap_or(Value::Null);
                    if let Some(r) = retry {
                        body["x-should-retry"] = json!(r.to_str().unwrap_or_default());
                    }
                    (status, body)
                }
                Err(_) => (0, Value::Null),
            }
        }
    }))
    .await
}

fn count(replies: &[(u16, Value)], status: u16) -> usize {
    replies.iter().filter(|r| r.0 == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_admits_exactly_what_it_covers_and_never_blocks_local_models() {
    let (gpt, local) = stubs().await;
    let dir = TempDir::new();
    let data = dir.path().to_str().unwrap().to_owned();
    let config = dir.path().join("revo.toml");
    std::fs::write(&config, catalog(&gpt, &local)).unwrap();
    let env = [
        ("REVO_DATA_DIR", data.as_str()),
        ("REVO_ADMIN_PASSWORD", ADMIN_PW),
        ("REVO_CONFIG", config.to_str().unwrap()),
        ("BUDGET_TEST_KEY", "sk-test"),
    ];
    let served = Served::start(&env).await;
    let api = Api::new(&served);
    let admin = api.login("admin", ADMIN_PW).await;
    let pw = "a-password-for-the-budget-test";
    let dev_id = api.create_user(&admin, "dev", pw, &["developer"]).await;
    let dev = api.login("dev", pw).await;
    let (key_id, key) = api.create_key(&dev, json!({"name": "prog"})).await;

    // Only admins set budgets; bad input is refused with what is wrong.
    let body = json!({"scope": "key", "id": key_id, "period": "total", "limit_usd": "0.001"});
    let r = api
        .call("POST", "/budgets", Some(&dev), Some(body.clone()))
        .await;
    assert_eq!(r.status, 403);
    for (bad, code) in [
        (
            json!({"scope": "team", "id": key_id, "period": "total", "limit_usd": "1"}),
            422,
        ),
        (
            json!({"scope": "key", "id": key_id, "period": "week", "limit_usd": "1"}),
            422,
        ),
        (
            json!({"scope": "key", "id": key_id, "period": "day", "limit_usd": "-1"}),
            422,
        ),
        (
            json!({"scope": "key", "id": key_id, "period": "day", "limit_usd": 1}),
            422,
        ),
        (
            json!({"scope": "user", "id": key_id, "period": "day", "limit_usd": "1"}),
            404,
        ),
    ] {
        let r = api
            .call("POST", "/budgets", Some(&admin), Some(bad.clone()))
            .await;
        assert_eq!(r.status, code, "{bad}: {}", r.body);
    }
    // 50 worst cases exactly.
    let r = api
        .call("POST", "/budgets", Some(&admin), Some(body.clone()))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["limit_usd"], "0.001");
    let budget_id = r.body["id"].as_str().unwrap().to_owned();
    // Setting it again changes the same budget.
    let r = api.call("POST", "/budgets", Some(&admin), Some(body)).await;
    assert_eq!(
        (r.status, r.body["id"].as_str()),
        (200, Some(budget_id.as_str()))
    );

    // 80 at once: exactly 50 served, the rest refused with 402 and no retry.
    let replies = race(std::slice::from_ref(&api), &key, 80).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.0).collect();
    assert_eq!(count(&replies, 200), 50, "{statuses:?}");
    assert_eq!(count(&replies, 402), 30);
    let (_, refused) = replies.iter().find(|r| r.0 == 402).unwrap();
    assert_eq!(refused["error"]["code"], "budget_exceeded");
    assert_eq!(refused["x-should-retry"], "false");
    assert!(refused["error"]["remaining_usd"].is_string(), "{refused}");
    assert_eq!(gpt.hits(), 50, "refused requests never reach the provider");

    // The budget shows the exact spend; nothing is held once the requests are done.
    let b = eventually(10, || async {
        let r = api.call("GET", "/budgets", Some(&admin), None).await;
        let b = r.body["budgets"][0].clone();
        (b["held_usd"] == "0").then_some(b)
    })
    .await;
    assert_eq!(b["spent_usd"], "0.001", "{b}");
    assert_eq!(b["remaining_usd"], "0");
    let worst_total = usd(WORST);
    assert_eq!(
        Usd::from_picos(worst_total.picos() * 50).to_string(),
        "0.001"
    );

    // The developer sees the budget that limits their key, with a token or the key itself;
    // the admin (who has none) sees none of theirs; GET /budgets stays an admin's.
    for cred in [&dev, &key] {
        let r = api.call("GET", "/users/me/budgets", Some(cred), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let mine = r.body["budgets"].as_array().unwrap();
        assert_eq!(mine.len(), 1, "{}", r.body);
        assert_eq!(mine[0]["id"], budget_id.as_str());
        assert_eq!(mine[0]["spent_usd"], "0.001");
    }
    let r = api
        .call("GET", "/users/me/budgets", Some(&admin), None)
        .await;
    assert_eq!(r.body["budgets"], json!([]), "{}", r.body);
    assert_eq!(
        api.call("GET", "/budgets", Some(&dev), None).await.status,
        403
    );

    // Spent: the cloud is refused, but free local models still serve.
    let r = api
        .call(
            "POST",
            "/ai/generate",
            Some(&key),
            Some(json!({"prompt": "hi", "max_tokens": 10})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["model"], "lcpp");
    // The owner's own token is not limited by the key's budget.
    let r = api
        .call("POST", "/ai/generate", Some(&dev), Some(cloud_request()))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Through the OpenAI SDK's wire: 402 with x-should-retry false, so the SDK does not retry.
    let r = api
        .call(
            "POST",
            "/v1/chat/completions",
            Some(&key),
            Some(json!({"model": "gpt", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    assert_eq!((r.status, r.code()), (402, "budget_exceeded"), "{}", r.body);

    // A user budget applies to every credential of the user.
    let r = api
        .call(
            "POST",
            "/budgets",
            Some(&admin),
            Some(json!({"scope": "user", "id": dev_id, "period": "day", "limit_usd": "0"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = api
        .call("POST", "/ai/generate", Some(&dev), Some(cloud_request()))
        .await;
    assert_eq!(r.status, 402, "{}", r.body);

    // Deleting the key's budget lifts it (the user's still applies to the key).
    let r = api
        .call(
            "DELETE",
            &format!("/budgets/{budget_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = api
        .call(
            "DELETE",
            &format!("/budgets/{budget_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = api
        .call("POST", "/ai/generate", Some(&key), Some(cloud_request()))
        .await;
    assert_eq!(
        r.status, 402,
        "the user's day budget still applies: {}",
        r.body
    );

    // The ledger equals what the stub billed, and the budgets projection verifies.
    assert!(served.stop().await.success());
    let env = [
        ("REVO_DATA_DIR", data.as_str()),
        ("REVO_CONFIG", config.to_str().unwrap()),
    ];
    let (code, out, _) = output(&mut revo_cmd(&["replay", "verify", "budgets"], &env));
    assert_eq!(code, 0, "{out}");
    // The CLI sets, lists and removes the same budgets.
    let (code, out, err) = output(&mut revo_cmd(
        &[
            "budgets",
            "set",
            "--scope",
            "user",
            "--id",
            &dev_id,
            "--period",
            "month",
            "--limit-usd",
            "5",
        ],
        &env,
    ));
    assert_eq!(code, 0, "{err}");
    let month_id = out
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let (code, out, _) = output(&mut revo_cmd(&["budgets", "list"], &env));
    assert_eq!(code, 0);
    assert!(out.contains(&month_id) && out.contains(&dev_id), "{out}");
    let (code, _, err) = output(&mut revo_cmd(
        &[
            "budgets",
            "set",
            "--scope",
            "key",
            "--id",
            &dev_id,
            "--period",
            "day",
            "--limit-usd",
            "1",
        ],
        &env,
    ));
    assert_ne!(code, 0);
    assert!(err.contains("no key with id"), "{err}");
    let (code, _, err) = output(&mut revo_cmd(&["budgets", "delete", &month_id], &env));
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = output(&mut revo_cmd(&["budgets", "list"], &env));
    assert!(!out.contains(&month_id), "{out}");
}

/// Two edges, one budget of 50 worst cases, 200 requests at once: exactly 50 served; then
/// again with one edge killed mid-run: its leases expire, nothing is overspent, and nothing
/// is recorded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_never_overspend_even_when_one_is_killed() {
    let (gpt, local) = stubs().await;
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let dir = TempDir::new();
    let config = dir.path().join("revo.toml");
    std::fs::write(&config, catalog(&gpt, &local)).unwrap();
    let url = nats_url();
    let mut env = cluster_env(&db, &nats, &url);
    env.push(("REVO_ADMIN_PASSWORD", ADMIN_PW));
    env.push(("REVO_CONFIG", config.to_str().unwrap()));
    env.push(("BUDGET_TEST_KEY", "sk-test"));
    let a = Served::start(&env).await;
    let b = Served::start(&env).await;
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    let admin = api_a.login("admin", ADMIN_PW).await;
    let pw = "a-password-for-the-budget-race";
    api_a.create_user(&admin, "dev", pw, &["developer"]).await;
    let dev = api_a.login("dev", pw).await;
    let (key_id, key) = api_a.create_key(&dev, json!({"name": "race"})).await;
    // The key must be known to edge B too before it is used there.
    eventually(10, || async {
        (api_b.me(&key).await.status == 200).then_some(())
    })
    .await;
    let set =
        |limit: &str| json!({"scope": "key", "id": key_id, "period": "total", "limit_usd": limit});
    let r = api_a
        .call("POST", "/budgets", Some(&admin), Some(set("0.001")))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    eventually(10, || async {
        let r = api_b.call("GET", "/budgets", Some(&admin), None).await;
        (r.body["budgets"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;

    let replies = race(&[api_a.clone(), api_b.clone()], &key, 200).await;
    assert_eq!(count(&replies, 200), 50);
    assert_eq!(count(&replies, 402), 150);
    let spent = |api: Api, admin: String| async move {
        let r = api.call("GET", "/ai/metrics", Some(&admin), None).await;
        usd(r.body["total"]["cost_usd"].as_str().unwrap())
    };
    let total = eventually(10, || async {
        let s = spent(api_a.clone(), admin.clone()).await;
        (s == usd("0.001")).then_some(s)
    })
    .await;
    assert_eq!(total, usd("0.001"));

    // Raise the limit by 50 more worst cases, and kill edge B while the race runs.
    let r = api_a
        .call("POST", "/budgets", Some(&admin), Some(set("0.002")))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(10, || async {
        let r = api_b.call("GET", "/budgets", Some(&admin), None).await;
        (r.body["budgets"][0]["limit_usd"] == "0.002").then_some(())
    })
    .await;
    // Slow answers, so B dies with requests in flight on leases it has not spent.
    gpt.set_scripts(vec![Script::Delay(600)]);
    let both = [api_a.clone(), api_b.clone()];
    let racing = race(&both, &key, 200);
    let killer = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        b.signal("-KILL");
    };
    let (replies, ()) = tokio::join!(racing, killer);
    let served = count(&replies, 200);
    assert!(served <= 50, "{served} served on 50 worst cases");
    assert!(
        count(&replies, 0) > 0,
        "B was killed with requests in flight"
    );
    gpt.set_scripts(vec![Script::Answer]);
    // B's leases expire (and A's idle ones are given back): nothing stays held, and the
    // budget counts exactly what was recorded.
    let budget = eventually(30, || async {
        let r = api_a.call("GET", "/budgets", Some(&admin), None).await;
        let b = r.body["budgets"][0].clone();
        (b["held_usd"] == "0").then_some(b)
    })
    .await;
    // What is left can be spent on A.
    if usd(budget["remaining_usd"].as_str().unwrap()) >= usd(WORST) {
        let r = api_a
            .call("POST", "/ai/generate", Some(&key), Some(cloud_request()))
            .await;
        assert_eq!(r.status, 200, "{budget}: {}", r.body);
    }
    // Every recorded request once: attempt event ids and request ids are unique.
    let store = db.store().await;
    let events = read_everything(store.as_ref()).await;
    let attempts: Vec<_> = events
        .iter()
        .filter(|e| e.envelope.event_type == "generation.attempt")
        .collect();
    let streams: HashSet<_> = attempts.iter().map(|e| &e.envelope.stream_id).collect();
    assert_eq!(streams.len(), attempts.len(), "a request recorded twice");
    let recorded: Usd = attempts.iter().fold(Usd::ZERO, |s, e| {
        let ev: revo_events::GenerationEvent =
            revo_events::EventFamily::decode(&e.envelope).unwrap();
        let revo_events::GenerationEvent::Attempt { cost_usd, .. } = ev;
        s.checked_add(cost_usd).unwrap()
    });
    assert!(recorded <= usd("0.002"), "spent {recorded} of 0.002");
    assert!(
        recorded > usd("0.001"),
        "nothing spent after the raise: {recorded}"
    );
    // The ledger equals the sum of the events.
    eventually(10, || async {
        let r = api_a.call("GET", "/ai/metrics", Some(&admin), None).await;
        (r.body["total"]["cost_usd"].as_str().map(usd) == Some(recorded)).then_some(())
    })
    .await;
    drop(b);
    assert!(a.stop().await.success());
    nats.bus().await.delete_stream().await.ok();
}
