//! The room's Yjs documents: loaded from their latest snapshot and the updates after it,
//! snapshotted every `snapshot_every` updates, and served to `doc.open`.

use revo_events::family::room::{RoomEvent, ROOM_STREAM};
use revo_events::{EventFamily, EventMeta};
use uuid::Uuid;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, OffsetKind, Options, ReadTxn, StateVector, Transact, Update};

use super::{DocSync, Room, RoomError, PAGE};

pub(super) fn new_doc() -> Doc {
    Doc::with_options(Options {
        // Offsets as JavaScript's Yjs counts them (UTF-16 code units).
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    })
}

impl Room {
    /// Appends a snapshot of `doc` once enough updates have piled up since the last one.
    pub(super) async fn maybe_snapshot(&mut self, doc: &str, offset: i64) {
        let due = self
            .state
            .docs
            .get(doc)
            .is_some_and(|(_, n)| *n >= self.settings.snapshot_every);
        let Some(d) = self.docs.get(doc).filter(|_| due) else {
            return;
        };
        let state = d
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        // Exact again (updates only ever added to the estimate).
        self.doc_bytes.insert(doc.to_owned(), state.len());
        if state.len() + 1024 > self.settings.max_payload {
            // Cannot happen under the document cap; a document stored before the cap existed.
            tracing::warn!(room = %self.id, doc, bytes = state.len(), "room: document too large to snapshot");
            return;
        }
        let ev = RoomEvent::DocSnapshot {
            doc: doc.to_owned(),
            upto: offset,
            state,
        };
        let meta = EventMeta {
            actor: Some("system".into()),
            ..Default::default()
        };
        // Losing the race to another write is fine: the next update tries again.
        let mut once = Some(ev);
        if let Err(e) = self.decide(meta, true, |_| Ok(once.take())).await {
            tracing::warn!(room = %self.id, doc, error = %e, "room: snapshot not written");
        }
    }

    /// Loads a document from its latest snapshot and the updates after it.
    pub(super) async fn load_doc(&mut self, doc: &str) -> Result<(), RoomError> {
        self.doc_used
            .insert(doc.to_owned(), tokio::time::Instant::now());
        if self.docs.contains_key(doc) {
            return Ok(());
        }
        let d = new_doc();
        let head = self.state.offset();
        let Some((upto, _)) = self.state.docs.get(doc).copied() else {
            // Never written: nothing to read.
            self.docs.insert(doc.to_owned(), d);
            self.doc_bytes.insert(doc.to_owned(), 0);
            return Ok(());
        };
        let mut from = (upto + 1).max(1);
        while from <= head {
            let page = self
                .log
                .read_stream(ROOM_STREAM, &self.id.to_string(), from, PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            from = last.envelope.version + 1;
            for ev in page.iter().filter(|e| e.envelope.version <= head) {
                if !matches!(
                    ev.envelope.event_type.as_str(),
                    "room.doc_updated" | "room.doc_snapshot"
                ) {
                    continue;
                }
                match RoomEvent::decode(&ev.envelope) {
                    Ok(RoomEvent::DocUpdated {
                        doc: name, update, ..
                    })
                    | Ok(RoomEvent::DocSnapshot {
                        doc: name,
                        state: update,
                        ..
                    }) if name == doc => apply_update(&d, &update),
                    _ => {}
                }
            }
        }
        let size = d
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
            .len();
        self.docs.insert(doc.to_owned(), d);
        self.doc_bytes.insert(doc.to_owned(), size);
        Ok(())
    }

    pub(super) async fn doc_open(
        &mut self,
        user: Uuid,
        doc: &str,
        state_vector: Option<Vec<u8>>,
    ) -> Result<DocSync, RoomError> {
        if self.state.row.is_none() {
            return Err(RoomError::NotFound);
        }
        if self.state.role_of(&user).is_none() {
            return Err(RoomError::Forbidden(
                "not_a_member",
                "join the room first".into(),
            ));
        }
        let sv = match state_vector {
            Some(b) => StateVector::decode_v1(&b).map_err(|_| {
                RoomError::Invalid("invalid_frame", "not a Yjs state vector".into())
            })?,
            None => StateVector::default(),
        };
        if !self.state.docs.contains_key(doc) && !self.docs.contains_key(doc) {
            // A name never written: empty, without reading the room's stream or keeping it.
            let d = new_doc();
            let txn = d.transact();
            return Ok(DocSync {
                update: txn.encode_state_as_update_v1(&sv),
                state_vector: txn.state_vector().encode_v1(),
                offset: self.state.offset(),
            });
        }
        self.load_doc(doc).await?;
        let d = self
            .docs
            .get(doc)
            .ok_or_else(|| RoomError::Unavailable("document not loaded".into()))?;
        let txn = d.transact();
        Ok(DocSync {
            update: txn.encode_state_as_update_v1(&sv),
            state_vector: txn.state_vector().encode_v1(),
            offset: self.state.offset(),
        })
    }
}

pub(super) fn apply_update(doc: &Doc, update: &[u8]) {
    match Update::decode_v1(update) {
        Ok(u) => {
            if let Err(e) = doc.transact_mut().apply_update(u) {
                tracing::warn!(error = %e, "room: a stored document update does not apply");
            }
        }
        Err(e) => tracing::warn!(error = %e, "room: a stored document update does not decode"),
    }
}
