//! Commit-to-subscriber latency: appenders at a fixed total rate into Postgres; the relay
//! publishes to JetStream; a JetStream subscriber records when each event arrives.

use revo_events::EventLog;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use revo::db::postgres::PgStoreConfig;
use revo::db::{PgStore, StoreMetrics};
use revo_actors::{Relay, RelayConfig};
use revo_events::{AppendRequest, EventStore, ExpectedVersion};
use revo_nats::{Bus, JetStreamBus, JetStreamConfig, Subjects};
use tokio_util::sync::CancellationToken;

use crate::stats::{ms, summarize};
use crate::util::{bench_event, drop_db, scratch_db};

#[derive(clap::Args)]
pub struct Args {
    /// Events per second, all appenders together.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 16)]
    appenders: u64,
    /// Group-commit transactions in flight.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
}

type Times = Arc<Mutex<HashMap<String, Instant>>>;

pub async fn run(pg: &str, nats: &str, args: Args) -> anyhow::Result<()> {
    let (name, url) = scratch_db(pg).await?;
    let mut config = PgStoreConfig::new(url);
    config.group.max_in_flight = args.in_flight;
    let store = PgStore::open(config, StoreMetrics::unregistered()?).await?;
    let subjects = Subjects::new(&format!(
        "bench{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let bus = Arc::new(
        JetStreamBus::connect(JetStreamConfig {
            url: nats.to_owned(),
            subjects: subjects.clone(),
            dedup_window: Duration::from_secs(120),
            connection_name: "revo-load".into(),
            limits: Default::default(),
        })
        .await?,
    );
    bus.ensure().await?;
    let cancel = CancellationToken::new();
    let relay = tokio::spawn(
        Relay {
            log: store.clone(),
            checkpoints: store.clone(),
            leases: store.clone(),
            bus: bus.clone(),
            subjects: subjects.clone(),
            config: RelayConfig::default(),
            metrics: revo::metrics::Metrics::new()?.relay,
        }
        .run(cancel.clone()),
    );

    let received: Times = Arc::default();
    let mut sub = bus.subscribe_events(&subjects.all_events()).await?;
    let rx = received.clone();
    let subscriber = tokio::spawn(async move {
        while let Some(Ok(m)) = sub.next().await {
            if let Some(id) = m.msg_id {
                if let Ok(mut r) = rx.lock() {
                    r.insert(id, Instant::now());
                }
            }
        }
    });

    let committed: Times = Arc::default();
    let append_latency: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let period = Duration::from_secs_f64(args.appenders as f64 / args.rate as f64);
    let tasks: Vec<_> = (0..args.appenders)
        .map(|a| {
            let store = store.clone();
            let committed = committed.clone();
            let append_latency = append_latency.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                let mut version = 0;
                while Instant::now() < deadline {
                    tick.tick().await;
                    let ev = bench_event(version as u64)?;
                    let id = ev.event_id.to_string();
                    let started = Instant::now();
                    store
                        .append(AppendRequest::new(
                            "bench",
                            format!("a{a}"),
                            ExpectedVersion::Exact(version),
                            vec![ev],
                        ))
                        .await?;
                    let at = Instant::now();
                    if let Ok(mut c) = committed.lock() {
                        c.insert(id, at);
                    }
                    if let Ok(mut l) = append_latency.lock() {
                        l.push(at - started);
                    }
                    version += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let total = committed.lock().map(|c| c.len()).unwrap_or(0);
    let wait_until = Instant::now() + Duration::from_secs(10);
    while received.lock().map(|r| r.len()).unwrap_or(0) < total && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
    relay.await?;
    subscriber.abort();
    let (committed, received) = (
        committed.lock().map(|c| c.clone()).unwrap_or_default(),
        received.lock().map(|r| r.clone()).unwrap_or_default(),
    );
    let lat: Vec<Duration> = committed
        .iter()
        .filter_map(|(id, c)| received.get(id).map(|r| r.saturating_duration_since(*c)))
        .collect();
    let missing = committed.len() - lat.len();
    let s = summarize(lat);
    println!(
        "| target rate | achieved events/s | delivered | missing | p50 ms | p99 ms | max ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.0} | {} | {missing} | {} | {} | {} |",
        args.rate,
        committed.len() as f64 / args.seconds as f64,
        s.count,
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    );
    let a = summarize(append_latency.lock().map(|l| l.clone()).unwrap_or_default());
    println!();
    println!("| append latency at this rate | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|");
    println!(
        "| {} appends | {} | {} | {} |",
        a.count,
        ms(a.p50),
        ms(a.p99),
        ms(a.max)
    );
    bus.delete_stream().await?;
    store.close().await;
    drop_db(pg, &name).await?;
    Ok(())
}
