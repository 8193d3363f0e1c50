//! Read models on Postgres: rows per projection and generation, with a compare-and-set
//! checkpoint, and atomic generation swaps for rebuilds.

use revo_events::store::{ReadModelInfo, StoredReadModel};
use revo_events::{Rows, StoreError};
use sqlx::PgPool;

use crate::store::{
    parse_rows, read_model_info, split_changes, unavailable, ReadModelRow, LIST_READ_MODELS,
};

pub(super) async fn load(pool: &PgPool, projection: &str) -> Result<StoredReadModel, StoreError> {
    sqlx::query(
        "INSERT INTO projections (name, generation, position) VALUES ($1, 1, 0) \
             ON CONFLICT (name) DO NOTHING",
    )
    .bind(projection)
    .execute(pool)
    .await
    .map_err(unavailable)?;
    let mut tx = pool.begin().await.map_err(unavailable)?;
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

pub(super) async fn save(
    pool: &PgPool,
    projection: &str,
    generation: i64,
    from_position: i64,
    to_position: i64,
    changes: Vec<(String, Option<serde_json::Value>)>,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
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

pub(super) async fn replace(
    pool: &PgPool,
    projection: &str,
    rows: &Rows,
    position: i64,
) -> Result<i64, StoreError> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
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
    sqlx::query(
        "UPDATE projections SET generation = $2, position = $3, updated_at = now() WHERE name = $1",
    )
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

pub(super) async fn list(pool: &PgPool) -> Result<Vec<ReadModelInfo>, StoreError> {
    let rows: Vec<ReadModelRow> = sqlx::query_as(LIST_READ_MODELS)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    Ok(rows.into_iter().map(read_model_info).collect())
}
