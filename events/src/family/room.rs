//! The `room` family: real-time rooms. Stream `room/<room id>`; a room event's version in its
//! stream is its **offset**, the cursor clients resume from.
//!
//! Everything a room remembers is here: its creation, membership and roles, messages with
//! their edits and deletions, and its Yjs documents (each update, and periodic snapshots so a
//! document loads without its whole history). Typing, cursors and awareness are signals, not
//! events.
//!
//! Two folds read these events: [`RoomState`], one room's full state (what its actor holds),
//! and the `rooms` projection ([`RoomsProjection`]): every room with its members, which the
//! edge reads to list rooms and admit requests.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::RecordedEvent;
use crate::family::EventFamily;
use crate::projection::{from_rows, to_rows, Projection, ProjectionError, Rows};

pub const ROOM_STREAM: &str = "room";

/// What a member may do. Owners manage the room; members write; viewers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomRole {
    Viewer,
    Member,
    Owner,
}

impl RoomRole {
    pub fn parse(s: &str) -> Option<RoomRole> {
        match s {
            "viewer" => Some(RoomRole::Viewer),
            "member" => Some(RoomRole::Member),
            "owner" => Some(RoomRole::Owner),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RoomRole::Viewer => "viewer",
            RoomRole::Member => "member",
            RoomRole::Owner => "owner",
        }
    }

    /// Whether this role may post messages and edit documents.
    pub fn can_write(self) -> bool {
        self >= RoomRole::Member
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum RoomEvent {
    #[serde(rename = "room.created")]
    Created {
        room_id: Uuid,
        name: String,
        /// `public` (anyone may join as a member) or `private` (invitation only).
        visibility: String,
        owner: Uuid,
    },
    /// The room is closed: no one can join or write any more; its history stays.
    #[serde(rename = "room.archived")]
    Archived { by: Uuid },
    /// A user joined (a public room) or was invited, with a role.
    #[serde(rename = "room.member_added")]
    MemberAdded {
        user_id: Uuid,
        role: RoomRole,
        by: Uuid,
    },
    #[serde(rename = "room.member_role_changed")]
    MemberRoleChanged {
        user_id: Uuid,
        role: RoomRole,
        by: Uuid,
    },
    /// A member left (`by` is the member) or was removed.
    #[serde(rename = "room.member_removed")]
    MemberRemoved { user_id: Uuid, by: Uuid },
    #[serde(rename = "room.message_posted")]
    MessagePosted {
        message_id: Uuid,
        user_id: Uuid,
        /// The sender's idempotency key: a repeat with the same one is not posted again.
        client_id: Option<String>,
        text: String,
    },
    #[serde(rename = "room.message_edited")]
    MessageEdited {
        message_id: Uuid,
        user_id: Uuid,
        text: String,
    },
    #[serde(rename = "room.message_deleted")]
    MessageDeleted { message_id: Uuid, user_id: Uuid },
    /// One Yjs update (v1 encoding) to the document `doc`.
    #[serde(rename = "room.doc_updated")]
    DocUpdated {
        doc: String,
        user_id: Uuid,
        #[serde(with = "serde_bytes")]
        update: Vec<u8>,
    },
    /// The whole document `doc` as of offset `upto` (a Yjs v1 update from the empty state).
    /// Loading starts from the latest one and applies only the updates after `upto`.
    #[serde(rename = "room.doc_snapshot")]
    DocSnapshot {
        doc: String,
        upto: i64,
        #[serde(with = "serde_bytes")]
        state: Vec<u8>,
    },
    /// The room actor's whole fold as of offset `upto`: a room actor starting on any edge
    /// loads the latest one (the `rooms` view points at it) and folds only what came after,
    /// instead of the room's whole history.
    #[serde(rename = "room.state_snapshot")]
    StateSnapshot { upto: i64, fold: RoomFold },
}

/// What a `room.state_snapshot` holds: the room actor's fold, each part bounded (messages and
/// client ids by their windows, documents by `[rooms] max_docs_per_room`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomFold {
    pub row: RoomRow,
    /// (message id, author, offset, deleted), oldest first.
    pub messages: Vec<(Uuid, Uuid, i64, bool)>,
    /// (sender, client id, message id, offset), oldest first.
    pub client_ids: Vec<(Uuid, String, Uuid, i64)>,
    /// (document, its latest snapshot's `upto`, updates since).
    pub docs: Vec<(String, i64, u64)>,
    /// (user, role, removed by someone else).
    pub left: Vec<(Uuid, RoomRole, bool)>,
}

impl EventFamily for RoomEvent {
    fn event_type(&self) -> &'static str {
        match self {
            RoomEvent::Created { .. } => "room.created",
            RoomEvent::Archived { .. } => "room.archived",
            RoomEvent::MemberAdded { .. } => "room.member_added",
            RoomEvent::MemberRoleChanged { .. } => "room.member_role_changed",
            RoomEvent::MemberRemoved { .. } => "room.member_removed",
            RoomEvent::MessagePosted { .. } => "room.message_posted",
            RoomEvent::MessageEdited { .. } => "room.message_edited",
            RoomEvent::MessageDeleted { .. } => "room.message_deleted",
            RoomEvent::DocUpdated { .. } => "room.doc_updated",
            RoomEvent::DocSnapshot { .. } => "room.doc_snapshot",
            RoomEvent::StateSnapshot { .. } => "room.state_snapshot",
        }
    }

    fn current_schema(event_type: &str) -> Option<u32> {
        match event_type {
            "room.created"
            | "room.archived"
            | "room.member_added"
            | "room.member_role_changed"
            | "room.member_removed"
            | "room.message_posted"
            | "room.message_edited"
            | "room.message_deleted"
            | "room.doc_updated"
            | "room.doc_snapshot"
            | "room.state_snapshot" => Some(1),
            _ => None,
        }
    }
}

/// A room as listed: who is in it and in what role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomRow {
    pub room_id: Uuid,
    pub name: String,
    pub visibility: String,
    pub owner: Uuid,
    pub created_at: DateTime<Utc>,
    pub archived: bool,
    pub members: BTreeMap<Uuid, RoomRole>,
    /// The room's offset: its last event's version.
    pub offset: i64,
    /// Bytes of document updates each user stored in this room (what `[rooms]
    /// max_doc_bytes_per_user` counts, over every room).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub doc_bytes: BTreeMap<Uuid, u64>,
    /// The offset of the room's latest `room.state_snapshot`, where its actor starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_snapshot: Option<i64>,
}

impl RoomRow {
    pub fn role_of(&self, user: &Uuid) -> Option<RoomRole> {
        self.members.get(user).copied()
    }

    pub fn is_public(&self) -> bool {
        self.visibility == "public"
    }

    /// Folds one event of this room's stream in (`offset` its version).
    fn apply(&mut self, ev: &RoomEvent, offset: i64) {
        self.offset = self.offset.max(offset);
        match ev {
            RoomEvent::Archived { .. } => self.archived = true,
            RoomEvent::MemberAdded { user_id, role, .. }
            | RoomEvent::MemberRoleChanged { user_id, role, .. } => {
                self.members.insert(*user_id, *role);
            }
            RoomEvent::MemberRemoved { user_id, .. } => {
                self.members.remove(user_id);
            }
            RoomEvent::DocUpdated {
                user_id, update, ..
            } => {
                let n = self.doc_bytes.entry(*user_id).or_default();
                *n = n.saturating_add(update.len() as u64);
            }
            RoomEvent::StateSnapshot { .. } => self.state_snapshot = Some(offset),
            _ => {}
        }
    }

    fn new(room_id: Uuid, name: &str, visibility: &str, owner: Uuid, at: DateTime<Utc>) -> RoomRow {
        RoomRow {
            room_id,
            name: name.to_owned(),
            visibility: visibility.to_owned(),
            owner,
            created_at: at,
            archived: false,
            members: BTreeMap::from([(owner, RoomRole::Owner)]),
            offset: 0,
            doc_bytes: BTreeMap::new(),
            state_snapshot: None,
        }
    }
}

/// Every room with its members: the `rooms` projection (row key: the room id).
#[derive(Debug, Default, Clone)]
pub struct RoomsProjection {
    rooms: BTreeMap<String, RoomRow>,
    /// User → the rooms they are a member of.
    by_member: HashMap<Uuid, BTreeSet<Uuid>>,
    /// User → bytes of document updates they stored, over every room.
    doc_bytes: HashMap<Uuid, u64>,
}

impl RoomsProjection {
    pub fn get(&self, room: &Uuid) -> Option<&RoomRow> {
        self.rooms.get(&room.to_string())
    }

    pub fn all(&self) -> impl Iterator<Item = &RoomRow> {
        self.rooms.values()
    }

    /// The rooms `user` is a member of.
    pub fn of_member(&self, user: &Uuid) -> impl Iterator<Item = &RoomRow> {
        self.by_member
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|r| self.get(r))
    }

    /// Bytes of document updates `user` has stored, in every room.
    pub fn doc_bytes_of(&self, user: &Uuid) -> u64 {
        self.doc_bytes.get(user).copied().unwrap_or(0)
    }

    /// Whether two users share a room.
    pub fn share_a_room(&self, a: &Uuid, b: &Uuid) -> bool {
        match (self.by_member.get(a), self.by_member.get(b)) {
            (Some(x), Some(y)) => x.intersection(y).next().is_some(),
            _ => false,
        }
    }

    /// Keeps `by_member` in step with one membership event: only the user it names is
    /// touched (walking every user on each event made membership changes, and replay,
    /// O(users)).
    fn index(&mut self, room: Uuid, ev: &RoomEvent) {
        match ev {
            RoomEvent::Created { owner, .. } => {
                self.by_member.entry(*owner).or_default().insert(room);
            }
            RoomEvent::MemberAdded { user_id, .. }
            | RoomEvent::MemberRoleChanged { user_id, .. } => {
                self.by_member.entry(*user_id).or_default().insert(room);
            }
            RoomEvent::MemberRemoved { user_id, .. } => {
                if let Some(rooms) = self.by_member.get_mut(user_id) {
                    rooms.remove(&room);
                    if rooms.is_empty() {
                        self.by_member.remove(user_id);
                    }
                }
            }
            _ => {}
        }
    }
}

impl Projection for RoomsProjection {
    fn name(&self) -> &'static str {
        "rooms"
    }

    fn apply(
        &mut self,
        event: &RecordedEvent,
        dirty: &mut BTreeSet<String>,
    ) -> Result<(), ProjectionError> {
        let env = &event.envelope;
        if env.stream_type != ROOM_STREAM {
            return Ok(());
        }
        let ev = RoomEvent::decode(env).map_err(|e| ProjectionError::decode(event, e))?;
        let key = env.stream_id.clone();
        let membership = matches!(
            ev,
            RoomEvent::Created { .. }
                | RoomEvent::MemberAdded { .. }
                | RoomEvent::MemberRoleChanged { .. }
                | RoomEvent::MemberRemoved { .. }
        );
        if let RoomEvent::Created {
            room_id,
            name,
            visibility,
            owner,
        } = &ev
        {
            self.rooms.entry(key.clone()).or_insert_with(|| {
                RoomRow::new(*room_id, name, visibility, *owner, env.occurred_at)
            });
        }
        let Some(row) = self.rooms.get_mut(&key) else {
            return Ok(());
        };
        row.apply(&ev, env.version);
        let room_id = row.room_id;
        if let RoomEvent::DocUpdated {
            user_id, update, ..
        } = &ev
        {
            let n = self.doc_bytes.entry(*user_id).or_default();
            *n = n.saturating_add(update.len() as u64);
        }
        dirty.insert(key);
        if membership {
            self.index(room_id, &ev);
        }
        Ok(())
    }

    fn row(&self, key: &str) -> Option<serde_json::Value> {
        self.rooms
            .get(key)
            .and_then(|r| serde_json::to_value(r).ok())
    }

    fn rows(&self) -> Rows {
        to_rows(&self.rooms)
    }

    fn load(&mut self, rows: Rows) -> Result<(), ProjectionError> {
        self.rooms = from_rows(rows)?;
        self.by_member.clear();
        self.doc_bytes.clear();
        for room in self.rooms.values() {
            for (user, n) in &room.doc_bytes {
                let t = self.doc_bytes.entry(*user).or_default();
                *t = t.saturating_add(*n);
            }
            for user in room.members.keys() {
                self.by_member
                    .entry(*user)
                    .or_default()
                    .insert(room.room_id);
            }
        }
        Ok(())
    }
}

/// Client ids (for recognising a retried `message.send`) a room keeps: the most recent.
pub const CLIENT_IDS_KEPT: usize = 2_000;
/// Messages a room remembers the author of, the most recent: older ones can no longer be
/// edited or deleted.
pub const MESSAGES_KEPT: usize = 5_000;

/// One message as its room remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageState {
    pub author: Uuid,
    pub offset: i64,
    pub deleted: bool,
}

/// One room's whole state: what its actor holds and decides from (membership, who wrote which
/// message, idempotency keys). Documents are held by the actor itself, as Yjs documents.
#[derive(Debug, Clone, Default)]
pub struct RoomState {
    pub row: Option<RoomRow>,
    pub messages: HashMap<Uuid, MessageState>,
    /// (sender, client id) → (message id, offset).
    pub client_ids: HashMap<(Uuid, String), (Uuid, i64)>,
    /// `client_ids` in the order they came, so only the most recent `CLIENT_IDS_KEPT` are
    /// kept: a retry is recognised for that many messages of the room, not forever.
    pub client_id_order: std::collections::VecDeque<(Uuid, String)>,
    /// `messages` in the order they were posted: only the most recent `MESSAGES_KEPT` stay
    /// (the room's edit window), so the fold, and its snapshot, stay bounded.
    pub message_order: std::collections::VecDeque<Uuid>,
    /// Document → (offset of its latest snapshot's `upto`, updates since).
    pub docs: HashMap<String, (i64, u64)>,
    /// Users who were members and are not now: the role they had, and whether someone else
    /// removed them. A public room lets them back in with that role (never as owner), or not
    /// at all once removed, until an owner adds them again.
    pub left: HashMap<Uuid, Left>,
}

/// A former member of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    pub role: RoomRole,
    /// Removed by someone else (an owner or an administrator), not by leaving.
    pub removed: bool,
}

impl RoomState {
    /// The fold as a `room.state_snapshot` holds it (`None` before the room exists).
    pub fn to_fold(&self) -> Option<RoomFold> {
        let row = self.row.clone()?;
        let messages = self
            .message_order
            .iter()
            .filter_map(|id| {
                self.messages
                    .get(id)
                    .map(|m| (*id, m.author, m.offset, m.deleted))
            })
            .collect();
        let client_ids = self
            .client_id_order
            .iter()
            .filter_map(|k| {
                self.client_ids
                    .get(k)
                    .map(|(m, o)| (k.0, k.1.clone(), *m, *o))
            })
            .collect();
        let mut docs: Vec<(String, i64, u64)> = self
            .docs
            .iter()
            .map(|(d, (upto, n))| (d.clone(), *upto, *n))
            .collect();
        docs.sort();
        let mut left: Vec<(Uuid, RoomRole, bool)> = self
            .left
            .iter()
            .map(|(u, l)| (*u, l.role, l.removed))
            .collect();
        left.sort_by_key(|x| x.0);
        Some(RoomFold {
            row,
            messages,
            client_ids,
            docs,
            left,
        })
    }

    /// The fold a `room.state_snapshot` holds, to go on from.
    pub fn from_fold(f: RoomFold) -> RoomState {
        let mut s = RoomState {
            row: Some(f.row),
            ..RoomState::default()
        };
        for (id, author, offset, deleted) in f.messages {
            s.messages.insert(
                id,
                MessageState {
                    author,
                    offset,
                    deleted,
                },
            );
            s.message_order.push_back(id);
        }
        for (user, client, message, offset) in f.client_ids {
            s.client_ids
                .insert((user, client.clone()), (message, offset));
            s.client_id_order.push_back((user, client));
        }
        for (doc, upto, n) in f.docs {
            s.docs.insert(doc, (upto, n));
        }
        for (user, role, removed) in f.left {
            s.left.insert(user, Left { role, removed });
        }
        s
    }

    pub fn offset(&self) -> i64 {
        self.row.as_ref().map_or(0, |r| r.offset)
    }

    pub fn role_of(&self, user: &Uuid) -> Option<RoomRole> {
        self.row.as_ref().and_then(|r| r.role_of(user))
    }

    /// Folds one event at `offset` (its version), recorded at `at`.
    pub fn apply(&mut self, ev: &RoomEvent, offset: i64, at: DateTime<Utc>) {
        if let RoomEvent::Created {
            room_id,
            name,
            visibility,
            owner,
        } = ev
        {
            if self.row.is_none() {
                self.row = Some(RoomRow::new(*room_id, name, visibility, *owner, at));
            }
        }
        if let RoomEvent::MemberRemoved { user_id, by } = ev {
            if let Some(role) = self.role_of(user_id) {
                let removed = by != user_id;
                self.left.insert(*user_id, Left { role, removed });
            }
        }
        if let Some(row) = self.row.as_mut() {
            row.apply(ev, offset);
        }
        match ev {
            RoomEvent::MemberAdded { user_id, .. } => {
                self.left.remove(user_id);
            }
            RoomEvent::MessagePosted {
                message_id,
                user_id,
                client_id,
                ..
            } => {
                let fresh = self
                    .messages
                    .insert(
                        *message_id,
                        MessageState {
                            author: *user_id,
                            offset,
                            deleted: false,
                        },
                    )
                    .is_none();
                if fresh {
                    self.message_order.push_back(*message_id);
                }
                while self.message_order.len() > MESSAGES_KEPT {
                    if let Some(old) = self.message_order.pop_front() {
                        self.messages.remove(&old);
                    }
                }
                if let Some(c) = client_id {
                    let k = (*user_id, c.clone());
                    if self
                        .client_ids
                        .insert(k.clone(), (*message_id, offset))
                        .is_none()
                    {
                        self.client_id_order.push_back(k);
                    }
                    while self.client_id_order.len() > CLIENT_IDS_KEPT {
                        if let Some(old) = self.client_id_order.pop_front() {
                            self.client_ids.remove(&old);
                        }
                    }
                }
            }
            RoomEvent::MessageDeleted { message_id, .. } => {
                if let Some(m) = self.messages.get_mut(message_id) {
                    m.deleted = true;
                }
            }
            RoomEvent::DocUpdated { doc, .. } => {
                self.docs.entry(doc.clone()).or_insert((0, 0)).1 += 1;
            }
            RoomEvent::DocSnapshot { doc, upto, .. } => {
                let d = self.docs.entry(doc.clone()).or_insert((0, 0));
                if *upto > d.0 {
                    *d = (*upto, 0);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, EventMeta};

    fn rec(room: Uuid, version: i64, ev: &RoomEvent) -> RecordedEvent {
        let n = ev.to_new_event(EventMeta::default()).unwrap();
        RecordedEvent {
            position: version,
            envelope: Envelope {
                event_id: n.event_id,
                stream_type: ROOM_STREAM.into(),
                stream_id: room.to_string(),
                version,
                event_type: n.event_type,
                schema: n.schema,
                occurred_at: n.occurred_at,
                meta: n.meta,
                payload: n.payload,
            },
        }
    }

    #[test]
    fn membership_folds_and_reloads_alike() {
        let (room, owner, bob) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let evs = [
            RoomEvent::Created {
                room_id: room,
                name: "general".into(),
                visibility: "private".into(),
                owner,
            },
            RoomEvent::MemberAdded {
                user_id: bob,
                role: RoomRole::Viewer,
                by: owner,
            },
            RoomEvent::MessagePosted {
                message_id: Uuid::now_v7(),
                user_id: owner,
                client_id: Some("c1".into()),
                text: "hi".into(),
            },
            RoomEvent::MemberRoleChanged {
                user_id: bob,
                role: RoomRole::Member,
                by: owner,
            },
        ];
        let mut p = RoomsProjection::default();
        let mut dirty = BTreeSet::new();
        for (i, ev) in evs.iter().enumerate() {
            p.apply(&rec(room, i as i64 + 1, ev), &mut dirty).unwrap();
        }
        let row = p.get(&room).unwrap();
        assert_eq!(row.role_of(&bob), Some(RoomRole::Member));
        assert_eq!(row.offset, 4);
        assert!(p.share_a_room(&owner, &bob));
        let mut again = RoomsProjection::default();
        again.load(p.rows()).unwrap();
        assert_eq!(again.rows(), p.rows());
        assert!(again.share_a_room(&owner, &bob));

        p.apply(
            &rec(
                room,
                5,
                &RoomEvent::MemberRemoved {
                    user_id: bob,
                    by: owner,
                },
            ),
            &mut dirty,
        )
        .unwrap();
        assert!(!p.share_a_room(&owner, &bob));
        assert_eq!(p.of_member(&bob).count(), 0);

        let mut st = RoomState::default();
        for (i, ev) in evs.iter().enumerate() {
            st.apply(ev, i as i64 + 1, Utc::now());
        }
        assert_eq!(st.offset(), 4);
        assert_eq!(
            st.client_ids.get(&(owner, "c1".into())).map(|c| c.1),
            Some(3)
        );
    }

    #[test]
    fn a_room_remembers_a_bounded_number_of_client_ids() {
        let (room, owner) = (Uuid::now_v7(), Uuid::now_v7());
        let mut st = RoomState::default();
        st.apply(
            &RoomEvent::Created {
                room_id: room,
                name: "r".into(),
                visibility: "private".into(),
                owner,
            },
            1,
            Utc::now(),
        );
        for i in 0..CLIENT_IDS_KEPT + 2 {
            let posted = RoomEvent::MessagePosted {
                message_id: Uuid::now_v7(),
                user_id: owner,
                client_id: Some(format!("c{i}")),
                text: "hi".into(),
            };
            st.apply(&posted, i as i64 + 2, Utc::now());
        }
        assert_eq!(st.client_ids.len(), CLIENT_IDS_KEPT);
        assert!(!st.client_ids.contains_key(&(owner, "c0".into())));
        assert!(st
            .client_ids
            .contains_key(&(owner, format!("c{}", CLIENT_IDS_KEPT + 1))));
    }

    #[test]
    fn a_fold_snapshot_restores_what_the_room_decides_from() {
        let (room, owner, bob, eve) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let mut st = RoomState::default();
        let mut n = 0;
        let mut apply = |st: &mut RoomState, ev: RoomEvent| {
            n += 1;
            st.apply(&ev, n, Utc::now());
        };
        apply(
            &mut st,
            RoomEvent::Created {
                room_id: room,
                name: "r".into(),
                visibility: "public".into(),
                owner,
            },
        );
        for (u, role) in [(bob, RoomRole::Viewer), (eve, RoomRole::Member)] {
            apply(
                &mut st,
                RoomEvent::MemberAdded {
                    user_id: u,
                    role,
                    by: owner,
                },
            );
        }
        apply(
            &mut st,
            RoomEvent::MemberRemoved {
                user_id: eve,
                by: owner,
            },
        );
        for i in 0..MESSAGES_KEPT + 3 {
            apply(
                &mut st,
                RoomEvent::MessagePosted {
                    message_id: Uuid::now_v7(),
                    user_id: owner,
                    client_id: Some(format!("c{i}")),
                    text: "hi".into(),
                },
            );
        }
        apply(
            &mut st,
            RoomEvent::DocUpdated {
                doc: "d".into(),
                user_id: owner,
                update: vec![0, 0],
            },
        );
        // Bounded: the edit window and the client ids.
        assert_eq!(st.messages.len(), MESSAGES_KEPT);
        assert_eq!(st.client_ids.len(), CLIENT_IDS_KEPT);
        let fold = st.to_fold().unwrap();
        let back = RoomState::from_fold(fold.clone());
        assert_eq!(back.row, st.row);
        assert_eq!(back.messages, st.messages);
        assert_eq!(back.message_order, st.message_order);
        assert_eq!(back.client_ids, st.client_ids);
        assert_eq!(back.client_id_order, st.client_id_order);
        assert_eq!(back.docs, st.docs);
        assert_eq!(back.left, st.left);
        assert!(back.left.get(&eve).is_some_and(|l| l.removed));
        // And it travels as an event.
        let ev = RoomEvent::StateSnapshot { upto: n, fold };
        let rec = rec(room, n + 1, &ev);
        assert_eq!(RoomEvent::decode(&rec.envelope).unwrap(), ev);
    }
}
