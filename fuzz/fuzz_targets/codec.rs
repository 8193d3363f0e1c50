//! The MessagePack event codec on arbitrary bytes, as a subscriber or the store would meet
//! them: the wire envelope, every family's payload at every schema, and the JSON rendering.
#![no_main]

use libfuzzer_sys::fuzz_target;
use revo_events::codec::{decode_wire, payload_to_json};
use revo_events::family::{decode_raw, EventFamily};
use revo_events::{IdentityEvent, ModelEvent, SystemEvent};

const TYPES: &[&str] = &[
    "node.started",
    "node.stopped",
    "projection.rebuilt",
    "user.created",
    "user.password_changed",
    "key.issued",
    "key.revoked",
    "user.sessions_ended",
    "model.imported",
    "generation.completed",
];

fn family<F: EventFamily>(event_type: &str, schema: u32, bytes: &[u8]) {
    let _ = decode_raw::<F>(event_type, schema, bytes);
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_wire(data);
    let _ = payload_to_json(data);
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let event_type = TYPES[usize::from(selector) % TYPES.len()];
    let schema = u32::from(selector >> 6);
    family::<SystemEvent>(event_type, schema, payload);
    family::<IdentityEvent>(event_type, schema, payload);
    family::<ModelEvent>(event_type, schema, payload);
});
