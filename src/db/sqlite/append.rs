//! Group-commit batches on SQLite: version check (cached heads first, see `store::heads`), then
//! multi-row INSERTs in one transaction on the single writer connection.

use std::collections::HashMap;

use async_trait::async_trait;
use futures::future::BoxFuture;
use revo_events::{AppendRequest, Appended, StoreError};
use sqlx::{QueryBuilder, Row, SqlitePool};

use crate::db::heads::{HeadCache, HeadReader, StreamKey};
use crate::db::sql::SqlStore;
use crate::db::{outcomes, unavailable, unique_violation};
use revo_actors::group_commit::{BatchBackend, BatchFailure};

/// SQLite allows 32,766 bound values per statement; 11 per event.
const INSERT_CHUNK: usize = 2_000;

pub(super) struct Backend {
    pub(super) writer: SqlitePool,
    pub(super) heads: HeadCache,
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

impl HeadReader for sqlx::SqliteConnection {
    fn read_heads<'a>(
        &'a mut self,
        streams: &'a [StreamKey],
    ) -> BoxFuture<'a, Result<HashMap<StreamKey, i64>, sqlx::Error>> {
        Box::pin(read_heads(self, streams))
    }
}

#[async_trait]
impl BatchBackend for Backend {
    async fn append_batch(
        &self,
        reqs: &[AppendRequest],
    ) -> Result<Vec<Result<Appended, StoreError>>, BatchFailure> {
        let fatal = |e: sqlx::Error| BatchFailure::Fatal(unavailable(e));
        let mut tx = self.writer.begin().await.map_err(fatal)?;
        let plan = self.heads.plan(reqs, &mut *tx).await.map_err(fatal)?;
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
        SqlStore::<sqlx::Sqlite>::race_error(&self.writer, req, cause).await
    }
}
