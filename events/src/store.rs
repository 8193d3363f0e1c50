//! The store's seams: the event log, checkpoints, leases and read models, and `EventStore`, all
//! four over one database. Implementations: Postgres for cluster mode and SQLite for embedded
//! mode (both in `src/db/` of the `revo` crate), and [`crate::memory::MemoryStore`] for tests
//! of a component alone. The contract suite in `tests/store_contract.rs` runs against all three.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use tokio::sync::watch;

use crate::envelope::{NewEvent, RecordedEvent};
use crate::projection::Rows;

/// What the writer believes the stream's current version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the current version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last version must be exactly this (0 = no stream).
    Exact(i64),
}

impl ExpectedVersion {
    pub fn matches(self, current: i64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => v == current,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// One atomic append: all of `events` land on one stream, or none do.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub stream_type: String,
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// Longest stream type or id accepted.
pub const MAX_STREAM_TOKEN: usize = 128;

/// Whether `s` can be a stream type or id: it becomes one NATS subject token, so no dots,
/// wildcards, whitespace or control characters.
pub fn valid_stream_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_STREAM_TOKEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '='))
}

impl AppendRequest {
    pub fn new(
        stream_type: impl Into<String>,
        stream_id: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        AppendRequest {
            stream_type: stream_type.into(),
            stream_id: stream_id.into(),
            expected,
            events,
        }
    }

    /// Checks everything that can be checked without the store. Stream types are lower case.
    pub fn validate(&self, max_payload: usize) -> Result<(), StoreError> {
        let st_ok = valid_stream_token(&self.stream_type)
            && !self.stream_type.chars().any(|c| c.is_ascii_uppercase());
        if !st_ok {
            return Err(StoreError::Invalid(format!(
                "stream type `{}` must be 1-{MAX_STREAM_TOKEN} characters of a-z, 0-9, `-`, `_`",
                self.stream_type.escape_debug()
            )));
        }
        if !valid_stream_token(&self.stream_id) {
            return Err(StoreError::Invalid(format!(
                "stream id `{}` must be 1-{MAX_STREAM_TOKEN} characters of A-Z, a-z, 0-9, `-`, `_`, `:`, `=`",
                self.stream_id.escape_debug()
            )));
        }
        if self.events.is_empty() {
            return Err(StoreError::Invalid(
                "an append needs at least one event".into(),
            ));
        }
        if let ExpectedVersion::Exact(v) = self.expected {
            if v < 0 {
                return Err(StoreError::Invalid(format!(
                    "expected version {v} is negative"
                )));
            }
        }
        for e in &self.events {
            if e.payload.len() > max_payload {
                return Err(StoreError::PayloadTooLarge {
                    event_id: e.event_id,
                    size: e.payload.len(),
                    limit: max_payload,
                });
            }
            if e.event_type.is_empty() || e.event_type.len() > MAX_STREAM_TOKEN {
                return Err(StoreError::Invalid(format!(
                    "event type of {} must be 1-{MAX_STREAM_TOKEN} characters",
                    e.event_id
                )));
            }
            if e.schema == 0 || i32::try_from(e.schema).is_err() {
                return Err(StoreError::Invalid(format!(
                    "schema {} of {} is out of range",
                    e.schema, e.event_id
                )));
            }
        }
        Ok(())
    }
}

/// The result of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append (its last event's version).
    pub stream_version: i64,
    /// Global positions of the first and last appended event.
    pub first_position: i64,
    pub last_position: i64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error(
        "version conflict on {stream_type}/{stream_id}: expected {expected}, stream is at {actual}"
    )]
    Conflict {
        stream_type: String,
        stream_id: String,
        expected: ExpectedVersion,
        actual: i64,
    },
    #[error("payload of event {event_id} is {size} bytes, over the limit of {limit}")]
    PayloadTooLarge {
        event_id: uuid::Uuid,
        size: usize,
        limit: usize,
    },
    #[error("invalid append: {0}")]
    Invalid(String),
    #[error("event id {0} is already stored")]
    DuplicateEventId(uuid::Uuid),
    #[error("no event at position {0}")]
    UnknownPosition(i64),
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    #[error("commit outcome unknown (the connection failed during commit): {0}")]
    CommitUnknown(String),
    #[error("event store schema: {0}")]
    Schema(String),
    #[error("event store is shutting down")]
    ShuttingDown,
    #[error("event store error: {0}")]
    Backend(String),
}

/// A stored read model with its checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredReadModel {
    /// Incremented by every rebuild; writers of an older generation are refused.
    pub generation: i64,
    /// Position of the last event folded in (0 = none).
    pub position: i64,
    pub rows: Rows,
}

/// A summary of one projection's stored state, for `revo replay list`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadModelInfo {
    pub name: String,
    pub generation: i64,
    pub position: i64,
    pub rows: i64,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Proof of leadership for a named singleton task (the relay). Dropping it releases leadership.
#[async_trait]
pub trait Lease: Send + Sync {
    /// Whether leadership is still held; false once the lease has been lost.
    async fn still_held(&self) -> bool;
}

/// The event log: appends and reads, the seam every writer and follower needs.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends atomically, honouring the expected version.
    async fn append(&self, req: AppendRequest) -> Result<Appended, StoreError>;

    /// Events of one stream with `version >= from_version`, in version order.
    async fn read_stream(
        &self,
        stream_type: &str,
        stream_id: &str,
        from_version: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Committed events after the event at `after` (0 = from the start), in commit order.
    ///
    /// Never returns an event while an earlier-committing one could still appear before it, so a
    /// reader that checkpoints the last position it saw never skips an event.
    async fn read_all(&self, after: i64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// A counter bumped after appends may have committed new events (in this or another
    /// process). A hint only: readers mark it seen, read, and wait for a change when idle, so no
    /// wake-up is lost between a read and the wait (see [`wait_for_change`]).
    fn append_signal(&self) -> watch::Receiver<u64>;

    /// Highest position assigned so far (0 if empty). Used for lag estimates.
    async fn head_position(&self) -> Result<i64, StoreError>;
}

/// Named positions in the log, for followers that keep no read model (the relay).
#[async_trait]
pub trait Checkpoints: Send + Sync + 'static {
    /// A named checkpoint (0 if never saved).
    async fn load_checkpoint(&self, name: &str) -> Result<i64, StoreError>;
    async fn save_checkpoint(&self, name: &str, position: i64) -> Result<(), StoreError>;
}

/// Leadership of named singleton tasks.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// Takes leadership for `name` if nobody holds it.
    async fn try_lease(&self, name: &str) -> Result<Option<Box<dyn Lease>>, StoreError>;
}

/// Persisted projections: rows per generation with a compare-and-set checkpoint.
#[async_trait]
pub trait ReadModels: Send + Sync + 'static {
    /// The active read model of a projection (created empty at generation 1 if missing).
    async fn load_read_model(&self, projection: &str) -> Result<StoredReadModel, StoreError>;

    /// Writes changed rows (`None` deletes) and advances the checkpoint from `from_position` to
    /// `to_position`, atomically. Returns false, writing nothing, if the generation is no longer
    /// active or another writer moved the checkpoint.
    async fn save_read_model(
        &self,
        projection: &str,
        generation: i64,
        from_position: i64,
        to_position: i64,
        changes: Vec<(String, Option<serde_json::Value>)>,
    ) -> Result<bool, StoreError>;

    /// Writes a complete read model as a new generation and swaps it in atomically; returns the
    /// new generation.
    async fn replace_read_model(
        &self,
        projection: &str,
        rows: &Rows,
        position: i64,
    ) -> Result<i64, StoreError>;

    async fn list_read_models(&self) -> Result<Vec<ReadModelInfo>, StoreError>;
}

/// A whole store: the four seams over one database, and its lifecycle. Components take the
/// narrowest seam they use (`Arc<dyn EventStore>` coerces to any of them); wiring, health and
/// the command line hold the whole store.
#[async_trait]
pub trait EventStore: EventLog + Checkpoints + Leases + ReadModels {
    /// Round trip to the database.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether the database's schema is exactly the one this build knows.
    async fn schema_status(&self) -> Result<(), StoreError>;

    /// Drains in-flight appends and closes connections.
    async fn close(&self);
}

/// Waits until `signal` changes or `timeout` passes. Call `signal.borrow_and_update()` before
/// the read whose emptiness led here.
pub async fn wait_for_change(signal: &mut watch::Receiver<u64>, timeout: Duration) {
    // A closed sender (store closed) just means polling.
    if tokio::time::timeout(timeout, signal.changed())
        .await
        .is_ok_and(|r| r.is_err())
    {
        tokio::time::sleep(timeout).await;
    }
}

/// Catch-up then live: every committed event after `after`, in commit order, forever.
pub fn subscribe(
    store: std::sync::Arc<dyn EventLog>,
    after: i64,
    batch: usize,
    poll: Duration,
) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
    use futures::StreamExt;
    let signal = store.append_signal();
    let state = (
        store,
        signal,
        after,
        std::collections::VecDeque::<RecordedEvent>::new(),
    );
    futures::stream::unfold(Some(state), move |state| async move {
        let (store, mut signal, mut after, mut buf) = state?;
        loop {
            if let Some(ev) = buf.pop_front() {
                after = ev.position;
                return Some((Ok(ev), Some((store, signal, after, buf))));
            }
            signal.borrow_and_update();
            match store.read_all(after, batch).await {
                Ok(events) if events.is_empty() => wait_for_change(&mut signal, poll).await,
                Ok(events) => buf.extend(events),
                // The error ends the stream: the caller decides whether to resubscribe.
                Err(e) => return Some((Err(e), None)),
            }
        }
    })
    .boxed()
}
