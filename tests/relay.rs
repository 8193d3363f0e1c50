//! The relay against the real Postgres and the real JetStream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point; tasks are joined by the test

mod common;

use revo_events::{Checkpoints, EventLog};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use revo_actors::{Relay, RelayConfig};
use revo_events::{EventStore, ExpectedVersion};
use revo_nats::Bus;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn relay(store: Arc<dyn EventStore>, bus: Arc<dyn Bus>, nats: &TestNats, batch: usize) -> Relay {
    Relay {
        log: store.clone(),
        checkpoints: store.clone(),
        leases: store,
        bus,
        subjects: nats.subjects.clone(),
        config: RelayConfig {
            batch,
            lease_check: Duration::from_millis(200),
            ..Default::default()
        },
        metrics: relay_metrics(),
    }
}

async fn append_many(store: &Arc<impl EventStore>, streams: usize, per_stream: usize) {
    let tasks: Vec<_> = (0..streams)
        .map(|s| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..per_stream {
                    store
                        .append(req(
                            "acct",
                            &format!("a{s}"),
                            ExpectedVersion::Exact(i as i64),
                            vec![event("x", i as u64)],
                        ))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_every_event_once_in_stream_order() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let store = db.store().await;
    let bus = Arc::new(nats.bus().await);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(relay(store.clone(), bus.clone(), &nats, 64).run(cancel.clone()));
    append_many(&store, 8, 60).await;
    let envs = stream_envelopes(&nats, 480).await;
    assert_exactly_once_in_order(&envs, 480);
    cancel.cancel();
    task.await.unwrap();
    assert!(store.load_checkpoint("relay").await.unwrap() > 0);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_commit_is_published_not_skipped() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let store = db.store().await;
    let bus = Arc::new(nats.bus().await);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(relay(store.clone(), bus.clone(), &nats, 64).run(cancel.clone()));
    store
        .append(req("warm", "w", ExpectedVersion::Any, vec![event("x", 0)]))
        .await
        .unwrap();
    stream_envelopes(&nats, 1).await;

    // A writer takes an earlier position and holds its transaction open...
    let mut late = db.conn().await;
    sqlx::query("BEGIN").execute(&mut late).await.unwrap();
    let late_id = Uuid::now_v7();
    let late_pos: i64 = sqlx::query_scalar(
        "INSERT INTO events (event_id, stream_type, stream_id, version, event_type, schema, occurred_at, payload) \
         VALUES ($1, 'late', 'l', 1, 'x', 1, now(), $2) RETURNING position",
    )
    .bind(late_id)
    .bind(rmp_serde::to_vec_named(&serde_json::json!({"n": 1})).unwrap())
    .fetch_one(&mut late)
    .await
    .unwrap();
    // ...while a later position commits first.
    let early = store
        .append(req("early", "e", ExpectedVersion::Any, vec![event("x", 2)]))
        .await
        .unwrap();
    assert!(early.first_position > late_pos);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("COMMIT").execute(&mut late).await.unwrap();

    let envs = stream_envelopes(&nats, 3).await;
    assert_exactly_once_in_order(&envs, 3);
    let ids: Vec<Uuid> = envs.iter().map(|e| e.event_id).collect();
    assert!(ids.contains(&late_id), "late commit skipped");
    // Commit order: the late transaction is older, so it is delivered first.
    assert_eq!(envs[1].event_id, late_id);
    assert_eq!(envs[2].stream_type, "early");
    cancel.cancel();
    task.await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_transaction_with_a_later_position_is_not_skipped() {
    // T_old gets its txid first (by writing elsewhere), T_new takes the earlier position and
    // commits first; T_old then inserts (later position) and commits last.
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let store = db.store().await;
    let bus = Arc::new(nats.bus().await);
    let mut old = db.conn().await;
    let mut new = db.conn().await;
    sqlx::query("BEGIN").execute(&mut old).await.unwrap();
    sqlx::query("INSERT INTO checkpoints (name, position) VALUES ('scratch', 0)")
        .execute(&mut old)
        .await
        .unwrap();
    let insert = "INSERT INTO events (event_id, stream_type, stream_id, version, event_type, schema, occurred_at, payload) \
                  VALUES ($1, $2, 's', 1, 'x', 1, now(), '\\x80'::bytea) RETURNING position";
    let new_pos: i64 = sqlx::query_scalar(insert)
        .bind(Uuid::now_v7())
        .bind("newer")
        .fetch_one(&mut new)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(relay(store.clone(), bus.clone(), &nats, 64).run(cancel.clone()));
    let old_pos: i64 = sqlx::query_scalar(insert)
        .bind(Uuid::now_v7())
        .bind("older")
        .fetch_one(&mut old)
        .await
        .unwrap();
    assert!(old_pos > new_pos);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("COMMIT").execute(&mut old).await.unwrap();
    let envs = stream_envelopes(&nats, 2).await;
    assert_exactly_once_in_order(&envs, 2);
    let types: Vec<_> = envs.iter().map(|e| e.stream_type.as_str()).collect();
    assert_eq!(types, vec!["older", "newer"]);
    cancel.cancel();
    task.await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_mid_batch_resumes_exactly_once() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let store = db.store().await;
    append_many(&store, 10, 300).await;
    let bus = Arc::new(nats.bus().await);
    // Kill the relay (abort: no drain, no checkpoint write) once some batches are out.
    let first =
        tokio::spawn(relay(store.clone(), bus.clone(), &nats, 200).run(CancellationToken::new()));
    let partial = stream_envelopes(&nats, 400).await.len();
    first.abort();
    let _ = first.await;
    assert!(partial < 3000, "relay finished before it could be killed");
    let cancel = CancellationToken::new();
    let second = tokio::spawn(relay(store.clone(), bus.clone(), &nats, 200).run(cancel.clone()));
    let envs = stream_envelopes(&nats, 3000).await;
    assert_exactly_once_in_order(&envs, 3000);
    cancel.cancel();
    second.await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_relay_leads_and_a_standby_takes_over() {
    let db = TestDb::migrated().await;
    let nats = TestNats::new();
    let store_a = db.store().await;
    let store_b = db.store().await;
    let bus = Arc::new(nats.bus().await);
    let a = relay(store_a.clone(), bus.clone(), &nats, 64);
    let b = relay(store_b.clone(), bus.clone(), &nats, 64);
    let (lead_a, lead_b) = (a.metrics.leader.clone(), b.metrics.leader.clone());
    let cancel_a = CancellationToken::new();
    let cancel_b = CancellationToken::new();
    let ta = tokio::spawn(a.run(cancel_a.clone()));
    eventually(10, || async { (lead_a.get() == 1).then_some(()) }).await;
    let tb = tokio::spawn(b.run(cancel_b.clone()));
    append_many(&store_a, 2, 20).await;
    stream_envelopes(&nats, 40).await;
    assert_eq!(lead_b.get(), 0, "two leaders");
    // The leader goes away; the standby takes the lease and publishes what follows.
    cancel_a.cancel();
    ta.await.unwrap();
    eventually(10, || async { (lead_b.get() == 1).then_some(()) }).await;
    for s in 0..2 {
        store_b
            .append(req(
                "acct",
                &format!("a{s}"),
                ExpectedVersion::Exact(20),
                vec![event("x", 99)],
            ))
            .await
            .unwrap();
    }
    let envs = stream_envelopes(&nats, 42).await;
    assert_exactly_once_in_order(&envs, 42);
    cancel_b.cancel();
    tb.await.unwrap();
    store_a.close().await;
    store_b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_relay_feeds_the_memory_bus() {
    let dir = TempDir::new();
    let store = sqlite_store(&dir).await;
    let bus = Arc::new(revo_nats::MemoryBus::new(Duration::from_secs(60)));
    let nats = TestNats::new();
    let mut sub = bus
        .subscribe_events(&nats.subjects.all_events())
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(relay(store.clone(), bus.clone(), &nats, 16).run(cancel.clone()));
    append_many(&store, 3, 10).await;
    let mut envs = Vec::new();
    while envs.len() < 30 {
        use futures::StreamExt;
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        envs.push(revo_events::codec::decode_wire(&m.payload).unwrap());
    }
    assert_exactly_once_in_order(&envs, 30);
    cancel.cancel();
    task.await.unwrap();
    store.close().await;
}
