//! Scratch databases and event payloads for the scenarios.

use anyhow::Context;
use revo_events::{EventMeta, NewEvent};
use sqlx::Connection;
use uuid::Uuid;

/// A scratch Postgres database, migrated; dropped by `drop_db`.
pub async fn scratch_db(pg: &str) -> anyhow::Result<(String, String)> {
    let name = format!("revo_bench_{}", Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&format!("{pg}/postgres"))
        .await
        .context("connecting to Postgres")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let url = format!("{pg}/{name}");
    revo::db::postgres::migrate(&url).await?;
    Ok((name, url))
}

pub async fn drop_db(pg: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect(&format!("{pg}/postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}

/// A cost-like event as later issues will append for every generation (about 150 bytes).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "type")]
pub enum Bench {
    #[serde(rename = "generation.completed")]
    Generated {
        user: String,
        model: String,
        day: u32,
        input_tokens: u32,
        output_tokens: u32,
        cost_micros: u64,
    },
}

pub fn bench_event(i: u64) -> anyhow::Result<NewEvent> {
    let payload = rmp_serde::to_vec_named(&Bench::Generated {
        user: format!("user-{}", i % 1000),
        model: ["smollm2-360m", "gpt-4o-mini", "claude-haiku"][(i % 3) as usize].into(),
        day: 20_000 + (i % 30) as u32,
        input_tokens: (i % 4096) as u32,
        output_tokens: (i % 512) as u32,
        cost_micros: i % 10_000,
    })?;
    Ok(NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "generation.completed".into(),
        schema: 1,
        occurred_at: chrono::Utc::now(),
        meta: EventMeta {
            actor: Some(format!("user:{}", i % 1000)),
            correlation_id: Some(Uuid::now_v7()),
            causation_id: None,
        },
        payload,
    })
}

impl revo_events::EventFamily for Bench {
    fn event_type(&self) -> &'static str {
        "generation.completed"
    }
    fn current_schema(event_type: &str) -> Option<u32> {
        (event_type == "generation.completed").then_some(1)
    }
}
