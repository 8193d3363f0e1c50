//! Event store adapters: Postgres (cluster mode) and SQLite (embedded mode), one contract
//! (`revo_events::EventStore`), one shared implementation over a small dialect (`sql.rs`), both
//! fronted by the same group committer.

pub mod heads;
pub mod postgres;
pub mod sql;
pub mod sqlite;

use std::collections::HashMap;

use revo_events::{AppendRequest, Appended, NewEvent, StoreError};
use sqlx::migrate::Migrator;

pub use postgres::PgStore;
pub use revo_actors::group_commit::{CommitMetrics, GroupCommitConfig};
pub use sqlite::SqliteStore;

/// What the store adapters record: the committer's figures and, on Postgres, the wait behind
/// open transactions.
#[derive(Clone)]
pub struct StoreMetrics {
    pub commit: CommitMetrics,
    /// How long committed events have been held back behind an open transaction (Postgres).
    pub held_back_seconds: prometheus::Gauge,
}

impl StoreMetrics {
    /// Metrics that are recorded but not exported (tests, tools, benchmarks).
    pub fn unregistered() -> prometheus::Result<Self> {
        Ok(crate::metrics::Metrics::new()?.store)
    }
}

pub static PG_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");
pub static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Default limit on one event's payload.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// For each request in a batch, in order: the version its first event gets, or its conflict.
/// Later requests on the same stream see the versions earlier ones took.
pub fn plan_versions(
    reqs: &[AppendRequest],
    current: &HashMap<(String, String), i64>,
) -> Vec<Result<i64, StoreError>> {
    let mut heads: HashMap<(&str, &str), i64> = HashMap::new();
    reqs.iter()
        .map(|r| {
            let key = (r.stream_type.as_str(), r.stream_id.as_str());
            let head = *heads.entry(key).or_insert_with(|| {
                current
                    .get(&(r.stream_type.clone(), r.stream_id.clone()))
                    .copied()
                    .unwrap_or(0)
            });
            if !r.expected.matches(head) {
                return Err(StoreError::Conflict {
                    stream_type: r.stream_type.clone(),
                    stream_id: r.stream_id.clone(),
                    expected: r.expected,
                    actual: head,
                });
            }
            heads.insert(key, head + r.events.len() as i64);
            Ok(head + 1)
        })
        .collect()
}

/// The outcome of each request of a committed batch, given its plan and where each event landed.
pub(crate) fn outcomes(
    reqs: &[AppendRequest],
    plan: Vec<Result<i64, StoreError>>,
    position: impl Fn(&NewEvent) -> i64,
) -> Vec<Result<Appended, StoreError>> {
    reqs.iter()
        .zip(plan)
        .map(|(r, p)| {
            p.map(|first| Appended {
                stream_version: first + r.events.len() as i64 - 1,
                first_position: r.events.first().map(&position).unwrap_or(0),
                last_position: r.events.last().map(&position).unwrap_or(0),
            })
        })
        .collect()
}

/// What a request that raced alone failed on: `Ok(error)` when that is known from the violated
/// constraint, `Err(())` when it was the stream version and the caller must read the actual one.
pub(crate) fn race_outcome(req: &AppendRequest, cause: StoreError) -> Result<StoreError, ()> {
    let constraint = cause.to_string();
    if constraint.contains("event_id") {
        let id = req.events.first().map(|e| e.event_id).unwrap_or_default();
        return Ok(StoreError::DuplicateEventId(id));
    }
    if constraint.contains("version") {
        return Err(());
    }
    Ok(cause)
}

/// Compares the migrations applied to a database (version, checksum) with the ones this build
/// embeds.
pub fn check_migrations(
    migrator: &Migrator,
    applied: &[(i64, Vec<u8>, bool)],
) -> Result<(), StoreError> {
    for (version, checksum, success) in applied {
        let Some(known) = migrator.iter().find(|m| m.version == *version) else {
            return Err(StoreError::Schema(format!(
                "the database has migration {version}, which this build does not know: it was migrated by a newer Revo"
            )));
        };
        if !success {
            return Err(StoreError::Schema(format!(
                "migration {version} failed part-way; repair the database, then run `revo migrate`"
            )));
        }
        if known.checksum.as_ref() != checksum.as_slice() {
            return Err(StoreError::Schema(format!(
                "migration {version} was changed after it was applied"
            )));
        }
    }
    if let Some(pending) = migrator
        .iter()
        .find(|m| !applied.iter().any(|(v, _, _)| *v == m.version))
    {
        return Err(StoreError::Schema(format!(
            "migration {} ({}) is not applied: run `revo migrate`",
            pending.version, pending.description
        )));
    }
    Ok(())
}

/// Maps a database error that is not about the data itself.
pub(crate) fn unavailable(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut => {
            StoreError::Unavailable("no database connection available in time".into())
        }
        sqlx::Error::PoolClosed => StoreError::ShuttingDown,
        sqlx::Error::Io(e) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Tls(e) => StoreError::Unavailable(e.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// Which unique constraint a database error violated, if any.
pub(crate) fn unique_violation(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Some(db.constraint().unwrap_or(db.message()).to_owned())
        }
        _ => None,
    }
}
