//! The cluster scenario's WebSocket clients: join a room, send and receive messages, and on any
//! drop reconnect through the load balancer and resume from the last offset.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::{now_us, RoomLog, Tally};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(super) struct WsClient {
    pub(super) base: String,
    pub(super) user: String,
    pub(super) token: String,
    pub(super) room: String,
    /// Messages per second this connection sends (0: it only listens).
    pub(super) rate: f64,
    pub(super) tally: Arc<Tally>,
    pub(super) rooms: Arc<HashMap<String, RoomLog>>,
    pub(super) start: Instant,
    pub(super) deadline: Instant,
    pub(super) stop: tokio_util::sync::CancellationToken,
}

impl WsClient {
    /// Connects, joins, and on any drop reconnects through the load balancer and rejoins
    /// after the last offset it has; a sender resends what was not acknowledged (same
    /// client_id: the room deduplicates).
    pub(super) async fn run(self) {
        let mut first: Option<i64> = None;
        let mut last: Option<i64> = None;
        let mut got: HashSet<i64> = HashSet::new();
        let mut pending: BTreeMap<String, String> = BTreeMap::new();
        let mut sent = 0u64;
        let mut attempt = 0u32;
        while !self.stop.is_cancelled() {
            if attempt > 0 {
                self.tally.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            attempt += 1;
            let mut ws = match self.connect().await {
                Ok(ws) => ws,
                Err(_) => {
                    self.tally.ws_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            let mut join = json!({"type": "room.join", "room": self.room});
            if let Some(l) = last {
                join["after"] = json!(l);
            }
            if ws
                .send(Message::Text(join.to_string().into()))
                .await
                .is_err()
            {
                continue;
            }
            let open = self.tally.ws_open.fetch_add(1, Ordering::Relaxed) + 1;
            self.tally.ws_peak.fetch_max(open, Ordering::Relaxed);
            let mut joined = false;
            let mut resend = true;
            let mut send_tick = tokio::time::interval(if self.rate > 0.0 {
                Duration::from_secs_f64(1.0 / self.rate)
            } else {
                Duration::from_secs(3600)
            });
            let mut ping = tokio::time::interval(Duration::from_secs(15));
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => {
                        let _ = ws.close(None).await;
                        break;
                    }
                    _ = ping.tick() => {
                        let p = json!({"type": "ping"}).to_string();
                        if ws.send(Message::Text(p.into())).await.is_err() { break; }
                    }
                    _ = send_tick.tick(), if joined && self.rate > 0.0 => {
                        // Unacknowledged messages again after a reconnect, then a new one.
                        let mut out: Vec<(String, String)> = Vec::new();
                        if resend {
                            out.extend(pending.iter().map(|(c, t)| (c.clone(), t.clone())));
                            resend = false;
                        }
                        if Instant::now() < self.deadline {
                            sent += 1;
                            let cid = format!("{}-{sent}", self.user);
                            let text = format!("t:{}", now_us());
                            pending.insert(cid.clone(), text.clone());
                            out.push((cid, text));
                        }
                        let mut failed = false;
                        for (cid, text) in out {
                            let f = json!({"type": "message.send", "room": self.room,
                                           "client_id": cid, "text": text});
                            if ws.send(Message::Text(f.to_string().into())).await.is_err() {
                                failed = true;
                                break;
                            }
                        }
                        if failed { break; }
                    }
                    m = ws.next() => {
                        let Some(Ok(m)) = m else { break };
                        let Message::Text(t) = m else { continue };
                        let Ok(f) = serde_json::from_str::<Value>(&t) else { continue };
                        match f["type"].as_str() {
                            Some("room.joined") => {
                                joined = true;
                                if first.is_none() {
                                    first = f["offset"].as_i64();
                                    last = first;
                                }
                            }
                            Some("message.new") => {
                                let Some(o) = f["offset"].as_i64() else { continue };
                                if !joined {
                                    self.tally.resumed_frames.fetch_add(1, Ordering::Relaxed);
                                }
                                got.insert(o);
                                last = Some(last.map_or(o, |l| l.max(o)));
                                let text = f["text"].as_str().unwrap_or("");
                                if let Some(sent_us) = text.strip_prefix("t:").and_then(|s| s.parse::<u64>().ok()) {
                                    let lat = Duration::from_micros(now_us().saturating_sub(sent_us));
                                    let at = self.start.elapsed().as_millis() as u64;
                                    if let Ok(mut s) = self.tally.ws.lock() { s.push((at, lat)); }
                                }
                            }
                            Some("message.ack") => {
                                if let (Some(cid), Some(o)) = (f["client_id"].as_str(), f["offset"].as_i64()) {
                                    pending.remove(cid);
                                    if let Some(log) = self.rooms.get(&self.room) {
                                        if let Ok(mut a) = log.acked.lock() { a.insert(o); }
                                    }
                                }
                            }
                            Some("error") => {
                                self.tally.fail(format!("ws error frame {}", f["code"]));
                            }
                            _ => {}
                        }
                    }
                }
            }
            self.tally.ws_open.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(log) = self.rooms.get(&self.room) {
            if let Ok(mut s) = log.seen.lock() {
                s.push((first.unwrap_or(i64::MAX), got));
            }
        }
        if !pending.is_empty() {
            self.tally
                .fail(format!("{} messages never acknowledged", pending.len()));
        }
    }

    async fn connect(&self) -> anyhow::Result<Ws> {
        let url = format!(
            "{}/ws/{}",
            self.base.replacen("http://", "ws://", 1),
            self.user
        );
        let mut req = url.into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {}", self.token).parse()?);
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await??;
        // The welcome frame.
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Text(_))) => Ok(ws),
            other => bail!("no welcome: {other:?}"),
        }
    }
}
