//! Typed event families: one `#[serde(tag = "type")]` enum per domain, each event type with its
//! current schema version and explicit upcasters from every older version.
//!
//! Decoding never guesses: an event type the family does not know, a schema newer than this
//! build, or bytes that do not fit the schema are each a distinct [`DecodeError`].

pub mod audit;
pub mod budget;
pub mod generation;
pub mod identity;
pub mod models;
pub mod presence;
pub mod room;
pub mod system;
pub mod workflow;

use chrono::Utc;
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

use crate::codec::{self, CodecError, DecodeError};
use crate::envelope::{Envelope, EventMeta, NewEvent};

/// A family of events (one domain). Implemented by each domain's tagged enum.
pub trait EventFamily: Serialize + DeserializeOwned + Sized {
    /// The `type` tag of this value, e.g. `node.started`.
    fn event_type(&self) -> &'static str;

    /// The current schema version of `event_type`, or `None` if this family has no such type.
    fn current_schema(event_type: &str) -> Option<u32>;

    /// Rewrites a payload of `event_type` at schema `from` into schema `from + 1`.
    ///
    /// Families with old versions override this; the default knows no old versions.
    fn upcast_one(
        event_type: &str,
        from: u32,
        payload: rmpv::Value,
    ) -> Result<rmpv::Value, String> {
        let _ = payload;
        Err(format!("no upcaster for `{event_type}` from schema {from}"))
    }

    /// Wraps this event for appending, with a fresh UUID v7 and the current time.
    fn to_new_event(&self, meta: EventMeta) -> Result<NewEvent, CodecError> {
        let event_type = self.event_type();
        let schema = Self::current_schema(event_type)
            .ok_or_else(|| CodecError::Encode(format!("`{event_type}` has no schema")))?;
        Ok(NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.to_owned(),
            schema,
            occurred_at: Utc::now(),
            meta,
            payload: codec::encode_payload(self)?,
        })
    }

    /// Decodes a stored event, upcasting old schema versions step by step.
    fn decode(env: &Envelope) -> Result<Self, DecodeError> {
        decode_raw(&env.event_type, env.schema, &env.payload)
    }
}

/// Decodes a payload of a family, given its type and schema.
pub fn decode_raw<F: EventFamily>(
    event_type: &str,
    schema: u32,
    payload: &[u8],
) -> Result<F, DecodeError> {
    let corrupt = |reason: String| DecodeError::Corrupt {
        event_type: event_type.to_owned(),
        schema,
        reason,
    };
    let current = F::current_schema(event_type).ok_or_else(|| DecodeError::UnknownType {
        event_type: event_type.to_owned(),
    })?;
    if schema == current {
        return codec::decode_payload(payload).map_err(corrupt);
    }
    if schema > current || schema == 0 {
        return Err(DecodeError::UnknownSchema {
            event_type: event_type.to_owned(),
            schema,
            known: current,
        });
    }
    let mut rd = payload;
    let mut value = rmpv::decode::read_value(&mut rd).map_err(|e| corrupt(e.to_string()))?;
    for from in schema..current {
        value = F::upcast_one(event_type, from, value).map_err(corrupt)?;
    }
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &value).map_err(|e| corrupt(e.to_string()))?;
    codec::decode_payload(&bytes).map_err(corrupt)
}

/// Helpers for upcasters working on MessagePack maps.
pub mod map {
    use rmpv::Value;

    /// Renames a key of a map in place; missing keys are left alone.
    pub fn rename(value: &mut Value, from: &str, to: &str) {
        if let Value::Map(entries) = value {
            for (k, _) in entries.iter_mut() {
                if k.as_str() == Some(from) {
                    *k = Value::from(to);
                }
            }
        }
    }

    /// Inserts `key` with `default` if the map lacks it.
    pub fn insert_default(value: &mut Value, key: &str, default: Value) {
        if let Value::Map(entries) = value {
            if !entries.iter().any(|(k, _)| k.as_str() == Some(key)) {
                entries.push((Value::from(key), default));
            }
        }
    }
}
