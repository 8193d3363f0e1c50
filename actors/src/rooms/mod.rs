//! Real-time collaboration: rooms, sessions and presence (`docs/websocket.md`).
//!
//! | file | what |
//! |---|---|
//! | `hub.rs` | this edge's registry of room actors and sessions; the bus followers (room and presence events, signals, edge heartbeats and the dead-edge sweep) |
//! | `room/` | a room's actor: its state, subscribers and Yjs documents (`docs.rs`); decides (`write.rs`) and appends its events |
//! | `session/` | a connection's actor: reads frames, asks rooms, writes its outbox to the socket; `json.rs` Revo's JSON frames, `y_websocket.rs` the binary y-protocols |
//! | `outbox.rs` | a session's outbound queue, bounded in frames and bytes |
//! | `frames.rs` | the protocol's frames: parsing client frames, rendering room events |
//! | `yjs.rs` | the y-protocols binary messages, for y-websocket clients |
//! | `progress.rs` | routed generations' progress as `generation.*` frames for subscribed sessions |

pub mod frames;
pub mod hub;
pub mod outbox;
pub mod progress;
pub mod room;
pub mod session;
pub mod yjs;

pub use hub::{Hub, HubSettings};
pub use session::{Inbound, SessionSettings, Socket, Who};

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

/// The real-time metrics (registered by the edge's metrics module).
#[derive(Clone)]
pub struct RealtimeMetrics {
    /// Open WebSocket sessions on this edge.
    pub connections: IntGauge,
    /// Room actors running on this edge.
    pub rooms: IntGauge,
    /// Client frames by type (`invalid`, `throttled` for refused ones).
    pub frames_in: IntCounterVec,
    /// Frames queued to clients.
    pub frames_out: IntCounter,
    /// From an event's commit to its fan-out on this edge.
    pub fanout: Histogram,
    /// Sessions closed because their outbound queue overflowed.
    pub overflows: IntCounter,
    /// Sessions closed, by close code.
    pub closes: IntCounterVec,
    /// Signals refused by a rate limit or lost by the bus.
    pub signals_dropped: IntCounter,
}

impl RealtimeMetrics {
    pub fn new() -> prometheus::Result<RealtimeMetrics> {
        use prometheus::{HistogramOpts, Opts};
        Ok(RealtimeMetrics {
            connections: IntGauge::new(
                "revo_ws_connections",
                "Open WebSocket sessions on this edge",
            )?,
            rooms: IntGauge::new("revo_ws_rooms", "Room actors running on this edge")?,
            frames_in: IntCounterVec::new(
                Opts::new(
                    "revo_ws_frames_in_total",
                    "Client frames by type (`invalid` and `throttled` for refused ones)",
                ),
                &["type"],
            )?,
            frames_out: IntCounter::new("revo_ws_frames_out_total", "Frames queued to clients")?,
            fanout: Histogram::with_opts(
                HistogramOpts::new(
                    "revo_ws_fanout_seconds",
                    "From a room event's commit to its fan-out to this edge's subscribers",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
            overflows: IntCounter::new(
                "revo_ws_queue_overflows_total",
                "Sessions closed because their outbound queue overflowed (close code 4008)",
            )?,
            closes: IntCounterVec::new(
                Opts::new("revo_ws_closes_total", "Sessions closed, by close code"),
                &["code"],
            )?,
            signals_dropped: IntCounter::new(
                "revo_ws_signals_dropped_total",
                "Ephemeral signals refused by a rate limit or not published",
            )?,
        })
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.connections.clone()),
            Box::new(self.rooms.clone()),
            Box::new(self.frames_in.clone()),
            Box::new(self.frames_out.clone()),
            Box::new(self.fanout.clone()),
            Box::new(self.overflows.clone()),
            Box::new(self.closes.clone()),
            Box::new(self.signals_dropped.clone()),
        ]
    }
}
