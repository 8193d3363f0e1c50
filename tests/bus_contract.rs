//! One contract, two buses: JetStream (with a stream of its own per test) and in-process.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point; tasks are joined by the test

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use revo_nats::{Bus, MemoryBus, OutgoingEvent, Subjects};

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod jetstream {
            use revo_nats::Bus as _;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let nats = super::TestNats::new();
                    let bus = nats.bus().await;
                    bus.ensure().await.unwrap();
                    // Idempotent: a second start changes nothing.
                    bus.ensure().await.unwrap();
                    super::$name(&bus, &nats.subjects).await;
                    bus.close().await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let bus = revo_nats::MemoryBus::new(std::time::Duration::from_secs(60));
                    let subjects = revo_nats::Subjects::new("mem").unwrap();
                    super::$name(&bus, &subjects).await;
                }
            )*
        }
    };
}

contract!(
    events_arrive_in_order_once,
    filters_select_streams,
    signals_fan_out
);

fn ev(subjects: &Subjects, stream_type: &str, id: &str, msg_id: &str, body: &str) -> OutgoingEvent {
    OutgoingEvent {
        subject: subjects.event(stream_type, id).unwrap(),
        msg_id: msg_id.into(),
        payload: Bytes::from(body.to_owned()),
    }
}

async fn next(sub: &mut revo_nats::MessageStream) -> revo_nats::BusMessage {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("message within 5 s")
        .expect("stream open")
        .expect("no error")
}

async fn events_arrive_in_order_once(bus: &dyn Bus, subjects: &Subjects) {
    let mut sub = bus.subscribe_events(&subjects.all_events()).await.unwrap();
    let batch: Vec<_> = (0..20)
        .map(|i| ev(subjects, "order", "o1", &format!("id-{i}"), &i.to_string()))
        .collect();
    let out = bus.publish_events(batch).await;
    assert_eq!(out.acked, 20);
    assert!(out.error.is_none());
    // A republish of ids 10..25: the first ten are duplicates and are not delivered again.
    let again: Vec<_> = (10..25)
        .map(|i| ev(subjects, "order", "o1", &format!("id-{i}"), &i.to_string()))
        .collect();
    assert_eq!(bus.publish_events(again).await.acked, 15);
    for i in 0..25 {
        let m = next(&mut sub).await;
        assert_eq!(m.payload, Bytes::from(i.to_string()));
        assert_eq!(m.msg_id.as_deref(), Some(format!("id-{i}").as_str()));
        assert_eq!(m.subject, subjects.event("order", "o1").unwrap());
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "no duplicates"
    );
}

async fn filters_select_streams(bus: &dyn Bus, subjects: &Subjects) {
    let mut rooms = bus
        .subscribe_events(&subjects.events_of_type("room").unwrap())
        .await
        .unwrap();
    let mut one = bus
        .subscribe_events(&subjects.event("order", "o2").unwrap())
        .await
        .unwrap();
    let out = bus
        .publish_events(vec![
            ev(subjects, "order", "o1", "a", "a"),
            ev(subjects, "room", "r1", "b", "b"),
            ev(subjects, "order", "o2", "c", "c"),
            ev(subjects, "room", "r2", "d", "d"),
        ])
        .await;
    assert_eq!(out.acked, 4);
    assert_eq!(next(&mut rooms).await.payload, Bytes::from("b"));
    assert_eq!(next(&mut rooms).await.payload, Bytes::from("d"));
    assert_eq!(next(&mut one).await.payload, Bytes::from("c"));
}

async fn signals_fan_out(bus: &dyn Bus, subjects: &Subjects) {
    let mut sub = bus
        .subscribe_signals(&subjects.all_signals())
        .await
        .unwrap();
    let subject = subjects.signal("typing", "room1").unwrap();
    bus.publish_signal(&subject, Bytes::from("hi"))
        .await
        .unwrap();
    let m = next(&mut sub).await;
    assert_eq!(m.subject, subject);
    assert_eq!(m.payload, Bytes::from("hi"));
    assert_eq!(m.msg_id, None);
}

#[tokio::test]
async fn memory_bus_reports_a_lagging_subscriber() {
    let bus = MemoryBus::new(Duration::from_secs(60));
    let subjects = Subjects::new("lag").unwrap();
    let mut sub = bus.subscribe_events(&subjects.all_events()).await.unwrap();
    let batch: Vec<_> = (0..20_000)
        .map(|i| ev(&subjects, "x", "1", &i.to_string(), ""))
        .collect();
    bus.publish_events(batch).await;
    let first = sub.next().await.unwrap();
    assert!(matches!(first, Err(revo_nats::BusError::Lagged(n)) if n > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_stream_has_the_documented_shape() {
    let nats = TestNats::new();
    let bus = nats.bus().await;
    bus.ensure().await.unwrap();
    let js = async_nats::jetstream::new(bus.client().clone());
    let mut stream = js.get_stream(nats.stream()).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.subjects, vec![nats.subjects.all_events()]);
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert_eq!(info.config.duplicate_window, nats.dedup);
}
