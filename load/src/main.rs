//! `revo-load`: benchmark scenarios for Revo's event-sourced core, run against the real
//! Postgres, SQLite and NATS of the machine. Results go to stdout as Markdown tables; see
//! `docs/benchmarks.md` for the commands and the figures measured.

// A benchmark run owns its tasks and joins them before reporting; no shutdown to drain.
#![allow(clippy::disallowed_methods)]

mod append;
mod cluster;
mod relay;
mod replay;
mod report;
mod stats;
mod stub;
mod util;
mod workflow;
mod ws;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks for Revo's event store, relay and replay")]
struct Cli {
    /// Postgres server (a scratch database is created and dropped per scenario).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pg: String,
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Append throughput and latency at several concurrencies, beside a raw multi-row INSERT.
    Append(append::Args),
    /// Commit-to-subscriber latency through the relay and JetStream at a fixed rate.
    Relay(relay::Args),
    /// Folding a cost-like projection over stored events.
    Replay(replay::Args),
    /// An instant OpenAI-compatible server (prints its address; runs until killed).
    Stub(stub::Args),
    /// Idle WebSocket connections on one edge: memory per connection.
    WsIdle(ws::IdleArgs),
    /// One room's fan-out to many subscribers: latency and deliveries per second.
    WsFanout(ws::FanoutArgs),
    /// A client rejoining after many missed events: time to receive them all.
    WsRecovery(ws::RecoveryArgs),
    /// Mixed load through a cluster's load balancer: API, WebSockets, generation, workflows;
    /// checks nothing acknowledged is lost and writes a report (deploy/cluster/cluster.sh).
    Cluster(cluster::Args),
    /// Workflow step overhead: 10 template and 10 generate steps, one run at a time and many.
    WorkflowSteps(workflow::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Append(a) => append::run(&cli.pg, a).await,
        Scenario::Relay(a) => relay::run(&cli.pg, &cli.nats, a).await,
        Scenario::Replay(a) => replay::run(&cli.pg, a).await,
        Scenario::Stub(a) => stub::run(a).await,
        Scenario::WsIdle(a) => ws::idle(a).await,
        Scenario::WsFanout(a) => ws::fanout(a).await,
        Scenario::WsRecovery(a) => ws::recovery(a).await,
        Scenario::WorkflowSteps(a) => workflow::run(a).await,
        Scenario::Cluster(a) => cluster::run(a).await,
    }
}
