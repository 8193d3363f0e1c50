//! What the Postgres and SQLite adapters share: the tables, the SQL that reads and writes them
//! the same way on both, and the [`Dialect`] that says where the two databases differ.
//!
//! Both schemas have the same tables and columns (`migrations/`). Queries use `$N` placeholders,
//! which both drivers bind by number, `ON CONFLICT ... DO UPDATE ... excluded.*` upserts, which
//! both support, and timestamps bound from this process's clock rather than a database function.
//! What remains different is small and named here: how a UUID and a JSON document are stored,
//! whether a transaction must ask for one snapshot, how a row is locked, and the bind limit. The
//! parts that differ in kind (Postgres's commit-order horizon, its wake-ups and leases, each
//! database's batch insert) stay in `postgres/` and `sqlite/`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use revo_events::store::{ReadModelInfo, StoredReadModel};
use revo_events::{AppendRequest, Envelope, EventMeta, RecordedEvent, Rows, StoreError};
use sqlx::migrate::Migrator;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool};
use sqlx::{Row, Type};
use tokio::sync::watch;
use uuid::Uuid;

use super::{check_migrations, race_outcome, unavailable};
use revo_actors::group_commit::GroupCommitter;

/// Where the two SQL databases differ, for the queries both adapters share.
pub trait Dialect: Database {
    /// The schema this build embeds for the database.
    fn migrator() -> &'static Migrator;
    /// One boolean: whether sqlx's migrations table exists.
    const HAS_MIGRATIONS_TABLE: &'static str;
    /// `read_model_rows.doc` read as JSON text.
    const DOC_AS_TEXT: &'static str;
    /// What surrounds a bound JSON text written to `read_model_rows.doc`.
    const DOC_PARAM: (&'static str, &'static str);
    /// Appended to a `SELECT` inside a transaction to lock what it read until the end (empty
    /// where writers are serialised anyway).
    const FOR_UPDATE: &'static str;
    /// The first statement of a transaction that must read one snapshot, where the default
    /// isolation does not already give one.
    const SNAPSHOT: Option<&'static str>;
    /// Most values bound to one statement.
    const MAX_BINDS: usize;
    /// Reads a UUID column (native on Postgres, text on SQLite).
    fn uuid(row: &Self::Row, index: usize) -> Result<Option<Uuid>, sqlx::Error>;
    /// State only this database's adapter has (Postgres: wake-ups, leases).
    type Own: Send + Sync + 'static;
}

/// A column type that can be bound and read.
pub trait Column<DB: Database>: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> {}
impl<DB: Database, T> Column<DB> for T where
    T: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>
{
}

/// The event store over one SQL database: Postgres in cluster mode ([`super::PgStore`]), SQLite
/// in embedded mode ([`super::SqliteStore`]).
pub struct SqlStore<DB: Dialect> {
    /// Reads that need no consistency with a write in flight.
    pub(super) reader: Pool<DB>,
    /// Writes, and reads that must see the latest write (one connection on SQLite).
    pub(super) writer: Pool<DB>,
    pub(super) committer: GroupCommitter,
    pub(super) signal: Arc<watch::Sender<u64>>,
    pub(super) max_payload: usize,
    pub(super) own: DB::Own,
}

/// The columns of an event row, in the order [`SqlStore::decode_event`] reads them.
pub(super) const EVENT_COLUMNS: &str = "position, event_id, stream_type, stream_id, version, \
     event_type, schema, occurred_at, actor, correlation_id, causation_id, payload";

const LIST_READ_MODELS: &str = "SELECT p.name, p.generation, p.position, \
     (SELECT count(*) FROM read_model_rows r WHERE r.projection = p.name AND r.generation = p.generation), \
     p.updated_at FROM projections p ORDER BY p.name";

const ENSURE_PROJECTION: &str = "INSERT INTO projections (name, generation, position, updated_at) \
     VALUES ($1, 1, 0, $2) ON CONFLICT (name) DO NOTHING";

type Change = (String, Option<serde_json::Value>);

fn row_error(e: sqlx::Error) -> StoreError {
    StoreError::Backend(format!("cannot read event row: {e}"))
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    bool: Column<DB>,
    i32: Column<DB>,
    i64: Column<DB>,
    String: Column<DB>,
    Vec<u8>: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
    // Applied migrations (version, checksum, success), none if the table does not exist yet.
    pub(super) async fn applied_migrations(
        conn: &mut DB::Connection,
    ) -> Result<Option<Vec<(i64, Vec<u8>, bool)>>, StoreError> {
        let exists: bool = sqlx::query_scalar(DB::HAS_MIGRATIONS_TABLE)
            .fetch_one(&mut *conn)
            .await
            .map_err(unavailable)?;
        if !exists {
            return Ok(None);
        }
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map(Some)
            .map_err(unavailable)
    }

    /// The error for a request that lost a race with another writer when it ran alone: known from
    /// the violated constraint, or a conflict with the stream's current version.
    pub(super) async fn race_error(
        pool: &Pool<DB>,
        req: &AppendRequest,
        cause: StoreError,
    ) -> StoreError {
        if let Ok(known) = race_outcome(req, cause) {
            return known;
        }
        let actual: Result<i64, _> = sqlx::query_scalar(
            "SELECT COALESCE(max(version), 0) FROM events WHERE stream_type = $1 AND stream_id = $2",
        )
        .bind(req.stream_type.as_str())
        .bind(req.stream_id.as_str())
        .fetch_one(pool)
        .await;
        StoreError::Conflict {
            stream_type: req.stream_type.clone(),
            stream_id: req.stream_id.clone(),
            expected: req.expected,
            actual: actual.unwrap_or(-1),
        }
    }

    /// An event row read with [`EVENT_COLUMNS`], by index (a name lookup per column per row
    /// costs more).
    pub(super) fn decode_event(row: &DB::Row) -> Result<RecordedEvent, StoreError> {
        let schema: i32 = row.try_get(6).map_err(row_error)?;
        Ok(RecordedEvent {
            position: row.try_get(0).map_err(row_error)?,
            envelope: Envelope {
                event_id: DB::uuid(row, 1)
                    .map_err(row_error)?
                    .ok_or_else(|| StoreError::Backend("event without an id".into()))?,
                stream_type: row.try_get(2).map_err(row_error)?,
                stream_id: row.try_get(3).map_err(row_error)?,
                version: row.try_get(4).map_err(row_error)?,
                event_type: row.try_get(5).map_err(row_error)?,
                schema: u32::try_from(schema)
                    .map_err(|_| StoreError::Backend(format!("schema {schema}")))?,
                occurred_at: row.try_get(7).map_err(row_error)?,
                meta: EventMeta {
                    actor: row.try_get(8).map_err(row_error)?,
                    correlation_id: DB::uuid(row, 9).map_err(row_error)?,
                    causation_id: DB::uuid(row, 10).map_err(row_error)?,
                },
                payload: row.try_get(11).map_err(row_error)?,
            },
        })
    }

    pub(super) async fn read_stream_rows(
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
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?;
        rows.iter().map(Self::decode_event).collect()
    }

    /// Whether an event is stored at `position`: a reader's cursor must name one (or be 0).
    pub(super) async fn check_position(&self, position: i64) -> Result<(), StoreError> {
        if position == 0 {
            return Ok(());
        }
        let known: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE position = $1)")
                .bind(position)
                .fetch_one(&self.reader)
                .await
                .map_err(unavailable)?;
        if known {
            Ok(())
        } else {
            Err(StoreError::UnknownPosition(position))
        }
    }

    pub(super) async fn head(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM events")
            .fetch_one(&self.reader)
            .await
            .map_err(unavailable)
    }

    pub(super) async fn round_trip(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    pub(super) async fn check_schema(&self) -> Result<(), StoreError> {
        let mut conn = self.reader.acquire().await.map_err(unavailable)?;
        let applied = Self::applied_migrations(&mut conn).await?.ok_or_else(|| {
            StoreError::Schema("the database is not migrated: run `revo migrate`".into())
        })?;
        check_migrations(DB::migrator(), &applied)
    }

    pub(super) async fn checkpoint(&self, name: &str) -> Result<i64, StoreError> {
        let p: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(p.unwrap_or(0))
    }

    pub(super) async fn set_checkpoint(&self, name: &str, position: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checkpoints (name, position, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, \
               updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(position)
        .bind(Utc::now())
        .execute(&self.writer)
        .await
        .map(|_| ())
        .map_err(unavailable)
    }

    pub(super) async fn read_model(&self, projection: &str) -> Result<StoredReadModel, StoreError> {
        sqlx::query(ENSURE_PROJECTION)
            .bind(projection)
            .bind(Utc::now())
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        // One snapshot for the checkpoint and the rows (on SQLite the writer connection gives
        // that: it serialises with saves).
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        if let Some(snapshot) = DB::SNAPSHOT {
            sqlx::query(snapshot)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        let (generation, position): (i64, i64) =
            sqlx::query_as("SELECT generation, position FROM projections WHERE name = $1")
                .bind(projection)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        let sql = format!(
            "SELECT key, {} FROM read_model_rows WHERE projection = $1 AND generation = $2",
            DB::DOC_AS_TEXT
        );
        let rows: Vec<(String, String)> = sqlx::query_as(&sql)
            .bind(projection)
            .bind(generation)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        let rows = rows
            .into_iter()
            .map(|(k, doc)| match serde_json::from_str(&doc) {
                Ok(v) => Ok((k, v)),
                Err(e) => Err(StoreError::Backend(format!(
                    "read model row `{k}` is not JSON: {e}"
                ))),
            })
            .collect::<Result<Rows, _>>()?;
        Ok(StoredReadModel {
            generation,
            position,
            rows,
        })
    }

    /// Upserts `rows` (key, JSON text) of one generation, in as few statements as the bind
    /// limit allows.
    async fn upsert_rows(
        conn: &mut DB::Connection,
        projection: &str,
        generation: i64,
        rows: &[(&str, String)],
    ) -> Result<(), StoreError> {
        let (before, after) = DB::DOC_PARAM;
        for chunk in rows.chunks(DB::MAX_BINDS / 4) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let n = 4 * i;
                    format!(
                        "(${}, ${}, ${}, {before}${}{after})",
                        n + 1,
                        n + 2,
                        n + 3,
                        n + 4
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO read_model_rows (projection, generation, key, doc) VALUES {} \
                 ON CONFLICT (projection, generation, key) DO UPDATE SET doc = excluded.doc",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (key, doc) in chunk {
                q = q
                    .bind(projection)
                    .bind(generation)
                    .bind(*key)
                    .bind(doc.as_str());
            }
            q.execute(&mut *conn).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// Deletes `keys` of one generation.
    async fn delete_rows(
        conn: &mut DB::Connection,
        projection: &str,
        generation: i64,
        keys: &[&str],
    ) -> Result<(), StoreError> {
        for chunk in keys.chunks(DB::MAX_BINDS - 2) {
            let list: Vec<String> = (3..chunk.len() + 3).map(|n| format!("${n}")).collect();
            let sql = format!(
                "DELETE FROM read_model_rows WHERE projection = $1 AND generation = $2 \
                 AND key IN ({})",
                list.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(projection).bind(generation);
            for key in chunk {
                q = q.bind(*key);
            }
            q.execute(&mut *conn).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// Writes changed rows and advances the checkpoint, compare-and-set on (generation,
    /// checkpoint): false, writing nothing, when either moved.
    pub(super) async fn save_rows(
        &self,
        projection: &str,
        generation: i64,
        from_position: i64,
        to_position: i64,
        changes: Vec<Change>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        let moved: Option<i64> = sqlx::query_scalar(
            "UPDATE projections SET position = $4, updated_at = $5 \
             WHERE name = $1 AND generation = $2 AND position = $3 RETURNING position",
        )
        .bind(projection)
        .bind(generation)
        .bind(from_position)
        .bind(to_position)
        .bind(Utc::now())
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        if moved.is_none() {
            let _ = tx.rollback().await;
            return Ok(false);
        }
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for (key, doc) in &changes {
            match doc {
                Some(doc) => upserts.push((key.as_str(), doc.to_string())),
                None => deletes.push(key.as_str()),
            }
        }
        Self::upsert_rows(&mut tx, projection, generation, &upserts).await?;
        Self::delete_rows(&mut tx, projection, generation, &deletes).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    /// Writes `rows` as a new generation and swaps it in, in one transaction.
    pub(super) async fn swap_rows(
        &self,
        projection: &str,
        rows: &Rows,
        position: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        sqlx::query(ENSURE_PROJECTION)
            .bind(projection)
            .bind(Utc::now())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        // Locked: running folds block, then see the new generation and reload.
        let sql = format!(
            "SELECT generation FROM projections WHERE name = $1{}",
            DB::FOR_UPDATE
        );
        let current: i64 = sqlx::query_scalar(&sql)
            .bind(projection)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
        let generation = current + 1;
        let docs: Vec<(&str, String)> = rows
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_string()))
            .collect();
        Self::upsert_rows(&mut tx, projection, generation, &docs).await?;
        sqlx::query(
            "UPDATE projections SET generation = $2, position = $3, updated_at = $4 WHERE name = $1",
        )
        .bind(projection)
        .bind(generation)
        .bind(position)
        .bind(Utc::now())
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

    pub(super) async fn read_models(&self) -> Result<Vec<ReadModelInfo>, StoreError> {
        let rows: Vec<(String, i64, i64, i64, DateTime<Utc>)> = sqlx::query_as(LIST_READ_MODELS)
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
}

/// The store's seams for one dialect: the shared methods above, and the ones each adapter
/// writes itself (`append_batch` lives in the group committer's backend; `read_all`,
/// `try_lease` and `close` are inherent methods named `dialect_*` on the concrete store).
///
/// A macro, not a generic impl, because `async_trait` must prove every future `Send`, and rustc
/// cannot prove it for sqlx's executors generically (higher-ranked `Executor` bounds); for a
/// concrete database it can.
macro_rules! impl_event_store {
    ($db:ty) => {
        #[async_trait::async_trait]
        impl revo_events::EventLog for $crate::db::sql::SqlStore<$db> {
            async fn append(
                &self,
                req: revo_events::AppendRequest,
            ) -> Result<revo_events::Appended, revo_events::StoreError> {
                req.validate(self.max_payload)?;
                self.committer.append(req).await
            }

            async fn read_stream(
                &self,
                stream_type: &str,
                stream_id: &str,
                from_version: i64,
                limit: usize,
            ) -> Result<Vec<revo_events::RecordedEvent>, revo_events::StoreError> {
                self.read_stream_rows(stream_type, stream_id, from_version, limit)
                    .await
            }

            async fn read_all(
                &self,
                after: i64,
                limit: usize,
            ) -> Result<Vec<revo_events::RecordedEvent>, revo_events::StoreError> {
                self.dialect_read_all(after, limit).await
            }

            fn append_signal(&self) -> tokio::sync::watch::Receiver<u64> {
                self.signal.subscribe()
            }

            async fn head_position(&self) -> Result<i64, revo_events::StoreError> {
                self.head().await
            }
        }

        #[async_trait::async_trait]
        impl revo_events::Checkpoints for $crate::db::sql::SqlStore<$db> {
            async fn load_checkpoint(&self, name: &str) -> Result<i64, revo_events::StoreError> {
                self.checkpoint(name).await
            }

            async fn save_checkpoint(
                &self,
                name: &str,
                position: i64,
            ) -> Result<(), revo_events::StoreError> {
                self.set_checkpoint(name, position).await
            }
        }

        #[async_trait::async_trait]
        impl revo_events::Leases for $crate::db::sql::SqlStore<$db> {
            async fn try_lease(
                &self,
                name: &str,
            ) -> Result<Option<Box<dyn revo_events::store::Lease>>, revo_events::StoreError> {
                self.dialect_try_lease(name).await
            }
        }

        #[async_trait::async_trait]
        impl revo_events::ReadModels for $crate::db::sql::SqlStore<$db> {
            async fn load_read_model(
                &self,
                projection: &str,
            ) -> Result<revo_events::store::StoredReadModel, revo_events::StoreError> {
                self.read_model(projection).await
            }

            async fn save_read_model(
                &self,
                projection: &str,
                generation: i64,
                from_position: i64,
                to_position: i64,
                changes: Vec<(String, Option<serde_json::Value>)>,
            ) -> Result<bool, revo_events::StoreError> {
                self.save_rows(projection, generation, from_position, to_position, changes)
                    .await
            }

            async fn replace_read_model(
                &self,
                projection: &str,
                rows: &revo_events::Rows,
                position: i64,
            ) -> Result<i64, revo_events::StoreError> {
                self.swap_rows(projection, rows, position).await
            }

            async fn list_read_models(
                &self,
            ) -> Result<Vec<revo_events::store::ReadModelInfo>, revo_events::StoreError> {
                self.read_models().await
            }
        }

        #[async_trait::async_trait]
        impl revo_events::EventStore for $crate::db::sql::SqlStore<$db> {
            async fn ping(&self) -> Result<(), revo_events::StoreError> {
                self.round_trip().await
            }

            async fn schema_status(&self) -> Result<(), revo_events::StoreError> {
                self.check_schema().await
            }

            async fn close(&self) {
                self.committer.close().await;
                self.dialect_close().await;
                self.reader.close().await;
                self.writer.close().await;
            }
        }
    };
}
pub(super) use impl_event_store;
