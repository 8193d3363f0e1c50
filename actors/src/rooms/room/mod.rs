//! One room on this edge: an actor that owns the room's state (the fold of its stream), its
//! local subscribers and its Yjs documents, and is reached only through its mailbox.
//!
//! Every edge with a subscriber in a room runs one such actor for it. Each is a follower of
//! the room's stream and a writer to it: it appends with the exact version it has folded, so
//! two edges never interleave a decision (a conflict means another edge wrote first: it
//! catches up and decides again). Events reach it from its own appends at once, and from
//! other edges through the bus; a gap in the versions is filled from the store, so each
//! subscriber gets every event once, in offset order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use revo_events::family::room::{RoomEvent, RoomRole, RoomState, ROOM_STREAM};
use revo_events::{
    AppendRequest, EventFamily, EventLog, EventMeta, ExpectedVersion, RecordedEvent, StoreError,
};
use serde_json::json;
use tokio::sync::oneshot;
use uuid::Uuid;
use yrs::Doc;

mod docs;
mod snapshot;
mod write;

use super::frames;
use super::outbox::{Out, Outbox};
use super::yjs;
use super::RealtimeMetrics;
use crate::kit::Inbox;
use bytes::Bytes;

/// What a room needs from its edge.
#[derive(Clone)]
pub struct RoomSettings {
    /// Recent frames kept for joins that missed little (older gaps are read from the store by
    /// the session itself).
    pub ring: usize,
    /// A room without subscribers stops after this long.
    pub idle: Duration,
    /// A document gets a snapshot event after this many updates.
    pub snapshot_every: u64,
    /// Largest event payload the store takes.
    pub max_payload: usize,
    /// Largest a document may grow (its whole state, encoded): an update past it is refused
    /// (`too_large`). Kept under `max_payload`, so every document can be snapshotted.
    pub max_doc_bytes: usize,
    /// Most documents one room holds; a new name past it is refused (`too_many_docs`).
    pub max_docs: usize,
    /// Most bytes of document updates one user may store, over every room (`too_large`).
    pub max_doc_bytes_per_user: u64,
    /// A `room.state_snapshot` of the room's fold after this many events since the last, so
    /// an actor starting anywhere folds at most about this many.
    pub state_snapshot_every: i64,
}

impl Default for RoomSettings {
    fn default() -> Self {
        RoomSettings {
            ring: 512,
            idle: Duration::from_secs(60),
            snapshot_every: 100,
            max_payload: 1024 * 1024,
            max_doc_bytes: 1024 * 1024 - 16 * 1024,
            max_docs: 100,
            max_doc_bytes_per_user: 256 * 1024 * 1024,
            state_snapshot_every: 2000,
        }
    }
}

impl RoomSettings {
    /// The document cap in force: never more than a snapshot event can hold.
    pub fn doc_cap(&self) -> usize {
        self.max_doc_bytes
            .min(self.max_payload.saturating_sub(16 * 1024))
    }
}

/// A session subscribed to the room.
pub struct Subscriber {
    pub session: Uuid,
    pub user: Uuid,
    pub outbox: Outbox,
    /// A y-websocket connection to one document: it gets that document's updates and
    /// awareness as binary y-protocol messages, and nothing else.
    pub yjs: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoomError {
    #[error("no such room")]
    NotFound,
    #[error("{1}")]
    Forbidden(&'static str, String),
    #[error("{1}")]
    Invalid(&'static str, String),
    #[error("the room is archived")]
    Archived,
    #[error("{0}")]
    Unavailable(String),
}

impl RoomError {
    pub fn code(&self) -> &'static str {
        match self {
            RoomError::NotFound => "room_not_found",
            RoomError::Forbidden(c, _) | RoomError::Invalid(c, _) => c,
            RoomError::Archived => "room_archived",
            RoomError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<StoreError> for RoomError {
    fn from(e: StoreError) -> Self {
        RoomError::Unavailable(e.to_string())
    }
}

/// A change to the room, decided by the actor.
#[derive(Debug, Clone)]
pub enum Write {
    Post { client_id: String, text: String },
    Edit { message_id: Uuid, text: String },
    Delete { message_id: Uuid },
    DocUpdate { doc: String, update: Vec<u8> },
    AddMember { user: Uuid, role: RoomRole },
    ChangeRole { user: Uuid, role: RoomRole },
    RemoveMember { user: Uuid },
    Archive,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub offset: i64,
    pub message_id: Option<Uuid>,
    /// The write repeated an earlier one (same client id): nothing new was stored.
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Joined {
    /// Subscribed: what was missed is queued, then `room.joined`, then live events.
    Live { role: RoomRole, offset: i64 },
    /// Too far behind for the room's memory: read the store up to `offset`, then join again.
    Behind { offset: i64 },
}

/// A document's state for `doc.open`.
pub struct DocSync {
    /// What the client lacks (a v1 update against its state vector).
    pub update: Vec<u8>,
    /// The server's state vector, so the client can send what the server lacks.
    pub state_vector: Vec<u8>,
    pub offset: i64,
}

pub enum Command {
    Join {
        sub: Subscriber,
        after: Option<i64>,
        reply: oneshot::Sender<Result<Joined, RoomError>>,
    },
    Leave {
        session: Uuid,
    },
    Write {
        user: Uuid,
        /// An administrator acting as the room's owner.
        as_owner: bool,
        meta: EventMeta,
        op: Write,
        reply: oneshot::Sender<Result<Written, RoomError>>,
    },
    DocOpen {
        user: Uuid,
        doc: String,
        state_vector: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<DocSync, RoomError>>,
    },
    /// An event of this room from the bus.
    Event(RecordedEvent),
    /// An ephemeral frame for everyone here but the session that sent it.
    Signal {
        from: Uuid,
        frame: Arc<str>,
    },
    /// A member's presence changed.
    Presence {
        user: Uuid,
        status: String,
    },
    /// The bus may have dropped events: read the store.
    CatchUp,
}

pub struct Room {
    id: Uuid,
    log: Arc<dyn EventLog>,
    settings: RoomSettings,
    metrics: RealtimeMetrics,
    state: RoomState,
    subs: HashMap<Uuid, (Subscriber, i64)>,
    ring: VecDeque<(i64, Option<Arc<str>>)>,
    docs: HashMap<String, Doc>,
    /// Each loaded document's size: exact when loaded or snapshotted, plus the updates since
    /// (an upper bound: deletions are not subtracted).
    doc_bytes: HashMap<String, usize>,
    /// When each loaded document was last read or written: one unused for `idle` (and with
    /// no y-websocket client on it) is dropped from memory; the next use loads it again.
    doc_used: HashMap<String, tokio::time::Instant>,
    /// Every room as this edge folds them: what each user has stored in documents, and
    /// where the room's latest fold snapshot is.
    rooms: crate::LiveView<revo_events::RoomsProjection>,
    /// The offset at which this actor last tried a fold snapshot.
    state_snapshot_tried: i64,
}

const PAGE: usize = 1000;
/// Appends retried after losing a race to another edge.
const RETRIES: usize = 5;

impl Room {
    /// Folds the room's stream (the caller spawns [`Room::run`]).
    pub async fn load(
        id: Uuid,
        log: Arc<dyn EventLog>,
        settings: RoomSettings,
        metrics: RealtimeMetrics,
        rooms: crate::LiveView<revo_events::RoomsProjection>,
    ) -> Result<Room, RoomError> {
        let mut room = Room {
            rooms,
            state_snapshot_tried: 0,
            id,
            log,
            settings,
            metrics,
            state: RoomState::default(),
            subs: HashMap::new(),
            ring: VecDeque::new(),
            docs: HashMap::new(),
            doc_bytes: HashMap::new(),
            doc_used: HashMap::new(),
        };
        room.start_from_snapshot().await;
        room.catch_up().await?;
        Ok(room)
    }

    pub async fn run(
        mut self,
        mut inbox: Inbox<Command>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let mut idle_since = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                cmd = inbox.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.handle(cmd).await;
                    // No such room (yet): nothing to keep in memory.
                    if self.state.row.is_none() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    self.subs.retain(|_, (s, _)| !s.outbox.is_closed());
                    self.evict_idle_docs();
                    if !self.subs.is_empty() {
                        idle_since = tokio::time::Instant::now();
                    } else if idle_since.elapsed() >= self.settings.idle {
                        break;
                    }
                }
                _ = cancel.cancelled() => break,
            }
        }
        // Closing the inbox first makes the hub spawn a fresh room for later commands.
        inbox.close();
        while let Ok(cmd) = inbox.try_recv() {
            self.handle(cmd).await;
        }
    }

    fn evict_idle_docs(&mut self) {
        let idle = self.settings.idle;
        let open: std::collections::HashSet<&str> = self
            .subs
            .values()
            .filter_map(|(s, _)| s.yjs.as_deref())
            .collect();
        let stale: Vec<String> = self
            .doc_used
            .iter()
            .filter(|(d, t)| !open.contains(d.as_str()) && t.elapsed() >= idle)
            .map(|(d, _)| d.clone())
            .collect();
        for d in stale {
            self.docs.remove(&d);
            self.doc_bytes.remove(&d);
            self.doc_used.remove(&d);
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Join { sub, after, reply } => {
                let r = self.join(sub, after).await;
                let _ = reply.send(r);
            }
            Command::Leave { session } => {
                self.subs.remove(&session);
            }
            Command::Write {
                user,
                as_owner,
                meta,
                op,
                reply,
            } => {
                let r = self.write(user, as_owner, meta, op).await;
                let _ = reply.send(r);
            }
            Command::DocOpen {
                user,
                doc,
                state_vector,
                reply,
            } => {
                let r = self.doc_open(user, &doc, state_vector).await;
                let _ = reply.send(r);
            }
            Command::Event(ev) => {
                let v = ev.envelope.version;
                let head = self.state.offset();
                if v == head + 1 {
                    self.fold(&ev);
                } else if v > head + 1 {
                    if let Err(e) = self.catch_up().await {
                        tracing::warn!(room = %self.id, error = %e, "room: cannot fill a gap from the store");
                    }
                }
            }
            Command::Signal { from, frame } => {
                // Awareness reaches y-websocket clients of its document as a binary message.
                let mut binary: Option<(String, Bytes)> = None;
                if self.subs.values().any(|(s, _)| s.yjs.is_some()) {
                    binary = yjs::awareness_of(&frame);
                }
                for (s, _) in self.subs.values() {
                    if s.session == from {
                        continue;
                    }
                    match (&s.yjs, &binary) {
                        (None, _) => self.push(s, frame.clone()),
                        (Some(doc), Some((d, b))) if doc == d => {
                            let _ = s.outbox.push(Out::Binary(b.clone()));
                        }
                        _ => {}
                    }
                }
            }
            Command::Presence { user, status } => {
                if self.state.role_of(&user).is_some() {
                    let frame: Arc<str> = json!({"type": "presence.update", "room": self.id,
                        "user_id": user, "status": status})
                    .to_string()
                    .into();
                    for (s, _) in self.subs.values() {
                        self.push(s, frame.clone());
                    }
                }
            }
            Command::CatchUp => {
                if let Err(e) = self.catch_up().await {
                    tracing::warn!(room = %self.id, error = %e, "room: cannot catch up");
                }
            }
        }
    }

    /// Queues a JSON frame (y-websocket subscribers get none).
    fn push(&self, s: &Subscriber, frame: Arc<str>) {
        if s.yjs.is_none() && s.outbox.text(frame) {
            self.metrics.frames_out.inc();
        }
    }

    /// Reads and folds everything after the room's offset.
    async fn catch_up(&mut self) -> Result<(), RoomError> {
        loop {
            let from = self.state.offset() + 1;
            let page = self
                .log
                .read_stream(ROOM_STREAM, &self.id.to_string(), from, PAGE)
                .await?;
            for ev in &page {
                if ev.envelope.version == self.state.offset() + 1 {
                    self.fold(ev);
                }
            }
            if page.len() < PAGE {
                return Ok(());
            }
        }
    }

    /// Folds one event (the next version) and fans it out.
    fn fold(&mut self, ev: &RecordedEvent) {
        let env = &ev.envelope;
        let Ok(decoded) = RoomEvent::decode(env) else {
            // A newer build's event: keep the offset moving; nobody here can render it.
            tracing::warn!(room = %self.id, event_type = %env.event_type, "room: undecodable event skipped by the live fan-out");
            if let Some(row) = self.state.row.as_mut() {
                row.offset = env.version;
            }
            return;
        };
        self.state.apply(&decoded, env.version, env.occurred_at);
        if let RoomEvent::DocUpdated { doc, update, .. }
        | RoomEvent::DocSnapshot {
            doc, state: update, ..
        } = &decoded
        {
            if let Some(d) = self.docs.get(doc) {
                docs::apply_update(d, update);
                if let Some(n) = self.doc_bytes.get_mut(doc) {
                    *n = match decoded {
                        RoomEvent::DocSnapshot { .. } => (*n).max(update.len()),
                        _ => n.saturating_add(update.len()),
                    };
                }
            }
        }
        let frame: Option<Arc<str>> = frames::render(self.id, ev).map(Into::into);
        let v = env.version;
        if self.ring.len() >= self.settings.ring {
            self.ring.pop_front();
        }
        self.ring.push_back((v, frame.clone()));
        let lag = (Utc::now() - env.occurred_at)
            .num_microseconds()
            .unwrap_or(0)
            .max(0);
        let binary = match &decoded {
            RoomEvent::DocUpdated { doc, update, .. } => {
                Some((doc.as_str(), yjs::update_message(update)))
            }
            _ => None,
        };
        let mut gone = Vec::new();
        for (session, (s, cursor)) in self.subs.iter_mut() {
            if *cursor >= v {
                continue;
            }
            *cursor = v;
            if let Some(doc) = &s.yjs {
                if let Some((_, b)) = binary.as_ref().filter(|(d, _)| d == doc) {
                    if !s.outbox.push(Out::Binary(b.clone())) {
                        gone.push(*session);
                    }
                }
                continue;
            }
            if let Some(f) = &frame {
                if s.outbox.text(f.clone()) {
                    self.metrics.frames_out.inc();
                } else {
                    gone.push(*session);
                }
            }
        }
        if frame.is_some() && !self.subs.is_empty() {
            self.metrics.fanout.observe(lag as f64 / 1e6);
        }
        for g in gone {
            self.subs.remove(&g);
        }
        // Membership changes end subscriptions at once, on every edge that folds them.
        match decoded {
            RoomEvent::MemberRemoved { user_id, .. } => {
                self.unsubscribe(|u| *u == user_id, "removed")
            }
            RoomEvent::Archived { .. } => self.unsubscribe(|_| true, "archived"),
            _ => {}
        }
    }

    fn unsubscribe(&mut self, who: impl Fn(&Uuid) -> bool, reason: &str) {
        let frame: Arc<str> = json!({"type": "room.left", "room": self.id, "reason": reason})
            .to_string()
            .into();
        self.subs.retain(|_, (s, _)| {
            if who(&s.user) {
                let _ = s.outbox.push(Out::Left(self.id, frame.clone()));
                false
            } else {
                true
            }
        });
    }

    async fn join(&mut self, sub: Subscriber, after: Option<i64>) -> Result<Joined, RoomError> {
        let Some(row) = self.state.row.as_ref() else {
            return Err(RoomError::NotFound);
        };
        if row.archived {
            return Err(RoomError::Archived);
        }
        let public = row.is_public();
        let role = match self.state.role_of(&sub.user) {
            Some(r) => r,
            None if public => {
                // Joining a public room makes one a member, in the role one had before (a
                // viewer who left comes back a viewer; an owner, a member); one whom an owner
                // removed stays out until added again.
                let back = match self.state.left.get(&sub.user) {
                    Some(l) if l.removed => {
                        return Err(RoomError::Forbidden(
                            "removed",
                            "you were removed from this room: ask its owner to add you again"
                                .into(),
                        ))
                    }
                    Some(l) if l.role == RoomRole::Viewer => RoomRole::Viewer,
                    _ => RoomRole::Member,
                };
                let meta = EventMeta {
                    actor: Some(format!("user:{}", sub.user)),
                    ..Default::default()
                };
                self.decide(meta, true, |st| {
                    if st.role_of(&sub.user).is_some() {
                        return Ok(None);
                    }
                    Ok(Some(RoomEvent::MemberAdded {
                        user_id: sub.user,
                        role: back,
                        by: sub.user,
                    }))
                })
                .await?;
                self.state.role_of(&sub.user).unwrap_or(back)
            }
            None => {
                return Err(RoomError::Forbidden(
                    "not_a_member",
                    "this room is private: ask its owner for an invitation".into(),
                ))
            }
        };
        let head = self.state.offset();
        let from = after.unwrap_or(head).max(0);
        // What the client missed must all be in the ring, or it reads the store first.
        if from < head {
            let oldest = self.ring.front().map_or(head + 1, |(v, _)| *v);
            if from + 1 < oldest {
                return Ok(Joined::Behind { offset: head });
            }
            for (v, frame) in &self.ring {
                if *v > from {
                    if let Some(f) = frame {
                        self.push(&sub, f.clone());
                    }
                }
            }
        }
        let joined: Arc<str> = json!({"type": "room.joined", "room": self.id, "role": role,
            "offset": head.max(from), "name": self.state.row.as_ref().map(|r| r.name.clone())})
        .to_string()
        .into();
        self.push(&sub, joined);
        self.subs.insert(sub.session, (sub, head.max(from)));
        Ok(Joined::Live {
            role,
            offset: head.max(from),
        })
    }

    /// Decides an event from the current state and appends it at the exact next version;
    /// on a conflict, catches up and decides again. `Ok(None)` from `decide` appends nothing.
    ///
    /// `exact: false` appends at whatever the version is (messages and document updates,
    /// which need no exact state: a busy room written from several edges would otherwise
    /// spend its time losing races); the event is then folded in its place among the others.
    async fn decide(
        &mut self,
        meta: EventMeta,
        exact: bool,
        mut decide: impl FnMut(&RoomState) -> Result<Option<RoomEvent>, RoomError>,
    ) -> Result<Option<i64>, RoomError> {
        for attempt in 0..RETRIES {
            if attempt > 0 {
                // Losing twice in a row: let the other writer's burst pass.
                let jitter = rand::random::<u64>() % (5 << attempt);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            let Some(ev) = decide(&self.state)? else {
                return Ok(None);
            };
            let new = ev
                .to_new_event(meta.clone())
                .map_err(|e| RoomError::Invalid("invalid_frame", e.to_string()))?;
            let head = self.state.offset();
            let req = AppendRequest::new(
                ROOM_STREAM,
                self.id.to_string(),
                if exact {
                    ExpectedVersion::Exact(head)
                } else {
                    ExpectedVersion::Any
                },
                vec![new.clone()],
            );
            match self.log.append(req).await {
                Ok(a) if a.stream_version != head + 1 => {
                    // Others wrote in between: fold theirs and ours in order.
                    self.catch_up().await?;
                    return Ok(Some(a.stream_version));
                }
                Ok(a) => {
                    let rec = RecordedEvent {
                        position: a.last_position,
                        envelope: revo_events::Envelope {
                            event_id: new.event_id,
                            stream_type: ROOM_STREAM.into(),
                            stream_id: self.id.to_string(),
                            version: a.stream_version,
                            event_type: new.event_type,
                            schema: new.schema,
                            occurred_at: new.occurred_at,
                            meta: new.meta,
                            payload: new.payload,
                        },
                    };
                    self.fold(&rec);
                    return Ok(Some(a.stream_version));
                }
                Err(StoreError::Conflict { .. }) => self.catch_up().await?,
                Err(StoreError::PayloadTooLarge { size, limit, .. }) => {
                    return Err(RoomError::Invalid(
                        "too_large",
                        format!("{size} bytes is over the limit of {limit}"),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RoomError::Unavailable(
            "the room is too busy right now; try again".into(),
        ))
    }
}
