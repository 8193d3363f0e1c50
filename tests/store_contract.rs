//! One contract, three stores: every test here runs against Postgres, SQLite and the in-memory
//! store that components are tested with alone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point; tasks are joined by the test

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use revo_events::store::subscribe;
use revo_events::{EventStore, ExpectedVersion, StoreError};

/// Generates `mod postgres`, `mod sqlite` and `mod memory`, each running every listed contract
/// test.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            use revo_events::EventStore as _;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::TestDb::migrated().await;
                    let store = db.store().await;
                    super::$name(store.clone()).await;
                    store.close().await;
                }
            )*
        }
        mod sqlite {
            use revo_events::EventStore as _;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let dir = super::TempDir::new();
                    let store = super::sqlite_store(&dir).await;
                    super::$name(store.clone()).await;
                    store.close().await;
                }
            )*
        }
        mod memory {
            use revo_events::EventStore as _;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let store = revo_events::memory::MemoryStore::new();
                    super::$name(store.clone()).await;
                    store.close().await;
                }
            )*
        }
    };
}

contract!(
    append_then_read_stream,
    stale_expected_version_conflicts_and_writes_nothing,
    no_stream_and_any,
    multi_event_append_is_atomic,
    oversized_payload_is_refused,
    invalid_stream_names_are_refused,
    duplicate_event_id_fails_only_its_append,
    read_all_pages_in_order,
    unknown_position_is_an_error,
    subscribe_catches_up_then_goes_live,
    concurrent_writers_one_wins,
    group_commit_keeps_outcomes_separate,
    read_models_compare_and_set,
    checkpoints_round_trip,
);

async fn append_then_read_stream(store: Arc<impl EventStore>) {
    let a = store
        .append(req(
            "order",
            "o-1",
            ExpectedVersion::NoStream,
            vec![event("order.placed", 1)],
        ))
        .await
        .unwrap();
    assert_eq!(a.stream_version, 1);
    let b = store
        .append(req(
            "order",
            "o-1",
            ExpectedVersion::Exact(1),
            vec![event("order.paid", 2)],
        ))
        .await
        .unwrap();
    assert_eq!(b.stream_version, 2);
    assert_ne!(a.first_position, b.first_position);
    let events = store.read_stream("order", "o-1", 1, 100).await.unwrap();
    let versions: Vec<i64> = events.iter().map(|e| e.envelope.version).collect();
    assert_eq!(versions, vec![1, 2]);
    assert_eq!(events[0].envelope.event_type, "order.placed");
    assert_eq!(events[0].envelope.meta.actor.as_deref(), Some("user:test"));
    assert!(events[0].envelope.meta.correlation_id.is_some());
    assert_eq!(events[1].position, b.first_position);
    // from_version and limit
    let tail = store.read_stream("order", "o-1", 2, 100).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(
        store.read_stream("order", "o-1", 1, 1).await.unwrap().len(),
        1
    );
    assert!(store
        .read_stream("order", "nope", 1, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn stale_expected_version_conflicts_and_writes_nothing(store: Arc<impl EventStore>) {
    store
        .append(req(
            "acct",
            "a",
            ExpectedVersion::Exact(0),
            vec![event("x", 1), event("x", 2)],
        ))
        .await
        .unwrap();
    let err = store
        .append(req(
            "acct",
            "a",
            ExpectedVersion::Exact(1),
            vec![event("x", 3)],
        ))
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict {
            actual, expected, ..
        } => {
            assert_eq!(actual, 2);
            assert_eq!(expected, ExpectedVersion::Exact(1));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    // Ahead of the stream is a conflict too.
    assert!(matches!(
        store
            .append(req(
                "acct",
                "a",
                ExpectedVersion::Exact(5),
                vec![event("x", 3)]
            ))
            .await,
        Err(StoreError::Conflict { actual: 2, .. })
    ));
    assert_eq!(
        store.read_stream("acct", "a", 1, 10).await.unwrap().len(),
        2
    );
    assert_eq!(read_everything(store.as_ref()).await.len(), 2);
}

async fn no_stream_and_any(store: Arc<impl EventStore>) {
    store
        .append(req(
            "s",
            "1",
            ExpectedVersion::NoStream,
            vec![event("x", 1)],
        ))
        .await
        .unwrap();
    assert!(matches!(
        store
            .append(req(
                "s",
                "1",
                ExpectedVersion::NoStream,
                vec![event("x", 2)]
            ))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let a = store
        .append(req("s", "1", ExpectedVersion::Any, vec![event("x", 3)]))
        .await
        .unwrap();
    assert_eq!(a.stream_version, 2);
    let b = store
        .append(req("s", "2", ExpectedVersion::Any, vec![event("x", 4)]))
        .await
        .unwrap();
    assert_eq!(b.stream_version, 1);
}

async fn multi_event_append_is_atomic(store: Arc<impl EventStore>) {
    let events: Vec<_> = (0..50).map(|i| event("bulk", i)).collect();
    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    let a = store
        .append(req("bulk", "b", ExpectedVersion::NoStream, events))
        .await
        .unwrap();
    assert_eq!(a.stream_version, 50);
    let stored = store.read_stream("bulk", "b", 1, 100).await.unwrap();
    assert_eq!(stored.iter().map(|e| e.event_id()).collect::<Vec<_>>(), ids);
    assert_eq!(stored.first().unwrap().position, a.first_position);
    assert_eq!(stored.last().unwrap().position, a.last_position);
    // A batch whose expected version fails writes none of its events.
    let err = store
        .append(req(
            "bulk",
            "b",
            ExpectedVersion::Exact(3),
            (0..5).map(|i| event("bulk", i)).collect(),
        ))
        .await;
    assert!(err.is_err());
    assert_eq!(read_everything(store.as_ref()).await.len(), 50);
}

async fn oversized_payload_is_refused(store: Arc<impl EventStore>) {
    let mut big = event("big", 0);
    big.payload = vec![0xc0; revo::db::DEFAULT_MAX_PAYLOAD + 1];
    let err = store
        .append(req(
            "big",
            "1",
            ExpectedVersion::Any,
            vec![event("ok", 1), big],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PayloadTooLarge { limit, .. } if limit == revo::db::DEFAULT_MAX_PAYLOAD)
    );
    assert!(err.to_string().contains("over the limit"));
    assert!(read_everything(store.as_ref()).await.is_empty());
}

async fn invalid_stream_names_are_refused(store: Arc<impl EventStore>) {
    for (t, i) in [
        ("", "1"),
        ("a.b", "1"),
        ("Order", "1"),
        ("a", "x y"),
        ("a", "*"),
        ("a", ">"),
        ("a", ""),
    ] {
        let err = store
            .append(req(t, i, ExpectedVersion::Any, vec![event("x", 1)]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Invalid(_)),
            "{t:?}/{i:?}: {err:?}"
        );
    }
    let err = store
        .append(req("a", "1", ExpectedVersion::Any, vec![]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)));
    let mut zero = event("x", 1);
    zero.schema = 0;
    assert!(store
        .append(req("a", "1", ExpectedVersion::Any, vec![zero]))
        .await
        .is_err());
    assert!(read_everything(store.as_ref()).await.is_empty());
}

async fn duplicate_event_id_fails_only_its_append(store: Arc<impl EventStore>) {
    let first = event("x", 1);
    let mut dup = event("x", 2);
    dup.event_id = first.event_id;
    store
        .append(req("d", "1", ExpectedVersion::Any, vec![first]))
        .await
        .unwrap();
    // Submitted concurrently so they share a group-commit batch.
    let (a, b) = tokio::join!(
        store.append(req("d", "2", ExpectedVersion::Any, vec![dup])),
        store.append(req("d", "3", ExpectedVersion::Any, vec![event("x", 3)])),
    );
    assert!(matches!(a, Err(StoreError::DuplicateEventId(_))), "{a:?}");
    assert!(b.is_ok(), "{b:?}");
    assert_eq!(read_everything(store.as_ref()).await.len(), 2);
}

async fn read_all_pages_in_order(store: Arc<impl EventStore>) {
    for i in 0..30 {
        store
            .append(req(
                "p",
                &format!("s{}", i % 3),
                ExpectedVersion::Any,
                vec![event("x", i)],
            ))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = 0;
    while seen.len() < 30 {
        let page = store.read_all(after, 7).await.unwrap();
        assert!(page.len() <= 7);
        match page.last() {
            Some(last) => after = last.position,
            // Held back by an older open transaction elsewhere in the cluster.
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
        seen.extend(page);
    }
    assert!(store.read_all(after, 7).await.unwrap().is_empty());
    // Appended one after another, so commit order is append order.
    let ns: Vec<u64> = seen
        .iter()
        .map(|e| {
            let v: serde_json::Value = rmp_serde::from_slice(&e.envelope.payload).unwrap();
            v["n"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(ns, (0..30).collect::<Vec<_>>());
    let ids: HashSet<_> = seen.iter().map(|e| e.position).collect();
    assert_eq!(ids.len(), 30);
    assert_eq!(
        store.head_position().await.unwrap(),
        seen.iter().map(|e| e.position).max().unwrap()
    );
}

async fn unknown_position_is_an_error(store: Arc<impl EventStore>) {
    store
        .append(req("u", "1", ExpectedVersion::Any, vec![event("x", 1)]))
        .await
        .unwrap();
    assert!(matches!(
        store.read_all(999_999, 10).await,
        Err(StoreError::UnknownPosition(999_999))
    ));
}

async fn subscribe_catches_up_then_goes_live(store: Arc<impl EventStore>) {
    for i in 0..5 {
        store
            .append(req("sub", "1", ExpectedVersion::Any, vec![event("x", i)]))
            .await
            .unwrap();
    }
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let mut sub = subscribe(dyn_store, 0, 2, Duration::from_secs(60));
    for v in 1..=5 {
        let ev = sub.next().await.unwrap().unwrap();
        assert_eq!(ev.envelope.version, v);
    }
    let writer = store.clone();
    let live = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer
            .append(req(
                "sub",
                "1",
                ExpectedVersion::Exact(5),
                vec![event("x", 6)],
            ))
            .await
            .unwrap();
    });
    // Woken by the append signal, not the 60 s poll. The margin is wide because on Postgres a
    // parallel test's DROP DATABASE (a checkpoint, holding an xid) delays visibility
    // cluster-wide for seconds.
    let ev = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("live event delivered")
        .unwrap()
        .unwrap();
    assert_eq!(ev.envelope.version, 6);
    live.await.unwrap();
}

async fn concurrent_writers_one_wins(store: Arc<impl EventStore>) {
    store
        .append(req(
            "race",
            "r",
            ExpectedVersion::NoStream,
            vec![event("x", 0)],
        ))
        .await
        .unwrap();
    for round in 1..=3i64 {
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move {
                    s.append(req(
                        "race",
                        "r",
                        ExpectedVersion::Exact(round),
                        vec![event("x", i)],
                    ))
                    .await
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(a) => {
                    wins += 1;
                    assert_eq!(a.stream_version, round + 1);
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    assert_eq!(
        store.read_stream("race", "r", 1, 100).await.unwrap().len(),
        4
    );
}

async fn group_commit_keeps_outcomes_separate(store: Arc<impl EventStore>) {
    // 200 concurrent appends to 200 streams; every third expects the wrong version.
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move {
                let expected = if i % 3 == 0 {
                    ExpectedVersion::Exact(7)
                } else {
                    ExpectedVersion::NoStream
                };
                (
                    i,
                    s.append(req(
                        "gc",
                        &format!("s{i}"),
                        expected,
                        vec![event("x", i), event("y", i)],
                    ))
                    .await,
                )
            })
        })
        .collect();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        if i % 3 == 0 {
            assert!(
                matches!(r, Err(StoreError::Conflict { actual: 0, .. })),
                "{i}: {r:?}"
            );
        } else {
            let a = r.unwrap();
            assert_eq!(a.stream_version, 2);
            let got = store
                .read_stream("gc", &format!("s{i}"), 1, 10)
                .await
                .unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].position, a.first_position);
        }
    }
    assert_eq!(read_everything(store.as_ref()).await.len(), 2 * (200 - 67));
}

async fn read_models_compare_and_set(store: Arc<impl EventStore>) {
    let m = store.load_read_model("things").await.unwrap();
    assert_eq!((m.generation, m.position, m.rows.len()), (1, 0, 0));
    let doc = serde_json::json!({"a": 1});
    assert!(store
        .save_read_model(
            "things",
            1,
            0,
            5,
            vec![
                ("k1".into(), Some(doc.clone())),
                ("k2".into(), Some(doc.clone()))
            ]
        )
        .await
        .unwrap());
    // A stale writer (wrong from-position) writes nothing.
    assert!(!store
        .save_read_model("things", 1, 0, 9, vec![("k3".into(), Some(doc.clone()))])
        .await
        .unwrap());
    assert!(store
        .save_read_model("things", 1, 5, 6, vec![("k1".into(), None)])
        .await
        .unwrap());
    let m = store.load_read_model("things").await.unwrap();
    assert_eq!(m.position, 6);
    assert_eq!(
        m.rows.keys().cloned().collect::<Vec<_>>(),
        vec!["k2".to_string()]
    );
    // Replace swaps in a new generation; old-generation writers are refused.
    let mut rows = revo_events::Rows::new();
    rows.insert("z".into(), serde_json::json!({"z": true}));
    let g = store.replace_read_model("things", &rows, 4).await.unwrap();
    assert_eq!(g, 2);
    assert!(!store
        .save_read_model("things", 1, 6, 7, vec![("k9".into(), Some(doc))])
        .await
        .unwrap());
    let m = store.load_read_model("things").await.unwrap();
    assert_eq!((m.generation, m.position), (2, 4));
    assert_eq!(m.rows, rows);
    let list = store.list_read_models().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].generation, list[0].rows), (2, 1));
}

async fn checkpoints_round_trip(store: Arc<impl EventStore>) {
    assert_eq!(store.load_checkpoint("relay").await.unwrap(), 0);
    store.save_checkpoint("relay", 42).await.unwrap();
    store.save_checkpoint("relay", 43).await.unwrap();
    assert_eq!(store.load_checkpoint("relay").await.unwrap(), 43);
    assert!(store.try_lease("relay").await.unwrap().is_some());
}
