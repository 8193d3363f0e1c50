//! Findings 5, 6, 7 and 9: documents and their bounds, awareness, sticky roles, the room's fold.

use super::*;

/// The `doc.update` events a room's stored history holds (read from the store).
async fn stored_doc_updates(e: &Edge, room: &str) -> usize {
    let h = e
        .api
        .call(
            "GET",
            &format!("/rooms/{room}/events?after=0&limit=1000"),
            Some(&e.admin),
            None,
        )
        .await;
    assert_eq!(h.body["more"], false, "{}", h.body);
    h.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["type"] == "doc.update")
        .count()
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
    assert_eq!(stored_doc_updates(&e, &room).await, 2);
    // A second document fits; a third name does not.
    assert_eq!(doc_update(&mut s, &room, "b", 10).await["type"], "doc.ack");
    let f = doc_update(&mut s, &room, "c", 10).await;
    assert_eq!(f["code"], "too_many_docs", "{f}");
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
    assert_eq!(stored_doc_updates(&e, &rooms[0]).await, 1);
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
