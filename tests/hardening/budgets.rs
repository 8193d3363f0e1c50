//! Findings 2 and 4: the budgets of ancestor keys, answers without usage.

use super::*;

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
