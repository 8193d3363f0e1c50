//! The SQLite event store (embedded mode).
//!
//! One writer connection, so position order is commit order and `read_all` is a plain range
//! scan. WAL with `synchronous = FULL`: an acknowledged append survives a power cut. The data
//! directory is locked by the serving process, so this store's leases are held by construction.

mod append;
mod read_model;

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
use sqlx::{Row, SqlitePool};
use tokio::sync::watch;
use uuid::Uuid;

use super::group_commit::{GroupCommitConfig, GroupCommitter, StoreMetrics};
use super::heads::HeadCache;
use super::{check_migrations, unavailable, SQLITE_MIGRATOR};
use append::Backend;

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
        read_model::load(&self.writer, projection).await
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
            &self.writer,
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
        read_model::replace(&self.writer, projection, rows, position).await
    }

    async fn list_read_models(&self) -> Result<Vec<ReadModelInfo>, StoreError> {
        read_model::list(&self.reader).await
    }

    async fn close(&self) {
        self.committer.close().await;
        self.reader.close().await;
        self.writer.close().await;
    }
}
