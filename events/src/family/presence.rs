//! The `presence` family: a user's WebSocket sessions and chosen status. Stream
//! `presence/<user id>`.
//!
//! A user's presence is derived, never stored as such: `offline` while they have no open
//! session, otherwise the status they last chose (`online` until they choose). Sessions open
//! and close with the socket; a closed socket is recorded a few seconds late (so a quick
//! reconnect does not flap), and the sessions of an edge found dead are closed by another
//! edge (`reason: "node_lost"`).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::RecordedEvent;
use crate::family::EventFamily;
use crate::projection::{from_rows, to_rows, Projection, ProjectionError, Rows};

pub const PRESENCE_STREAM: &str = "presence";

/// The statuses a user may choose.
pub const STATUSES: [&str; 3] = ["online", "away", "busy"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PresenceEvent {
    #[serde(rename = "presence.session_opened")]
    SessionOpened { session_id: Uuid, node: String },
    /// `reason`: `closed` (the socket ended), `shutdown` (its edge stopped), `node_lost` (its
    /// edge was found dead), `revoked` (its credential no longer admits it).
    #[serde(rename = "presence.session_closed")]
    SessionClosed { session_id: Uuid, reason: String },
    #[serde(rename = "presence.status_set")]
    StatusSet { status: String },
}

impl EventFamily for PresenceEvent {
    fn event_type(&self) -> &'static str {
        match self {
            PresenceEvent::SessionOpened { .. } => "presence.session_opened",
            PresenceEvent::SessionClosed { .. } => "presence.session_closed",
            PresenceEvent::StatusSet { .. } => "presence.status_set",
        }
    }

    fn current_schema(event_type: &str) -> Option<u32> {
        match event_type {
            "presence.session_opened" | "presence.session_closed" | "presence.status_set" => {
                Some(1)
            }
            _ => None,
        }
    }
}

/// One user's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceRow {
    pub user_id: Uuid,
    /// The status the user chose (`online` until they choose).
    pub chosen: String,
    /// Open sessions → the node holding each.
    pub sessions: BTreeMap<Uuid, String>,
    /// The stream's version (for appends that must not race).
    pub version: i64,
    pub changed_at: DateTime<Utc>,
}

impl PresenceRow {
    /// What others see: `offline` without an open session.
    pub fn status(&self) -> &str {
        if self.sessions.is_empty() {
            "offline"
        } else {
            &self.chosen
        }
    }
}

/// Every user's presence: the `presence` projection (row key: the user id).
#[derive(Debug, Default, Clone)]
pub struct PresenceProjection {
    users: BTreeMap<String, PresenceRow>,
}

impl PresenceProjection {
    pub fn get(&self, user: &Uuid) -> Option<&PresenceRow> {
        self.users.get(&user.to_string())
    }

    /// `offline` for a user never seen.
    pub fn status(&self, user: &Uuid) -> &str {
        self.get(user).map_or("offline", PresenceRow::status)
    }

    pub fn all(&self) -> impl Iterator<Item = &PresenceRow> {
        self.users.values()
    }
}

impl Projection for PresenceProjection {
    fn name(&self) -> &'static str {
        "presence"
    }

    fn apply(
        &mut self,
        event: &RecordedEvent,
        dirty: &mut BTreeSet<String>,
    ) -> Result<(), ProjectionError> {
        let env = &event.envelope;
        if env.stream_type != PRESENCE_STREAM {
            return Ok(());
        }
        let Ok(user_id) = Uuid::try_parse(&env.stream_id) else {
            return Ok(());
        };
        let ev = PresenceEvent::decode(env).map_err(|e| ProjectionError::decode(event, e))?;
        let row = self
            .users
            .entry(env.stream_id.clone())
            .or_insert_with(|| PresenceRow {
                user_id,
                chosen: "online".into(),
                sessions: BTreeMap::new(),
                version: 0,
                changed_at: env.occurred_at,
            });
        match ev {
            PresenceEvent::SessionOpened { session_id, node } => {
                row.sessions.insert(session_id, node);
            }
            PresenceEvent::SessionClosed { session_id, .. } => {
                row.sessions.remove(&session_id);
            }
            PresenceEvent::StatusSet { status } => row.chosen = status,
        }
        row.version = env.version;
        row.changed_at = env.occurred_at;
        dirty.insert(env.stream_id.clone());
        Ok(())
    }

    fn row(&self, key: &str) -> Option<serde_json::Value> {
        self.users
            .get(key)
            .and_then(|r| serde_json::to_value(r).ok())
    }

    fn rows(&self) -> Rows {
        to_rows(&self.users)
    }

    fn load(&mut self, rows: Rows) -> Result<(), ProjectionError> {
        self.users = from_rows(rows)?;
        Ok(())
    }
}
