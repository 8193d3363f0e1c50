//! The SQLite event store (embedded mode).
//!
//! One writer connection, so position order is commit order and `read_all` is a plain range
//! scan. WAL with `synchronous = FULL`: an acknowledged append survives a power cut. The data
//! directory is locked by the serving process, so this store's leases are held by construction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use revo_events::store::{Lease, ReadModelInfo, StoredReadModel};
use revo_events::{
    AppendRequest, Appended, Envelope, EventMeta, EventStore, RecordedEvent, Rows, StoreError,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, SqlitePool};
use tokio::sync::watch;
use uuid::Uuid;

use super::group_commit::{
    BatchBackend, BatchFailure, GroupCommitConfig, GroupCommitter, StoreMetrics,
};
use super::heads::{HeadCache, Lookup, StreamKey};
use super::{
    check_migrations, outcomes, parse_rows, plan_versions, race_outcome, split_changes,
    unavailable, unique_violation, SQLITE_MIGRATOR,
};

/// SQLite allows 32,766 bound values per statement; 11 per event.
const INSERT_CHUNK: usize = 2_000;

const EVENT_COLUMNS: &str = "position, event_id, stream_type, stream_id, version, event_type, \
     schema, occurred_at, actor, correlation_id, causation_id, payload";

#[derive(Debug, Clone)]
pub struct SqliteStoreConfig {
    pub path: PathBuf,
    pub max_payload: usize,
    pub group: GroupCommitConfig,
}

impl SqliteStoreConfig {
    /// The event database inside a data directory.
    pub fn in_dir(data_dir: &Path) -> Self {
        SqliteStoreConfig {
            path: data_dir.join("events.db"),
            max_payload: super::DEFAULT_MAX_PAYLOAD,
            group: GroupCommitConfig {
                max_batch_events: 4096,
                // SQLite has one writer: more transactions in flight would only queue.
                max_in_flight: 1,
                queue: 16_384,
            },
        }
    }
}

struct Backend {
    writer: SqlitePool,
    heads: HeadCache,
}

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    committer: GroupCommitter,
    signal: Arc<watch::Sender<u64>>,
    max_payload: usize,
}

fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database: embedded mode has no separate
    /// migrate step, but still refuses a database written by a newer build.
    pub async fn open(
        config: SqliteStoreConfig,
        metrics: StoreMetrics,
    ) -> Result<Arc<Self>, StoreError> {
        if let Some(dir) = config.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let opts = connect_options(&config.path);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(unavailable)?;
        let applied = applied_migrations(&writer).await?;
        match check_migrations(&SQLITE_MIGRATOR, &applied) {
            Err(StoreError::Schema(m)) if m.contains("is not applied") => {
                SQLITE_MIGRATOR
                    .run(&writer)
                    .await
                    .map_err(|e| StoreError::Schema(e.to_string()))?;
            }
            other => other?,
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await
            .map_err(unavailable)?;
        let (signal, _) = watch::channel(0u64);
        let signal = Arc::new(signal);
        let backend = Arc::new(Backend {
            writer: writer.clone(),
            heads: HeadCache::default(),
        });
        let committer = GroupCommitter::start(backend, config.group, metrics, vec![signal.clone()]);
        Ok(Arc::new(SqliteStore {
            writer,
            reader,
            committer,
            signal,
            max_payload: config.max_payload,
        }))
    }
}

async fn applied_migrations(pool: &SqlitePool) -> Result<Vec<(i64, Vec<u8>, bool)>, StoreError> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(pool)
    .await
    .map_err(unavailable)?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pool)
        .await
        .map_err(unavailable)
}

fn parse_uuid(s: Option<String>, what: &str) -> Result<Option<Uuid>, StoreError> {
    s.map(|s| Uuid::from_str(&s).map_err(|e| StoreError::Backend(format!("bad {what} `{s}`: {e}"))))
        .transpose()
}

/// Columns by index, in `EVENT_COLUMNS` order (a name lookup per column per row costs more).
fn decode_row(row: &sqlx::sqlite::SqliteRow) -> Result<RecordedEvent, StoreError> {
    let get = |e: sqlx::Error| StoreError::Backend(format!("cannot read event row: {e}"));
    let schema: i64 = row.try_get(6).map_err(get)?;
    let event_id: String = row.try_get(1).map_err(get)?;
    Ok(RecordedEvent {
        position: row.try_get(0).map_err(get)?,
        envelope: Envelope {
            event_id: parse_uuid(Some(event_id), "event id")?.unwrap_or_default(),
            stream_type: row.try_get(2).map_err(get)?,
            stream_id: row.try_get(3).map_err(get)?,
            version: row.try_get(4).map_err(get)?,
            event_type: row.try_get(5).map_err(get)?,
            schema: u32::try_from(schema)
                .map_err(|_| StoreError::Backend(format!("schema {schema}")))?,
            occurred_at: row
                .try_get::<DateTime<Utc>, _>("occurred_at")
                .map_err(get)?,
            meta: EventMeta {
                actor: row.try_get(8).map_err(get)?,
                correlation_id: parse_uuid(row.try_get(9).map_err(get)?, "correlation id")?,
                causation_id: parse_uuid(row.try_get(10).map_err(get)?, "causation id")?,
            },
            payload: row.try_get(11).map_err(get)?,
        },
    })
}

/// Current versions of `streams`, in one query.
async fn read_heads(
    conn: &mut sqlx::SqliteConnection,
    streams: &[StreamKey],
) -> Result<HashMap<StreamKey, i64>, sqlx::Error> {
    let mut heads = HashMap::with_capacity(streams.len());
    // 2 bound values per stream, well under SQLite's limit per statement.
    for chunk in streams.chunks(8_000) {
        let mut q = QueryBuilder::new(
            "SELECT stream_type, stream_id, max(version) FROM events WHERE (stream_type, stream_id) IN (",
        );
        let mut sep = q.separated(", ");
        for (t, i) in chunk {
            sep.push("(")
                .push_bind_unseparated(t)
                .push_unseparated(", ");
            sep.push_bind_unseparated(i).push_unseparated(")");
        }
        q.push(") GROUP BY stream_type, stream_id");
        for row in q.build().fetch_all(&mut *conn).await? {
            heads.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
        }
    }
    for k in streams {
        heads.entry(k.clone()).or_insert(0);
    }
    Ok(heads)
}

#[async_trait]
impl BatchBackend for Backend {
    async fn append_batch(
        &self,
        reqs: &[AppendRequest],
    ) -> Result<Vec<Result<Appended, StoreError>>, BatchFailure> {
        let fatal = |e: sqlx::Error| BatchFailure::Fatal(unavailable(e));
        let mut tx = self.writer.begin().await.map_err(fatal)?;
        let Lookup {
            mut current,
            cached,
            missing,
        } = self.heads.lookup(reqs);
        if !missing.is_empty() {
            current.extend(read_heads(&mut tx, &missing).await.map_err(fatal)?);
        }
        let mut plan = plan_versions(reqs, &current);
        let suspects = HeadCache::suspects(reqs, &plan, &cached);
        if !suspects.is_empty() {
            current.extend(read_heads(&mut tx, &suspects).await.map_err(fatal)?);
            plan = plan_versions(reqs, &current);
        }
        let mut rows = Vec::new();
        for (r, p) in reqs.iter().zip(&plan) {
            if let Ok(first) = p {
                for (k, e) in r.events.iter().enumerate() {
                    rows.push((r, first + k as i64, e));
                }
            }
        }
        let mut positions = HashMap::with_capacity(rows.len());
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut q = QueryBuilder::new(
                "INSERT INTO events (event_id, stream_type, stream_id, version, event_type, schema, \
                 occurred_at, actor, correlation_id, causation_id, payload) ",
            );
            q.push_values(chunk, |mut b, (r, version, e)| {
                b.push_bind(e.event_id.to_string())
                    .push_bind(&r.stream_type)
                    .push_bind(&r.stream_id)
                    .push_bind(*version)
                    .push_bind(&e.event_type)
                    .push_bind(i64::from(e.schema))
                    .push_bind(e.occurred_at)
                    .push_bind(e.meta.actor.as_deref())
                    .push_bind(e.meta.correlation_id.map(|u| u.to_string()))
                    .push_bind(e.meta.causation_id.map(|u| u.to_string()))
                    .push_bind(e.payload.as_slice());
            });
            q.push(" RETURNING event_id, position");
            let inserted = match q.build().fetch_all(&mut *tx).await {
                Ok(rows) => rows,
                Err(e) => {
                    let _ = tx.rollback().await;
                    self.heads.forget(reqs);
                    return Err(match unique_violation(&e) {
                        Some(c) => BatchFailure::Race(StoreError::Backend(c)),
                        None => BatchFailure::Fatal(unavailable(e)),
                    });
                }
            };
            for row in inserted {
                let id: String = row.try_get(0).map_err(fatal)?;
                let pos: i64 = row.try_get(1).map_err(fatal)?;
                positions.insert(id, pos);
            }
        }
        if let Err(e) = tx.commit().await {
            self.heads.forget(reqs);
            return Err(fatal(e));
        }
        let outcomes = outcomes(reqs, plan, |e| {
            positions.get(&e.event_id.to_string()).copied().unwrap_or(0)
        });
        self.heads.remember(reqs, &outcomes);
        Ok(outcomes)
    }

    async fn race_error(&self, req: &AppendRequest, cause: StoreError) -> StoreError {
        if let Ok(known) = race_outcome(req, cause) {
            return known;
        }
        let actual: Result<i64, _> = sqlx::query_scalar(
            "SELECT COALESCE(max(version), 0) FROM events WHERE stream_type = ? AND stream_id = ?",
        )
        .bind(&req.stream_type)
        .bind(&req.stream_id)
        .fetch_one(&self.writer)
        .await;
        StoreError::Conflict {
            stream_type: req.stream_type.clone(),
            stream_id: req.stream_id.clone(),
            expected: req.expected,
            actual: actual.unwrap_or(-1),
        }
    }
}

struct HeldLease;

#[async_trait]
impl Lease for HeldLease {
    async fn still_held(&self) -> bool {
        true
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, req: AppendRequest) -> Result<Appended, StoreError> {
        req.validate(self.max_payload)?;
        self.committer.append(req).await
    }

    async fn read_stream(
        &self,
        stream_type: &str,
        stream_id: &str,
        from_version: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_type = ? AND stream_id = ? \
             AND version >= ? ORDER BY version LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(stream_type)
            .bind(stream_id)
            .bind(from_version)
            .bind(limit as i64)
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?;
        rows.iter().map(decode_row).collect()
    }

    async fn read_all(&self, after: i64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?;
        if rows.is_empty() && after != 0 {
            let known: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE position = ?)")
                    .bind(after)
                    .fetch_one(&self.reader)
                    .await
                    .map_err(unavailable)?;
            if !known {
                return Err(StoreError::UnknownPosition(after));
            }
        }
        rows.iter().map(decode_row).collect()
    }

    fn append_signal(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }

    async fn head_position(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM events")
            .fetch_one(&self.reader)
            .await
            .map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn schema_status(&self) -> Result<(), StoreError> {
        check_migrations(&SQLITE_MIGRATOR, &applied_migrations(&self.reader).await?)
    }

    async fn load_checkpoint(&self, name: &str) -> Result<i64, StoreError> {
        let p: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(p.unwrap_or(0))
    }

    async fn save_checkpoint(&self, name: &str, position: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checkpoints (name, position, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(position)
        .bind(Utc::now())
        .execute(&self.writer)
        .await
        .map(|_| ())
        .map_err(unavailable)
    }

    async fn try_lease(&self, _name: &str) -> Result<Option<Box<dyn Lease>>, StoreError> {
        Ok(Some(Box::new(HeldLease)))
    }

    async fn load_read_model(&self, projection: &str) -> Result<StoredReadModel, StoreError> {
        // Read through the writer: it serialises with saves, so checkpoint and rows agree.
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO projections (name, generation, position, updated_at) VALUES (?, 1, 0, ?) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(projection)
        .bind(Utc::now())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let (generation, position): (i64, i64) =
            sqlx::query_as("SELECT generation, position FROM projections WHERE name = ?")
                .bind(projection)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT key, doc FROM read_model_rows WHERE projection = ? AND generation = ?",
        )
        .bind(projection)
        .bind(generation)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(StoredReadModel {
            generation,
            position,
            rows: parse_rows(rows)?,
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
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        let moved = sqlx::query(
            "UPDATE projections SET position = ?, updated_at = ? \
             WHERE name = ? AND generation = ? AND position = ?",
        )
        .bind(to_position)
        .bind(Utc::now())
        .bind(projection)
        .bind(generation)
        .bind(from_position)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if moved.rows_affected() != 1 {
            let _ = tx.rollback().await;
            return Ok(false);
        }
        let ((keys, docs), deletes) = split_changes(changes);
        for (k, d) in keys.iter().zip(&docs) {
            sqlx::query(
                "INSERT INTO read_model_rows (projection, generation, key, doc) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (projection, generation, key) DO UPDATE SET doc = excluded.doc",
            )
            .bind(projection)
            .bind(generation)
            .bind(k)
            .bind(d)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        for k in &deletes {
            sqlx::query(
                "DELETE FROM read_model_rows WHERE projection = ? AND generation = ? AND key = ?",
            )
            .bind(projection)
            .bind(generation)
            .bind(k)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    async fn replace_read_model(
        &self,
        projection: &str,
        rows: &Rows,
        position: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM projections WHERE name = ?")
                .bind(projection)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        let generation = current.unwrap_or(1) + 1;
        for (k, doc) in rows {
            sqlx::query("INSERT INTO read_model_rows (projection, generation, key, doc) VALUES (?, ?, ?, ?)")
                .bind(projection)
                .bind(generation)
                .bind(k)
                .bind(doc.to_string())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        sqlx::query(
            "INSERT INTO projections (name, generation, position, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET generation = excluded.generation, \
               position = excluded.position, updated_at = excluded.updated_at",
        )
        .bind(projection)
        .bind(generation)
        .bind(position)
        .bind(Utc::now())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query("DELETE FROM read_model_rows WHERE projection = ? AND generation <> ?")
            .bind(projection)
            .bind(generation)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(generation)
    }

    async fn list_read_models(&self) -> Result<Vec<ReadModelInfo>, StoreError> {
        let rows: Vec<(String, i64, i64, i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT p.name, p.generation, p.position, \
               (SELECT count(*) FROM read_model_rows r WHERE r.projection = p.name AND r.generation = p.generation), \
               p.updated_at FROM projections p ORDER BY p.name",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(
                |(name, generation, position, rows, updated_at)| ReadModelInfo {
                    name,
                    generation,
                    position,
                    rows,
                    updated_at,
                },
            )
            .collect())
    }

    async fn close(&self) {
        self.committer.close().await;
        self.reader.close().await;
        self.writer.close().await;
    }
}
