//! `[rooms]`: what one user, room or document may hold (docs/websocket.md, "Limits").

use anyhow::bail;
use serde::Deserialize;

/// `[rooms]` in revo.toml. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsFile {
    /// Largest a Yjs document may grow, bytes of its encoded state (1,032,192; at most the
    /// event limit less 16 KiB, so every document can be snapshotted).
    pub max_doc_bytes: Option<usize>,
    /// Most documents in one room (100).
    pub max_docs_per_room: Option<usize>,
    /// Most bytes of document updates one user may store, over every room (268,435,456).
    pub max_doc_bytes_per_user: Option<u64>,
    /// Most rooms one user owns that are not archived (100).
    pub max_rooms_per_user: Option<usize>,
    /// Most WebSocket connections one user holds on one edge (32).
    pub max_connections_per_user: Option<usize>,
    /// Most WebSocket upgrades waiting for their `auth` frame on one edge (256).
    pub max_pending_upgrades: Option<usize>,
    /// Events between two snapshots of a room's fold (2000): a room actor starting on any edge
    /// folds at most about this many.
    pub state_snapshot_every: Option<u32>,
}

/// `[rooms]`, checked.
#[derive(Debug, Clone)]
pub struct RoomsConfig {
    pub max_doc_bytes: usize,
    pub max_docs_per_room: usize,
    pub max_doc_bytes_per_user: u64,
    pub max_rooms_per_user: usize,
    pub max_connections_per_user: usize,
    pub max_pending_upgrades: usize,
    pub state_snapshot_every: u32,
}

impl RoomsConfig {
    pub fn new(f: &RoomsFile, max_payload: usize) -> anyhow::Result<RoomsConfig> {
        let ceiling = max_payload.saturating_sub(16 * 1024);
        let max_doc_bytes = f
            .max_doc_bytes
            .unwrap_or(ceiling.min(1024 * 1024 - 16 * 1024));
        if max_doc_bytes == 0 || max_doc_bytes > ceiling {
            bail!("[rooms] max_doc_bytes is 1 to {ceiling} (the event limit less 16 KiB)");
        }
        let positive = |name: &str, v: Option<usize>, default: usize| match v {
            Some(0) => bail!("[rooms] {name} is at least 1"),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        Ok(RoomsConfig {
            max_doc_bytes,
            max_docs_per_room: positive("max_docs_per_room", f.max_docs_per_room, 100)?,
            max_doc_bytes_per_user: match f.max_doc_bytes_per_user {
                Some(0) => bail!("[rooms] max_doc_bytes_per_user is at least 1"),
                Some(n) => n,
                None => 256 * 1024 * 1024,
            },
            max_rooms_per_user: positive("max_rooms_per_user", f.max_rooms_per_user, 100)?,
            max_connections_per_user: positive(
                "max_connections_per_user",
                f.max_connections_per_user,
                32,
            )?,
            max_pending_upgrades: positive("max_pending_upgrades", f.max_pending_upgrades, 256)?,
            state_snapshot_every: match f.state_snapshot_every {
                Some(n) if n < 10 => bail!("[rooms] state_snapshot_every is at least 10"),
                Some(n) => n,
                None => 2000,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_stay_snapshottable() {
        let d = RoomsConfig::new(&RoomsFile::default(), 1024 * 1024).unwrap();
        assert_eq!(d.max_doc_bytes, 1024 * 1024 - 16 * 1024);
        let small = RoomsConfig::new(&RoomsFile::default(), 256 * 1024).unwrap();
        assert_eq!(small.max_doc_bytes, 240 * 1024);
        let too_big = RoomsFile {
            max_doc_bytes: Some(2 << 20),
            ..RoomsFile::default()
        };
        assert!(RoomsConfig::new(&too_big, 1 << 20).is_err());
        let zero = RoomsFile {
            max_rooms_per_user: Some(0),
            ..RoomsFile::default()
        };
        assert!(RoomsConfig::new(&zero, 1 << 20).is_err());
    }
}
