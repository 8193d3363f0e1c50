//! Event store adapters: Postgres (cluster mode) and SQLite (embedded mode), one contract
//! (`revo_events::EventStore`), both fronted by the same group committer.

pub mod group_commit;
pub mod heads;
pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;

use revo_events::{AppendRequest, Appended, NewEvent, Rows, StoreError};
use sqlx::migrate::Migrator;

pub use group_commit::{GroupCommitConfig, StoreMetrics};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

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

/// `list_read_models` for both dialects: name, generation, position, rows, updated_at.
pub(crate) const LIST_READ_MODELS: &str = "SELECT p.name, p.generation, p.position, \
     (SELECT count(*) FROM read_model_rows r WHERE r.projection = p.name AND r.generation = p.generation), \
     p.updated_at FROM projections p ORDER BY p.name";

pub(crate) type ReadModelRow = (String, i64, i64, i64, chrono::DateTime<chrono::Utc>);

pub(crate) fn read_model_info(
    (name, generation, position, rows, updated_at): ReadModelRow,
) -> revo_events::store::ReadModelInfo {
    revo_events::store::ReadModelInfo {
        name,
        generation,
        position,
        rows,
        updated_at,
    }
}

/// Splits projection changes into upserts (keys, JSON texts) and deleted keys.
pub(crate) fn split_changes(
    changes: Vec<(String, Option<serde_json::Value>)>,
) -> ((Vec<String>, Vec<String>), Vec<String>) {
    let mut upserts = (Vec::new(), Vec::new());
    let mut deletes = Vec::new();
    for (k, doc) in changes {
        match doc {
            Some(doc) => {
                upserts.0.push(k);
                upserts.1.push(doc.to_string());
            }
            None => deletes.push(k),
        }
    }
    (upserts, deletes)
}

pub(crate) fn parse_rows(rows: Vec<(String, String)>) -> Result<Rows, StoreError> {
    rows.into_iter()
        .map(|(k, doc)| {
            serde_json::from_str(&doc)
                .map(|v| (k.clone(), v))
                .map_err(|e| StoreError::Backend(format!("read model row `{k}` is not JSON: {e}")))
        })
        .collect()
}
