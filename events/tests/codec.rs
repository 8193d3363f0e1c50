//! Codec round-trips (proptest), upcasting, and decoding of committed fixtures of every schema
//! version that exists.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point; tasks are joined by the test

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use revo_events::codec::{decode_wire, encode_wire, payload_to_json};
use revo_events::family::{decode_raw, map, EventFamily};
use revo_events::{DecodeError, Envelope, EventMeta, IdentityEvent, ModelEvent, SystemEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

fn micros_time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_102_444_800_000_000).prop_map(|us| Utc.timestamp_micros(us).single().unwrap())
}

fn system_event() -> impl Strategy<Value = SystemEvent> {
    prop_oneof![
        (
            "\\PC{0,40}",
            "\\PC{0,20}",
            "[0-9.]{1,8}",
            "embedded|cluster",
            micros_time()
        )
            .prop_map(|(node_id, hostname, version, mode, started_at)| {
                SystemEvent::NodeStarted {
                    node_id,
                    hostname,
                    version,
                    mode,
                    started_at,
                }
            }),
        ("\\PC{0,40}", micros_time(), "\\PC{0,30}").prop_map(|(node_id, stopped_at, reason)| {
            SystemEvent::NodeStopped {
                node_id,
                stopped_at,
                reason,
            }
        }),
        (
            "[a-z]{1,12}",
            any::<i64>(),
            any::<i64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(projection, generation, position, rows, events)| {
                SystemEvent::ProjectionRebuilt {
                    projection,
                    generation,
                    position,
                    rows,
                    events,
                }
            }),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        system_event(),
        "[a-z_-]{1,20}",
        "[A-Za-z0-9:=_-]{1,40}",
        1i64..i64::MAX,
        micros_time(),
        proptest::option::of("\\PC{0,30}"),
        proptest::option::of(any::<u128>()),
        proptest::option::of(any::<u128>()),
        any::<u128>(),
    )
        .prop_map(
            |(ev, stream_type, stream_id, version, occurred_at, actor, corr, cause, id)| {
                let new = ev.to_new_event(EventMeta::default()).unwrap();
                Envelope {
                    event_id: Uuid::from_u128(id),
                    stream_type,
                    stream_id,
                    version,
                    event_type: new.event_type,
                    schema: new.schema,
                    occurred_at,
                    meta: EventMeta {
                        actor,
                        correlation_id: corr.map(Uuid::from_u128),
                        causation_id: cause.map(Uuid::from_u128),
                    },
                    payload: new.payload,
                }
            },
        )
}

proptest! {
    #[test]
    fn typed_events_round_trip(ev in system_event()) {
        let new = ev.to_new_event(EventMeta::default()).unwrap();
        prop_assert_eq!(new.event_id.get_version_num(), 7);
        let back: SystemEvent = decode_raw(&new.event_type, new.schema, &new.payload).unwrap();
        prop_assert_eq!(back, ev);
    }

    #[test]
    fn wire_envelopes_round_trip(env in envelope()) {
        let bytes = encode_wire(&env).unwrap();
        let back = decode_wire(&bytes).unwrap();
        prop_assert_eq!(&back, &env);
        // The payload is embedded as a map, readable without a second decode step.
        let json = payload_to_json(&bytes).unwrap();
        prop_assert_eq!(json["payload"]["type"].as_str(), Some(env.event_type.as_str()));
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_wire(&bytes);
        let _ = decode_raw::<SystemEvent>("node.started", 1, &bytes);
        let _ = payload_to_json(&bytes);
    }
}

/// Decodes every line of a fixture file with the current code and checks each event type of
/// the family has a fixture for every schema version up to the current one.
fn check_fixtures<F: EventFamily + Serialize>(text: &str, types: &[&str]) {
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: serde_json::Value = serde_json::from_str(line).unwrap();
        let event_type = f["event_type"].as_str().unwrap();
        let schema = f["schema"].as_u64().unwrap() as u32;
        let bytes = hex(f["payload_hex"].as_str().unwrap());
        let ev: F = decode_raw(event_type, schema, &bytes)
            .unwrap_or_else(|e| panic!("{event_type} v{schema}: {e}"));
        assert_eq!(
            serde_json::to_value(&ev).unwrap(),
            f["decoded"],
            "{event_type} v{schema}"
        );
        seen.insert((event_type.to_owned(), schema));
    }
    for t in types {
        let current = F::current_schema(t).unwrap();
        for v in 1..=current {
            assert!(
                seen.contains(&(t.to_string(), v)),
                "no fixture for {t} v{v}"
            );
        }
    }
}

/// Fixtures of every schema version of the `system` family, committed as they were first
/// written (see fixtures/README.md). A change that cannot decode them breaks stored history.
#[test]
fn committed_system_fixtures_decode() {
    check_fixtures::<SystemEvent>(
        include_str!("fixtures/system.jsonl"),
        &["node.started", "node.stopped", "projection.rebuilt"],
    );
}

/// The `identity` family's fixtures were packed by Python's msgpack, as an outside subscriber
/// would write them: ids are strings, not raw bytes.
#[test]
fn committed_identity_fixtures_decode() {
    check_fixtures::<IdentityEvent>(
        include_str!("fixtures/identity.jsonl"),
        &[
            "user.created",
            "user.roles_changed",
            "user.disabled_changed",
            "user.password_changed",
            "login.succeeded",
            "login.failed",
            "token.revoked",
            "key.issued",
            "key.revoked",
            "user.sessions_ended",
        ],
    );
}

#[test]
fn committed_model_fixtures_decode() {
    check_fixtures::<ModelEvent>(
        include_str!("fixtures/models.jsonl"),
        &["model.imported", "model.removed", "generation.completed"],
    );
}

#[test]
fn identity_payloads_carry_ids_as_strings() {
    let id = Uuid::now_v7();
    let ev = IdentityEvent::KeyRevoked {
        key_id: id,
        user_id: id,
    };
    let json = payload_to_json(&revo_events::codec::encode_payload(&ev).unwrap()).unwrap();
    assert_eq!(json["key_id"], id.to_string());
}

#[test]
fn committed_wire_fixture_decodes() {
    let f: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/wire-envelope.json")).unwrap();
    let env = decode_wire(&hex(f["hex"].as_str().unwrap())).unwrap();
    assert_eq!(env.event_id.to_string(), f["event_id"].as_str().unwrap());
    assert_eq!(env.event_type, "node.started");
    let ev = SystemEvent::decode(&env).unwrap();
    assert!(matches!(ev, SystemEvent::NodeStarted { .. }));
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A family with history, to exercise upcasting: v1 called the field `host`, v2 renamed it
/// to `hostname` and added `zone`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
enum Demo {
    #[serde(rename = "demo.placed")]
    Placed { hostname: String, zone: String },
}

impl EventFamily for Demo {
    fn event_type(&self) -> &'static str {
        "demo.placed"
    }
    fn current_schema(event_type: &str) -> Option<u32> {
        (event_type == "demo.placed").then_some(2)
    }
    fn upcast_one(event_type: &str, from: u32, mut v: rmpv::Value) -> Result<rmpv::Value, String> {
        match (event_type, from) {
            ("demo.placed", 1) => {
                map::rename(&mut v, "host", "hostname");
                map::insert_default(&mut v, "zone", rmpv::Value::from("default"));
                Ok(v)
            }
            _ => Err(format!("no upcaster for {event_type} v{from}")),
        }
    }
}

#[test]
fn old_schemas_are_upcast_explicitly() {
    #[derive(Serialize)]
    struct V1<'a> {
        #[serde(rename = "type")]
        t: &'a str,
        host: &'a str,
    }
    let v1 = rmp_serde::to_vec_named(&V1 {
        t: "demo.placed",
        host: "a",
    })
    .unwrap();
    let ev: Demo = decode_raw("demo.placed", 1, &v1).unwrap();
    assert_eq!(
        ev,
        Demo::Placed {
            hostname: "a".into(),
            zone: "default".into()
        }
    );
    // Current schema decodes directly.
    let v2 = rmp_serde::to_vec_named(&ev).unwrap();
    assert_eq!(decode_raw::<Demo>("demo.placed", 2, &v2).unwrap(), ev);
}

#[test]
fn decode_errors_are_precise() {
    let v2 = rmp_serde::to_vec_named(&Demo::Placed {
        hostname: "a".into(),
        zone: "z".into(),
    })
    .unwrap();
    assert!(matches!(
        decode_raw::<Demo>("demo.placed", 3, &v2),
        Err(DecodeError::UnknownSchema {
            schema: 3,
            known: 2,
            ..
        })
    ));
    assert!(matches!(
        decode_raw::<Demo>("demo.gone", 1, &v2),
        Err(DecodeError::UnknownType { .. })
    ));
    assert!(matches!(
        decode_raw::<Demo>("demo.placed", 2, &[0xc1]),
        Err(DecodeError::Corrupt { .. })
    ));
    assert!(matches!(
        decode_raw::<Demo>("demo.placed", 0, &v2),
        Err(DecodeError::UnknownSchema { .. })
    ));
}
