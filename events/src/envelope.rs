//! The event envelope: identity, stream coordinates, schema and causality around a payload.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Who and what caused an event. Carried by every envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventMeta {
    /// The user or key that caused the event (`user:<id>`, `key:<id>`, `system`), if any.
    pub actor: Option<String>,
    /// The request or workflow this event belongs to.
    pub correlation_id: Option<Uuid>,
    /// The event or command that directly caused this one.
    pub causation_id: Option<Uuid>,
}

/// An event about to be appended: everything but its stream coordinates and position.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema: u32,
    pub occurred_at: DateTime<Utc>,
    pub meta: EventMeta,
    /// MessagePack (named fields) of the typed event.
    pub payload: Vec<u8>,
}

/// A stored event: the envelope of the design brief.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub event_id: Uuid,
    pub stream_type: String,
    pub stream_id: String,
    /// 1-based version of the event within its stream.
    pub version: i64,
    pub event_type: String,
    pub schema: u32,
    pub occurred_at: DateTime<Utc>,
    pub meta: EventMeta,
    pub payload: Vec<u8>,
}

/// An envelope with its global position in the store.
///
/// Positions are unique and identify an event; they are a cursor for `read_all`, not a count
/// (see `docs/events.md` on commit order).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub position: i64,
    pub envelope: Envelope,
}

impl RecordedEvent {
    pub fn event_id(&self) -> Uuid {
        self.envelope.event_id
    }
}
