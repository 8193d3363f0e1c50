//! Read models on SQLite: the same tables and rules as on Postgres (see
//! `store::postgres::read_model`). Writes go through the single writer connection, so a
//! checkpoint and its rows are always read and written together.

use chrono::Utc;
use revo_events::store::{ReadModelInfo, StoredReadModel};
use revo_events::{Rows, StoreError};
use sqlx::SqlitePool;

use crate::store::{
    parse_rows, read_model_info, split_changes, unavailable, ReadModelRow, LIST_READ_MODELS,
};

pub(super) async fn load(
    writer: &SqlitePool,
    projection: &str,
) -> Result<StoredReadModel, StoreError> {
    // Read through the writer: it serialises with saves, so checkpoint and rows agree.
    let mut tx = writer.begin().await.map_err(unavailable)?;
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

pub(super) async fn save(
    writer: &SqlitePool,
    projection: &str,
    generation: i64,
    from_position: i64,
    to_position: i64,
    changes: Vec<(String, Option<serde_json::Value>)>,
) -> Result<bool, StoreError> {
    let mut tx = writer.begin().await.map_err(unavailable)?;
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

pub(super) async fn replace(
    writer: &SqlitePool,
    projection: &str,
    rows: &Rows,
    position: i64,
) -> Result<i64, StoreError> {
    let mut tx = writer.begin().await.map_err(unavailable)?;
    let current: Option<i64> =
        sqlx::query_scalar("SELECT generation FROM projections WHERE name = ?")
            .bind(projection)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
    let generation = current.unwrap_or(1) + 1;
    for (k, doc) in rows {
        sqlx::query(
            "INSERT INTO read_model_rows (projection, generation, key, doc) VALUES (?, ?, ?, ?)",
        )
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

pub(super) async fn list(reader: &SqlitePool) -> Result<Vec<ReadModelInfo>, StoreError> {
    let rows: Vec<ReadModelRow> = sqlx::query_as(LIST_READ_MODELS)
        .fetch_all(reader)
        .await
        .map_err(unavailable)?;
    Ok(rows.into_iter().map(read_model_info).collect())
}
