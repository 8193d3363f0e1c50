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
    #[arg(long, global = true, env = "REVO_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// Subject prefix (`revo` gives `revo.evt.>` and stream REVO_EVENTS).
    #[arg(long, global = true, env = "REVO_NATS_PREFIX")]
    pub nats_prefix: Option<String>,
    /// Postgres connections per process (cluster mode).
    #[arg(long, global = true, env = "REVO_DATABASE_MAX_CONNECTIONS")]
    pub database_max_connections: Option<u32>,
    /// Largest accepted event payload, in bytes.
    #[arg(long, global = true, env = "REVO_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// JetStream deduplication window, in seconds.
    #[arg(long, global = true, env = "REVO_DEDUP_WINDOW_SECS")]
    pub dedup_window_secs: Option<u64>,
    /// `text` or `json` logs.
    #[arg(long, global = true, env = "REVO_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// The ONNX Runtime library (default: ORT_DYLIB_PATH, then scripts/fetch-ort.sh's cache).
    #[arg(long, global = true, env = "REVO_ORT_DYLIB")]
    pub ort_dylib: Option<PathBuf>,
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
    /// Manage users from the command line (for the API, see docs/api.md).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// The audit log (for the API, see docs/api.md, "Audit log").
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Spending limits per user or API key (for the API, see docs/api.md, "Budgets").
    Budgets {
        #[command(subcommand)]
        command: BudgetsCommand,
    },
    /// The local model registry (directories under <data_dir>/models).
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Generate text with a local model, streamed to the terminal (greedy).
    Generate(GenerateArgs),
    /// Serve one local model to the cluster's edges over NATS (cluster mode).
    Worker {
        /// The model's registry name (`revo models list`).
        #[arg(long)]
        model: String,
    },
    /// Exit 0 when this node's /health/live answers 200 (for container HEALTHCHECKs).
    Healthcheck {
        /// The edge's listen address (default: as `revo serve` would read it).
        #[arg(long, env = "REVO_LISTEN")]
        listen: Option<std::net::SocketAddr>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Import a GGUF file (Llama-family; writes an ONNX graph, tokenizer.json and config.json),
    /// or a directory exported by optimum or onnxruntime-genai (model.onnx, tokenizer.json,
    /// config.json or genai_config.json; copied, and loaded once to check it runs).
    Import {
        /// A .gguf file or an ONNX export directory.
        file: PathBuf,
        /// Registry name (default: from the file name).
        #[arg(long)]
        name: Option<String>,
        /// `f32` (dequantised: the reference numerics), `f16` (half the disk) or `keep` (the
        /// projections in 8-bit blocks for ONNX Runtime's MatMulNBits: fastest on CPU, close to
        /// f32 but not identical).
        #[arg(long, default_value = "f32")]
        weights: String,
        /// Succeed without importing when the name is registered and its directory is there
        /// (a rerunnable step for deployments: compose's `model-import`, the Kubernetes Job).
        #[arg(long)]
        if_missing: bool,
    },
    /// Every imported model.
    List,
    /// One model's registry entry and config.
    Show { name: String },
    /// Remove a model from the registry and delete its directory.
    Remove { name: String },
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub model: String,
    pub prompt: String,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Inference threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user; prints a generated password once unless --password-stdin is given.
    Add {
        name: String,
        /// A role: admin, developer or viewer (repeat for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain from the first record; exit 1 naming the first record that
    /// does not fit.
    Verify,
    /// Write records as JSON lines with their hashes (for an outside archive).
    Export {
        /// First time included (RFC 3339).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// First time excluded (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BudgetsCommand {
    /// Set a budget, or change its limit.
    Set {
        /// `user` or `key`.
        #[arg(long)]
        scope: String,
        /// The user's or the key's id.
        #[arg(long)]
        id: uuid::Uuid,
        /// `day`, `month` (UTC) or `total`.
        #[arg(long)]
        period: String,
        /// Dollars, e.g. 10.00.
        #[arg(long)]
        limit_usd: String,
    },
    /// Every budget with what it has spent and holds in its current period.
    List,
    /// Remove a budget.
    Delete { id: uuid::Uuid },
}

#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long, env = "REVO_LISTEN")]
    pub listen: Option<String>,
    /// JWT keys `kid:secret,...` (at least 32-byte secrets); the first signs unless
    /// --jwt-signing-kid says otherwise. Required in cluster mode.
    #[arg(long, env = "REVO_JWT_KEYS", hide_env_values = true)]
    pub jwt_keys: Option<String>,
    #[arg(long, env = "REVO_JWT_SIGNING_KID")]
    pub jwt_signing_kid: Option<String>,
    /// Access token lifetime in seconds (default 3600).
    #[arg(long, env = "REVO_TOKEN_TTL_SECS")]
    pub token_ttl_secs: Option<u64>,
    /// Password of the `admin` user created on a fresh installation (default: generated and
    /// printed once).
    #[arg(long, env = "REVO_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Requests per minute for admins (0: unlimited).
    #[arg(long, env = "REVO_RATE_LIMIT_ADMIN")]
    pub rate_limit_admin: Option<u32>,
    #[arg(long, env = "REVO_RATE_LIMIT_DEVELOPER")]
    pub rate_limit_developer: Option<u32>,
    #[arg(long, env = "REVO_RATE_LIMIT_VIEWER")]
    pub rate_limit_viewer: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Projections with their generation, checkpoint and size.
    List,
    /// Rebuild a projection from zero into a new generation and swap it in atomically.
    Rebuild { projection: String },
    /// Rebuild into scratch and compare with the live read model; exit 1 on drift.
    Verify { projection: String },
    /// Recompute spend from the raw generation events: by user, key, model, provider or day.
    Cost(CostArgs),
}

#[derive(Debug, Args)]
pub struct CostArgs {
    /// First day counted, `YYYY-MM-DD` (UTC).
    #[arg(long)]
    pub from: Option<String>,
    /// Last day counted, `YYYY-MM-DD` (UTC).
    #[arg(long)]
    pub to: Option<String>,
    /// `user`, `key`, `model`, `provider` or `day`.
    #[arg(long, default_value = "model")]
    pub by: String,
    /// `table`, `json` or `csv`.
    #[arg(long, default_value = "table")]
    pub format: String,
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
