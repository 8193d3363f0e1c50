//! The SQLite event store (embedded mode).
//!
//! One writer connection, so position order is commit order and `read_all` is a plain range
//! scan. WAL with `synchronous = FULL`: an acknowledged append survives a power cut. The data
//! directory is locked by the serving process, so this store's leases are held by construction.
//! What SQLite shares with Postgres is in `store::sql`.

mod append;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use revo_events::store::Lease;
use revo_events::{RecordedEvent, StoreError};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite};
use tokio::sync::watch;
use uuid::Uuid;

use super::heads::HeadCache;
use super::sql::{impl_event_store, Dialect, SqlStore, EVENT_COLUMNS};
use super::{check_migrations, unavailable, SQLITE_MIGRATOR};
use super::{GroupCommitConfig, StoreMetrics};
use append::Backend;
use revo_actors::group_commit::GroupCommitter;

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

/// The event store on SQLite.
pub type SqliteStore = SqlStore<Sqlite>;

impl Dialect for Sqlite {
    fn migrator() -> &'static Migrator {
        &SQLITE_MIGRATOR
    }
    const HAS_MIGRATIONS_TABLE: &'static str = "SELECT EXISTS (SELECT 1 FROM sqlite_master \
         WHERE type = 'table' AND name = '_sqlx_migrations')";
    const DOC_AS_TEXT: &'static str = "doc";
    const DOC_PARAM: (&'static str, &'static str) = ("", "");
    // One writer connection: a transaction on it excludes every other writer.
    const FOR_UPDATE: &'static str = "";
    const SNAPSHOT: Option<&'static str> = None;
    const MAX_BINDS: usize = 32_766;
    fn uuid(row: &SqliteRow, index: usize) -> Result<Option<Uuid>, sqlx::Error> {
        let text: Option<String> = row.try_get(index)?;
        text.map(|s| Uuid::from_str(&s).map_err(|e| sqlx::Error::Decode(Box::new(e))))
            .transpose()
    }
    type Own = ();
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
        {
            let mut conn = writer.acquire().await.map_err(unavailable)?;
            let applied = SqlStore::<Sqlite>::applied_migrations(&mut conn)
                .await?
                .unwrap_or_default();
            match check_migrations(&SQLITE_MIGRATOR, &applied) {
                Err(StoreError::Schema(m)) if m.contains("is not applied") => {
                    SQLITE_MIGRATOR
                        .run(&mut *conn)
                        .await
                        .map_err(|e| StoreError::Schema(e.to_string()))?;
                }
                other => other?,
            }
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
        let committer =
            GroupCommitter::start(backend, config.group, metrics.commit, vec![signal.clone()]);
        Ok(Arc::new(SqlStore {
            reader,
            writer,
            committer,
            signal,
            max_payload: config.max_payload,
            own: (),
        }))
    }

    async fn dialect_read_all(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?;
        if rows.is_empty() {
            self.check_position(after).await?;
        }
        rows.iter().map(Self::decode_event).collect()
    }

    async fn dialect_try_lease(&self, _name: &str) -> Result<Option<Box<dyn Lease>>, StoreError> {
        Ok(Some(Box::new(HeldLease)))
    }

    async fn dialect_close(&self) {}
}

/// The data-directory lock is the lease.
struct HeldLease;

#[async_trait]
impl Lease for HeldLease {
    async fn still_held(&self) -> bool {
        true
    }
}

impl_event_store!(Sqlite);
