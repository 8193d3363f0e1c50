//! Replay: fold a cost-like projection (spend per user, model and day) over stored events, the
//! way `revo replay rebuild` does, and the same fold over events already in memory.

use revo_events::EventLog;
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use revo::db::postgres::PgStoreConfig;
use revo::db::{PgStore, StoreMetrics};
use revo_actors::{fold_from_zero, FoldUntil};
use revo_events::{EventFamily, EventStore, Projection, ProjectionError, RecordedEvent, Rows};
use sqlx::Connection;

use crate::util::{bench_event, drop_db, scratch_db, Bench};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
}

#[derive(Default)]
struct Totals {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_micros: u64,
}

/// Spend per (user, model, day): the shape of the cost ledger later issues build.
#[derive(Default)]
struct CostLedger {
    totals: HashMap<(String, String, u32), Totals>,
}

impl Projection for CostLedger {
    fn name(&self) -> &'static str {
        "bench_cost"
    }

    fn apply(
        &mut self,
        ev: &RecordedEvent,
        _dirty: &mut BTreeSet<String>,
    ) -> Result<(), ProjectionError> {
        let Bench::Generated {
            user,
            model,
            day,
            input_tokens,
            output_tokens,
            cost_micros,
        } = Bench::decode(&ev.envelope).map_err(|e| ProjectionError::decode(ev, e))?;
        let t = self.totals.entry((user, model, day)).or_default();
        t.requests += 1;
        t.input_tokens += u64::from(input_tokens);
        t.output_tokens += u64::from(output_tokens);
        t.cost_micros += cost_micros;
        Ok(())
    }

    fn row(&self, _key: &str) -> Option<serde_json::Value> {
        None
    }

    fn rows(&self) -> Rows {
        self.totals
            .iter()
            .map(|((u, m, d), t)| {
                (
                    format!("{u}|{m}|{d}"),
                    serde_json::json!({"requests": t.requests, "input_tokens": t.input_tokens,
                        "output_tokens": t.output_tokens, "cost_micros": t.cost_micros}),
                )
            })
            .collect()
    }

    fn load(&mut self, _rows: Rows) -> Result<(), ProjectionError> {
        Ok(())
    }
}

pub async fn run(pg: &str, args: Args) -> anyhow::Result<()> {
    let (name, url) = scratch_db(pg).await?;
    let seed = Instant::now();
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let chunk = 10_000u64;
    let mut i = 0;
    while i < args.events {
        let n = chunk.min(args.events - i);
        let evs: Vec<_> = (i..i + n).map(bench_event).collect::<Result<_, _>>()?;
        let ids: Vec<_> = evs.iter().map(|e| e.event_id).collect();
        let streams: Vec<String> = (i..i + n).map(|k| format!("u{}", k % 1000)).collect();
        let versions: Vec<i64> = (i..i + n).map(|k| (k / 1000 + 1) as i64).collect();
        let times: Vec<_> = evs.iter().map(|e| e.occurred_at).collect();
        let payloads: Vec<&[u8]> = evs.iter().map(|e| e.payload.as_slice()).collect();
        sqlx::query(
            "INSERT INTO events (event_id, stream_type, stream_id, version, event_type, schema, occurred_at, payload) \
             SELECT id, 'gen', s, v, 'generation.completed', 1, t, p \
             FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::timestamptz[], $5::bytea[]) AS x(id, s, v, t, p)",
        )
        .bind(&ids)
        .bind(&streams)
        .bind(&versions)
        .bind(&times)
        .bind(&payloads)
        .execute(&mut conn)
        .await?;
        i += n;
    }
    sqlx::query("VACUUM ANALYZE events")
        .execute(&mut conn)
        .await?;
    eprintln!("seeded {} events in {:.1?}", args.events, seed.elapsed());

    let store = PgStore::open(PgStoreConfig::new(url), StoreMetrics::unregistered()?).await?;
    println!("| replay path | events | seconds | events/s |");
    println!("|---|---:|---:|---:|");
    for _ in 0..2 {
        let mut ledger = CostLedger::default();
        let t = Instant::now();
        let stats = fold_from_zero(
            store.as_ref(),
            &mut ledger,
            FoldUntil::Head {
                wait: std::time::Duration::from_secs(30),
            },
            8192,
        )
        .await?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "| Postgres read_all + decode + fold ({} ledger rows) | {} | {secs:.2} | {:.0} |",
            ledger.rows().len(),
            stats.events,
            stats.events as f64 / secs
        );
    }
    // The fold alone, over events already read: the ceiling the store path approaches.
    let mut all = Vec::with_capacity(args.events as usize);
    let mut after = 0;
    loop {
        let batch = store.read_all(after, 8192).await?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        all.extend(batch);
    }
    let mut ledger = CostLedger::default();
    let mut dirty = BTreeSet::new();
    let t = Instant::now();
    for ev in &all {
        ledger.apply(ev, &mut dirty)?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "| in memory: decode + fold | {} | {secs:.2} | {:.0} |",
        all.len(),
        all.len() as f64 / secs
    );
    store.close().await;
    drop_db(pg, &name).await?;
    Ok(())
}
