//! Postgres-only behaviour: several processes (stores) writing the same streams at once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point; tasks are joined by the test

mod common;

use common::*;
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
