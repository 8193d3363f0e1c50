//! Several processes (here: several store instances) writing the same streams at once.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_on_shared_streams_neither_deadlock_nor_lose_appends() {
    let db = TestDb::migrated().await;
    let (a, b) = (db.store().await, db.store().await);
    // Both stores append to the same five streams, in opposite orders, with no expected
    // version: every append must land, none may fail on the other's locks.
    let mut tasks = Vec::new();
    for (k, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        for i in 0..100u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let s = if k == 0 { i % 5 } else { 4 - i % 5 };
                store
                    .append(req(
                        "shared",
                        &format!("s{s}"),
                        ExpectedVersion::Any,
                        vec![event("x", i)],
                    ))
                    .await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for s in 0..5 {
        let events = a
            .read_stream("shared", &format!("s{s}"), 1, 1000)
            .await
            .unwrap();
        let versions: Vec<i64> = events.iter().map(|e| e.envelope.version).collect();
        assert_eq!(versions, (1..=40).collect::<Vec<_>>(), "stream s{s}");
    }
    a.close().await;
    b.close().await;
}

async fn stale_view(a: std::sync::Arc<impl EventStore>, b: std::sync::Arc<impl EventStore>) {
    a.append(req(
        "s",
        "1",
        ExpectedVersion::NoStream,
        vec![event("x", 1)],
    ))
    .await
    .unwrap();
    // b moves the stream on; a last saw version 1.
    b.append(req(
        "s",
        "1",
        ExpectedVersion::Exact(1),
        vec![event("x", 2)],
    ))
    .await
    .unwrap();
    // a, expecting what b wrote, succeeds...
    let ok = a
        .append(req(
            "s",
            "1",
            ExpectedVersion::Exact(2),
            vec![event("x", 3)],
        ))
        .await
        .unwrap();
    assert_eq!(ok.stream_version, 3);
    // ...and, expecting its own stale version, conflicts with the true head.
    b.append(req(
        "s",
        "1",
        ExpectedVersion::Exact(3),
        vec![event("x", 4)],
    ))
    .await
    .unwrap();
    let err = a
        .append(req(
            "s",
            "1",
            ExpectedVersion::Exact(3),
            vec![event("x", 5)],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err, revo_events::StoreError::Conflict { actual: 4, .. }),
        "{err:?}"
    );
    let any = a
        .append(req("s", "1", ExpectedVersion::Any, vec![event("x", 6)]))
        .await
        .unwrap();
    assert_eq!(any.stream_version, 5);
    let versions: Vec<i64> = read_everything(a.as_ref())
        .await
        .iter()
        .map(|e| e.envelope.version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writer_sees_through_its_stale_view_of_another_writers_stream() {
    let db = TestDb::migrated().await;
    let (a, b) = (db.store().await, db.store().await);
    stale_view(a.clone(), b.clone()).await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writer_sees_through_its_stale_view_of_another_writers_stream() {
    // `revo serve` and a `revo replay rebuild` beside it both write the embedded store.
    let dir = TempDir::new();
    let (a, b) = (sqlite_store(&dir).await, sqlite_store(&dir).await);
    stale_view(a.clone(), b.clone()).await;
    a.close().await;
    b.close().await;
}

/// Appends in flight when a store closes either commit (and are then readable by a new store)
/// or fail with a clear error: none is acknowledged and lost.
async fn close_keeps_every_acknowledged_append(
    store: std::sync::Arc<impl EventStore>,
) -> Vec<uuid::Uuid> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let done = std::sync::Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..300u64)
        .map(|i| {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let ev = event("x", i);
                let id = ev.event_id;
                let r = store
                    .append(req(
                        "drain",
                        &format!("s{}", i % 30),
                        ExpectedVersion::Any,
                        vec![ev],
                    ))
                    .await;
                done.fetch_add(1, Ordering::SeqCst);
                (id, r)
            })
        })
        .collect();
    // Close once appends are flowing, while most are still queued or in flight.
    while done.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    store.close().await;
    let mut acked = Vec::new();
    for t in tasks {
        let (id, r) = t.await.unwrap();
        match r {
            Ok(_) => acked.push(id),
            Err(revo_events::StoreError::ShuttingDown) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(!acked.is_empty());
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_close_drains_in_flight_appends() {
    let db = TestDb::migrated().await;
    let acked = close_keeps_every_acknowledged_append(db.store().await).await;
    let reopened = db.store().await;
    let stored: std::collections::HashSet<_> = read_everything(reopened.as_ref())
        .await
        .iter()
        .map(|e| e.event_id())
        .collect();
    assert!(
        acked.iter().all(|id| stored.contains(id)),
        "an acknowledged append was lost"
    );
    reopened.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_close_drains_in_flight_appends() {
    let dir = TempDir::new();
    let acked = close_keeps_every_acknowledged_append(sqlite_store(&dir).await).await;
    let reopened = sqlite_store(&dir).await;
    let stored: std::collections::HashSet<_> = read_everything(reopened.as_ref())
        .await
        .iter()
        .map(|e| e.event_id())
        .collect();
    assert!(
        acked.iter().all(|id| stored.contains(id)),
        "an acknowledged append was lost"
    );
    reopened.close().await;
}
