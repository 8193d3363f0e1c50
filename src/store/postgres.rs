//! The Postgres event store (cluster mode; the system of record).
//!
//! Commit order: every row records its writing transaction (`txid`). `read_all` returns only
//! rows of transactions older than the oldest still running (`pg_snapshot_xmin`), ordered by
//! `(txid, position)`. A transaction that took an early position but commits late is therefore
//! read after the ones that committed before it, never skipped; see `docs/events.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use revo_events::store::{Lease, ReadModelInfo, StoredReadModel};
use revo_events::{
    AppendRequest, Appended, Envelope, EventMeta, EventStore, RecordedEvent, Rows, StoreError,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::group_commit::{
    BatchBackend, BatchFailure, GroupCommitConfig, GroupCommitter, StoreMetrics,
};
use super::{check_migrations, plan_versions, unavailable, unique_violation, PG_MIGRATOR};

/// NOTIFY channel that wakes readers in other processes after a commit.
const CHANNEL: &str = "revo_events";

const EVENT_COLUMNS: &str = "position, event_id, stream_type, stream_id, version, event_type, \
     schema, occurred_at, actor, correlation_id, causation_id, payload";

#[derive(Debug, Clone)]
pub struct PgStoreConfig {
    pub url: String,
    pub max_connections: u32,
    pub max_payload: usize,
    pub group: GroupCommitConfig,
}

impl PgStoreConfig {
    pub fn new(url: impl Into<String>) -> Self {
        PgStoreConfig {
            url: url.into(),
            max_connections: 16,
            max_payload: super::DEFAULT_MAX_PAYLOAD,
            group: GroupCommitConfig {
                max_batch_events: 2048,
                max_in_flight: 4,
                queue: 16_384,
            },
        }
    }
}

struct Backend {
    pool: PgPool,
}

pub struct PgStore {
    pool: PgPool,
    connect: PgConnectOptions,
    committer: GroupCommitter,
    signal: Arc<watch::Sender<u64>>,
    max_payload: usize,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Set when a read found committed events held back by an older open transaction: no
    /// NOTIFY announces that transaction's end, so readers are woken on a short timer instead.
    held_back: Arc<AtomicBool>,
}

fn options(url: &str) -> Result<PgConnectOptions, StoreError> {
    url.parse::<PgConnectOptions>()
        .map(|o| o.application_name("revo"))
        .map_err(|e| StoreError::Unavailable(format!("bad Postgres URL: {e}")))
}

/// Applies pending migrations (`revo migrate`). Concurrent callers are serialised by sqlx's
/// migration lock.
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    let mut conn = PgConnection::connect_with(&options(url)?)
        .await
        .map_err(unavailable)?;
    check_not_newer(&mut conn).await?;
    PG_MIGRATOR
        .run(&mut conn)
        .await
        .map_err(|e| StoreError::Schema(e.to_string()))?;
    let _ = conn.close().await;
    Ok(())
}

async fn applied_migrations(
    conn: &mut PgConnection,
) -> Result<Option<Vec<(i64, Vec<u8>, bool)>>, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(unavailable)?;
    if !exists {
        return Ok(None);
    }
    let rows =
        sqlx::query("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map(Some)
        .map_err(unavailable)
}

/// Refuses a database migrated by a newer build (running old code on it could corrupt it).
async fn check_not_newer(conn: &mut PgConnection) -> Result<(), StoreError> {
    let applied = applied_migrations(conn).await?.unwrap_or_default();
    match check_migrations(&PG_MIGRATOR, &applied) {
        Err(StoreError::Schema(m)) if m.contains("is not applied") => Ok(()),
        other => other,
    }
}

impl PgStore {
    /// Connects to a migrated database; refuses one whose schema this build does not know.
    pub async fn open(
        config: PgStoreConfig,
        metrics: StoreMetrics,
    ) -> Result<Arc<Self>, StoreError> {
        let connect = options(&config.url)?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            // Fail fast when Postgres is down: appends must not hang.
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(connect.clone())
            .await
            .map_err(unavailable)?;
        let (signal, _) = watch::channel(0u64);
        let signal = Arc::new(signal);
        let backend = Arc::new(Backend { pool: pool.clone() });
        let committer = GroupCommitter::start(backend, config.group, metrics, signal.clone());
        let store = Arc::new(PgStore {
            pool,
            connect,
            committer,
            signal,
            max_payload: config.max_payload,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            held_back: Arc::new(AtomicBool::new(false)),
        });
        store.schema_status().await?;
        store.tasks.spawn(listen(
            store.pool.clone(),
            store.signal.clone(),
            store.held_back.clone(),
            store.stop.clone(),
        ));
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// How often readers are woken while events are held back by an open transaction.
const HELD_BACK_RETRY: Duration = Duration::from_millis(10);

/// Wakes local readers when another process commits (LISTEN), or while committed events wait
/// for an older transaction, reconnecting as needed.
async fn listen(
    pool: PgPool,
    signal: Arc<watch::Sender<u64>>,
    held_back: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            _ = stop.cancelled() => return,
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "LISTEN failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(HELD_BACK_RETRY), if held_back.load(Ordering::Relaxed) => {
                    held_back.store(false, Ordering::Relaxed);
                    signal.send_modify(|n| *n = n.wrapping_add(1));
                }
                n = listener.try_recv() => match n {
                    Ok(Some(_)) => signal.send_modify(|n| *n = n.wrapping_add(1)),
                    // Connection lost and re-established: something may have been missed.
                    Ok(None) => signal.send_modify(|n| *n = n.wrapping_add(1)),
                    Err(_) => break,
                },
            }
        }
    }
}

fn decode_row(row: &sqlx::postgres::PgRow) -> Result<RecordedEvent, StoreError> {
    let get = |e: sqlx::Error| StoreError::Backend(format!("cannot read event row: {e}"));
    let schema: i32 = row.try_get("schema").map_err(get)?;
    Ok(RecordedEvent {
        position: row.try_get("position").map_err(get)?,
        envelope: Envelope {
            event_id: row.try_get("event_id").map_err(get)?,
            stream_type: row.try_get("stream_type").map_err(get)?,
            stream_id: row.try_get("stream_id").map_err(get)?,
            version: row.try_get("version").map_err(get)?,
            event_type: row.try_get("event_type").map_err(get)?,
            schema: u32::try_from(schema)
                .map_err(|_| StoreError::Backend(format!("schema {schema}")))?,
            occurred_at: row.try_get("occurred_at").map_err(get)?,
            meta: EventMeta {
                actor: row.try_get("actor").map_err(get)?,
                correlation_id: row.try_get("correlation_id").map_err(get)?,
                causation_id: row.try_get("causation_id").map_err(get)?,
            },
            payload: row.try_get("payload").map_err(get)?,
        },
    })
}

#[async_trait]
impl BatchBackend for Backend {
    async fn append_batch(
        &self,
        reqs: &[AppendRequest],
    ) -> Result<Vec<Result<Appended, StoreError>>, BatchFailure> {
        let fatal = |e: sqlx::Error| BatchFailure::Fatal(unavailable(e));
        let mut tx = self.pool.begin().await.map_err(fatal)?;

        // Versions are read before this transaction writes (and so before it gets its txid):
        // every event it depends on committed with a smaller txid, which keeps per-stream order
        // in (txid, position) order.
        let mut types = Vec::new();
        let mut ids = Vec::new();
        for r in reqs {
            if !types
                .iter()
                .zip(&ids)
                .any(|(t, i)| *t == &r.stream_type && *i == &r.stream_id)
            {
                types.push(&r.stream_type);
                ids.push(&r.stream_id);
            }
        }
        let rows = sqlx::query(
            "SELECT s.t, s.i, COALESCE((SELECT max(version) FROM events e \
               WHERE e.stream_type = s.t AND e.stream_id = s.i), 0) \
             FROM unnest($1::text[], $2::text[]) AS s(t, i)",
        )
        .bind(&types)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(fatal)?;
        let mut current = HashMap::with_capacity(rows.len());
        for row in &rows {
            let (t, i, v): (String, String, i64) = (
                row.try_get(0).map_err(fatal)?,
                row.try_get(1).map_err(fatal)?,
                row.try_get(2).map_err(fatal)?,
            );
            current.insert((t, i), v);
        }
        let plan = plan_versions(reqs, &current);

        let n: usize = reqs
            .iter()
            .zip(&plan)
            .filter(|(_, p)| p.is_ok())
            .map(|(r, _)| r.events.len())
            .sum();
        if n == 0 {
            let _ = tx.rollback().await;
            // Every request conflicted (each has at least one event, checked by `validate`).
            let empty = || StoreError::Invalid("an append needs at least one event".into());
            return Ok(plan
                .into_iter()
                .map(|p| p.and_then(|_| Err(empty())))
                .collect());
        }
        let mut c = Columns::with_capacity(n);
        // Insert in stream order: concurrent batches then take unique-index locks in the same
        // order and cannot deadlock each other.
        let mut accepted: Vec<_> = reqs.iter().zip(&plan).collect();
        accepted.sort_by(|(a, _), (b, _)| {
            (&a.stream_type, &a.stream_id).cmp(&(&b.stream_type, &b.stream_id))
        });
        for (r, p) in accepted {
            if let Ok(first) = p {
                for (k, e) in r.events.iter().enumerate() {
                    c.event_id.push(e.event_id);
                    c.stream_type.push(r.stream_type.as_str());
                    c.stream_id.push(r.stream_id.as_str());
                    c.version.push(first + k as i64);
                    c.event_type.push(e.event_type.as_str());
                    c.schema.push(e.schema as i32);
                    c.occurred_at.push(e.occurred_at);
                    c.actor.push(e.meta.actor.as_deref());
                    c.correlation_id.push(e.meta.correlation_id);
                    c.causation_id.push(e.meta.causation_id);
                    c.payload.push(e.payload.as_slice());
                }
            }
        }
        let inserted = sqlx::query(
            "WITH ins AS (INSERT INTO events (event_id, stream_type, stream_id, version, event_type, \
                 schema, occurred_at, actor, correlation_id, causation_id, payload) \
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[], \
                 $6::int4[], $7::timestamptz[], $8::text[], $9::uuid[], $10::uuid[], $11::bytea[]) \
               RETURNING event_id, position), \
             wake AS (SELECT pg_notify($12, '')) \
             SELECT ins.event_id, ins.position FROM ins, wake",
        )
        .bind(&c.event_id)
        .bind(&c.stream_type)
        .bind(&c.stream_id)
        .bind(&c.version)
        .bind(&c.event_type)
        .bind(&c.schema)
        .bind(&c.occurred_at)
        .bind(&c.actor)
        .bind(&c.correlation_id)
        .bind(&c.causation_id)
        .bind(&c.payload)
        .bind(CHANNEL)
        .fetch_all(&mut *tx)
        .await;
        let inserted = match inserted {
            Ok(rows) => rows,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(match unique_violation(&e) {
                    Some(constraint) => BatchFailure::Race(StoreError::Backend(constraint)),
                    // A deadlock or serialisation failure with another process: retrying each
                    // request alone resolves it.
                    None if is_retryable(&e) => {
                        BatchFailure::Race(StoreError::Backend(e.to_string()))
                    }
                    None => BatchFailure::Fatal(unavailable(e)),
                });
            }
        };
        let mut positions = HashMap::with_capacity(inserted.len());
        for row in &inserted {
            let id: Uuid = row.try_get(0).map_err(fatal)?;
            let pos: i64 = row.try_get(1).map_err(fatal)?;
            positions.insert(id, pos);
        }
        tx.commit().await.map_err(|e| match e {
            sqlx::Error::Io(_) => BatchFailure::Fatal(StoreError::CommitUnknown(e.to_string())),
            e => BatchFailure::Fatal(unavailable(e)),
        })?;
        Ok(reqs
            .iter()
            .zip(plan)
            .map(|(r, p)| {
                p.map(|first| {
                    let pos = |e: &revo_events::NewEvent| {
                        positions.get(&e.event_id).copied().unwrap_or(0)
                    };
                    Appended {
                        stream_version: first + r.events.len() as i64 - 1,
                        first_position: r.events.first().map(pos).unwrap_or(0),
                        last_position: r.events.last().map(pos).unwrap_or(0),
                    }
                })
            })
            .collect())
    }

    async fn race_error(&self, req: &AppendRequest, cause: StoreError) -> StoreError {
        let constraint = cause.to_string();
        if constraint.contains("event_id") {
            let id = req.events.first().map(|e| e.event_id).unwrap_or_default();
            return StoreError::DuplicateEventId(id);
        }
        if !constraint.contains("version") {
            return cause;
        }
        let actual: Result<i64, _> = sqlx::query_scalar(
            "SELECT COALESCE(max(version), 0) FROM events WHERE stream_type = $1 AND stream_id = $2",
        )
        .bind(&req.stream_type)
        .bind(&req.stream_id)
        .fetch_one(&self.pool)
        .await;
        StoreError::Conflict {
            stream_type: req.stream_type.clone(),
            stream_id: req.stream_id.clone(),
            expected: req.expected,
            actual: actual.unwrap_or(-1),
        }
    }
}

fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

struct Columns<'a> {
    event_id: Vec<Uuid>,
    stream_type: Vec<&'a str>,
    stream_id: Vec<&'a str>,
    version: Vec<i64>,
    event_type: Vec<&'a str>,
    schema: Vec<i32>,
    occurred_at: Vec<DateTime<Utc>>,
    actor: Vec<Option<&'a str>>,
    correlation_id: Vec<Option<Uuid>>,
    causation_id: Vec<Option<Uuid>>,
    payload: Vec<&'a [u8]>,
}

impl Columns<'_> {
    fn with_capacity(n: usize) -> Self {
        Columns {
            event_id: Vec::with_capacity(n),
            stream_type: Vec::with_capacity(n),
            stream_id: Vec::with_capacity(n),
            version: Vec::with_capacity(n),
            event_type: Vec::with_capacity(n),
            schema: Vec::with_capacity(n),
            occurred_at: Vec::with_capacity(n),
            actor: Vec::with_capacity(n),
            correlation_id: Vec::with_capacity(n),
            causation_id: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
        }
    }
}

struct PgLease {
    conn: Mutex<PgConnection>,
}

#[async_trait]
impl Lease for PgLease {
    async fn still_held(&self) -> bool {
        let mut conn = self.conn.lock().await;
        let held: Result<bool, _> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
               AND pid = pg_backend_pid() AND granted)",
        )
        .fetch_one(&mut *conn)
        .await;
        held.unwrap_or(false)
    }
}

#[async_trait]
impl EventStore for PgStore {
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
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_type = $1 AND stream_id = $2 \
             AND version >= $3 ORDER BY version LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(stream_type)
            .bind(stream_id)
            .bind(from_version)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(decode_row).collect()
    }

    async fn read_all(&self, after: i64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = if after == 0 {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events \
                 WHERE txid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY txid, position LIMIT $1"
            );
            sqlx::query(&sql)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await
        } else {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events \
                 WHERE (txid, position) > (SELECT txid, position FROM events WHERE position = $1) \
                   AND txid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY txid, position LIMIT $2"
            );
            sqlx::query(&sql)
                .bind(after)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await
        }
        .map_err(unavailable)?;
        if rows.len() < limit {
            let held: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events WHERE txid >= pg_snapshot_xmin(pg_current_snapshot()))",
            )
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
            if held {
                self.held_back.store(true, Ordering::Relaxed);
            }
        }
        if rows.is_empty() && after != 0 {
            let known: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE position = $1)")
                    .bind(after)
                    .fetch_one(&self.pool)
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
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn schema_status(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let applied = applied_migrations(&mut conn).await?.ok_or_else(|| {
            StoreError::Schema("the database is not migrated: run `revo migrate`".into())
        })?;
        check_migrations(&PG_MIGRATOR, &applied)
    }

    async fn load_checkpoint(&self, name: &str) -> Result<i64, StoreError> {
        let p: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(p.unwrap_or(0))
    }

    async fn save_checkpoint(&self, name: &str, position: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checkpoints (name, position) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
        )
        .bind(name)
        .bind(position)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(unavailable)
    }

    async fn try_lease(&self, name: &str) -> Result<Option<Box<dyn Lease>>, StoreError> {
        // A session-level advisory lock on a connection of its own: it lasts exactly as long as
        // this process's session, so a crashed leader releases it the moment its socket closes.
        let mut conn = PgConnection::connect_with(&self.connect)
            .await
            .map_err(unavailable)?;
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended('revo:' || $1, 0))")
                .bind(name)
                .fetch_one(&mut conn)
                .await
                .map_err(unavailable)?;
        if !got {
            let _ = conn.close().await;
            return Ok(None);
        }
        Ok(Some(Box::new(PgLease {
            conn: Mutex::new(conn),
        })))
    }

    async fn load_read_model(&self, projection: &str) -> Result<StoredReadModel, StoreError> {
        sqlx::query(
            "INSERT INTO projections (name, generation, position) VALUES ($1, 1, 0) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(projection)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // One snapshot for the checkpoint and the rows.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let (generation, position): (i64, i64) =
            sqlx::query_as("SELECT generation, position FROM projections WHERE name = $1")
                .bind(projection)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT key, doc::text FROM read_model_rows WHERE projection = $1 AND generation = $2",
        )
        .bind(projection)
        .bind(generation)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        let _ = tx.commit().await;
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
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let moved = sqlx::query(
            "UPDATE projections SET position = $4, updated_at = now() \
             WHERE name = $1 AND generation = $2 AND position = $3",
        )
        .bind(projection)
        .bind(generation)
        .bind(from_position)
        .bind(to_position)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if moved.rows_affected() != 1 {
            let _ = tx.rollback().await;
            return Ok(false);
        }
        let (upserts, deletes) = split_changes(changes);
        if !upserts.0.is_empty() {
            sqlx::query(
                "INSERT INTO read_model_rows (projection, generation, key, doc) \
                 SELECT $1, $2, k, d::jsonb FROM unnest($3::text[], $4::text[]) AS t(k, d) \
                 ON CONFLICT (projection, generation, key) DO UPDATE SET doc = EXCLUDED.doc",
            )
            .bind(projection)
            .bind(generation)
            .bind(&upserts.0)
            .bind(&upserts.1)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        if !deletes.is_empty() {
            sqlx::query(
                "DELETE FROM read_model_rows WHERE projection = $1 AND generation = $2 AND key = ANY($3)",
            )
            .bind(projection)
            .bind(generation)
            .bind(&deletes)
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
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO projections (name, generation, position) VALUES ($1, 1, 0) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(projection)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        // Lock the projection row: running folds block, then see the new generation and reload.
        let current: i64 =
            sqlx::query_scalar("SELECT generation FROM projections WHERE name = $1 FOR UPDATE")
                .bind(projection)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        let generation = current + 1;
        let keys: Vec<&str> = rows.keys().map(String::as_str).collect();
        let docs: Vec<String> = rows.values().map(|v| v.to_string()).collect();
        sqlx::query(
            "INSERT INTO read_model_rows (projection, generation, key, doc) \
             SELECT $1, $2, k, d::jsonb FROM unnest($3::text[], $4::text[]) AS t(k, d)",
        )
        .bind(projection)
        .bind(generation)
        .bind(&keys)
        .bind(&docs)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query("UPDATE projections SET generation = $2, position = $3, updated_at = now() WHERE name = $1")
            .bind(projection)
            .bind(generation)
            .bind(position)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query("DELETE FROM read_model_rows WHERE projection = $1 AND generation <> $2")
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
        .fetch_all(&self.pool)
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
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.pool.close().await;
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
