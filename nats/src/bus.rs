//! The `Bus` seam: committed events fan out (deduplicated by id, in order per subject) and
//! ephemeral signals fan out (best effort). JetStream and the in-process bus honour one contract,
//! checked by `tests/bus_contract.rs`.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("publish of {msg_id} to {subject} failed: {reason}")]
    Publish {
        subject: String,
        msg_id: String,
        reason: String,
    },
    #[error("subscriber fell behind and missed {0} messages")]
    Lagged(u64),
    #[error("bus configuration: {0}")]
    Config(String),
}

/// A committed event on its way out.
#[derive(Debug, Clone)]
pub struct OutgoingEvent {
    pub subject: String,
    /// Deduplication id (`Nats-Msg-Id`): the event id.
    pub msg_id: String,
    pub payload: Bytes,
}

/// A message as a subscriber receives it.
#[derive(Debug, Clone)]
pub struct BusMessage {
    pub subject: String,
    pub msg_id: Option<String>,
    pub payload: Bytes,
}

/// How far a batch publish got: the first `acked` messages are durably accepted, in order.
#[derive(Debug)]
pub struct PublishOutcome {
    pub acked: usize,
    pub error: Option<BusError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusHealth {
    Connected,
    Degraded(String),
}

pub type MessageStream = BoxStream<'static, Result<BusMessage, BusError>>;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Creates or updates streams to the configured definition. Idempotent.
    async fn ensure(&self) -> Result<(), BusError>;

    /// Publishes events in order; a message whose id was seen within the dedup window is
    /// accepted but not delivered again. Stops at the first failure.
    async fn publish_events(&self, batch: Vec<OutgoingEvent>) -> PublishOutcome;

    /// Live event delivery from now on, for subjects matching `filter`, deduplicated.
    async fn subscribe_events(&self, filter: &str) -> Result<MessageStream, BusError>;

    /// Fire-and-forget signal (typing, cursors, token progress).
    async fn publish_signal(&self, subject: &str, payload: Bytes) -> Result<(), BusError>;

    async fn subscribe_signals(&self, filter: &str) -> Result<MessageStream, BusError>;

    /// Connection health right now, without a round trip.
    fn health(&self) -> BusHealth;

    /// Flushes and closes.
    async fn close(&self);
}
