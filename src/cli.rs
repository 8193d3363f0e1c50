//! The command line of the `revo` binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "revo",
    version,
    about = "Local-first AI platform: edge, workers and tools"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes. Each also reads its `REVO_*` variable.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Configuration file (default: ./revo.toml if present).
    #[arg(long, global = true, env = "REVO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory of embedded mode.
    #[arg(long, global = true, env = "REVO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Postgres URL: with --nats-url, selects cluster mode.
    #[arg(long, global = true, env = "REVO_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// NATS URL: with --database-url, selects cluster mode.
    #[arg(long, global = true, env = "REVO_NATS_URL")]
    pub nats_url: Option<String>,
    /// Subject prefix (`revo` gives `revo.evt.>` and stream REVO_EVENTS).
    #[arg(long, global = true, env = "REVO_NATS_PREFIX")]
    pub nats_prefix: Option<String>,
    /// Largest accepted event payload, in bytes.
    #[arg(long, global = true, env = "REVO_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// JetStream deduplication window, in seconds.
    #[arg(long, global = true, env = "REVO_DEDUP_WINDOW_SECS")]
    pub dedup_window_secs: Option<u64>,
    /// `text` or `json` logs.
    #[arg(long, global = true, env = "REVO_LOG_FORMAT")]
    pub log_format: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the edge: HTTP API, relay and projections.
    Serve(ServeArgs),
    /// Apply pending database migrations (cluster mode; embedded mode migrates on start).
    Migrate,
    /// Inspect, rebuild and verify projections.
    Replay {
        #[command(subcommand)]
        command: ReplayCommand,
    },
    /// Read the event log.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long, env = "REVO_LISTEN")]
    pub listen: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Projections with their generation, checkpoint and size.
    List,
    /// Rebuild a projection from zero into a new generation and swap it in atomically.
    Rebuild { projection: String },
    /// Rebuild into scratch and compare with the live read model; exit 1 on drift.
    Verify { projection: String },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events as JSON lines.
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[arg(long)]
    pub stream_type: Option<String>,
    #[arg(long, requires = "stream_type")]
    pub stream_id: Option<String>,
    /// Start after this global position (0 = the beginning).
    #[arg(long, default_value_t = 0)]
    pub from: i64,
    /// Keep waiting for new events.
    #[arg(long, short)]
    pub follow: bool,
}
