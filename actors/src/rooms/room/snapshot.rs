//! The room's fold, snapshotted: a `room.state_snapshot` every `state_snapshot_every`
//! events, and an actor starting on any edge begins from the latest one.

use revo_events::family::room::{RoomEvent, RoomState, ROOM_STREAM};
use revo_events::{EventFamily, EventMeta};

use super::Room;

impl Room {
    /// Starts from the room's latest `room.state_snapshot`, if the `rooms` view names one
    /// (anything wrong with it: from the beginning, as without one).
    pub(super) async fn start_from_snapshot(&mut self) {
        let at = self
            .rooms
            .read()
            .get(&self.id)
            .and_then(|r| r.state_snapshot);
        let Some(at) = at else { return };
        let page = match self
            .log
            .read_stream(ROOM_STREAM, &self.id.to_string(), at, 1)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(room = %self.id, error = %e, "room: snapshot not read; folding from the start");
                return;
            }
        };
        let Some(rec) = page.first().filter(|r| r.envelope.version == at) else {
            return;
        };
        if let Ok(RoomEvent::StateSnapshot { upto, fold }) = RoomEvent::decode(&rec.envelope) {
            if fold.row.offset == upto {
                self.state = RoomState::from_fold(fold);
            }
        }
    }

    /// Appends a snapshot of the fold once `state_snapshot_every` events have come since the
    /// last one. Skipped (and tried again later) if it would not fit in an event.
    pub(super) async fn maybe_snapshot_state(&mut self) {
        let Some(row) = self.state.row.as_ref() else {
            return;
        };
        let last = row
            .state_snapshot
            .unwrap_or(0)
            .max(self.state_snapshot_tried);
        if row.offset - last < self.settings.state_snapshot_every {
            return;
        }
        self.state_snapshot_tried = row.offset;
        let Some(fold) = self.state.to_fold() else {
            return;
        };
        let ev = RoomEvent::StateSnapshot {
            upto: row.offset,
            fold,
        };
        let meta = EventMeta {
            actor: Some("system".into()),
            ..Default::default()
        };
        // Losing a race to another write is fine: the next write tries again.
        let mut once = Some(ev);
        if let Err(e) = self.decide(meta, true, |_| Ok(once.take())).await {
            tracing::warn!(room = %self.id, error = %e, "room: fold snapshot not written");
        }
    }
}
