//! Group-commit batches on Postgres: version check (cached heads first, see `store::heads`),
//! then one multi-row INSERT, which commits on its own.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use revo_events::{AppendRequest, Appended, StoreError};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::db::heads::{HeadCache, HeadReader, StreamKey};
use crate::db::sql::SqlStore;
use crate::db::{outcomes, unavailable, unique_violation};
use revo_actors::group_commit::{BatchBackend, BatchFailure};

pub(super) struct Backend {
    pub(super) pool: PgPool,
    heads: HeadCache,
}

impl Backend {
    pub(super) fn new(pool: PgPool) -> Self {
        Backend {
            pool,
            heads: HeadCache::default(),
        }
    }
}

/// Current versions of `streams`.
async fn read_heads(
    conn: &mut PgConnection,
    streams: &[StreamKey],
) -> Result<HashMap<StreamKey, i64>, sqlx::Error> {
    let types: Vec<&str> = streams.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<&str> = streams.iter().map(|k| k.1.as_str()).collect();
    let rows = sqlx::query(
        "SELECT s.t, s.i, COALESCE((SELECT max(version) FROM events e \
           WHERE e.stream_type = s.t AND e.stream_id = s.i), 0) \
         FROM unnest($1::text[], $2::text[]) AS s(t, i)",
    )
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| Ok(((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?)))
        .collect()
}

impl HeadReader for PgConnection {
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
        let mut conn = self.pool.acquire().await.map_err(fatal)?;

        // The batch is one INSERT statement, and so one transaction on its own: no BEGIN or
        // COMMIT round trips. Versions are known before it runs (and so before it gets its
        // txid): every event it depends on committed with a smaller txid, which keeps
        // per-stream order in (txid, position) order. Cached heads were committed earlier too;
        // the unique key catches any head that moved since it was read.
        let plan = self.heads.plan(reqs, &mut *conn).await.map_err(fatal)?;

        let n: usize = reqs
            .iter()
            .zip(&plan)
            .filter(|(_, p)| p.is_ok())
            .map(|(r, _)| r.events.len())
            .sum();
        if n == 0 {
            // Every request conflicted (each has at least one event, checked by `validate`).
            let empty = || StoreError::Invalid("an append needs at least one event".into());
            return Ok(plan
                .into_iter()
                .map(|p| p.and_then(|_| Err(empty())))
                .collect());
        }

        // Insert in stream order: concurrent batches then take unique-index locks in the same
        // order and cannot deadlock each other.
        let mut accepted: Vec<_> = reqs.iter().zip(&plan).collect();
        accepted.sort_by(|(a, _), (b, _)| {
            (&a.stream_type, &a.stream_id).cmp(&(&b.stream_type, &b.stream_id))
        });
        let mut c = Columns::with_capacity(n);
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
            "INSERT INTO events (event_id, stream_type, stream_id, version, event_type, \
               schema, occurred_at, actor, correlation_id, causation_id, payload) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[], \
               $6::int4[], $7::timestamptz[], $8::text[], $9::uuid[], $10::uuid[], $11::bytea[]) \
             RETURNING event_id, position",
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
        .fetch_all(&mut *conn)
        .await;
        let inserted = match inserted {
            Ok(rows) => rows,
            Err(e) => {
                self.heads.forget(reqs);
                return Err(match unique_violation(&e) {
                    Some(constraint) => BatchFailure::Race(StoreError::Backend(constraint)),
                    // A deadlock or serialisation failure with another process: retrying each
                    // request alone resolves it.
                    None if is_retryable(&e) => {
                        BatchFailure::Race(StoreError::Backend(e.to_string()))
                    }
                    // The connection broke while the statement ran: it may have committed.
                    None if matches!(e, sqlx::Error::Io(_)) => {
                        BatchFailure::Fatal(StoreError::CommitUnknown(e.to_string()))
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
        let outcomes = outcomes(reqs, plan, |e| {
            positions.get(&e.event_id).copied().unwrap_or(0)
        });
        self.heads.remember(reqs, &outcomes);
        Ok(outcomes)
    }

    async fn race_error(&self, req: &AppendRequest, cause: StoreError) -> StoreError {
        SqlStore::<sqlx::Postgres>::race_error(&self.pool, req, cause).await
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
