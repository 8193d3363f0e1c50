//! Append throughput and latency with N concurrent appenders (each on its own stream, with an
//! exact expected version), beside a raw multi-row INSERT of equal rows in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use revo::db::postgres::PgStoreConfig;
use revo::db::sqlite::SqliteStoreConfig;
use revo::db::{PgStore, SqliteStore, StoreMetrics};
use revo_events::{AppendRequest, EventStore, ExpectedVersion};
use sqlx::{Connection, QueryBuilder};

use crate::stats::{ms, summarize};
use crate::util::{bench_event, drop_db, scratch_db};

#[derive(clap::Args)]
pub struct Args {
    /// `postgres`, `sqlite` or `both`.
    #[arg(long, default_value = "both")]
    backend: String,
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    concurrency: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Group-commit transactions in flight (Postgres).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Most events in one group-commit transaction.
    #[arg(long, default_value_t = 2048)]
    max_batch: usize,
    /// Rows per raw INSERT statement (one transaction each).
    #[arg(long, default_value_t = 1000)]
    raw_batch: usize,
}

pub async fn run(pg: &str, args: Args) -> anyhow::Result<()> {
    println!("| backend | appenders | events/s | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    if args.backend == "postgres" || args.backend == "both" {
        let (name, url) = scratch_db(pg).await?;
        let raw = raw_pg(&url, &args).await?;
        println!(
            "| postgres raw INSERT x{} (4 connections) | - | {raw:.0} | | | |",
            args.raw_batch
        );
        let store = PgStore::open(
            PgStoreConfig::new(url.clone()),
            StoreMetrics::unregistered()?,
        )
        .await?;
        for &c in &args.concurrency {
            measure("postgres", store.clone(), c, args.seconds, Some(raw)).await?;
        }
        store.close().await;
        drop_db(pg, &name).await?;
    }
    if args.backend == "sqlite" || args.backend == "both" {
        let dir =
            std::env::temp_dir().join(format!("revo-bench-{}", uuid::Uuid::now_v7().simple()));
        let raw = raw_sqlite(&dir.join("raw.db"), &args).await?;
        println!(
            "| sqlite raw INSERT x{} | - | {raw:.0} | | | |",
            args.raw_batch
        );
        let store = SqliteStore::open(
            SqliteStoreConfig::in_dir(&dir),
            StoreMetrics::unregistered()?,
        )
        .await?;
        for &c in &args.concurrency {
            measure("sqlite", store.clone(), c, args.seconds, Some(raw)).await?;
        }
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

async fn measure(
    backend: &str,
    store: Arc<impl EventStore>,
    appenders: usize,
    seconds: u64,
    raw: Option<f64>,
) -> anyhow::Result<()> {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|a| {
            let store = store.clone();
            let stream = format!("{run}-{a}");
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut version = 0;
                while Instant::now() < deadline {
                    let ev = bench_event(version as u64)?;
                    let t = Instant::now();
                    store
                        .append(AppendRequest::new(
                            "bench",
                            &stream,
                            ExpectedVersion::Exact(version),
                            vec![ev],
                        ))
                        .await?;
                    lat.push(t.elapsed());
                    version += 1;
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    let s = summarize(all);
    let ratio = raw
        .map(|r| format!(" ({:.2}x raw)", rate / r))
        .unwrap_or_default();
    println!(
        "| {backend} store | {appenders} | {rate:.0}{ratio} | {} | {} | {} |",
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    );
    Ok(())
}

/// Rows/s of plain multi-row INSERTs into the same table (no version check, no group commit),
/// 4 connections in parallel (the most the 2-core machine rewards), over 256 streams.
async fn raw_pg(url: &str, args: &Args) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let batch = args.raw_batch;
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                let mut rows = 0u64;
                let mut version = 0i64;
                while Instant::now() < deadline {
                    let evs: Vec<_> = (0..batch).map(|i| bench_event(i as u64)).collect::<Result<_, _>>()?;
                    let mut q = QueryBuilder::new(
                        "INSERT INTO events (event_id, stream_type, stream_id, version, event_type, schema, occurred_at, actor, correlation_id, causation_id, payload) ",
                    );
                    q.push_values(&evs, |mut b, e| {
                        // 64 streams per connection, 256 in all: the same spread of stream
                        // keys as 256 appenders on their own streams.
                        let (stream, v) = (version % 64, version / 64 + 1);
                        version += 1;
                        b.push_bind(e.event_id)
                            .push_bind("raw")
                            .push_bind(format!("w{w}-{stream}"))
                            .push_bind(v)
                            .push_bind(&e.event_type)
                            .push_bind(1i32)
                            .push_bind(e.occurred_at)
                            .push_bind(e.meta.actor.as_deref())
                            .push_bind(e.meta.correlation_id)
                            .push_bind(e.meta.causation_id)
                            .push_bind(e.payload.as_slice());
                    });
                    q.build().execute(&mut conn).await?;
                    rows += batch as u64;
                }
                anyhow::Ok(rows)
            })
        })
        .collect();
    let mut rows = 0;
    for t in tasks {
        rows += t.await??;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

async fn raw_sqlite(path: &std::path::Path, args: &Args) -> anyhow::Result<f64> {
    // Same schema and pragmas as the store: open it once through the store, then write raw.
    let dir = path.with_extension("d");
    let store = SqliteStore::open(
        SqliteStoreConfig::in_dir(&dir),
        StoreMetrics::unregistered()?,
    )
    .await?;
    store.close().await;
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("events.db"))
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut rows = 0u64;
    let mut version = 0i64;
    let batch = args.raw_batch.min(2000);
    while Instant::now() < deadline {
        let evs: Vec<_> = (0..batch)
            .map(|i| bench_event(i as u64))
            .collect::<Result<_, _>>()?;
        let mut tx = conn.begin().await?;
        let mut q = QueryBuilder::new(
            "INSERT INTO events (event_id, stream_type, stream_id, version, event_type, schema, occurred_at, actor, correlation_id, causation_id, payload) ",
        );
        q.push_values(&evs, |mut b, e| {
            version += 1;
            b.push_bind(e.event_id.to_string())
                .push_bind("raw")
                .push_bind("r")
                .push_bind(version)
                .push_bind(&e.event_type)
                .push_bind(1i64)
                .push_bind(e.occurred_at)
                .push_bind(e.meta.actor.as_deref())
                .push_bind(e.meta.correlation_id.map(|u| u.to_string()))
                .push_bind(e.meta.causation_id.map(|u| u.to_string()))
                .push_bind(e.payload.as_slice());
        });
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        rows += batch as u64;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}
