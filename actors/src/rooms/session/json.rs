//! A connection speaking Revo's JSON frames (docs/websocket.md).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use revo_events::family::presence::STATUSES;
use revo_events::family::room::{RoomRole, ROOM_STREAM};
use revo_events::EventMeta;
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::super::frames::{self, BadFrame, ClientFrame, MAX_NAME, MAX_SIGNAL, MAX_TEXT};
use super::super::hub::{Hub, SessionEntry};
use super::super::outbox::{outbox, Out, Outbox, OutboxRx};
use super::super::room::{Command, Joined, RoomError, Subscriber, Write, Written};
use super::{close, Bucket, Close, Inbound, SessionSettings, Socket, Who};

/// Events read per page when a join catches up from the store.
const CATCH_UP_PAGE: usize = 16;
/// Rendered frames held per page at most (at least one event).
const CATCH_UP_BYTES: usize = 1024 * 1024;

struct Session {
    hub: Hub,
    who: Who,
    id: Uuid,
    settings: SessionSettings,
    outbox: Outbox,
    joined: HashMap<Uuid, RoomRole>,
    topics: Arc<Mutex<HashSet<String>>>,
    frames: Bucket,
    signals: Bucket,
    strikes: u32,
}

/// Runs a connection to its end.
pub async fn run(
    hub: Hub,
    who: Who,
    settings: SessionSettings,
    mut inbound: impl Stream<Item = Inbound> + Unpin,
    mut socket: impl Socket,
) {
    let id = Uuid::now_v7();
    let (tx, mut rx) = outbox(settings.outbox_frames, settings.outbox_bytes);
    let topics = Arc::new(Mutex::new(HashSet::new()));
    hub.register(
        who.user,
        id,
        SessionEntry {
            outbox: tx.clone(),
            topics: topics.clone(),
            key: who.key,
        },
    );
    if let Err(e) = hub.session_opened(who.user, id).await {
        tracing::warn!(error = %e, "presence: session start not recorded");
    }
    let mut s = Session {
        frames: Bucket::new(settings.rate, settings.burst),
        signals: Bucket::new(settings.signal_rate, settings.signal_burst),
        hub: hub.clone(),
        id,
        settings,
        outbox: tx,
        joined: HashMap::new(),
        topics,
        strikes: 0,
        who,
    };
    let welcome = json!({
        "type": "welcome", "session_id": id, "user_id": s.who.user, "username": s.who.username,
        "node": hub.node(), "heartbeat_ms": s.settings.heartbeat.as_millis() as u64,
        "limits": {"max_frame_bytes": s.settings.max_frame, "frames_per_second": s.settings.rate,
            "signals_per_second": s.settings.signal_rate, "max_text_bytes": MAX_TEXT},
    });
    let ended = if socket.text(&welcome.to_string()).await {
        s.serve(&mut inbound, &mut socket, &mut rx).await
    } else {
        Close(close::NORMAL, "")
    };
    if ended.0 != close::NORMAL || !ended.1.is_empty() {
        socket.close(ended.0, ended.1).await;
    }
    hub.metrics()
        .closes
        .with_label_values(&[&ended.0.to_string()])
        .inc();
    for room in s.joined.keys() {
        hub.leave(*room, id);
    }
    hub.unregister(s.who.user, id);
    let reason = match ended.0 {
        close::UNAUTHORIZED => "revoked",
        close::GOING_AWAY => "shutdown",
        _ => "closed",
    };
    hub.session_closed(s.who.user, id, reason);
}

impl Session {
    async fn serve(
        &mut self,
        inbound: &mut (impl Stream<Item = Inbound> + Unpin),
        socket: &mut impl Socket,
        rx: &mut OutboxRx,
    ) -> Close {
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.tick().await;
        let mut recheck = tokio::time::interval(self.settings.recheck);
        recheck.tick().await;
        let mut heard = Instant::now();
        let overflow = rx.overflow.clone();
        let closing = self.hub.closing().clone();
        loop {
            tokio::select! {
                biased;
                _ = closing.cancelled() => {
                    let _ = socket.text(&json!({"type": "bye", "reason": "shutdown"}).to_string()).await;
                    return Close(close::GOING_AWAY, "the server is restarting; reconnect");
                }
                _ = overflow.cancelled() => {
                    self.hub.metrics().overflows.inc();
                    return Close(close::SLOW_CONSUMER, "too slow to read; reconnect with your last offset");
                }
                out = rx.recv() => {
                    let ok = match out {
                        Some(Out::Text(t)) => socket.text(&t).await,
                        Some(Out::Binary(b)) => socket.binary(b).await,
                        Some(Out::Left(room, t)) => {
                            self.joined.remove(&room);
                            socket.text(&t).await
                        }
                        None => true,
                    };
                    if !ok {
                        return Close(close::NORMAL, "");
                    }
                }
                msg = inbound.next() => {
                    heard = Instant::now();
                    match msg {
                        Some(Inbound::Text(t)) => {
                            // Boxed: an idle connection's task then holds only the loop's
                            // state, not the largest frame handler's.
                            if let Some(c) = Box::pin(self.on_text(&t, socket)).await {
                                return c;
                            }
                        }
                        Some(Inbound::Binary(_)) => {
                            self.refuse(None, "invalid_frame", "frames are JSON text");
                        }
                        Some(Inbound::Ping(b)) => {
                            if !socket.pong(&b).await {
                                return Close(close::NORMAL, "");
                            }
                        }
                        Some(Inbound::Pong) => {}
                        Some(Inbound::TooBig) => return Close(close::TOO_BIG, "frame too large"),
                        Some(Inbound::Close) | Some(Inbound::Broken) | None => return Close(close::NORMAL, ""),
                    }
                    if self.strikes > self.settings.strikes {
                        return Close(close::FLOOD, "too many frames refused; slow down");
                    }
                }
                _ = heartbeat.tick() => {
                    if heard.elapsed() >= self.settings.dead_after {
                        return Close(close::HEARTBEAT, "no heartbeat");
                    }
                    if !socket.ping(b"revo").await {
                        return Close(close::NORMAL, "");
                    }
                }
                _ = recheck.tick() => {
                    if !(self.who.still_valid)() {
                        let _ = socket.text(&frames::error("unauthorized", "the credential was revoked, expired or its user disabled", None)).await;
                        return Close(close::UNAUTHORIZED, "credential no longer valid");
                    }
                }
            }
        }
    }

    /// Queues a frame for the client (after what is already queued).
    fn send(&self, frame: String) {
        let _ = self.outbox.text(frame);
    }

    fn refuse(&mut self, id: Option<&Value>, code: &str, message: &str) {
        self.strikes += 1;
        self.send(frames::error(code, message, id));
    }

    fn room_error(&mut self, id: Option<&Value>, e: RoomError) {
        let (code, message) = (e.code(), e.to_string());
        self.refuse(id, code, &message);
    }

    async fn on_text(&mut self, text: &str, socket: &mut impl Socket) -> Option<Close> {
        let metrics = self.hub.metrics().clone();
        if text.len() > self.settings.max_frame {
            metrics.frames_in.with_label_values(&["invalid"]).inc();
            let m = format!("frames are at most {} bytes", self.settings.max_frame);
            self.refuse(None, "frame_too_large", &m);
            return None;
        }
        if !self.frames.take() {
            metrics.frames_in.with_label_values(&["throttled"]).inc();
            self.refuse(None, "rate_limited", "too many frames; slow down");
            return None;
        }
        let (id, frame) = frames::parse(text);
        let frame = match frame {
            Ok(f) => f,
            Err(BadFrame { code, message }) => {
                metrics.frames_in.with_label_values(&["invalid"]).inc();
                self.refuse(id.as_ref(), code, &message);
                return None;
            }
        };
        metrics.frames_in.with_label_values(&[frame.kind()]).inc();
        let id = id.as_ref();
        match frame {
            ClientFrame::Auth { .. } => self.refuse(
                id,
                "already_authenticated",
                "this connection is authenticated",
            ),
            ClientFrame::Ping {} => self.send(frames::with_id(json!({"type": "pong"}), id)),
            ClientFrame::Pong {} => {}
            ClientFrame::Join { room, after } => {
                if after.is_some_and(|a| a < 0) {
                    self.refuse(id, "invalid_frame", "`after` is an offset (0 or more)");
                } else {
                    self.join(room, after, id, socket).await;
                }
            }
            ClientFrame::Leave { room } => {
                if self.joined.remove(&room).is_some() {
                    self.hub.leave(room, self.id);
                    self.send(frames::with_id(
                        json!({"type": "room.left", "room": room, "reason": "left"}),
                        id,
                    ));
                } else {
                    self.refuse(id, "not_joined", "join the room first");
                }
            }
            ClientFrame::Send {
                room,
                client_id,
                text,
            } => {
                if client_id.is_empty() || client_id.len() > MAX_NAME {
                    self.refuse(id, "invalid_frame", "`client_id` is 1-128 bytes");
                } else if text.is_empty() || text.len() > MAX_TEXT {
                    self.refuse(id, "invalid_frame", "`text` is 1-16384 bytes");
                } else {
                    let op = Write::Post {
                        client_id: client_id.clone(),
                        text,
                    };
                    if let Some(w) = self.write(room, op, id).await {
                        self.send(frames::with_id(
                            json!({"type": "message.ack", "room": room, "client_id": client_id,
                                "message_id": w.message_id, "offset": w.offset, "duplicate": w.duplicate}),
                            id,
                        ));
                    }
                }
            }
            ClientFrame::Edit {
                room,
                message_id,
                text,
            } => {
                if text.is_empty() || text.len() > MAX_TEXT {
                    self.refuse(id, "invalid_frame", "`text` is 1-16384 bytes");
                } else if let Some(w) = self.write(room, Write::Edit { message_id, text }, id).await
                {
                    self.send(frames::with_id(
                        json!({"type": "message.ack", "room": room, "op": "edit",
                            "message_id": message_id, "offset": w.offset}),
                        id,
                    ));
                }
            }
            ClientFrame::Delete { room, message_id } => {
                if let Some(w) = self.write(room, Write::Delete { message_id }, id).await {
                    self.send(frames::with_id(
                        json!({"type": "message.ack", "room": room, "op": "delete",
                            "message_id": message_id, "offset": w.offset}),
                        id,
                    ));
                }
            }
            ClientFrame::PresenceSet { status } => {
                if !STATUSES.contains(&status.as_str()) {
                    self.refuse(id, "invalid_frame", "`status` is online, away or busy");
                } else if !self.signals.take() {
                    // Each change is an event: limited like signals.
                    self.refuse(id, "rate_limited", "too many presence changes; slow down");
                } else if let Err(e) = self.hub.set_status(self.who.user, &status).await {
                    self.refuse(id, "unavailable", &e.to_string());
                } else {
                    self.send(frames::with_id(
                        json!({"type": "presence.ack", "status": status}),
                        id,
                    ));
                }
            }
            ClientFrame::TypingStart { room } => {
                self.signal(room, json!({"type": "typing.start"}), id).await
            }
            ClientFrame::TypingStop { room } => {
                self.signal(room, json!({"type": "typing.stop"}), id).await
            }
            ClientFrame::Cursor {
                room,
                doc,
                position,
            } => {
                self.signal(
                    room,
                    json!({"type": "cursor.move", "doc": doc, "position": position}),
                    id,
                )
                .await
            }
            ClientFrame::Selection { room, doc, ranges } => {
                self.signal(
                    room,
                    json!({"type": "selection.set", "doc": doc, "ranges": ranges}),
                    id,
                )
                .await
            }
            ClientFrame::DocAwareness { room, doc, update } => {
                if doc.is_empty() || doc.len() > MAX_NAME {
                    self.refuse(id, "invalid_frame", "`doc` is 1-128 bytes");
                } else {
                    self.signal(
                        room,
                        json!({"type": "doc.awareness", "doc": doc, "update": update}),
                        id,
                    )
                    .await
                }
            }
            ClientFrame::DocOpen {
                room,
                doc,
                state_vector,
            } => self.doc_open(room, doc, state_vector, id).await,
            ClientFrame::DocUpdate { room, doc, update } => {
                if doc.is_empty() || doc.len() > MAX_NAME {
                    self.refuse(id, "invalid_frame", "`doc` is 1-128 bytes");
                    return None;
                }
                let update = match frames::unb64(&update) {
                    Ok(u) => u,
                    Err(e) => {
                        self.refuse(id, e.code, &e.message);
                        return None;
                    }
                };
                let op = Write::DocUpdate {
                    doc: doc.clone(),
                    update,
                };
                if let Some(w) = self.write(room, op, id).await {
                    self.send(frames::with_id(
                        json!({"type": "doc.ack", "room": room, "doc": doc, "offset": w.offset}),
                        id,
                    ));
                }
            }
            ClientFrame::Notify {
                room,
                user_id,
                kind,
                title,
                body,
                data,
            } => {
                self.notify(room, user_id, kind, title, body, data, id)
                    .await
            }
            ClientFrame::Subscribe { topics } | ClientFrame::Unsubscribe { topics }
                if topics
                    .iter()
                    .any(|t| !matches!(t.as_str(), "generation" | "workflow" | "audit")) =>
            {
                self.refuse(
                    id,
                    "invalid_frame",
                    "topics are `generation`, `workflow` and `audit`",
                )
            }
            ClientFrame::Subscribe { topics }
                if !self.who.audit && topics.iter().any(|t| t == "audit") =>
            {
                self.refuse(id, "forbidden", "the `audit` topic needs `audit:read`")
            }
            ClientFrame::Subscribe { topics }
                if !self.who.generate && topics.iter().any(|t| t == "generation") =>
            {
                self.refuse(
                    id,
                    "forbidden",
                    "the `generation` topic carries generated text: it needs `generate`",
                )
            }
            ClientFrame::Subscribe { topics } => {
                let mut t = self.topics.lock().unwrap_or_else(|p| p.into_inner());
                t.extend(topics);
                let list: Vec<String> = t.iter().cloned().collect();
                drop(t);
                self.send(frames::with_id(
                    json!({"type": "subscribed", "topics": list}),
                    id,
                ));
            }
            ClientFrame::WorkflowApprove { run_id, comment } => {
                let cmd = crate::workflows::Command::Approve { comment };
                self.decide(run_id, cmd, id).await
            }
            ClientFrame::WorkflowReject { run_id, comment } => {
                let cmd = crate::workflows::Command::Reject { comment };
                self.decide(run_id, cmd, id).await
            }
            ClientFrame::WorkflowCancel { run_id } => {
                self.decide(run_id, crate::workflows::Command::Cancel, id)
                    .await
            }
            ClientFrame::Unsubscribe { topics } => {
                let mut t = self.topics.lock().unwrap_or_else(|p| p.into_inner());
                for x in &topics {
                    t.remove(x);
                }
                let list: Vec<String> = t.iter().cloned().collect();
                drop(t);
                self.send(frames::with_id(
                    json!({"type": "subscribed", "topics": list}),
                    id,
                ));
            }
        }
        None
    }

    /// Records what this session did in the audit log.
    fn audit(&self, action: &str, target: String) {
        use revo_events::family::audit::{AuditActor, AuditEntry};
        let Some(a) = self.hub.audit() else { return };
        a.record(AuditEntry {
            at: chrono::Utc::now(),
            actor: AuditActor {
                user_id: Some(self.who.user),
                username: Some(self.who.username.clone()),
                key_id: self.who.key,
                roles: self.who.roles.clone(),
            },
            action: action.to_owned(),
            target: Some(target),
            outcome: "success".into(),
            client: self.who.client.clone(),
            user_agent: self.who.user_agent.clone(),
            request_id: None,
            count: 1,
            detail: [("via".to_owned(), "websocket".to_owned())].into(),
        });
    }

    /// A decision on one of the user's runs (administrators: anyone's), as over HTTP.
    async fn decide(&mut self, run: Uuid, cmd: crate::workflows::Command, id: Option<&Value>) {
        use crate::workflows::EngineError;
        if !self.who.workflows {
            return self.refuse(id, "forbidden", "deciding on runs needs `workflows:write`");
        }
        if let crate::workflows::Command::Approve { comment: Some(c) }
        | crate::workflows::Command::Reject { comment: Some(c) } = &cmd
        {
            if c.chars().count() > 2000 {
                return self.refuse(id, "invalid_frame", "`comment` is at most 2000 characters");
            }
        }
        let Some(engine) = self.hub.workflows().cloned() else {
            return self.refuse(id, "unavailable", "workflows are not running on this edge");
        };
        let mine = match engine.load(run).await {
            Ok(Some(r)) => r.user_id == self.who.user || self.who.admin,
            Ok(None) => false,
            Err(e) => return self.refuse(id, "unavailable", &e.to_string()),
        };
        if !mine {
            return self.refuse(id, "run_not_found", "no such run");
        }
        let meta = revo_events::EventMeta {
            actor: Some(self.who.actor.clone()),
            correlation_id: Some(run),
            causation_id: None,
        };
        let action = match &cmd {
            crate::workflows::Command::Approve { .. } => "run.approved",
            crate::workflows::Command::Reject { .. } => "run.rejected",
            crate::workflows::Command::Cancel => "run.cancelled",
            crate::workflows::Command::Retry => "run.retried",
        };
        match engine.command(run, self.who.user, meta, cmd).await {
            Ok(s) => {
                self.audit(action, format!("run:{run}"));
                self.send(frames::with_id(
                    json!({"type": "workflow.decided", "run_id": run, "status": s.status.as_str(),
                        "offset": s.version}),
                    id,
                ))
            }
            Err(EngineError::Conflict(code, m)) => self.refuse(id, code, &m),
            Err(EngineError::NotFound) => self.refuse(id, "run_not_found", "no such run"),
            Err(EngineError::Limited(code, m)) => self.refuse(id, code, &m),
            Err(e) => self.refuse(id, "unavailable", &e.to_string()),
        }
    }

    async fn join(
        &mut self,
        room: Uuid,
        after: Option<i64>,
        id: Option<&Value>,
        socket: &mut impl Socket,
    ) {
        if self.joined.contains_key(&room) {
            self.hub.leave(room, self.id);
            self.joined.remove(&room);
        }
        // Rooms this edge has never heard of start no actor (a flood of made-up ids would
        // otherwise load and keep one each).
        if self.hub.rooms_view().read().get(&room).is_none() {
            return self.refuse(id, "room_not_found", "no such room");
        }
        let mut after = after;
        // Far behind: read the store page by page straight to the socket (its pace is the
        // client's), then join from where that got to.
        for _ in 0..64 {
            let (user, session, outbox) = (self.who.user, self.id, self.outbox.clone());
            let r = self
                .hub
                .ask(room, |reply| Command::Join {
                    sub: Subscriber {
                        session,
                        user,
                        outbox: outbox.clone(),
                        yjs: None,
                    },
                    after,
                    reply,
                })
                .await;
            match r {
                Ok(Joined::Live { role, .. }) => {
                    self.joined.insert(room, role);
                    return;
                }
                Ok(Joined::Behind { offset }) => {
                    let from = after.unwrap_or(0);
                    match self.replay(room, from, offset, socket).await {
                        Ok(reached) => after = Some(reached),
                        Err(e) => return self.refuse(id, "unavailable", &e),
                    }
                }
                Err(e) => return self.room_error(id, e),
            }
        }
        self.refuse(
            id,
            "unavailable",
            "the room moves too fast to catch up; retry",
        );
    }

    /// Sends the room's stored events in `(after, upto]` to the socket; returns the last
    /// offset sent.
    async fn replay(
        &mut self,
        room: Uuid,
        after: i64,
        upto: i64,
        socket: &mut impl Socket,
    ) -> Result<i64, String> {
        let mut at = after;
        while at < upto {
            // Small pages, rendered up to a byte budget and dropped before the socket is
            // awaited: a join that reads slowly holds at most one page's frames, not the
            // stored events behind them.
            let frames = {
                let page = self
                    .hub
                    .log()
                    .read_stream(ROOM_STREAM, &room.to_string(), at + 1, CATCH_UP_PAGE)
                    .await
                    .map_err(|e| e.to_string())?;
                if page.is_empty() {
                    break;
                }
                let mut frames = Vec::new();
                let mut bytes = 0;
                for ev in &page {
                    if bytes >= CATCH_UP_BYTES {
                        break;
                    }
                    at = ev.envelope.version;
                    if let Some(f) = frames::render(room, ev) {
                        bytes += f.len();
                        frames.push(f);
                    }
                }
                frames
            };
            for f in frames {
                if !socket.text(&f).await {
                    return Err("the connection closed".into());
                }
            }
        }
        Ok(at)
    }

    async fn write(&mut self, room: Uuid, op: Write, id: Option<&Value>) -> Option<Written> {
        if !self.joined.contains_key(&room) {
            self.refuse(id, "not_joined", "join the room first");
            return None;
        }
        let (user, actor) = (self.who.user, self.who.actor.clone());
        let r = self
            .hub
            .ask(room, |reply| Command::Write {
                user,
                as_owner: false,
                meta: EventMeta {
                    actor: Some(actor.clone()),
                    correlation_id: None,
                    causation_id: None,
                },
                op: op.clone(),
                reply,
            })
            .await;
        match r {
            Ok(w) => Some(w),
            Err(e) => {
                self.room_error(id, e);
                None
            }
        }
    }

    /// An ephemeral frame to the room's other sessions, on every edge.
    async fn signal(&mut self, room: Uuid, mut frame: Value, id: Option<&Value>) {
        if !self.joined.contains_key(&room) {
            return self.refuse(id, "not_joined", "join the room first");
        }
        if !self.signals.take() {
            self.hub.metrics().signals_dropped.inc();
            return self.refuse(id, "rate_limited", "too many signals; slow down");
        }
        frame["room"] = json!(room);
        frame["user_id"] = json!(self.who.user);
        frame["session_id"] = json!(self.id);
        let text = frame.to_string();
        if text.len() > MAX_SIGNAL + 512 {
            return self.refuse(id, "frame_too_large", "signals are at most 4 KiB");
        }
        self.hub.room_signal(room, self.id, text).await;
    }

    async fn doc_open(
        &mut self,
        room: Uuid,
        doc: String,
        state_vector: Option<String>,
        id: Option<&Value>,
    ) {
        if doc.is_empty() || doc.len() > MAX_NAME {
            return self.refuse(id, "invalid_frame", "`doc` is 1-128 bytes");
        }
        if !self.joined.contains_key(&room) {
            return self.refuse(id, "not_joined", "join the room first");
        }
        let sv = match state_vector.as_deref().map(frames::unb64).transpose() {
            Ok(sv) => sv,
            Err(e) => return self.refuse(id, e.code, &e.message),
        };
        let user = self.who.user;
        let r = self
            .hub
            .ask(room, |reply| Command::DocOpen {
                user,
                doc: doc.clone(),
                state_vector: sv.clone(),
                reply,
            })
            .await;
        match r {
            Ok(sync) => self.send(frames::with_id(
                json!({"type": "doc.sync", "room": room, "doc": doc,
                    "update": frames::b64(&sync.update),
                    "state_vector": frames::b64(&sync.state_vector), "offset": sync.offset}),
                id,
            )),
            Err(e) => self.room_error(id, e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn notify(
        &mut self,
        room: Option<Uuid>,
        user: Option<Uuid>,
        kind: String,
        title: Option<String>,
        body: Option<String>,
        data: Option<Value>,
        id: Option<&Value>,
    ) {
        if !matches!(kind.as_str(), "alert" | "announcement" | "custom") {
            return self.refuse(
                id,
                "invalid_frame",
                "`kind` is alert, announcement or custom",
            );
        }
        let size = title.as_ref().map_or(0, String::len)
            + body.as_ref().map_or(0, String::len)
            + data.as_ref().map_or(0, |d| d.to_string().len());
        if size > MAX_SIGNAL {
            return self.refuse(id, "frame_too_large", "a notification is at most 4 KiB");
        }
        let frame = json!({"type": "notify", "kind": kind, "title": title, "body": body,
            "data": data, "from": self.who.user, "room": room, "at": chrono::Utc::now()});
        match (room, user) {
            (Some(room), None) => {
                // Members who may write may notify their room.
                if !self.joined.get(&room).is_some_and(|r| r.can_write()) {
                    return self.refuse(id, "forbidden", "join the room as a member to notify it");
                }
                if !self.signals.take() {
                    return self.refuse(id, "rate_limited", "too many signals; slow down");
                }
                self.hub
                    .room_signal(room, Uuid::nil(), frame.to_string())
                    .await;
            }
            (None, Some(target)) => {
                let allowed = self.who.admin
                    || target == self.who.user
                    || self
                        .hub
                        .rooms_view()
                        .read()
                        .share_a_room(&self.who.user, &target);
                if !allowed {
                    return self.refuse(
                        id,
                        "forbidden",
                        "you may notify only people you share a room with",
                    );
                }
                if !self.signals.take() {
                    return self.refuse(id, "rate_limited", "too many signals; slow down");
                }
                self.hub.user_signal(target, "", frame.to_string()).await;
            }
            _ => {
                return self.refuse(
                    id,
                    "invalid_frame",
                    "name exactly one of `room` and `user_id`",
                )
            }
        }
        self.send(frames::with_id(json!({"type": "notify.ack"}), id));
    }
}
