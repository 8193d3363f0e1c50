//! An event store in memory: every seam of [`crate::store`] with the same rules as the SQL
//! adapters (the contract suite runs against it too), for testing a component alone. Nothing is
//! durable; one lock orders everything, so position order is commit order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::envelope::{Envelope, RecordedEvent};
use crate::projection::Rows;
use crate::store::{
    AppendRequest, Appended, Checkpoints, EventLog, EventStore, Lease, Leases, ReadModelInfo,
    ReadModels, StoreError, StoredReadModel,
};

/// The payload limit of the SQL adapters' default configuration.
const MAX_PAYLOAD: usize = 1024 * 1024;

struct ReadModel {
    generation: i64,
    position: i64,
    rows: Rows,
    updated_at: DateTime<Utc>,
}

impl ReadModel {
    fn empty() -> Self {
        ReadModel {
            generation: 1,
            position: 0,
            rows: Rows::new(),
            updated_at: Utc::now(),
        }
    }
}

#[derive(Default)]
struct State {
    /// Position `n` is `events[n - 1]`.
    events: Vec<RecordedEvent>,
    ids: HashSet<uuid::Uuid>,
    heads: HashMap<(String, String), i64>,
    checkpoints: HashMap<String, i64>,
    read_models: BTreeMap<String, ReadModel>,
    closed: bool,
}

pub struct MemoryStore {
    state: Mutex<State>,
    signal: watch::Sender<u64>,
    leases: Arc<Mutex<HashSet<String>>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            state: Mutex::default(),
            signal: watch::channel(0).0,
            leases: Arc::default(),
        }
    }
}

impl MemoryStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every mutation below checks before it writes, so a panic cannot leave half a change.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl EventLog for MemoryStore {
    async fn append(&self, req: AppendRequest) -> Result<Appended, StoreError> {
        req.validate(MAX_PAYLOAD)?;
        let mut st = self.state();
        if st.closed {
            return Err(StoreError::ShuttingDown);
        }
        let key = (req.stream_type.clone(), req.stream_id.clone());
        let head = st.heads.get(&key).copied().unwrap_or(0);
        if !req.expected.matches(head) {
            return Err(StoreError::Conflict {
                stream_type: req.stream_type,
                stream_id: req.stream_id,
                expected: req.expected,
                actual: head,
            });
        }
        let mut batch = HashSet::new();
        if let Some(dup) = req
            .events
            .iter()
            .find(|e| st.ids.contains(&e.event_id) || !batch.insert(e.event_id))
        {
            return Err(StoreError::DuplicateEventId(dup.event_id));
        }
        let first_position = st.events.len() as i64 + 1;
        let count = req.events.len() as i64;
        for (k, e) in req.events.into_iter().enumerate() {
            st.ids.insert(e.event_id);
            let position = first_position + k as i64;
            st.events.push(RecordedEvent {
                position,
                envelope: Envelope {
                    event_id: e.event_id,
                    stream_type: req.stream_type.clone(),
                    stream_id: req.stream_id.clone(),
                    version: head + 1 + k as i64,
                    event_type: e.event_type,
                    schema: e.schema,
                    occurred_at: e.occurred_at,
                    meta: e.meta,
                    payload: e.payload,
                },
            });
        }
        st.heads.insert(key, head + count);
        drop(st);
        self.signal.send_modify(|n| *n = n.wrapping_add(1));
        Ok(Appended {
            stream_version: head + count,
            first_position,
            last_position: first_position + count - 1,
        })
    }

    async fn read_stream(
        &self,
        stream_type: &str,
        stream_id: &str,
        from_version: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self
            .state()
            .events
            .iter()
            .filter(|e| {
                e.envelope.stream_type == stream_type
                    && e.envelope.stream_id == stream_id
                    && e.envelope.version >= from_version
            })
            .take(limit)
            .cloned()
            .collect())
    }

    async fn read_all(&self, after: i64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let st = self.state();
        let len = st.events.len() as i64;
        if after < 0 || after > len {
            return Err(StoreError::UnknownPosition(after));
        }
        Ok(st.events[after as usize..]
            .iter()
            .take(limit)
            .cloned()
            .collect())
    }

    fn append_signal(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }

    async fn head_position(&self) -> Result<i64, StoreError> {
        Ok(self.state().events.len() as i64)
    }
}

#[async_trait]
impl Checkpoints for MemoryStore {
    async fn load_checkpoint(&self, name: &str) -> Result<i64, StoreError> {
        Ok(self.state().checkpoints.get(name).copied().unwrap_or(0))
    }

    async fn save_checkpoint(&self, name: &str, position: i64) -> Result<(), StoreError> {
        self.state().checkpoints.insert(name.to_owned(), position);
        Ok(())
    }
}

/// Held until dropped.
struct MemoryLease {
    name: String,
    held: Arc<Mutex<HashSet<String>>>,
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

#[async_trait]
impl Lease for MemoryLease {
    async fn still_held(&self) -> bool {
        true
    }
}

#[async_trait]
impl Leases for MemoryStore {
    async fn try_lease(&self, name: &str) -> Result<Option<Box<dyn Lease>>, StoreError> {
        let mut held = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if !held.insert(name.to_owned()) {
            return Ok(None);
        }
        Ok(Some(Box::new(MemoryLease {
            name: name.to_owned(),
            held: self.leases.clone(),
        })))
    }
}

#[async_trait]
impl ReadModels for MemoryStore {
    async fn load_read_model(&self, projection: &str) -> Result<StoredReadModel, StoreError> {
        let mut st = self.state();
        let m = st
            .read_models
            .entry(projection.to_owned())
            .or_insert_with(ReadModel::empty);
        Ok(StoredReadModel {
            generation: m.generation,
            position: m.position,
            rows: m.rows.clone(),
        })
    }

    async fn save_read_model(
        &self,
        projection: &str,
        generation: i64,
        from_position: i64,
        to_position: i64,
        changes: Vec<(String, Option<serde_json::Value>)>,
    ) -> Result<bool, StoreError> {
        let mut st = self.state();
        let Some(m) = st.read_models.get_mut(projection) else {
            return Ok(false);
        };
        if m.generation != generation || m.position != from_position {
            return Ok(false);
        }
        for (key, doc) in changes {
            match doc {
                Some(doc) => m.rows.insert(key, doc),
                None => m.rows.remove(&key),
            };
        }
        m.position = to_position;
        m.updated_at = Utc::now();
        Ok(true)
    }

    async fn replace_read_model(
        &self,
        projection: &str,
        rows: &Rows,
        position: i64,
    ) -> Result<i64, StoreError> {
        let mut st = self.state();
        let m = st
            .read_models
            .entry(projection.to_owned())
            .or_insert_with(ReadModel::empty);
        m.generation += 1;
        m.position = position;
        m.rows = rows.clone();
        m.updated_at = Utc::now();
        Ok(m.generation)
    }

    async fn list_read_models(&self) -> Result<Vec<ReadModelInfo>, StoreError> {
        Ok(self
            .state()
            .read_models
            .iter()
            .map(|(name, m)| ReadModelInfo {
                name: name.clone(),
                generation: m.generation,
                position: m.position,
                rows: m.rows.len() as i64,
                updated_at: m.updated_at,
            })
            .collect())
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        if self.state().closed {
            return Err(StoreError::ShuttingDown);
        }
        Ok(())
    }

    async fn schema_status(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn close(&self) {
        self.state().closed = true;
    }
}
