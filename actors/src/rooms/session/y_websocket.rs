//! A y-websocket connection to one document of a room: binary y-protocols (sync step 1 /
//! step 2 / update, awareness; v1 encoding), so stock Yjs clients edit Revo documents.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use revo_events::EventMeta;
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use super::super::frames::{self, MAX_NAME, MAX_SIGNAL};
use super::super::hub::{Hub, SessionEntry};
use super::super::outbox::{outbox, Out, Outbox, OutboxRx};
use super::super::room::{Command, Joined, Subscriber, Write};
use super::super::yjs;
use super::{close, Bucket, Close, Inbound, SessionSettings, Socket, Who};

/// Runs a y-websocket connection to one document of a room: binary y-protocol messages
/// (sync step 1 / step 2 / update, awareness) instead of JSON frames.
pub async fn run_yjs(
    hub: Hub,
    who: Who,
    settings: SessionSettings,
    room: Uuid,
    doc: String,
    mut inbound: impl Stream<Item = Inbound> + Unpin,
    mut socket: impl Socket,
) {
    let id = Uuid::now_v7();
    let (tx, mut rx) = outbox(settings.outbox_frames, settings.outbox_bytes);
    hub.register(
        who.user,
        id,
        SessionEntry {
            outbox: tx.clone(),
            topics: Arc::new(Mutex::new(HashSet::new())),
            key: who.key,
        },
    );
    if let Err(e) = hub.session_opened(who.user, id).await {
        tracing::warn!(error = %e, "presence: session start not recorded");
    }
    let ended = yjs_serve(
        &hub,
        &who,
        &settings,
        id,
        room,
        &doc,
        &tx,
        &mut rx,
        &mut inbound,
        &mut socket,
    )
    .await;
    socket.close(ended.0, ended.1).await;
    hub.metrics()
        .closes
        .with_label_values(&[&ended.0.to_string()])
        .inc();
    hub.leave(room, id);
    hub.unregister(who.user, id);
    hub.session_closed(
        who.user,
        id,
        if ended.0 == close::GOING_AWAY {
            "shutdown"
        } else {
            "closed"
        },
    );
}

#[allow(clippy::too_many_arguments)]
async fn yjs_serve(
    hub: &Hub,
    who: &Who,
    settings: &SessionSettings,
    id: Uuid,
    room: Uuid,
    doc: &str,
    tx: &Outbox,
    rx: &mut OutboxRx,
    inbound: &mut (impl Stream<Item = Inbound> + Unpin),
    socket: &mut impl Socket,
) -> Close {
    use yrs::sync::{Message, SyncMessage};
    if doc.is_empty() || doc.len() > MAX_NAME {
        return Close(close::FORBIDDEN, "a document name is 1-128 bytes");
    }
    if hub.rooms_view().read().get(&room).is_none() {
        let _ = socket.binary(yjs::denied("no such room")).await;
        return Close(close::FORBIDDEN, "no such room");
    }
    // Subscribe first, then read the state: an update in between arrives twice, which Yjs
    // ignores, and none is missed.
    let joined = hub
        .ask(room, |reply| Command::Join {
            sub: Subscriber {
                session: id,
                user: who.user,
                outbox: tx.clone(),
                yjs: Some(doc.to_owned()),
            },
            after: None,
            reply,
        })
        .await;
    let role = match joined {
        Ok(Joined::Live { role, .. }) => role,
        Ok(Joined::Behind { .. }) => return Close(close::NORMAL, ""),
        Err(e) => {
            let _ = socket.binary(yjs::denied(&e.to_string())).await;
            return Close(close::FORBIDDEN, e.code());
        }
    };
    let open = |sv: Option<Vec<u8>>| {
        let (hub, doc, user) = (hub.clone(), doc.to_owned(), who.user);
        async move {
            hub.ask(room, |reply| Command::DocOpen {
                user,
                doc: doc.clone(),
                state_vector: sv.clone(),
                reply,
            })
            .await
        }
    };
    match open(None).await {
        Ok(sync) => {
            if let Some(step1) = yjs::step1(&sync.state_vector) {
                if !socket.binary(step1).await {
                    return Close(close::NORMAL, "");
                }
            }
        }
        Err(e) => return Close(close::FORBIDDEN, e.code()),
    }
    let mut frames = Bucket::new(settings.rate, settings.burst);
    // Awareness is a signal, as `doc.awareness` is over JSON: the same size and rate limits.
    let mut signals = Bucket::new(settings.signal_rate, settings.signal_burst);
    let mut strikes = 0u32;
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    heartbeat.tick().await;
    let mut recheck = tokio::time::interval(settings.recheck);
    recheck.tick().await;
    let mut heard = Instant::now();
    let (overflow, closing) = (rx.overflow.clone(), hub.closing().clone());
    loop {
        tokio::select! {
            biased;
            _ = closing.cancelled() => return Close(close::GOING_AWAY, "the server is restarting; reconnect"),
            _ = overflow.cancelled() => {
                hub.metrics().overflows.inc();
                return Close(close::SLOW_CONSUMER, "too slow to read; reconnect");
            }
            out = rx.recv() => {
                let ok = match out {
                    Some(Out::Binary(b)) => socket.binary(b).await,
                    Some(Out::Left(..)) => return Close(close::FORBIDDEN, "no longer a member"),
                    Some(Out::Text(_)) | None => true,
                };
                if !ok {
                    return Close(close::NORMAL, "");
                }
            }
            msg = inbound.next() => {
                heard = Instant::now();
                let bytes = match msg {
                    Some(Inbound::Binary(b)) => b,
                    Some(Inbound::Ping(b)) => {
                        if !socket.pong(&b).await { return Close(close::NORMAL, "") }
                        continue;
                    }
                    Some(Inbound::Pong) | Some(Inbound::Text(_)) => continue,
                    Some(Inbound::TooBig) => return Close(close::TOO_BIG, "frame too large"),
                    Some(Inbound::Close) | Some(Inbound::Broken) | None => return Close(close::NORMAL, ""),
                };
                if bytes.len() > settings.max_frame || !frames.take() {
                    strikes += 1;
                    if strikes > settings.strikes {
                        return Close(close::FLOOD, "too many frames refused; slow down");
                    }
                    continue;
                }
                let msg = match yjs::decode(&bytes) {
                    Ok(m) => m,
                    Err(_) => {
                        hub.metrics().frames_in.with_label_values(&["invalid"]).inc();
                        strikes += 1;
                        continue;
                    }
                };
                hub.metrics().frames_in.with_label_values(&["yjs"]).inc();
                match msg {
                    Message::Sync(SyncMessage::SyncStep1(sv)) => {
                        use yrs::updates::encoder::Encode;
                        // Through the bounded outbox like every other frame: a client that
                        // asks for the document faster than it reads it is cut off.
                        if let Ok(sync) = open(Some(sv.encode_v1())).await {
                            if !tx.push(Out::Binary(yjs::step2(sync.update))) {
                                continue;
                            }
                        }
                    }
                    Message::Sync(SyncMessage::SyncStep2(u)) | Message::Sync(SyncMessage::Update(u)) => {
                        // An empty update (no structs, no deletions) changes nothing.
                        if u.len() <= 2 {
                            continue;
                        }
                        if !role.can_write() {
                            let _ = socket.binary(yjs::denied("viewers cannot edit documents")).await;
                            continue;
                        }
                        let r = hub
                            .ask(room, |reply| Command::Write {
                                user: who.user,
                                as_owner: false,
                                meta: EventMeta { actor: Some(who.actor.clone()), ..Default::default() },
                                op: Write::DocUpdate { doc: doc.to_owned(), update: u.clone() },
                                reply,
                            })
                            .await;
                        if let Err(e) = r {
                            let _ = socket.binary(yjs::denied(&e.to_string())).await;
                        }
                    }
                    ref m @ Message::Awareness(_) => {
                        if let Some(update) = yjs::awareness_bytes(m) {
                            if update.len() > MAX_SIGNAL || !signals.take() {
                                hub.metrics().signals_dropped.inc();
                                strikes += 1;
                                if strikes > settings.strikes {
                                    return Close(close::FLOOD, "too many signals refused; slow down");
                                }
                                continue;
                            }
                            let frame = json!({"type": "doc.awareness", "room": room, "doc": doc,
                                "update": frames::b64(&update), "user_id": who.user, "session_id": id});
                            hub.room_signal(room, id, frame.to_string()).await;
                        }
                    }
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                if heard.elapsed() >= settings.dead_after {
                    return Close(close::HEARTBEAT, "no heartbeat");
                }
                if !socket.ping(b"revo").await {
                    return Close(close::NORMAL, "");
                }
            }
            _ = recheck.tick() => {
                if !(who.still_valid)() {
                    return Close(close::UNAUTHORIZED, "credential no longer valid");
                }
            }
        }
    }
}
