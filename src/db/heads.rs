//! Stream heads (last versions) a store process has committed, so that a batch of appends to
//! streams it already knows needs no version query.
//!
//! A cached head can only be stale low (versions only grow), and appending after a stale head
//! collides with the existing row on the unique key: the cache can cost a retry but never
//! accept a wrong append. Conflicts computed from cached heads are re-checked against the
//! database before they are reported ([`HeadCache::plan`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use futures::future::BoxFuture;
use revo_events::{AppendRequest, Appended, StoreError};

use super::plan_versions;

/// Streams whose heads are remembered; past this the cache starts over.
const MAX: usize = 100_000;

pub type StreamKey = (String, String);

fn key(r: &AppendRequest) -> StreamKey {
    (r.stream_type.clone(), r.stream_id.clone())
}

#[derive(Default)]
pub struct HeadCache {
    heads: Mutex<HashMap<StreamKey, i64>>,
}

/// A connection that can read the current versions of streams (one query per call).
pub trait HeadReader: Send {
    fn read_heads<'a>(
        &'a mut self,
        streams: &'a [StreamKey],
    ) -> BoxFuture<'a, Result<HashMap<StreamKey, i64>, sqlx::Error>>;
}

/// What the cache knows of a batch's streams.
struct Lookup {
    /// Heads known so far (cached ones; the caller adds the ones it reads).
    current: HashMap<StreamKey, i64>,
    /// Streams whose head came from the cache.
    cached: HashSet<StreamKey>,
    /// Streams the caller must read.
    missing: Vec<StreamKey>,
}

impl HeadCache {
    fn heads(&self) -> MutexGuard<'_, HashMap<StreamKey, i64>> {
        // Plain inserts and removes cannot leave the map inconsistent after a panic.
        self.heads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For each request of a batch, in order, the version its first event gets, or its
    /// conflict: cached heads first, `reader` for the rest, and `reader` again for any conflict
    /// found against a cached head before it is reported.
    pub async fn plan(
        &self,
        reqs: &[AppendRequest],
        reader: &mut impl HeadReader,
    ) -> Result<Vec<Result<i64, StoreError>>, sqlx::Error> {
        let Lookup {
            mut current,
            cached,
            missing,
        } = self.lookup(reqs);
        if !missing.is_empty() {
            current.extend(reader.read_heads(&missing).await?);
        }
        let plan = plan_versions(reqs, &current);
        let suspects = Self::suspects(reqs, &plan, &cached);
        if suspects.is_empty() {
            return Ok(plan);
        }
        current.extend(reader.read_heads(&suspects).await?);
        Ok(plan_versions(reqs, &current))
    }

    fn lookup(&self, reqs: &[AppendRequest]) -> Lookup {
        let keys: HashSet<StreamKey> = reqs.iter().map(key).collect();
        let heads = self.heads();
        let mut out = Lookup {
            current: HashMap::with_capacity(keys.len()),
            cached: HashSet::new(),
            missing: Vec::new(),
        };
        for k in keys {
            match heads.get(&k) {
                Some(v) => {
                    out.current.insert(k.clone(), *v);
                    out.cached.insert(k);
                }
                None => out.missing.push(k),
            }
        }
        out
    }

    /// Streams whose conflicts in `plan` were computed from cached heads: read them and plan
    /// again before reporting those conflicts.
    fn suspects(
        reqs: &[AppendRequest],
        plan: &[Result<i64, StoreError>],
        cached: &HashSet<StreamKey>,
    ) -> Vec<StreamKey> {
        reqs.iter()
            .zip(plan)
            .filter(|(_, p)| matches!(p, Err(StoreError::Conflict { .. })))
            .map(|(r, _)| key(r))
            .filter(|k| cached.contains(k))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect()
    }

    /// Forgets the streams of a batch that failed (their heads are uncertain).
    pub fn forget(&self, reqs: &[AppendRequest]) {
        let mut heads = self.heads();
        for r in reqs {
            heads.remove(&key(r));
        }
    }

    /// Records the heads a committed batch reached.
    pub fn remember(&self, reqs: &[AppendRequest], outcomes: &[Result<Appended, StoreError>]) {
        let mut heads = self.heads();
        if heads.len() > MAX {
            heads.clear();
        }
        for (r, o) in reqs.iter().zip(outcomes) {
            if let Ok(a) = o {
                let head = heads.entry(key(r)).or_insert(0);
                *head = (*head).max(a.stream_version);
            }
        }
    }
}
