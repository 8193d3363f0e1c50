//! Findings 8, 11 and 13: who hears generations, per-user quotas, WebSocket tickets and origins.

use super::*;

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

/// Finding 11: workflows, rooms, connections and run followers per user are bounded, each
/// with its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_quotas_hold() {
    let e = Edge::start(
        "[workflows]\nmax_workflows_per_user = 2\nmax_followers_per_user = 1\n\n[rooms]\nmax_rooms_per_user = 1\nmax_connections_per_user = 2\nmax_pending_upgrades = 2",
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
    // Sockets waiting for their `auth` frame are bounded per edge (an anonymous flood).
    let anonymous = || format!("ws://127.0.0.1:{}/ws/{me}", e.served.port);
    let _w1 = tokio_tungstenite::connect_async(anonymous()).await.unwrap();
    let _w2 = tokio_tungstenite::connect_async(anonymous()).await.unwrap();
    match tokio_tungstenite::connect_async(anonymous()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!(
            "a third pending upgrade was not refused: {:?}",
            other.map(|_| ())
        ),
    }

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
    // Another user's path: refused, whatever the ticket.
    let other = e
        .api
        .create_user(&admin, "other", "other-password-1", &["developer"])
        .await;
    let t = ticket(admin.clone()).await;
    let theirs = format!("ws://127.0.0.1:{}/ws/{other}?ticket={t}", e.served.port);
    assert_eq!(refused(tokio_tungstenite::connect_async(theirs).await), 403);
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
