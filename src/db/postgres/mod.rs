//! The Postgres event store (cluster mode; the system of record).
//!
//! Commit order: every row records its writing transaction (`txid`). `read_all` returns only
//! rows of transactions older than the oldest still running (`pg_snapshot_xmin`), ordered by
//! `(txid, position)`. A transaction that took an early position but commits late is therefore
//! read after the ones that committed before it, never skipped; see `docs/events.md`. What
//! Postgres shares with SQLite is in `store::sql`.

mod append;
mod wake;

use std::sync::Arc;
use std::time::Duration;

use revo_events::store::Lease;
use revo_events::{RecordedEvent, StoreError};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Postgres, Row};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::sql::{impl_event_store, Dialect, SqlStore, EVENT_COLUMNS};
use super::{check_migrations, unavailable, PG_MIGRATOR};
use super::{GroupCommitConfig, StoreMetrics};
use append::Backend;
use revo_actors::group_commit::GroupCommitter;
use wake::PgLease;

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

/// The event store on Postgres.
pub type PgStore = SqlStore<Postgres>;

/// What only the Postgres adapter has.
pub struct PgOwn {
    /// Leases take a connection of their own, outside the pool.
    connect: PgConnectOptions,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Signalled when a read found committed events it could not return yet (held back by an
    /// older open transaction): no NOTIFY announces that transaction's end, so readers are
    /// woken on a short timer instead.
    held_back: Arc<wake::HeldBack>,
}

impl Dialect for Postgres {
    fn migrator() -> &'static Migrator {
        &PG_MIGRATOR
    }
    const HAS_MIGRATIONS_TABLE: &'static str = "SELECT to_regclass('_sqlx_migrations') IS NOT NULL";
    const DOC_AS_TEXT: &'static str = "doc::text";
    const DOC_PARAM: (&'static str, &'static str) = ("CAST(", " AS jsonb)");
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const SNAPSHOT: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY");
    const MAX_BINDS: usize = u16::MAX as usize;
    fn uuid(row: &PgRow, index: usize) -> Result<Option<Uuid>, sqlx::Error> {
        row.try_get(index)
    }
    type Own = PgOwn;
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
    // Refuses a database migrated by a newer build (running old code on it could corrupt it).
    let applied = SqlStore::<Postgres>::applied_migrations(&mut conn)
        .await?
        .unwrap_or_default();
    match check_migrations(&PG_MIGRATOR, &applied) {
        Err(StoreError::Schema(m)) if m.contains("is not applied") => {}
        other => other?,
    }
    PG_MIGRATOR
        .run(&mut conn)
        .await
        .map_err(|e| StoreError::Schema(e.to_string()))?;
    let _ = conn.close().await;
    Ok(())
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
            metrics.commit,
            vec![signal.clone(), Arc::new(committed)],
        );
        let store = Arc::new(SqlStore {
            reader: pool.clone(),
            writer: pool,
            committer,
            signal,
            max_payload: config.max_payload,
            own: PgOwn {
                connect,
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
                held_back,
            },
        });
        store.check_schema().await?;
        // Tells this process's own notifications apart from other processes'.
        let me = uuid::Uuid::now_v7().to_string();
        let own = &store.own;
        own.tasks.spawn(wake::announce(
            store.writer.clone(),
            committed_rx,
            me.clone(),
            own.stop.clone(),
        ));
        own.tasks.spawn(wake::listen(
            store.writer.clone(),
            store.signal.clone(),
            own.held_back.clone(),
            me,
            own.stop.clone(),
        ));
        Ok(store)
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.writer
    }

    async fn dialect_read_all(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = if after == 0 {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events \
                 WHERE txid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY txid, position LIMIT $1"
            );
            sqlx::query(&sql)
                .bind(limit as i64)
                .fetch_all(&self.reader)
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
                .fetch_all(&self.reader)
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
                .fetch_one(&self.reader)
                .await
                .map_err(unavailable)?;
            if pending {
                self.own.held_back.held();
            } else {
                self.own.held_back.clear();
            }
            self.check_position(after).await?;
        } else {
            self.own.held_back.clear();
        }
        rows.iter().map(Self::decode_event).collect()
    }

    async fn dialect_try_lease(&self, name: &str) -> Result<Option<Box<dyn Lease>>, StoreError> {
        // A session-level advisory lock on a connection of its own: it lasts exactly as long as
        // this process's session, so a crashed leader releases it the moment its socket closes.
        let mut conn = PgConnection::connect_with(&self.own.connect)
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

    /// Stops the wake-up tasks (the pools close after).
    async fn dialect_close(&self) {
        self.own.stop.cancel();
        self.own.tasks.close();
        self.own.tasks.wait().await;
    }
}

impl_event_store!(Postgres);
