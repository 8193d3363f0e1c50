//! The Postgres event store (cluster mode; the system of record).
//!
//! Commit order: every row records its writing transaction (`txid`). `read_all` returns only
//! rows of transactions older than the oldest still running (`pg_snapshot_xmin`), ordered by
//! `(txid, position)`. A transaction that took an early position but commits late is therefore
//! read after the ones that committed before it, never skipped; see `docs/events.md`.

mod append;
mod read_model;
mod wake;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use revo_events::store::{Lease, ReadModelInfo, StoredReadModel};
use revo_events::{
    AppendRequest, Appended, Envelope, EventMeta, EventStore, RecordedEvent, Rows, StoreError,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::group_commit::{GroupCommitConfig, GroupCommitter, StoreMetrics};
use super::{check_migrations, unavailable, PG_MIGRATOR};
use append::Backend;
use wake::PgLease;

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
                // One transaction at a time: on 2 cores more in flight added no throughput
                // (docs/benchmarks.md), and concurrent ones make readers wait for each other's
                // commits (the commit-order horizon), which raised relay tail latency.
                max_in_flight: 1,
                queue: 16_384,
            },
        }
    }
}

pub struct PgStore {
    pool: PgPool,
    connect: PgConnectOptions,
    committer: GroupCommitter,
    signal: Arc<watch::Sender<u64>>,
    max_payload: usize,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Signalled when a read found committed events it could not return yet (held back by an
    /// older open transaction): no NOTIFY announces that transaction's end, so readers are
    /// woken on a short timer instead.
    held_back: Arc<wake::HeldBack>,
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
        let (committed, committed_rx) = watch::channel(0u64);
        let backend = Arc::new(Backend::new(pool.clone()));
        let held_back = Arc::new(wake::HeldBack::new(metrics.held_back_seconds.clone()));
        let committer = GroupCommitter::start(
            backend,
            config.group,
            metrics,
            vec![signal.clone(), Arc::new(committed)],
        );
        let store = Arc::new(PgStore {
            pool,
            connect,
            committer,
            signal,
            max_payload: config.max_payload,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            held_back,
        });
        store.schema_status().await?;
        // Tells this process's own notifications apart from other processes'.
        let me = uuid::Uuid::now_v7().to_string();
        store.tasks.spawn(wake::announce(
            store.pool.clone(),
            committed_rx,
            me.clone(),
            store.stop.clone(),
        ));
        store.tasks.spawn(wake::listen(
            store.pool.clone(),
            store.signal.clone(),
            store.held_back.clone(),
            me,
            store.stop.clone(),
        ));
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
/// Columns by index, in `EVENT_COLUMNS` order (a name lookup per column per row costs more).
fn decode_row(row: &sqlx::postgres::PgRow) -> Result<RecordedEvent, StoreError> {
    let get = |e: sqlx::Error| StoreError::Backend(format!("cannot read event row: {e}"));
    let schema: i32 = row.try_get(6).map_err(get)?;
    Ok(RecordedEvent {
        position: row.try_get(0).map_err(get)?,
        envelope: Envelope {
            event_id: row.try_get(1).map_err(get)?,
            stream_type: row.try_get(2).map_err(get)?,
            stream_id: row.try_get(3).map_err(get)?,
            version: row.try_get(4).map_err(get)?,
            event_type: row.try_get(5).map_err(get)?,
            schema: u32::try_from(schema)
                .map_err(|_| StoreError::Backend(format!("schema {schema}")))?,
            occurred_at: row.try_get(7).map_err(get)?,
            meta: EventMeta {
                actor: row.try_get(8).map_err(get)?,
                correlation_id: row.try_get(9).map_err(get)?,
                causation_id: row.try_get(10).map_err(get)?,
            },
            payload: row.try_get(11).map_err(get)?,
        },
    })
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
        if rows.is_empty() {
            // Anything committed after the cursor that the read did not return was held back
            // (or committed between the two statements, which have different snapshots):
            // either way, readers must look again soon. Checking the horizon again here
            // instead would miss a transaction that ended in between, and the reader would
            // sleep until its poll.
            let sql = if after == 0 {
                "SELECT EXISTS (SELECT 1 FROM events WHERE $1 = 0)"
            } else {
                "SELECT EXISTS (SELECT 1 FROM events WHERE (txid, position) > \
                   (SELECT txid, position FROM events WHERE position = $1))"
            };
            let pending: bool = sqlx::query_scalar(sql)
                .bind(after)
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
            if pending {
                self.held_back.held();
            } else {
                self.held_back.clear();
            }
        } else {
            self.held_back.clear();
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
        read_model::load(&self.pool, projection).await
    }

    async fn save_read_model(
        &self,
        projection: &str,
        generation: i64,
        from_position: i64,
        to_position: i64,
        changes: Vec<(String, Option<serde_json::Value>)>,
    ) -> Result<bool, StoreError> {
        read_model::save(
            &self.pool,
            projection,
            generation,
            from_position,
            to_position,
            changes,
        )
        .await
    }

    async fn replace_read_model(
        &self,
        projection: &str,
        rows: &Rows,
        position: i64,
    ) -> Result<i64, StoreError> {
        read_model::replace(&self.pool, projection, rows, position).await
    }

    async fn list_read_models(&self) -> Result<Vec<ReadModelInfo>, StoreError> {
        read_model::list(&self.pool).await
    }

    async fn close(&self) {
        self.committer.close().await;
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.pool.close().await;
    }
}
