//! Projections: pure folds over recorded events into keyed rows (the read model).
//!
//! A projection never does I/O. The runner (in `revo-actors`) feeds it events from the store's
//! subscription, persists the rows it reports as changed together with its checkpoint, and can
//! rebuild it from zero. Because rows are plain JSON documents keyed by string, rebuild, swap and
//! verify work the same for every projection.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::DecodeError;
use crate::envelope::RecordedEvent;
use crate::family::system::{SystemEvent, NODE_STREAM};
use crate::family::EventFamily;

/// A read model: row key to JSON document.
pub type Rows = BTreeMap<String, serde_json::Value>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProjectionError {
    #[error("event {event_id} at position {position} cannot be decoded: {source}")]
    Decode {
        event_id: Uuid,
        position: i64,
        source: DecodeError,
    },
    #[error("stored row `{key}` cannot be loaded: {reason}")]
    BadRow { key: String, reason: String },
}

impl ProjectionError {
    pub fn decode(event: &RecordedEvent, source: DecodeError) -> Self {
        ProjectionError::Decode {
            event_id: event.envelope.event_id,
            position: event.position,
            source,
        }
    }
}

/// A fold over events. Implementations must be deterministic: the same events in the same order
/// always give the same rows, whether applied in one go or across restarts.
pub trait Projection: Send + 'static {
    /// Stable name: the key of its checkpoint and rows (`revo replay rebuild <name>`).
    fn name(&self) -> &'static str;

    /// Folds one event in, adding the keys of the rows it changed to `dirty`.
    fn apply(
        &mut self,
        event: &RecordedEvent,
        dirty: &mut BTreeSet<String>,
    ) -> Result<(), ProjectionError>;

    /// The current document of one row, `None` once deleted.
    fn row(&self, key: &str) -> Option<serde_json::Value>;

    /// Every row.
    fn rows(&self) -> Rows;

    /// Replaces the state with stored rows (the inverse of `rows`).
    fn load(&mut self, rows: Rows) -> Result<(), ProjectionError>;
}

/// The rows of a projection that keeps one typed row per key.
pub fn to_rows<R: Serialize>(map: &BTreeMap<String, R>) -> Rows {
    map.iter()
        .filter_map(|(k, r)| serde_json::to_value(r).ok().map(|v| (k.clone(), v)))
        .collect()
}

/// The inverse of [`to_rows`]: a row that does not fit `R` is an error naming its key.
pub fn from_rows<R: serde::de::DeserializeOwned>(
    rows: Rows,
) -> Result<BTreeMap<String, R>, ProjectionError> {
    rows.into_iter()
        .map(|(key, doc)| match serde_json::from_value(doc) {
            Ok(row) => Ok((key, row)),
            Err(e) => Err(ProjectionError::BadRow {
                key,
                reason: e.to_string(),
            }),
        })
        .collect()
}

/// One difference between a live read model and a rebuilt one.
#[derive(Debug, Clone, PartialEq)]
pub enum RowDiff {
    OnlyLive {
        key: String,
        live: serde_json::Value,
    },
    OnlyRebuilt {
        key: String,
        rebuilt: serde_json::Value,
    },
    Changed {
        key: String,
        live: serde_json::Value,
        rebuilt: serde_json::Value,
    },
}

impl std::fmt::Display for RowDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowDiff::OnlyLive { key, live } => {
                write!(f, "- {key}: {live} (only in the live read model)")
            }
            RowDiff::OnlyRebuilt { key, rebuilt } => {
                write!(f, "+ {key}: {rebuilt} (missing from the live read model)")
            }
            RowDiff::Changed { key, live, rebuilt } => {
                write!(f, "~ {key}:\n    live:    {live}\n    rebuilt: {rebuilt}")
            }
        }
    }
}

/// Compares two read models row by row.
pub fn diff_rows(live: &Rows, rebuilt: &Rows) -> Vec<RowDiff> {
    let mut out = Vec::new();
    for (key, l) in live {
        match rebuilt.get(key) {
            None => out.push(RowDiff::OnlyLive {
                key: key.clone(),
                live: l.clone(),
            }),
            Some(r) if r != l => out.push(RowDiff::Changed {
                key: key.clone(),
                live: l.clone(),
                rebuilt: r.clone(),
            }),
            Some(_) => {}
        }
    }
    for (key, r) in rebuilt {
        if !live.contains_key(key) {
            out.push(RowDiff::OnlyRebuilt {
                key: key.clone(),
                rebuilt: r.clone(),
            });
        }
    }
    out
}

/// A row of the `nodes` read model: the last known state of each process that ever started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRow {
    pub node_id: String,
    pub hostname: String,
    pub version: String,
    pub mode: String,
    pub started_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub stop_reason: Option<String>,
    /// `running` until a `node.stopped` event; a crashed node stays `running` (last known).
    pub status: String,
    /// Events folded for this node.
    pub events: u64,
}

/// The `nodes` projection: the directory of Revo processes.
#[derive(Debug, Default, Clone)]
pub struct NodesProjection {
    nodes: BTreeMap<String, NodeRow>,
}

impl Projection for NodesProjection {
    fn name(&self) -> &'static str {
        "nodes"
    }

    fn apply(
        &mut self,
        event: &RecordedEvent,
        dirty: &mut BTreeSet<String>,
    ) -> Result<(), ProjectionError> {
        if event.envelope.stream_type != NODE_STREAM {
            return Ok(());
        }
        let decoded =
            SystemEvent::decode(&event.envelope).map_err(|e| ProjectionError::decode(event, e))?;
        match decoded {
            SystemEvent::NodeStarted {
                node_id,
                hostname,
                version,
                mode,
                started_at,
            } => {
                dirty.insert(node_id.clone());
                let row = NodeRow {
                    node_id: node_id.clone(),
                    hostname,
                    version,
                    mode,
                    started_at,
                    stopped_at: None,
                    stop_reason: None,
                    status: "running".into(),
                    events: self.nodes.get(&node_id).map_or(0, |r| r.events) + 1,
                };
                self.nodes.insert(node_id, row);
            }
            SystemEvent::NodeStopped {
                node_id,
                stopped_at,
                reason,
            } => {
                // A stop without a start (a stream that began before this projection existed)
                // is still recorded, so nothing is silently dropped.
                let row = self
                    .nodes
                    .entry(node_id.clone())
                    .or_insert_with(|| NodeRow {
                        node_id: node_id.clone(),
                        hostname: String::new(),
                        version: String::new(),
                        mode: String::new(),
                        started_at: stopped_at,
                        stopped_at: None,
                        stop_reason: None,
                        status: "running".into(),
                        events: 0,
                    });
                row.stopped_at = Some(stopped_at);
                row.stop_reason = Some(reason);
                row.status = "stopped".into();
                row.events += 1;
                dirty.insert(node_id);
            }
            SystemEvent::ProjectionRebuilt { .. } => {}
        }
        Ok(())
    }

    fn row(&self, key: &str) -> Option<serde_json::Value> {
        self.nodes
            .get(key)
            .and_then(|r| serde_json::to_value(r).ok())
    }

    fn rows(&self) -> Rows {
        to_rows(&self.nodes)
    }

    fn load(&mut self, rows: Rows) -> Result<(), ProjectionError> {
        self.nodes = from_rows(rows)?;
        Ok(())
    }
}
