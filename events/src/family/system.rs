//! The `system` family: the life of nodes (`revo serve` / `revo worker` processes) and of
//! projections.
//!
//! Streams: `node/<node_id>` for node events, `projection/<name>` for projection events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::family::EventFamily;

pub const NODE_STREAM: &str = "node";
pub const PROJECTION_STREAM: &str = "projection";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SystemEvent {
    /// A process joined: which build, where, in which mode.
    #[serde(rename = "node.started")]
    NodeStarted {
        node_id: String,
        hostname: String,
        version: String,
        /// `embedded` or `cluster`.
        mode: String,
        started_at: DateTime<Utc>,
    },
    /// A process left cleanly (a crash leaves no such event).
    #[serde(rename = "node.stopped")]
    NodeStopped {
        node_id: String,
        stopped_at: DateTime<Utc>,
        reason: String,
    },
    /// A projection was rebuilt from zero and swapped in.
    #[serde(rename = "projection.rebuilt")]
    ProjectionRebuilt {
        projection: String,
        generation: i64,
        position: i64,
        rows: u64,
        events: u64,
    },
}

impl EventFamily for SystemEvent {
    fn event_type(&self) -> &'static str {
        match self {
            SystemEvent::NodeStarted { .. } => "node.started",
            SystemEvent::NodeStopped { .. } => "node.stopped",
            SystemEvent::ProjectionRebuilt { .. } => "projection.rebuilt",
        }
    }

    fn current_schema(event_type: &str) -> Option<u32> {
        match event_type {
            "node.started" | "node.stopped" | "projection.rebuilt" => Some(1),
            _ => None,
        }
    }
}
