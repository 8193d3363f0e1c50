//! Replay determinism: folding a random history incrementally (with restarts that reload the
//! persisted rows, as the projection runner does) equals rebuilding from zero.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point; tasks are joined by the test

use std::collections::BTreeSet;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use revo_events::family::system::{NODE_STREAM, PROJECTION_STREAM};
use revo_events::projection::{diff_rows, NodesProjection};
use revo_events::{Envelope, EventFamily, EventMeta, Projection, RecordedEvent, Rows, SystemEvent};

#[derive(Debug, Clone)]
enum Step {
    Start(u8),
    Stop(u8),
    Rebuilt,
}

fn history() -> impl Strategy<Value = Vec<(Step, bool)>> {
    let step = prop_oneof![
        (0u8..6).prop_map(Step::Start),
        (0u8..6).prop_map(Step::Stop),
        Just(Step::Rebuilt),
    ];
    // The bool: restart the runner (reload from persisted rows) after this event.
    proptest::collection::vec((step, any::<bool>()), 0..80)
}

fn recorded(steps: &[(Step, bool)]) -> Vec<RecordedEvent> {
    steps
        .iter()
        .enumerate()
        .map(|(i, (s, _))| {
            let t = Utc
                .timestamp_micros(1_700_000_000_000_000 + i as i64 * 1000)
                .single()
                .unwrap();
            let (stream_type, stream_id, ev) = match s {
                Step::Start(n) => (
                    NODE_STREAM,
                    format!("n{n}"),
                    SystemEvent::NodeStarted {
                        node_id: format!("n{n}"),
                        hostname: format!("h{i}"),
                        version: "0.1.0".into(),
                        mode: "cluster".into(),
                        started_at: t,
                    },
                ),
                Step::Stop(n) => (
                    NODE_STREAM,
                    format!("n{n}"),
                    SystemEvent::NodeStopped {
                        node_id: format!("n{n}"),
                        stopped_at: t,
                        reason: "shutdown".into(),
                    },
                ),
                Step::Rebuilt => (
                    PROJECTION_STREAM,
                    "nodes".to_owned(),
                    SystemEvent::ProjectionRebuilt {
                        projection: "nodes".into(),
                        generation: 2,
                        position: i as i64,
                        rows: 0,
                        events: 0,
                    },
                ),
            };
            let new = ev.to_new_event(EventMeta::default()).unwrap();
            RecordedEvent {
                position: i as i64 + 1,
                envelope: Envelope {
                    event_id: new.event_id,
                    stream_type: stream_type.into(),
                    stream_id,
                    version: 1,
                    event_type: new.event_type,
                    schema: new.schema,
                    occurred_at: t,
                    meta: new.meta,
                    payload: new.payload,
                },
            }
        })
        .collect()
}

proptest! {
    #[test]
    fn incremental_fold_equals_rebuild(steps in history()) {
        let events = recorded(&steps);

        // Incremental: persist only dirty rows, restart from persisted rows at random points.
        let mut persisted = Rows::new();
        let mut live = NodesProjection::default();
        let mut dirty = BTreeSet::new();
        for (ev, (_, restart)) in events.iter().zip(&steps) {
            live.apply(ev, &mut dirty).unwrap();
            for k in std::mem::take(&mut dirty) {
                match live.row(&k) {
                    Some(doc) => { persisted.insert(k, doc); }
                    None => { persisted.remove(&k); }
                }
            }
            if *restart {
                live = NodesProjection::default();
                live.load(persisted.clone()).unwrap();
            }
        }

        let mut rebuilt = NodesProjection::default();
        for ev in &events {
            rebuilt.apply(ev, &mut BTreeSet::new()).unwrap();
        }
        prop_assert!(diff_rows(&persisted, &rebuilt.rows()).is_empty());
        prop_assert_eq!(live.rows(), rebuilt.rows());
    }
}

#[test]
fn a_corrupt_event_stops_the_fold_with_its_id_and_position() {
    let mut events = recorded(&[(Step::Start(1), false)]);
    events[0].envelope.payload = vec![0x93, 0x01];
    let mut p = NodesProjection::default();
    let err = p.apply(&events[0], &mut BTreeSet::new()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&events[0].envelope.event_id.to_string()),
        "{msg}"
    );
    assert!(msg.contains("position 1"), "{msg}");
}
