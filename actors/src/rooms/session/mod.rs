//! One WebSocket connection: an actor that owns the socket, reads the client's frames in order,
//! asks the rooms, and writes everything queued for it (its outbox) to the socket. The edge
//! (`src/http/ws.rs`) authenticates and hands over the socket; nothing here knows actix.
//!
//! `json.rs` speaks Revo's JSON frames (`/ws/{user_id}`); `y_websocket.rs` speaks the binary
//! y-protocols for one document (`/ws/{user_id}/yjs/{room}/{doc}`). This file holds what both
//! share: close codes, limits, the caller, the socket seam and the rate limiter.

mod json;
mod y_websocket;

pub use json::run;
pub use y_websocket::run_yjs;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;
use uuid::Uuid;

/// Close codes (documented in docs/websocket.md).
pub mod close {
    pub const NORMAL: u16 = 1000;
    /// The edge is stopping (after a `bye` frame): reconnect, to any edge.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame over the transport limit.
    pub const TOO_BIG: u16 = 1009;
    /// No credential, a bad one, or one revoked or disabled since.
    pub const UNAUTHORIZED: u16 = 4001;
    /// No pong (or anything else) from the client within the heartbeat timeout.
    pub const HEARTBEAT: u16 = 4002;
    /// The path's user is not the caller.
    pub const FORBIDDEN: u16 = 4003;
    /// The client did not read fast enough: its outbound queue overflowed. Resume by offset.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Frames kept coming far over the rate limit.
    pub const FLOOD: u16 = 4029;
}

#[derive(Clone, Debug)]
pub struct SessionSettings {
    pub outbox_frames: usize,
    pub outbox_bytes: usize,
    /// Largest text frame taken (larger ones get an `error` frame).
    pub max_frame: usize,
    /// Pings every `heartbeat`; a client silent for `dead_after` is closed.
    pub heartbeat: Duration,
    pub dead_after: Duration,
    /// How often the credential is checked again (revoked or disabled closes the socket).
    pub recheck: Duration,
    /// Frames per second per connection, and the burst above it.
    pub rate: f64,
    pub burst: f64,
    /// Ephemeral signals (typing, cursors, selections, awareness) per second, and burst.
    pub signal_rate: f64,
    pub signal_burst: f64,
    /// Refused frames tolerated before the connection is closed as a flood.
    pub strikes: u32,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            outbox_frames: 4096,
            outbox_bytes: 2 * 1024 * 1024,
            max_frame: 256 * 1024,
            heartbeat: Duration::from_secs(15),
            dead_after: Duration::from_secs(45),
            recheck: Duration::from_secs(5),
            rate: 100.0,
            burst: 200.0,
            signal_rate: 30.0,
            signal_burst: 60.0,
            strikes: 200,
        }
    }
}

/// Who is connected.
pub struct Who {
    pub user: Uuid,
    pub username: String,
    /// The `actor` of the events the session causes.
    pub actor: String,
    /// An administrator (`users:write`): may notify anyone and manage any room.
    pub admin: bool,
    /// May decide on its own workflow runs (`workflows:write`).
    pub workflows: bool,
    /// May follow generations (`generate`): the `generation` topic carries their text.
    pub generate: bool,
    /// The API key the session authenticated with, if it did with one.
    pub key: Option<Uuid>,
    /// May follow the audit log (`audit:read`).
    pub audit: bool,
    /// The credential's roles in force, and where the connection came from, for the audit
    /// log.
    pub roles: Vec<String>,
    pub client: Option<String>,
    pub user_agent: Option<String>,
    /// Whether the credential still admits the user.
    pub still_valid: Box<dyn Fn() -> bool>,
}

/// What the client sent, as the edge read it off the socket.
#[derive(Debug)]
pub enum Inbound {
    Text(String),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close,
    /// A frame over the transport's limit (the transport cannot go on).
    TooBig,
    /// The connection broke.
    Broken,
}

/// The socket's writing half.
#[async_trait(?Send)]
pub trait Socket {
    async fn text(&mut self, text: &str) -> bool;
    async fn binary(&mut self, bytes: Bytes) -> bool;
    async fn ping(&mut self, bytes: &[u8]) -> bool;
    async fn pong(&mut self, bytes: &[u8]) -> bool;
    async fn close(&mut self, code: u16, reason: &str);
}

pub(super) struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new(rate: f64, burst: f64) -> Bucket {
        Bucket {
            tokens: burst,
            rate,
            burst,
            at: Instant::now(),
        }
    }

    pub(super) fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why the loop ended.
pub(super) struct Close(pub u16, pub &'static str);
