//! MessagePack codec: payloads with named fields, and the wire form of a whole envelope as it is
//! published on NATS (a map whose `payload` is the event's own map, not opaque bytes, so that any
//! MessagePack library decodes it in one call).

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

use crate::envelope::{Envelope, EventMeta};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode event: {0}")]
    Encode(String),
    #[error("cannot decode envelope: {0}")]
    Envelope(String),
}

/// Why a stored event could not be turned into a typed event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type `{event_type}`")]
    UnknownType { event_type: String },
    #[error("event type `{event_type}` has schema {schema}, this build knows up to {known}")]
    UnknownSchema {
        event_type: String,
        schema: u32,
        known: u32,
    },
    #[error("corrupt payload for `{event_type}` schema {schema}: {reason}")]
    Corrupt {
        event_type: String,
        schema: u32,
        reason: String,
    },
}

/// Encodes a typed payload as MessagePack with named fields.
///
/// Human-readable forms are used where types offer both (UUIDs as strings, not 16 raw bytes), so
/// that every subscriber, in any language, reads ids as it reads them in JSON.
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::new();
    let mut ser = rmp_serde::Serializer::new(&mut buf)
        .with_struct_map()
        .with_human_readable();
    value
        .serialize(&mut ser)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(buf)
}

/// Decodes a MessagePack payload into `T`.
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes).with_human_readable();
    T::deserialize(&mut de).map_err(|e| e.to_string())
}

/// Renders any MessagePack payload as JSON, for operators (`revo events tail`).
pub fn payload_to_json(bytes: &[u8]) -> Result<serde_json::Value, String> {
    use serde::Deserialize;
    let mut rd = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut rd);
    let value = serde_json::Value::deserialize(&mut de).map_err(|e| e.to_string())?;
    if !rd.is_empty() {
        return Err(format!("{} trailing bytes after payload", rd.len()));
    }
    Ok(value)
}

fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn w_str(out: &mut Vec<u8>, s: &str) -> Result<(), CodecError> {
    rmp::encode::write_str(out, s).map_err(|e| CodecError::Encode(e.to_string()))
}

fn w_opt_str(out: &mut Vec<u8>, s: Option<&str>) -> Result<(), CodecError> {
    match s {
        Some(s) => w_str(out, s),
        None => rmp::encode::write_nil(out).map_err(|e| CodecError::Encode(e.to_string())),
    }
}

/// Encodes the envelope as published on NATS. The payload bytes are embedded as they are: they
/// are already one complete MessagePack value.
pub fn encode_wire(env: &Envelope) -> Result<Vec<u8>, CodecError> {
    let enc = |e: rmp::encode::ValueWriteError| CodecError::Encode(e.to_string());
    let mut out = Vec::with_capacity(env.payload.len() + 320);
    rmp::encode::write_map_len(&mut out, 11).map_err(|e| CodecError::Encode(e.to_string()))?;
    w_str(&mut out, "event_id")?;
    w_str(&mut out, &env.event_id.to_string())?;
    w_str(&mut out, "stream_type")?;
    w_str(&mut out, &env.stream_type)?;
    w_str(&mut out, "stream_id")?;
    w_str(&mut out, &env.stream_id)?;
    w_str(&mut out, "version")?;
    rmp::encode::write_sint(&mut out, env.version).map_err(enc)?;
    w_str(&mut out, "event_type")?;
    w_str(&mut out, &env.event_type)?;
    w_str(&mut out, "schema")?;
    rmp::encode::write_uint(&mut out, u64::from(env.schema)).map_err(enc)?;
    w_str(&mut out, "occurred_at")?;
    w_str(&mut out, &timestamp(&env.occurred_at))?;
    w_str(&mut out, "actor")?;
    w_opt_str(&mut out, env.meta.actor.as_deref())?;
    w_str(&mut out, "correlation_id")?;
    w_opt_str(
        &mut out,
        env.meta.correlation_id.map(|u| u.to_string()).as_deref(),
    )?;
    w_str(&mut out, "causation_id")?;
    w_opt_str(
        &mut out,
        env.meta.causation_id.map(|u| u.to_string()).as_deref(),
    )?;
    w_str(&mut out, "payload")?;
    out.write_all(&env.payload)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope {
    // Ids travel as strings (portable to every language); MessagePack serde would want bytes.
    event_id: String,
    stream_type: String,
    stream_id: String,
    version: i64,
    event_type: String,
    schema: u32,
    occurred_at: DateTime<Utc>,
    actor: Option<String>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    payload: rmpv::Value,
}

fn parse_id(s: &str, what: &str) -> Result<Uuid, CodecError> {
    Uuid::parse_str(s).map_err(|e| CodecError::Envelope(format!("{what} `{s}`: {e}")))
}

/// Decodes an envelope from its NATS wire form.
pub fn decode_wire(bytes: &[u8]) -> Result<Envelope, CodecError> {
    let w: WireEnvelope =
        rmp_serde::from_slice(bytes).map_err(|e| CodecError::Envelope(e.to_string()))?;
    let mut payload = Vec::new();
    rmpv::encode::write_value(&mut payload, &w.payload)
        .map_err(|e| CodecError::Envelope(e.to_string()))?;
    Ok(Envelope {
        event_id: parse_id(&w.event_id, "event_id")?,
        stream_type: w.stream_type,
        stream_id: w.stream_id,
        version: w.version,
        event_type: w.event_type,
        schema: w.schema,
        occurred_at: w.occurred_at,
        meta: EventMeta {
            actor: w.actor,
            correlation_id: w
                .correlation_id
                .as_deref()
                .map(|s| parse_id(s, "correlation_id"))
                .transpose()?,
            causation_id: w
                .causation_id
                .as_deref()
                .map(|s| parse_id(s, "causation_id"))
                .transpose()?,
        },
        payload,
    })
}

/// The envelope as a JSON object, payload rendered from MessagePack. Used by `revo events tail`.
pub fn envelope_to_json(position: i64, env: &Envelope) -> Result<serde_json::Value, DecodeError> {
    let payload = payload_to_json(&env.payload).map_err(|reason| DecodeError::Corrupt {
        event_type: env.event_type.clone(),
        schema: env.schema,
        reason,
    })?;
    Ok(serde_json::json!({
        "position": position,
        "event_id": env.event_id,
        "stream_type": env.stream_type,
        "stream_id": env.stream_id,
        "version": env.version,
        "event_type": env.event_type,
        "schema": env.schema,
        "occurred_at": timestamp(&env.occurred_at),
        "actor": env.meta.actor,
        "correlation_id": env.meta.correlation_id,
        "causation_id": env.meta.causation_id,
        "payload": payload,
    }))
}
