//! The edge's real-time hub: finds (or starts) the room actors of this edge, knows this edge's
//! sessions by user, and connects both to the rest of the cluster:
//!
//! - room and presence **events** arrive through the bus (`<prefix>.evt.room.*`,
//!   `<prefix>.evt.presence.*`) and go to the local room actors;
//! - **signals** (typing, cursors, awareness, notifications, generation progress) travel on
//!   core NATS (`<prefix>.sig.room.<id>`, `<prefix>.sig.user.<id>`), never persisted;
//! - every edge announces itself on `<prefix>.sig.node.<id>` each second; the sessions of an
//!   edge silent for `node_timeout` are closed by the others (`node_lost`), so a dead edge's
//!   users go offline.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use revo_events::family::presence::{PresenceEvent, PRESENCE_STREAM};
use revo_events::family::room::ROOM_STREAM;
use revo_events::{
    AppendRequest, EventFamily, EventLog, EventMeta, ExpectedVersion, PresenceProjection,
    RecordedEvent, RoomsProjection, StoreError,
};
use revo_nats::{Bus, Subjects};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::outbox::Outbox;
use super::room::{Command, Room, RoomError, RoomSettings};
use super::RealtimeMetrics;
use crate::kit::{lock, mailbox, Context, Handle, SendError, Supervisor};
use crate::LiveView;

#[derive(Clone)]
pub struct HubSettings {
    pub room: RoomSettings,
    /// A room's mailbox.
    pub room_mailbox: usize,
    /// How long a closed session keeps its user present (a reconnect within it does not flap).
    pub linger: Duration,
    /// How often this edge announces itself.
    pub heartbeat: Duration,
    /// An edge silent this long is dead: its sessions are closed.
    pub node_timeout: Duration,
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            room: RoomSettings::default(),
            room_mailbox: 1024,
            linger: Duration::from_secs(3),
            heartbeat: Duration::from_secs(1),
            node_timeout: Duration::from_secs(5),
        }
    }
}

/// A session as the hub knows it.
#[derive(Clone)]
pub struct SessionEntry {
    pub outbox: Outbox,
    /// Topics the session subscribed to (`generation`, `workflow`).
    pub topics: Arc<Mutex<HashSet<String>>>,
    /// The API key the session authenticated with: such a session hears only that key's
    /// generations (the ledger shows a key only its own requests too).
    pub key: Option<Uuid>,
}

enum Kind {
    Events,
    Signals,
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    log: Arc<dyn EventLog>,
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    node: String,
    settings: HubSettings,
    metrics: RealtimeMetrics,
    rooms_view: LiveView<RoomsProjection>,
    presence_view: LiveView<PresenceProjection>,
    rooms: Mutex<HashMap<Uuid, Handle<Command>>>,
    sessions: Mutex<HashMap<Uuid, HashMap<Uuid, SessionEntry>>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// Fires when the edge starts to stop: sessions say `bye` and close.
    closing: CancellationToken,
    /// When each other edge was last heard (`realtime.nodes`).
    seen: Mutex<HashMap<String, tokio::time::Instant>>,
    started: tokio::time::Instant,
    /// The workflow engine, for sessions' `workflow.*` decisions (set once it starts).
    workflows: std::sync::OnceLock<crate::workflows::Engine>,
    audit: std::sync::OnceLock<crate::audit::Audit>,
}

impl Hub {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        log: Arc<dyn EventLog>,
        bus: Arc<dyn Bus>,
        subjects: Subjects,
        node: String,
        settings: HubSettings,
        metrics: RealtimeMetrics,
        rooms_view: LiveView<RoomsProjection>,
        presence_view: LiveView<PresenceProjection>,
        sup: &Supervisor,
    ) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                log,
                bus,
                subjects,
                node,
                settings,
                metrics,
                rooms_view,
                presence_view,
                rooms: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
                tracker: sup.tracker().clone(),
                cancel: sup.cancel_token().clone(),
                closing: CancellationToken::new(),
                seen: Mutex::new(HashMap::new()),
                started: tokio::time::Instant::now(),
                workflows: std::sync::OnceLock::new(),
                audit: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Whether the node `node` is alive: this one, or one heard within the node timeout. An
    /// edge not heard yet counts as alive until this one has listened for that long.
    pub fn node_alive(&self, node: &str) -> bool {
        if node == self.inner.node {
            return true;
        }
        let timeout = self.inner.settings.node_timeout;
        let now = tokio::time::Instant::now();
        match lock(&self.inner.seen).get(node) {
            Some(t) => now.duration_since(*t) < timeout,
            None => now.duration_since(self.inner.started) < timeout,
        }
    }

    /// Hands sessions the workflow engine (it holds this hub, so it comes after).
    pub fn set_workflows(&self, engine: crate::workflows::Engine) {
        let _ = self.inner.workflows.set(engine);
    }

    pub fn workflows(&self) -> Option<&crate::workflows::Engine> {
        self.inner.workflows.get()
    }

    /// The audit log's writer, for what sessions decide (run approvals over the socket).
    pub fn set_audit(&self, audit: crate::audit::Audit) {
        let _ = self.inner.audit.set(audit);
    }

    pub fn audit(&self) -> Option<&crate::audit::Audit> {
        self.inner.audit.get()
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.inner.log
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn metrics(&self) -> &RealtimeMetrics {
        &self.inner.metrics
    }

    pub fn rooms_view(&self) -> &LiveView<RoomsProjection> {
        &self.inner.rooms_view
    }

    pub fn presence_view(&self) -> &LiveView<PresenceProjection> {
        &self.inner.presence_view
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    /// Fires when the edge begins to stop.
    pub fn closing(&self) -> &CancellationToken {
        &self.inner.closing
    }

    /// Tells every session to say `bye` and close (the edge is stopping).
    pub fn close_all(&self) {
        self.inner.closing.cancel();
    }

    /// The room's actor on this edge, started if it is not running.
    fn room(&self, id: Uuid) -> Handle<Command> {
        let mut rooms = lock(&self.inner.rooms);
        if let Some(h) = rooms.get(&id).filter(|h| !h.is_closed()) {
            return h.clone();
        }
        let (handle, inbox) = mailbox("room", self.inner.settings.room_mailbox);
        rooms.insert(id, handle.clone());
        self.inner.metrics.rooms.set(rooms.len() as i64);
        let (log, settings, metrics, cancel) = (
            self.inner.log.clone(),
            self.inner.settings.room.clone(),
            self.inner.metrics.clone(),
            self.inner.cancel.clone(),
        );
        let rooms_view = self.inner.rooms_view.clone();
        self.inner.tracker.spawn(async move {
            match Room::load(id, log, settings, metrics, rooms_view).await {
                Ok(room) => room.run(inbox, cancel).await,
                // Queued commands see the room gone and retry or fail.
                Err(e) => tracing::warn!(room = %id, error = %e, "room: cannot load"),
            }
        });
        handle
    }

    /// Asks the room's actor, starting it if needed (once more if it had just stopped).
    pub async fn ask<R>(
        &self,
        room: Uuid,
        make: impl Fn(oneshot::Sender<Result<R, RoomError>>) -> Command,
    ) -> Result<R, RoomError> {
        for _ in 0..2 {
            match self.room(room).ask(&make).await {
                Ok(r) => return r,
                Err(SendError::Full(_)) => {
                    return Err(RoomError::Unavailable(
                        "the room is busy; try again shortly".into(),
                    ))
                }
                Err(SendError::Gone(_)) => {}
            }
        }
        Err(RoomError::Unavailable(
            "the room could not be loaded".into(),
        ))
    }

    /// Tells a running room actor, if this edge has one.
    fn tell_local(&self, room: Uuid, cmd: Command) {
        let h = lock(&self.inner.rooms).get(&room).cloned();
        if let Some(h) = h {
            if let Err(SendError::Full(_)) = h.tell(cmd) {
                // It will notice the gap at its next event, or at the sweep's catch-up.
                let _ = h.tell(Command::CatchUp);
            }
        }
    }

    pub fn leave(&self, room: Uuid, session: Uuid) {
        self.tell_local(room, Command::Leave { session });
    }

    /// Registers a session (for notifications and topics to its user).
    pub fn register(&self, user: Uuid, session: Uuid, entry: SessionEntry) {
        lock(&self.inner.sessions)
            .entry(user)
            .or_default()
            .insert(session, entry);
        self.inner.metrics.connections.inc();
    }

    pub fn unregister(&self, user: Uuid, session: Uuid) {
        let mut s = lock(&self.inner.sessions);
        if let Some(m) = s.get_mut(&user) {
            if m.remove(&session).is_some() {
                self.inner.metrics.connections.dec();
            }
            if m.is_empty() {
                s.remove(&user);
            }
        }
    }

    async fn append_presence(
        &self,
        user: Uuid,
        expected: ExpectedVersion,
        ev: PresenceEvent,
        actor: &str,
    ) -> Result<(), StoreError> {
        let meta = EventMeta {
            actor: Some(actor.to_owned()),
            ..Default::default()
        };
        let new = ev
            .to_new_event(meta)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.inner
            .log
            .append(AppendRequest::new(
                PRESENCE_STREAM,
                user.to_string(),
                expected,
                vec![new],
            ))
            .await
            .map(|_| ())
    }

    pub async fn session_opened(&self, user: Uuid, session: Uuid) -> Result<(), StoreError> {
        let ev = PresenceEvent::SessionOpened {
            session_id: session,
            node: self.inner.node.clone(),
        };
        self.append_presence(user, ExpectedVersion::Any, ev, &format!("user:{user}"))
            .await
    }

    /// Records the session's end after the linger (at once if the edge is stopping).
    pub fn session_closed(&self, user: Uuid, session: Uuid, reason: &'static str) {
        let hub = self.clone();
        self.inner.tracker.spawn(async move {
            let linger = hub.inner.settings.linger;
            let reason = tokio::select! {
                _ = tokio::time::sleep(linger) => reason,
                _ = hub.inner.closing.cancelled() => "shutdown",
                _ = hub.inner.cancel.cancelled() => "shutdown",
            };
            let ev = PresenceEvent::SessionClosed {
                session_id: session,
                reason: reason.into(),
            };
            if let Err(e) = hub
                .append_presence(user, ExpectedVersion::Any, ev, "system")
                .await
            {
                tracing::warn!(%user, %session, error = %e, "presence: session end not recorded; the sweep will close it");
            }
        });
    }

    pub async fn set_status(&self, user: Uuid, status: &str) -> Result<(), StoreError> {
        let ev = PresenceEvent::StatusSet {
            status: status.to_owned(),
        };
        self.append_presence(user, ExpectedVersion::Any, ev, &format!("user:{user}"))
            .await
    }

    /// An ephemeral frame for a room's sessions on every edge (but `from`).
    pub async fn room_signal(&self, room: Uuid, from: Uuid, frame: String) {
        let Ok(subject) = self.inner.subjects.signal("room", &room.to_string()) else {
            return;
        };
        let mut payload = Vec::with_capacity(16 + frame.len());
        payload.extend_from_slice(from.as_bytes());
        payload.extend_from_slice(frame.as_bytes());
        if let Err(e) = self
            .inner
            .bus
            .publish_signal(&subject, payload.into())
            .await
        {
            self.inner.metrics.signals_dropped.inc();
            tracing::debug!(error = %e, "signal not published");
        }
    }

    /// A frame for a user's sessions on every edge: `topic` empty for everyone, else only the
    /// sessions subscribed to it.
    pub async fn user_signal(&self, user: Uuid, topic: &str, frame: String) {
        self.user_signal_from(user, None, topic, frame).await
    }

    /// A frame for `user`'s sessions subscribed to `topic`, caused by the API key `key` (if
    /// any): sessions of other keys of the user do not get it.
    pub async fn user_signal_from(
        &self,
        user: Uuid,
        key: Option<Uuid>,
        topic: &str,
        frame: String,
    ) {
        let Ok(subject) = self.inner.subjects.signal("user", &user.to_string()) else {
            return;
        };
        // `topic[ key]`, a newline, the frame.
        let payload = match key {
            Some(k) => format!("{topic} {k}\n{frame}"),
            None => format!("{topic}\n{frame}"),
        };
        if let Err(e) = self
            .inner
            .bus
            .publish_signal(&subject, Bytes::from(payload))
            .await
        {
            self.inner.metrics.signals_dropped.inc();
            tracing::debug!(error = %e, "signal not published");
        }
    }

    fn deliver_to_user(&self, user: Uuid, header: &str, frame: Arc<str>) {
        let (topic, from) = match header.split_once(' ') {
            Some((t, k)) => (t, Uuid::try_parse(k).ok()),
            None => (header, None),
        };
        let sessions: Vec<SessionEntry> = lock(&self.inner.sessions)
            .get(&user)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for s in sessions {
            // A key's session hears only its own generations.
            if topic == "generation" && s.key.is_some() && s.key != from {
                continue;
            }
            if (topic.is_empty() || lock(&s.topics).contains(topic)) && s.outbox.text(frame.clone())
            {
                self.inner.metrics.frames_out.inc();
            }
        }
    }

    /// A frame for every session on this edge subscribed to `topic` (which only sessions
    /// allowed to read it can subscribe to).
    fn deliver_to_all(&self, topic: &str, frame: Arc<str>) {
        let sessions: Vec<SessionEntry> = lock(&self.inner.sessions)
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        for s in sessions {
            if lock(&s.topics).contains(topic) && s.outbox.text(frame.clone()) {
                self.inner.metrics.frames_out.inc();
            }
        }
    }

    /// Starts the hub's followers under the supervisor.
    pub fn start(&self, sup: &Supervisor) {
        let hub = self.clone();
        sup.spawn("realtime.events", move |ctx| {
            let hub = hub.clone();
            async move { hub.follow_events(ctx).await }
        });
        let hub = self.clone();
        sup.spawn("realtime.signals", move |ctx| {
            let hub = hub.clone();
            async move { hub.follow_signals(ctx).await }
        });
        let hub = self.clone();
        sup.spawn("realtime.nodes", move |ctx| {
            let hub = hub.clone();
            async move { hub.watch_nodes(ctx).await }
        });
    }

    /// Every event of a stream type, or every signal of a kind.
    async fn subscribe(&self, kind: Kind, name: &str) -> Result<revo_nats::MessageStream, String> {
        let s = &self.inner.subjects;
        let bus = &self.inner.bus;
        match kind {
            Kind::Events => {
                let f = s.events_of_type(name).map_err(|e| e.to_string())?;
                bus.subscribe_events(&f).await
            }
            Kind::Signals => {
                let f = s.signals_of_kind(name).map_err(|e| e.to_string())?;
                bus.subscribe_signals(&f).await
            }
        }
        .map_err(|e| e.to_string())
    }

    async fn follow_events(self, ctx: Context) -> Result<(), String> {
        let rooms = self.subscribe(Kind::Events, ROOM_STREAM).await?;
        let presence = self.subscribe(Kind::Events, PRESENCE_STREAM).await?;
        // Anything published before the subscriptions began is caught up from the store.
        self.catch_up_all();
        ctx.health.ready();
        let mut merged = futures::stream::select(rooms, presence);
        let mut pending: HashMap<Uuid, i64> = HashMap::new();
        let mut last: HashMap<Uuid, String> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                msg = merged.next() => {
                    let Some(msg) = msg else { return Err("the bus ended the subscription".into()) };
                    let msg = match msg {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "realtime: bus subscription lagged; catching up");
                            self.catch_up_all();
                            continue;
                        }
                    };
                    let Ok(env) = revo_events::codec::decode_wire(&msg.payload) else { continue };
                    let Ok(id) = Uuid::try_parse(&env.stream_id) else { continue };
                    if env.stream_type == ROOM_STREAM {
                        self.tell_local(id, Command::Event(RecordedEvent { position: 0, envelope: env }));
                    } else if env.stream_type == PRESENCE_STREAM {
                        let v = pending.entry(id).or_insert(0);
                        *v = (*v).max(env.version);
                    }
                }
                _ = tick.tick(), if !pending.is_empty() => {
                    self.resolve_presence(&mut pending, &mut last);
                }
                _ = ctx.cancel.cancelled() => return Ok(()),
            }
        }
    }

    /// Presence changes the view has folded become `presence.update` frames in the user's
    /// rooms on this edge, once per change of the merged status.
    fn resolve_presence(&self, pending: &mut HashMap<Uuid, i64>, last: &mut HashMap<Uuid, String>) {
        let mut changed = Vec::new();
        {
            let view = self.inner.presence_view.read();
            pending.retain(|user, version| {
                let row = view.get(user);
                if row.is_none_or(|r| r.version < *version) {
                    return true;
                }
                let status = view.status(user).to_owned();
                if last.get(user) != Some(&status) {
                    last.insert(*user, status.clone());
                    changed.push((*user, status));
                }
                false
            });
        }
        if last.len() > 100_000 {
            last.clear();
        }
        for (user, status) in changed {
            let rooms: Vec<Uuid> = self
                .inner
                .rooms_view
                .read()
                .of_member(&user)
                .map(|r| r.room_id)
                .collect();
            for room in rooms {
                self.tell_local(
                    room,
                    Command::Presence {
                        user,
                        status: status.clone(),
                    },
                );
            }
        }
    }

    fn catch_up_all(&self) {
        let rooms: Vec<Handle<Command>> = lock(&self.inner.rooms).values().cloned().collect();
        for r in rooms {
            let _ = r.tell(Command::CatchUp);
        }
    }

    async fn follow_signals(self, ctx: Context) -> Result<(), String> {
        let room_f = self
            .inner
            .subjects
            .signals_of_kind("room")
            .map_err(|e| e.to_string())?;
        let rooms = self.subscribe(Kind::Signals, "room").await?;
        let users = self.subscribe(Kind::Signals, "user").await?;
        let audit = self.subscribe(Kind::Signals, "audit").await?;
        let audit_f = self
            .inner
            .subjects
            .signals_of_kind("audit")
            .map_err(|e| e.to_string())?;
        ctx.health.ready();
        let mut merged = futures::stream::select(futures::stream::select(rooms, users), audit);
        loop {
            tokio::select! {
                msg = merged.next() => {
                    let Some(msg) = msg else { return Err("the bus ended the subscription".into()) };
                    let Ok(msg) = msg else { continue };
                    if msg.subject.starts_with(&audit_f[..audit_f.len() - 1]) {
                        // The audit log's live tail, for sessions subscribed to `audit`.
                        if let Ok(frame) = std::str::from_utf8(&msg.payload) {
                            self.deliver_to_all("audit", frame.into());
                        }
                        continue;
                    }
                    let Some(id) = msg.subject.rsplit('.').next().and_then(|t| Uuid::try_parse(t).ok()) else { continue };
                    if msg.subject.starts_with(&room_f[..room_f.len() - 1]) {
                        if msg.payload.len() < 16 { continue }
                        let (from, frame) = msg.payload.split_at(16);
                        let Ok(from) = Uuid::from_slice(from) else { continue };
                        let Ok(frame) = std::str::from_utf8(frame) else { continue };
                        self.tell_local(id, Command::Signal { from, frame: frame.into() });
                    } else {
                        let Ok(text) = std::str::from_utf8(&msg.payload) else { continue };
                        let Some((topic, frame)) = text.split_once('\n') else { continue };
                        self.deliver_to_user(id, topic, frame.into());
                    }
                }
                _ = ctx.cancel.cancelled() => return Ok(()),
            }
        }
    }

    /// Announces this edge, hears the others, closes the sessions of edges gone silent, and
    /// stops idle room actors' handles from piling up.
    async fn watch_nodes(self, ctx: Context) -> Result<(), String> {
        let s = &self.inner.subjects;
        let me = s
            .signal("node", &self.inner.node)
            .map_err(|e| e.to_string())?;
        let mut heard = self.subscribe(Kind::Signals, "node").await?;
        ctx.health.ready();
        let started = self.inner.started;
        let mut beat = tokio::time::interval(self.inner.settings.heartbeat);
        loop {
            tokio::select! {
                msg = heard.next() => {
                    let Some(Ok(msg)) = msg else { continue };
                    if let Some(node) = msg.subject.rsplit('.').next() {
                        lock(&self.inner.seen).insert(node.to_owned(), tokio::time::Instant::now());
                    }
                }
                _ = beat.tick() => {
                    let _ = self.inner.bus.publish_signal(&me, Bytes::new()).await;
                    lock(&self.inner.rooms).retain(|_, h| !h.is_closed());
                    self.inner.metrics.rooms.set(lock(&self.inner.rooms).len() as i64);
                    // Unknown edges count as last heard when this one started.
                    let timeout = self.inner.settings.node_timeout;
                    let now = tokio::time::Instant::now();
                    if now.duration_since(started) < timeout {
                        continue;
                    }
                    let dead = |node: &str| !self.node_alive(node);
                    let lost: Vec<(uuid::Uuid, i64, Vec<Uuid>)> = self
                        .inner
                        .presence_view
                        .read()
                        .all()
                        .filter_map(|row| {
                            let sessions: Vec<Uuid> = row
                                .sessions
                                .iter()
                                .filter(|(_, node)| dead(node))
                                .map(|(s, _)| *s)
                                .collect();
                            (!sessions.is_empty()).then_some((row.user_id, row.version, sessions))
                        })
                        .collect();
                    for (user, version, sessions) in lost {
                        // The exact version: of all the edges sweeping, one records it.
                        let mut expected = version;
                        for session in sessions {
                            let ev = PresenceEvent::SessionClosed { session_id: session, reason: "node_lost".into() };
                            match self.append_presence(user, ExpectedVersion::Exact(expected), ev, "system").await {
                                Ok(()) => expected += 1,
                                Err(_) => break,
                            }
                        }
                    }
                    lock(&self.inner.seen).retain(|_, t| now.duration_since(*t) < timeout * 10);
                }
                _ = ctx.cancel.cancelled() => return Ok(()),
            }
        }
    }
}
