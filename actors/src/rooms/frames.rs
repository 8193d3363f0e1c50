//! The WebSocket protocol's frames (`docs/websocket.md`): JSON objects with a `type`.
//! Client frames are parsed here, strictly; server frames are rendered here, once per event,
//! and shared by every subscriber.

use base64::Engine;
use revo_events::family::room::RoomEvent;
use revo_events::{EventFamily, RecordedEvent};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

/// Longest message text, in bytes.
pub const MAX_TEXT: usize = 16 * 1024;
/// Longest client id (idempotency key) and document name.
pub const MAX_NAME: usize = 128;
/// Largest ephemeral payload (cursor position, selection, notification data), as JSON.
pub const MAX_SIGNAL: usize = 4 * 1024;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ClientFrame {
    #[serde(rename = "auth")]
    Auth { token: String },
    #[serde(rename = "ping")]
    Ping {},
    #[serde(rename = "pong")]
    Pong {},
    #[serde(rename = "room.join")]
    Join {
        room: Uuid,
        /// The last offset the client has seen: everything after it is delivered first.
        #[serde(default)]
        after: Option<i64>,
    },
    #[serde(rename = "room.leave")]
    Leave { room: Uuid },
    #[serde(rename = "message.send")]
    Send {
        room: Uuid,
        client_id: String,
        text: String,
    },
    #[serde(rename = "message.edit")]
    Edit {
        room: Uuid,
        message_id: Uuid,
        text: String,
    },
    #[serde(rename = "message.delete")]
    Delete { room: Uuid, message_id: Uuid },
    #[serde(rename = "presence.set")]
    PresenceSet { status: String },
    #[serde(rename = "typing.start")]
    TypingStart { room: Uuid },
    #[serde(rename = "typing.stop")]
    TypingStop { room: Uuid },
    #[serde(rename = "cursor.move")]
    Cursor {
        room: Uuid,
        #[serde(default)]
        doc: Option<String>,
        position: Value,
    },
    #[serde(rename = "selection.set")]
    Selection {
        room: Uuid,
        #[serde(default)]
        doc: Option<String>,
        ranges: Value,
    },
    #[serde(rename = "doc.open")]
    DocOpen {
        room: Uuid,
        doc: String,
        /// The client's Yjs state vector (v1, base64); the server answers with what it lacks.
        #[serde(default)]
        state_vector: Option<String>,
    },
    #[serde(rename = "doc.update")]
    DocUpdate {
        room: Uuid,
        doc: String,
        /// A Yjs update (v1, base64).
        update: String,
    },
    #[serde(rename = "doc.awareness")]
    DocAwareness {
        room: Uuid,
        doc: String,
        update: String,
    },
    #[serde(rename = "notify")]
    Notify {
        #[serde(default)]
        room: Option<Uuid>,
        #[serde(default)]
        user_id: Option<Uuid>,
        /// `alert`, `announcement` or `custom`.
        kind: String,
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        body: Option<String>,
        #[serde(default)]
        data: Option<Value>,
    },
    #[serde(rename = "subscribe")]
    Subscribe { topics: Vec<String> },
    #[serde(rename = "unsubscribe")]
    Unsubscribe { topics: Vec<String> },
    /// Decides the step of one's run waiting for approval, or cancels the run.
    #[serde(rename = "workflow.approve")]
    WorkflowApprove {
        run_id: Uuid,
        #[serde(default)]
        comment: Option<String>,
    },
    #[serde(rename = "workflow.reject")]
    WorkflowReject {
        run_id: Uuid,
        #[serde(default)]
        comment: Option<String>,
    },
    #[serde(rename = "workflow.cancel")]
    WorkflowCancel { run_id: Uuid },
}

impl ClientFrame {
    /// The frame's `type` (a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Ping {} => "ping",
            ClientFrame::Pong {} => "pong",
            ClientFrame::Join { .. } => "room.join",
            ClientFrame::Leave { .. } => "room.leave",
            ClientFrame::Send { .. } => "message.send",
            ClientFrame::Edit { .. } => "message.edit",
            ClientFrame::Delete { .. } => "message.delete",
            ClientFrame::PresenceSet { .. } => "presence.set",
            ClientFrame::TypingStart { .. } => "typing.start",
            ClientFrame::TypingStop { .. } => "typing.stop",
            ClientFrame::Cursor { .. } => "cursor.move",
            ClientFrame::Selection { .. } => "selection.set",
            ClientFrame::DocOpen { .. } => "doc.open",
            ClientFrame::DocUpdate { .. } => "doc.update",
            ClientFrame::DocAwareness { .. } => "doc.awareness",
            ClientFrame::Notify { .. } => "notify",
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::Unsubscribe { .. } => "unsubscribe",
            ClientFrame::WorkflowApprove { .. } => "workflow.approve",
            ClientFrame::WorkflowReject { .. } => "workflow.reject",
            ClientFrame::WorkflowCancel { .. } => "workflow.cancel",
        }
    }
}

/// A frame the client sent that cannot be taken, with the `error` frame's code.
#[derive(Debug, Clone, PartialEq)]
pub struct BadFrame {
    pub code: &'static str,
    pub message: String,
}

/// Parses one text frame: its optional `id` (echoed in the reply or error) and the frame.
pub fn parse(text: &str) -> (Option<Value>, Result<ClientFrame, BadFrame>) {
    let mut value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return (
                None,
                Err(BadFrame {
                    code: "invalid_json",
                    message: format!("not a JSON object: {e}"),
                }),
            )
        }
    };
    let Some(obj) = value.as_object_mut() else {
        return (
            None,
            Err(BadFrame {
                code: "invalid_frame",
                message: "a frame is a JSON object with a `type`".into(),
            }),
        );
    };
    let id = obj.remove("id").filter(|v| v.is_string() || v.is_number());
    let kind = obj.get("type").and_then(Value::as_str).map(str::to_owned);
    let frame = match kind {
        None => Err(BadFrame {
            code: "invalid_frame",
            message: "a frame needs a string `type`".into(),
        }),
        Some(kind) => serde_json::from_value::<ClientFrame>(value).map_err(|e| {
            let msg = e.to_string();
            if msg.starts_with("unknown variant") {
                BadFrame {
                    code: "unknown_type",
                    message: format!("unknown frame type `{}`", kind.escape_debug()),
                }
            } else {
                BadFrame {
                    code: "invalid_frame",
                    message: format!("`{}`: {msg}", kind.escape_debug()),
                }
            }
        }),
    };
    (id, frame)
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Result<Vec<u8>, BadFrame> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| BadFrame {
            code: "invalid_frame",
            message: format!("not base64: {e}"),
        })
}

/// An `error` frame.
pub fn error(code: &str, message: &str, id: Option<&Value>) -> String {
    let mut v = json!({"type": "error", "code": code, "message": message});
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    v.to_string()
}

/// Adds the client's frame `id` to a reply.
pub fn with_id(mut v: Value, id: Option<&Value>) -> String {
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    v.to_string()
}

/// The frame clients receive for a persisted room event, or `None` for events they do not
/// see (document snapshots). Every such frame carries the event's `offset`.
pub fn render(room: Uuid, ev: &RecordedEvent) -> Option<String> {
    let env = &ev.envelope;
    let decoded = RoomEvent::decode(env).ok()?;
    let offset = env.version;
    let at = env.occurred_at;
    let v = match decoded {
        RoomEvent::Created { name, .. } => {
            json!({"type": "room.created", "room": room, "offset": offset, "name": name, "at": at})
        }
        RoomEvent::Archived { by } => {
            json!({"type": "room.archived", "room": room, "offset": offset, "by": by, "at": at})
        }
        RoomEvent::MemberAdded { user_id, role, by } => json!({
            "type": "member.joined", "room": room, "offset": offset, "user_id": user_id,
            "role": role, "by": by, "at": at
        }),
        RoomEvent::MemberRoleChanged { user_id, role, by } => json!({
            "type": "member.updated", "room": room, "offset": offset, "user_id": user_id,
            "role": role, "by": by, "at": at
        }),
        RoomEvent::MemberRemoved { user_id, by } => json!({
            "type": "member.left", "room": room, "offset": offset, "user_id": user_id,
            "by": by, "at": at
        }),
        RoomEvent::MessagePosted {
            message_id,
            user_id,
            client_id,
            text,
        } => json!({
            "type": "message.new", "room": room, "offset": offset, "message_id": message_id,
            "user_id": user_id, "client_id": client_id, "text": text, "at": at
        }),
        RoomEvent::MessageEdited {
            message_id,
            user_id,
            text,
        } => json!({
            "type": "message.edited", "room": room, "offset": offset,
            "message_id": message_id, "user_id": user_id, "text": text, "at": at
        }),
        RoomEvent::MessageDeleted {
            message_id,
            user_id,
        } => json!({
            "type": "message.deleted", "room": room, "offset": offset,
            "message_id": message_id, "user_id": user_id, "at": at
        }),
        RoomEvent::DocUpdated {
            doc,
            user_id,
            update,
        } => json!({
            "type": "doc.update", "room": room, "offset": offset, "doc": doc,
            "user_id": user_id, "update": b64(&update), "at": at
        }),
        RoomEvent::DocSnapshot { .. } | RoomEvent::StateSnapshot { .. } => return None,
    };
    Some(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_strictly_and_keep_their_id() {
        let (id, f) = parse(r#"{"type":"ping","id":7}"#);
        assert_eq!(id, Some(json!(7)));
        assert!(matches!(f, Ok(ClientFrame::Ping {})));
        let (_, f) = parse(r#"{"type":"nope"}"#);
        assert_eq!(f.unwrap_err().code, "unknown_type");
        let (_, f) = parse(r#"{"type":"room.join","room":"x"}"#);
        assert_eq!(f.unwrap_err().code, "invalid_frame");
        let (_, f) = parse(r#"{"type":"ping","extra":1}"#);
        assert_eq!(f.unwrap_err().code, "invalid_frame");
        let (_, f) = parse("[1]");
        assert_eq!(f.unwrap_err().code, "invalid_frame");
        let (_, f) = parse("{");
        assert_eq!(f.unwrap_err().code, "invalid_json");
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_fails_cleanly(s in ".{0,300}") {
            let _ = parse(&s);
        }

        #[test]
        fn any_object_with_a_known_type_parses_or_fails_cleanly(
            kind in proptest::sample::select(vec![
                "room.join", "message.send", "doc.update", "cursor.move", "notify", "auth",
            ]),
            room in proptest::option::of("[a-f0-9-]{0,40}"),
            after in proptest::option::of(proptest::num::i64::ANY),
            text in proptest::option::of(".{0,40}"),
        ) {
            let v = json!({"type": kind, "room": room, "after": after, "text": text,
                "client_id": text, "update": text, "doc": text});
            let _ = parse(&v.to_string());
        }
    }
}
