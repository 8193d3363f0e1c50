//! Findings 1, 3, 10, 12 and 15: workflow outputs, runs that lose their owner or key, generation ids, secrets, who may change a workflow, retried children.

use super::*;

/// The first problem of a definition `POST /workflows` refuses (`422 invalid_definition`).
async fn refused_problem(e: &Edge, def: Value) -> Value {
    let r = e
        .api
        .call("POST", "/workflows", Some(&e.admin), Some(def))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (422, "invalid_definition"),
        "{}",
        r.body
    );
    r.body["error"]["problems"][0].clone()
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

    // Nothing keeps retrying after the runs ended: the list (the edge's live view, which
    // follows the log) shows all four failed.
    eventually(10, || async {
        let r = e.api.call("GET", "/runs", Some(&admin), None).await;
        let runs = r.body["runs"].as_array()?.clone();
        (runs.len() == 4 && runs.iter().all(|x| x["status"] == "failed")).then_some(())
    })
    .await;
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
    let literal = json!({"Authorization": format!("Bearer {SECRET}")});
    let p = refused_problem(&e, step(literal, &url)).await;
    assert_eq!(p["code"], "literal_secret", "{p}");
    assert_eq!(p["path"], "$.steps[0].headers.Authorization");
    let in_query = step(json!({}), &format!("{url}?api_key={SECRET}"));
    assert_eq!(
        refused_problem(&e, in_query).await["code"],
        "literal_secret"
    );
    // An unknown secret, or one read outside an http request: refused.
    let unknown = step(json!({"Authorization": "Bearer {{ secrets.nope }}"}), &url);
    assert_eq!(refused_problem(&e, unknown).await["code"], "unknown_secret");
    let leak = json!({"name": "leak", "steps": [
        {"id": "t", "type": "template", "template": "{{ secrets.upstream }}"}]});
    assert_eq!(refused_problem(&e, leak).await["code"], "unknown_variable");

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
