//! Identity across two `revo serve` edges sharing Postgres and NATS: tokens, revocation, users
//! and keys seen everywhere and across restarts; one rate limit for both edges; replay verify.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// How long another edge may take to see a change (it follows the store; milliseconds in
/// practice). A bound for the test, not a performance claim.
const PROPAGATION: u64 = 10;

async fn status_becomes(api: &Api, cred: &str, want: u16) {
    eventually(PROPAGATION, || async {
        (api.me(cred).await.status == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_revocations_users_and_keys_hold_on_every_edge_and_across_restarts() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let url = nats_url();
    let mut env = cluster_env(&db, &nats, &url);
    env.push(("REVO_ADMIN_PASSWORD", ADMIN_PW));
    let a = Served::start(&env).await;
    let b = Served::start(&env).await;
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));

    // One admin, whichever edge came first; a token from A works on B.
    let admin = api_a.login("admin", ADMIN_PW).await;
    assert_eq!(api_b.me(&admin).await.status, 200);
    let users = api_b.call("GET", "/users", Some(&admin), None).await;
    assert_eq!(
        users.body["users"].as_array().unwrap().len(),
        1,
        "{}",
        users.body
    );

    // A user created on A logs in on B; the same name cannot be created twice, on any edge.
    api_a
        .create_user(&admin, "carol", "carol-password", &["developer"])
        .await;
    eventually(PROPAGATION, || async {
        let r = api_b
            .call(
                "POST",
                "/auth/login",
                None,
                Some(json!({"username": "carol", "password": "carol-password"})),
            )
            .await;
        (r.status == 200).then_some(())
    })
    .await;
    let dup = api_b
        .call(
            "POST",
            "/users",
            Some(&admin),
            Some(json!({"username": "carol", "password": "other-password", "roles": ["viewer"]})),
        )
        .await;
    assert_eq!((dup.status, dup.code()), (409, "username_taken"));

    // Logout on A revokes on B.
    let carol = api_b.login("carol", "carol-password").await;
    assert_eq!(api_a.me(&carol).await.status, 200);
    assert_eq!(
        api_a
            .call("POST", "/auth/logout", Some(&carol), None)
            .await
            .status,
        204
    );
    status_becomes(&api_b, &carol, 401).await;
    assert_eq!(api_b.me(&carol).await.code(), "token_revoked");

    // A key issued on B, revoked on A.
    let carol2 = api_a.login("carol", "carol-password").await;
    let (key_id, key) = api_b.create_key(&carol2, json!({"name": "ci"})).await;
    status_becomes(&api_a, &key, 200).await;
    assert_eq!(
        api_a
            .call("DELETE", &format!("/keys/{key_id}"), Some(&carol2), None)
            .await
            .status,
        204
    );
    status_becomes(&api_b, &key, 401).await;
    assert_eq!(api_b.me(&key).await.code(), "key_revoked");

    // Restarts keep all of it (the directory is rebuilt from stored events).
    assert!(b.stop().await.success());
    let b = Served::start(&env).await;
    let api_b = Api::new(&b);
    assert_eq!(api_b.me(&carol).await.code(), "token_revoked");
    assert_eq!(api_b.me(&key).await.code(), "key_revoked");
    assert_eq!(api_b.me(&carol2).await.status, 200);
    assert_eq!(api_b.me(&admin).await.status, 200);

    assert!(a.stop().await.success());
    assert!(b.stop().await.success());
    let (code, out, err) = output(&mut revo_cmd(&["replay", "verify", "users"], &env));
    assert_eq!(code, 0, "replay verify users: {out}{err}");
    assert!(out.contains("users"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rate_limit_holds_across_two_edges() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let url = nats_url();
    let mut env = cluster_env(&db, &nats, &url);
    env.push(("REVO_ADMIN_PASSWORD", ADMIN_PW));
    env.push(("REVO_RATE_LIMIT_DEVELOPER", "20"));
    let a = Served::start(&env).await;
    let b = Served::start(&env).await;
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    let admin = api_a.login("admin", ADMIN_PW).await;
    api_a
        .create_user(&admin, "dan", "dan-password", &["developer"])
        .await;
    let dan = api_a.login("dan", "dan-password").await;
    status_becomes(&api_b, &dan, 200).await;
    // Stay inside one rate-limit minute: across a boundary the sliding window lets the
    // previous minute's count fade, which admits more (as it should) and blurs what this test
    // checks. The loop below takes about 8 s.
    let into_minute = chrono::Utc::now().timestamp() % 60;
    if into_minute > 45 {
        tokio::time::sleep(Duration::from_secs((61 - into_minute) as u64)).await;
    }
    let mut admitted = [0u32; 2];
    let mut refused = [0u32; 2];
    for i in 0..60 {
        let (api, side) = if i % 2 == 0 { (&api_a, 0) } else { (&api_b, 1) };
        let r = api.me(&dan).await;
        match r.status {
            200 => admitted[side] += 1,
            429 => {
                assert_eq!(r.code(), "rate_limited");
                assert!(r.header("retry-after").is_some());
                refused[side] += 1;
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
        // Slower than the 100 ms gossip, so each edge sees the other's count.
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let total = admitted[0] + admitted[1] + 1; // + the status check on B
                                               // Without sharing, each edge would admit 20 (40 in all).
    assert!(
        (19..=21).contains(&total),
        "admitted {admitted:?} (+1) under a shared limit of 20"
    );
    assert!(
        refused[0] > 0 && refused[1] > 0,
        "both edges refuse: {refused:?}"
    );
}
