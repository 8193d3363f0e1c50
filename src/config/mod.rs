//! Configuration, layered: defaults, then `revo.toml`, then `REVO_*` environment, then flags.
//! Unknown keys in the file and unknown `REVO_*` variables are errors, so a typo never silently
//! falls back to a default (e.g. embedded mode instead of the intended cluster).

pub mod rooms;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::cli::{GlobalArgs, ServeArgs};
use crate::identity::token::JwtKey;
use crate::identity::RoleLimits;

/// Every environment variable Revo reads.
pub const KNOWN_ENV: &[&str] = &[
    "REVO_CONFIG",
    "REVO_LISTEN",
    "REVO_DATA_DIR",
    "REVO_DATABASE_URL",
    "REVO_DATABASE_MAX_CONNECTIONS",
    "REVO_NATS_URL",
    "REVO_NATS_PREFIX",
    "REVO_MAX_PAYLOAD_BYTES",
    "REVO_DEDUP_WINDOW_SECS",
    "REVO_LOG",
    "REVO_LOG_FORMAT",
    "REVO_JWT_KEYS",
    "REVO_JWT_SIGNING_KID",
    "REVO_TOKEN_TTL_SECS",
    "REVO_ADMIN_PASSWORD",
    "REVO_RATE_LIMIT_ADMIN",
    "REVO_RATE_LIMIT_DEVELOPER",
    "REVO_RATE_LIMIT_VIEWER",
    "REVO_ORT_DYLIB",
    "REVO_MODEL_THREADS",
    "REVO_MODEL_MAX_BATCH",
    "REVO_MODEL_DEVICE",
    "REVO_MODEL_GPU",
    "REVO_WORKER_TIMEOUT_MS",
    "REVO_WORKFLOW_HTTP_ALLOW",
    "REVO_WORKFLOW_HTTP_ALLOW_PRIVATE",
];

/// `revo.toml`. Every key is optional; absent keys keep their defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    /// Postgres connections per process (cluster mode; default 16).
    pub database_max_connections: Option<u32>,
    pub nats_url: Option<String>,
    pub nats_prefix: Option<String>,
    pub max_payload_bytes: Option<usize>,
    pub dedup_window_secs: Option<u64>,
    pub log_format: Option<String>,
    #[serde(default)]
    pub auth: AuthFile,
    #[serde(default)]
    pub rate_limits: RateLimitsFile,
    #[serde(default)]
    pub http: HttpFile,
    #[serde(default)]
    pub models: ModelsFile,
    #[serde(default)]
    pub jetstream: JetStreamFile,
    #[serde(default)]
    pub router: RouterFile,
    #[serde(default)]
    pub workflows: WorkflowsFile,
    #[serde(default)]
    pub rooms: rooms::RoomsFile,
}

/// `[workflows]` (docs/workflows.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowsFile {
    /// Hosts `http` steps may call: `api.example.com`, `*.example.org`, `host:port`
    /// (REVO_WORKFLOW_HTTP_ALLOW, comma-separated). Empty: no `http` step may call anything.
    pub http_allow: Option<Vec<String>>,
    /// Private, loopback or link-local addresses (IPs or CIDRs) `http` steps may reach
    /// (REVO_WORKFLOW_HTTP_ALLOW_PRIVATE). Empty: none.
    pub http_allow_private: Option<Vec<String>>,
    /// An `http` step's timeout when it sets none (30).
    pub http_timeout_s: Option<u64>,
    /// Most runs one node executes at once (10000).
    pub max_runs_per_node: Option<usize>,
    /// Most unfinished runs one user may have (1000).
    pub max_active_runs_per_user: Option<usize>,
    /// Most workflows (not archived) one user may have (1000).
    pub max_workflows_per_user: Option<usize>,
    /// Most `GET /runs/{id}/events` followers one user holds on one edge (16).
    pub max_followers_per_user: Option<usize>,
    /// Secrets `http` steps may send (`{{ secrets.NAME }}`): name → the environment variable
    /// holding the value, read at start. Values never enter a definition or an event.
    pub secrets: Option<std::collections::BTreeMap<String, String>>,
}

/// `[router]`: how the router talks to providers (docs/api.md, "Routing").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterFile {
    pub connect_timeout_ms: Option<u64>,
    pub first_token_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub total_timeout_ms: Option<u64>,
    /// Retries of one model before the next is tried (2).
    pub max_retries: Option<u32>,
    /// `max_tokens` when a request names none (1024).
    pub default_max_tokens: Option<u32>,
    /// The cloud model savings are priced against (the first cloud model of the catalogue).
    pub reference_model: Option<String>,
    /// How long a budget lease outlives its edge (30000).
    pub budget_lease_ttl_ms: Option<u64>,
    /// The cascade's confidence bar when neither the request nor the model sets one (0.5).
    pub cascade_threshold: Option<f64>,
}

/// `[jetstream]`: durability and retention of the events stream (cluster mode).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamFile {
    /// 1 (one server), 3 or 5 (a JetStream cluster).
    pub replicas: Option<usize>,
    /// Oldest event kept in the stream, seconds (604800, a week; 0: no limit).
    pub max_age_secs: Option<u64>,
    /// Largest stream size, bytes (no limit by default).
    pub max_bytes: Option<u64>,
}

/// `[models]`: how local models run (in `revo serve` and `revo worker`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsFile {
    /// Inference threads per model.
    pub threads: Option<usize>,
    /// Sequences decoded together per model.
    pub max_batch: Option<usize>,
    /// Cache positions a model's batch may reserve (prompt + max_tokens per sequence).
    pub max_batch_tokens: Option<usize>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: Option<String>,
    /// With a CUDA device: `require` (fail without it) or `prefer` (warn and use the CPU).
    pub gpu: Option<String>,
    /// Cluster edges: a worker silent this long is lost (its request fails).
    pub worker_timeout_ms: Option<u64>,
    /// `[[models.catalog]]`: the models the router may pick (see docs/api.md, "Catalogue").
    /// Without it, the default hierarchy.
    pub catalog: Option<Vec<revo_actors::router::catalog::EntryFile>>,
}

/// `[auth]` in `revo.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Verification keys by `kid`; the signer is `jwt_signing_kid`, else the first.
    pub jwt_keys: Option<Vec<JwtKeyFile>>,
    pub jwt_signing_kid: Option<String>,
    pub token_ttl_secs: Option<u64>,
    pub login_max_failures: Option<usize>,
    pub login_max_failures_per_addr: Option<usize>,
    pub login_window_secs: Option<u64>,
    /// argon2id memory per hash, KiB (19456). Each login in progress holds this much.
    pub argon2_memory_kib: Option<u32>,
    pub argon2_iterations: Option<u32>,
    pub argon2_parallelism: Option<u32>,
    /// Password hashes run at once (default: the CPUs), and how many more may wait (32);
    /// beyond that logins get `503 busy`.
    pub password_hash_concurrency: Option<usize>,
    pub password_hash_queue: Option<usize>,
    /// Unrevoked, unexpired API keys one user may hold (100).
    pub max_keys_per_user: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyFile {
    pub kid: String,
    pub secret: String,
}

/// `[rate_limits]`: requests per minute by role (0: unlimited).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsFile {
    pub admin: Option<u32>,
    pub developer: Option<u32>,
    pub viewer: Option<u32>,
}

/// `[http]`: request limits of the edge.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    pub max_body_bytes: Option<usize>,
    pub max_json_depth: Option<usize>,
    /// Take client addresses from `Forwarded`/`X-Forwarded-For` (set only behind a proxy that
    /// appends to them).
    pub trust_forwarded: Option<bool>,
    /// Addresses or CIDR ranges of the proxies in front of Revo: the client is the rightmost
    /// forwarded address that is not one of them.
    pub trusted_proxies: Option<Vec<String>>,
    /// Origins whose pages may open WebSockets (`https://app.example.com`; `*` any). A
    /// browser always sends `Origin`; an upgrade whose `Origin` is not listed is refused
    /// (`403 origin_not_allowed`). Clients that send no `Origin` (programs) are not affected.
    /// Default: any.
    pub allowed_origins: Option<Vec<String>>,
}

/// Identity and limits of the edge, resolved.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Configured keys; empty in embedded mode means "use the data directory's own key".
    pub jwt_keys: Vec<JwtKey>,
    pub jwt_signing_kid: Option<String>,
    pub token_ttl: Duration,
    pub admin_password: Option<String>,
    pub limits: RoleLimits,
    pub login_max_failures: usize,
    pub login_max_failures_per_addr: usize,
    pub login_window: Duration,
    pub argon2: crate::identity::password::Argon2Cost,
    pub password_hash_concurrency: usize,
    pub password_hash_queue: usize,
    pub max_keys_per_user: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub trust_forwarded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// SQLite in the data directory and the in-process bus.
    Embedded { data_dir: PathBuf },
    /// Postgres and NATS JetStream, shared by any number of nodes.
    Cluster {
        database_url: String,
        nats_url: String,
    },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Embedded { .. } => "embedded",
            Mode::Cluster { .. } => "cluster",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub mode: Mode,
    pub nats_prefix: String,
    /// Postgres connections per process (cluster mode).
    pub database_max_connections: u32,
    pub max_payload_bytes: usize,
    pub dedup_window: Duration,
    pub stream_limits: revo_nats::StreamLimits,
    pub log_format: LogFormat,
    pub auth: AuthConfig,
    pub http: HttpLimits,
    /// Proxies whose forwarded addresses are believed (with `trust_forwarded`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `[http] allowed_origins`, lowercased; `None`: any origin.
    pub allowed_origins: Option<Vec<String>>,
    /// Where imported models live: `<data_dir>/models`.
    pub data_dir: PathBuf,
    pub ort_dylib: Option<PathBuf>,
    pub models: revo_actors::model_thread::ModelSettings,
    /// The models the router may pick, checked.
    pub catalog: revo_actors::router::catalog::Catalog,
    pub router: revo_actors::router::RouterSettings,
    pub budgets: revo_actors::router::budget::BudgetSettings,
    /// The catalogue entry savings are priced against, if any.
    pub reference_model: Option<String>,
    pub workflows: revo_actors::workflows::EngineSettings,
    pub rooms: rooms::RoomsConfig,
}

impl Config {
    pub fn models_dir(&self) -> PathBuf {
        self.data_dir.join("models")
    }
}

pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;
pub const DEFAULT_LIMITS: RoleLimits = RoleLimits {
    admin: 1200,
    developer: 600,
    viewer: 300,
};
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_JSON_DEPTH: usize = 32;

/// A URL as it may be printed: without a password or token in it (`nats://u:p@h` →
/// `nats://u:***@h`; `nats://token@h` → `nats://***@h`).
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{shown}@{host}{path}")
}

/// `kid:secret,kid2:secret2` (REVO_JWT_KEYS).
pub fn parse_jwt_keys(s: &str) -> anyhow::Result<Vec<JwtKey>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (kid, secret) = pair
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("REVO_JWT_KEYS entries are `kid:secret`"))?;
            Ok(JwtKey {
                kid: kid.trim().to_owned(),
                secret: secret.as_bytes().to_vec(),
            })
        })
        .collect()
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./revo-data";

/// Rejects `REVO_*` variables Revo does not read.
pub fn check_env<I: IntoIterator<Item = String>>(names: I) -> anyhow::Result<()> {
    let unknown: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with("REVO_") && !KNOWN_ENV.contains(&n.as_str()))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "unknown environment variable(s) {}; Revo reads: {}",
            unknown.join(", "),
            KNOWN_ENV.join(", ")
        );
    }
    Ok(())
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid configuration file {}", path.display()))
}

impl Config {
    /// Builds the configuration. `args` already carry environment values (clap reads
    /// `REVO_*` for each flag), and flags win over them.
    pub fn load(args: &GlobalArgs, serve: Option<&ServeArgs>) -> anyhow::Result<Config> {
        check_env(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))?;
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None if Path::new("revo.toml").exists() => read_file(Path::new("revo.toml"))?,
            None => FileConfig::default(),
        };
        Self::merge(args, serve, file)
    }

    pub fn merge(
        args: &GlobalArgs,
        serve: Option<&ServeArgs>,
        mut file: FileConfig,
    ) -> anyhow::Result<Config> {
        let default_serve = ServeArgs::default();
        let serve = serve.unwrap_or(&default_serve);
        let listen = serve
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("listen address `{listen}` is not HOST:PORT"))?;
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database_url = args.database_url.clone().or(file.database_url);
        let nats_url = args.nats_url.clone().or(file.nats_url);
        let mode = match (database_url, nats_url) {
            (None, None) => Mode::Embedded {
                data_dir: data_dir.clone(),
            },
            (Some(database_url), Some(nats_url)) => Mode::Cluster {
                database_url,
                nats_url,
            },
            (Some(_), None) => {
                bail!("cluster mode needs REVO_NATS_URL as well as REVO_DATABASE_URL")
            }
            (None, Some(_)) => {
                bail!("cluster mode needs REVO_DATABASE_URL as well as REVO_NATS_URL")
            }
        };
        let nats_prefix = args
            .nats_prefix
            .clone()
            .or(file.nats_prefix)
            .unwrap_or_else(|| "revo".into());
        revo_nats::Subjects::new(&nats_prefix).map_err(|e| anyhow::anyhow!("nats prefix: {e}"))?;
        let max_payload_bytes = args
            .max_payload_bytes
            .or(file.max_payload_bytes)
            .unwrap_or(crate::db::DEFAULT_MAX_PAYLOAD);
        if max_payload_bytes == 0 {
            bail!("max payload bytes must be positive");
        }
        let database_max_connections = args
            .database_max_connections
            .or(file.database_max_connections)
            .unwrap_or(16);
        if !(4..=1000).contains(&database_max_connections) {
            bail!("database max connections must be 4-1000");
        }
        let dedup = args
            .dedup_window_secs
            .or(file.dedup_window_secs)
            .unwrap_or(revo_nats::jetstream::DEFAULT_DEDUP_WINDOW.as_secs());
        if dedup == 0 {
            bail!("the dedup window must be at least one second");
        }
        let stream_limits = stream_limits(&file.jetstream, Duration::from_secs(dedup))?;
        let log_format = match args.log_format.clone().or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("log format `{other}` is not `text` or `json`"),
        };
        let auth = auth_config(serve, file.auth, file.rate_limits)?;
        let trusted_proxies = file
            .http
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .map(|p| parse_net(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let allowed_origins = file
            .http
            .allowed_origins
            .take()
            .filter(|o| !o.iter().any(|x| x == "*"))
            .map(|o| {
                o.into_iter()
                    .map(|x| x.trim_end_matches('/').to_ascii_lowercase())
                    .collect()
            });
        let http = HttpLimits {
            max_body_bytes: file.http.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            max_json_depth: file.http.max_json_depth.unwrap_or(DEFAULT_MAX_JSON_DEPTH),
            trust_forwarded: file.http.trust_forwarded.unwrap_or(false),
        };
        if http.max_body_bytes == 0 || http.max_json_depth == 0 {
            bail!("[http] limits must be positive");
        }
        let catalog = match file.models.catalog.take() {
            None => revo_actors::router::catalog::Catalog::default_hierarchy(),
            Some(entries) => revo_actors::router::catalog::Catalog::from_files(entries)
                .map_err(|e| anyhow::anyhow!(e))?,
        };
        Ok(Config {
            listen,
            mode,
            nats_prefix,
            database_max_connections,
            max_payload_bytes,
            dedup_window: Duration::from_secs(dedup),
            stream_limits,
            log_format,
            auth,
            http,
            trusted_proxies,
            allowed_origins,
            data_dir,
            ort_dylib: args.ort_dylib.clone(),
            router: router_config(&file.router)?,
            budgets: revo_actors::router::budget::BudgetSettings {
                lease_ttl: match file.router.budget_lease_ttl_ms {
                    Some(ms) if ms < 1000 => bail!("[router] budget_lease_ttl_ms is at least 1000"),
                    Some(ms) => Duration::from_millis(ms),
                    None => revo_actors::router::budget::BudgetSettings::default().lease_ttl,
                },
                ..Default::default()
            },
            reference_model: reference_model(&catalog, file.router.reference_model.take())?,
            workflows: workflows_config(&file.workflows, max_payload_bytes)?,
            rooms: rooms::RoomsConfig::new(&file.rooms, max_payload_bytes)?,
            catalog,
            models: models_config(file.models)?,
        })
    }
}

fn comma_list(name: &str, file: Option<&Vec<String>>) -> Vec<String> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect(),
        Err(_) => file.cloned().unwrap_or_default(),
    }
}

/// `[workflows.secrets]`: each name's value from its environment variable.
fn workflow_secrets(
    f: Option<&std::collections::BTreeMap<String, String>>,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let mut out = std::collections::HashMap::new();
    for (name, var) in f.into_iter().flatten() {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            bail!("[workflows.secrets] `{name}`: a name is 1-64 of a-z A-Z 0-9 _ -");
        }
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => {
                out.insert(name.clone(), v);
            }
            _ => bail!("[workflows.secrets] {name}: the environment variable {var} is not set"),
        }
    }
    Ok(out)
}

fn workflows_config(
    f: &WorkflowsFile,
    max_payload: usize,
) -> anyhow::Result<revo_actors::workflows::EngineSettings> {
    let d = revo_actors::workflows::EngineSettings::default();
    let http = revo_actors::workflows::http::HttpPolicy::new(
        comma_list("REVO_WORKFLOW_HTTP_ALLOW", f.http_allow.as_ref()),
        comma_list(
            "REVO_WORKFLOW_HTTP_ALLOW_PRIVATE",
            f.http_allow_private.as_ref(),
        ),
    )
    .map_err(|e| anyhow::anyhow!("[workflows] http_allow_private: {e}"))?
    .with_secrets(workflow_secrets(f.secrets.as_ref())?);
    let max_runs = f.max_runs_per_node.unwrap_or(d.max_runs_here);
    if max_runs == 0 {
        bail!("[workflows] max_runs_per_node is at least 1");
    }
    Ok(revo_actors::workflows::EngineSettings {
        http,
        max_runs_here: max_runs,
        http_timeout: f
            .http_timeout_s
            .map_or(d.http_timeout, |s| Duration::from_secs(s.max(1))),
        max_payload,
        max_active_runs_per_user: f
            .max_active_runs_per_user
            .unwrap_or(d.max_active_runs_per_user)
            .max(1),
        max_workflows_per_user: f
            .max_workflows_per_user
            .unwrap_or(d.max_workflows_per_user)
            .max(1),
        max_followers_per_user: f
            .max_followers_per_user
            .unwrap_or(d.max_followers_per_user)
            .max(1),
        ..d
    })
}

fn stream_limits(f: &JetStreamFile, dedup: Duration) -> anyhow::Result<revo_nats::StreamLimits> {
    let d = revo_nats::StreamLimits::default();
    let replicas = f.replicas.unwrap_or(d.replicas);
    if !(1..=5).contains(&replicas) {
        bail!("[jetstream] replicas is 1 to 5 (JetStream's limit); 3 for production");
    }
    let max_age = f.max_age_secs.map_or(d.max_age, Duration::from_secs);
    if !max_age.is_zero() && max_age < dedup {
        bail!(
            "[jetstream] max_age_secs must be at least the dedup window ({} s)",
            dedup.as_secs()
        );
    }
    if f.max_bytes == Some(0) {
        bail!("[jetstream] max_bytes must be positive (omit it for no limit)");
    }
    Ok(revo_nats::StreamLimits {
        replicas,
        max_age,
        max_bytes: f.max_bytes,
    })
}

/// `10.0.0.0/8`, `::1` or `192.0.2.7` (a single address).
fn parse_net(s: &str) -> anyhow::Result<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| anyhow::anyhow!("[http] trusted_proxies: `{s}` is not an address or CIDR"))
}

fn env_or<T: std::str::FromStr>(name: &str, file: Option<T>) -> anyhow::Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{name}=`{v}` is not a valid value")),
        Err(_) => Ok(file),
    }
}

fn router_config(f: &RouterFile) -> anyhow::Result<revo_actors::router::RouterSettings> {
    let d = revo_actors::router::RouterSettings::default();
    let ms = |v: Option<u64>, d: Duration, key: &str| match v {
        Some(0) => bail!("[router] {key} must be positive"),
        Some(v) => Ok(Duration::from_millis(v)),
        None => Ok(d),
    };
    let default_max_tokens = f.default_max_tokens.unwrap_or(d.default_max_tokens);
    if default_max_tokens == 0 {
        bail!("[router] default_max_tokens must be positive");
    }
    let cascade_threshold = f.cascade_threshold.unwrap_or(d.cascade_threshold);
    if !(0.0..=1.0).contains(&cascade_threshold) {
        bail!("[router] cascade_threshold is 0 to 1");
    }
    Ok(revo_actors::router::RouterSettings {
        connect_timeout: ms(
            f.connect_timeout_ms,
            d.connect_timeout,
            "connect_timeout_ms",
        )?,
        first_token_timeout: ms(
            f.first_token_timeout_ms,
            d.first_token_timeout,
            "first_token_timeout_ms",
        )?,
        idle_timeout: ms(f.idle_timeout_ms, d.idle_timeout, "idle_timeout_ms")?,
        total_timeout: ms(f.total_timeout_ms, d.total_timeout, "total_timeout_ms")?,
        max_retries: f.max_retries.unwrap_or(d.max_retries).min(10),
        default_max_tokens,
        cascade_threshold,
        ..d
    })
}

/// The named reference model (which must be in the catalogue), else the first cloud one.
fn reference_model(
    catalog: &revo_actors::router::catalog::Catalog,
    named: Option<String>,
) -> anyhow::Result<Option<String>> {
    match named {
        Some(n) if catalog.entries.iter().any(|e| e.name == n) => Ok(Some(n)),
        Some(n) => bail!("[router] reference_model `{n}` is not in the catalogue"),
        None => Ok(catalog
            .entries
            .iter()
            .find(|e| !e.provider.is_local())
            .map(|e| e.name.clone())),
    }
}

fn models_config(file: ModelsFile) -> anyhow::Result<revo_actors::model_thread::ModelSettings> {
    use revo_engine::engine::Device;
    let d = revo_actors::model_thread::ModelSettings::default();
    let threads = env_or("REVO_MODEL_THREADS", file.threads)?.unwrap_or(d.threads);
    let max_batch = env_or("REVO_MODEL_MAX_BATCH", file.max_batch)?.unwrap_or(d.max_batch);
    if threads == 0 || max_batch == 0 || max_batch > 64 {
        bail!("[models] threads must be positive and max_batch 1 to 64");
    }
    let max_batch_tokens = file.max_batch_tokens.unwrap_or(d.max_batch_tokens);
    if max_batch_tokens == 0 {
        bail!("[models] max_batch_tokens must be positive");
    }
    let required = match env_or("REVO_MODEL_GPU", file.gpu)?.as_deref() {
        None | Some("require") => true,
        Some("prefer") => false,
        Some(other) => bail!("[models] gpu `{other}` is not `require` or `prefer`"),
    };
    let device = match env_or("REVO_MODEL_DEVICE", file.device)?.as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda { id: 0, required },
        Some(other) => match other.strip_prefix("cuda:").map(str::parse::<i32>) {
            Some(Ok(id)) if id >= 0 => Device::Cuda { id, required },
            _ => bail!("[models] device `{other}` is not `cpu`, `cuda` or `cuda:N`"),
        },
    };
    let timeout = env_or("REVO_WORKER_TIMEOUT_MS", file.worker_timeout_ms)?
        .map_or(d.worker_timeout, Duration::from_millis);
    if timeout < Duration::from_millis(100) {
        bail!("[models] worker_timeout_ms must be at least 100");
    }
    Ok(revo_actors::model_thread::ModelSettings {
        threads,
        max_batch,
        max_batch_tokens,
        device,
        worker_timeout: timeout,
        ..d
    })
}

fn auth_config(
    serve: &ServeArgs,
    file: AuthFile,
    limits: RateLimitsFile,
) -> anyhow::Result<AuthConfig> {
    let jwt_keys = match (&serve.jwt_keys, file.jwt_keys) {
        (Some(env), _) => parse_jwt_keys(env)?,
        (None, Some(keys)) => keys
            .into_iter()
            .map(|k| JwtKey {
                kid: k.kid,
                secret: k.secret.into_bytes(),
            })
            .collect(),
        (None, None) => Vec::new(),
    };
    let mut kids: Vec<&str> = jwt_keys.iter().map(|k| k.kid.as_str()).collect();
    kids.sort_unstable();
    if kids.windows(2).any(|w| w[0] == w[1]) || kids.iter().any(|k| k.is_empty()) {
        bail!("JWT key ids must be unique and non-empty");
    }
    let ttl = serve
        .token_ttl_secs
        .or(file.token_ttl_secs)
        .unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if ttl == 0 {
        bail!("the token lifetime must be at least one second");
    }
    let window = file.login_window_secs.unwrap_or(900);
    if window == 0 {
        bail!("login_window_secs must be positive");
    }
    let d = crate::identity::password::Argon2Cost::default();
    let argon2 = crate::identity::password::Argon2Cost {
        memory_kib: file.argon2_memory_kib.unwrap_or(d.memory_kib),
        iterations: file.argon2_iterations.unwrap_or(d.iterations),
        parallelism: file.argon2_parallelism.unwrap_or(d.parallelism),
    };
    // argon2's own bounds (memory at least 8 KiB per lane), checked now rather than at the
    // first login.
    argon2::Params::new(
        argon2.memory_kib,
        argon2.iterations,
        argon2.parallelism,
        None,
    )
    .map_err(|e| anyhow::anyhow!("[auth] argon2 parameters: {e}"))?;
    let password_hash_concurrency = file
        .password_hash_concurrency
        .unwrap_or_else(crate::identity::password::default_concurrency);
    if password_hash_concurrency == 0 {
        bail!("[auth] password_hash_concurrency must be positive");
    }
    let max_keys_per_user = file.max_keys_per_user.unwrap_or(100);
    if max_keys_per_user == 0 {
        bail!("[auth] max_keys_per_user must be positive");
    }
    Ok(AuthConfig {
        jwt_signing_kid: serve
            .jwt_signing_kid
            .clone()
            .or(file.jwt_signing_kid)
            .or_else(|| jwt_keys.first().map(|k| k.kid.clone())),
        jwt_keys,
        token_ttl: Duration::from_secs(ttl),
        admin_password: serve.admin_password.clone(),
        limits: RoleLimits {
            admin: serve
                .rate_limit_admin
                .or(limits.admin)
                .unwrap_or(DEFAULT_LIMITS.admin),
            developer: serve
                .rate_limit_developer
                .or(limits.developer)
                .unwrap_or(DEFAULT_LIMITS.developer),
            viewer: serve
                .rate_limit_viewer
                .or(limits.viewer)
                .unwrap_or(DEFAULT_LIMITS.viewer),
        },
        login_max_failures: file.login_max_failures.unwrap_or(5).max(1),
        login_max_failures_per_addr: file.login_max_failures_per_addr.unwrap_or(50).max(1),
        login_window: Duration::from_secs(window),
        argon2,
        password_hash_concurrency,
        password_hash_queue: file.password_hash_queue.unwrap_or(32),
        max_keys_per_user,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_print_without_their_secrets() {
        use super::redacted_url as r;
        assert_eq!(r("nats://u:secret@h:4222"), "nats://u:***@h:4222");
        assert_eq!(r("nats://tok@h:4222/x"), "nats://***@h:4222/x");
        assert_eq!(
            r("postgres://postgres@127.0.0.1:5432/revo"),
            "postgres://***@127.0.0.1:5432/revo"
        );
        assert_eq!(r("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> GlobalArgs {
        let mut argv = vec!["revo"];
        argv.extend_from_slice(extra);
        crate::cli::Cli::parse_from(argv.into_iter().chain(["migrate"])).global
    }

    #[test]
    fn defaults_are_embedded() {
        let c = Config::merge(&args(&[]), None, FileConfig::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(
            c.mode,
            Mode::Embedded {
                data_dir: PathBuf::from(DEFAULT_DATA_DIR)
            }
        );
    }

    #[test]
    fn flags_beat_file() {
        let file: FileConfig = toml::from_str("listen = \"0.0.0.0:1\"\ndata_dir = \"/x\"").unwrap();
        let serve = ServeArgs {
            listen: Some("127.0.0.1:9".into()),
            ..Default::default()
        };
        let c = Config::merge(&args(&["--data-dir", "/y"]), Some(&serve), file).unwrap();
        assert_eq!(c.listen.port(), 9);
        assert_eq!(
            c.mode,
            Mode::Embedded {
                data_dir: "/y".into()
            }
        );
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let err = toml::from_str::<FileConfig>("lisen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn unknown_env_is_an_error() {
        assert!(check_env(["REVO_DATBASE_URL".to_string()]).is_err());
        assert!(check_env(["REVO_LISTEN".to_string(), "PATH".to_string()]).is_ok());
    }

    #[test]
    fn half_a_cluster_is_an_error() {
        let file: FileConfig = toml::from_str("database_url = \"postgres://x\"").unwrap();
        assert!(Config::merge(&args(&[]), None, file).is_err());
    }

    #[test]
    fn jwt_keys_from_the_file() {
        let cluster = "database_url = \"postgres://x\"\nnats_url = \"nats://y\"";
        let file: FileConfig = toml::from_str(&format!(
            "{cluster}\n[auth]\njwt_keys = [{{kid = \"a\", secret = \"s\"}}, {{kid = \"b\", secret = \"t\"}}]\njwt_signing_kid = \"b\""
        ))
        .unwrap();
        let c = Config::merge(&args(&[]), None, file).unwrap();
        assert_eq!(c.auth.jwt_keys.len(), 2);
        assert_eq!(c.auth.jwt_signing_kid.as_deref(), Some("b"));
        assert_eq!(c.auth.limits, DEFAULT_LIMITS);
    }

    #[test]
    fn trusted_proxies_and_argon2_cost_are_checked_at_start() {
        let file: FileConfig =
            toml::from_str("[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]").unwrap();
        let c = Config::merge(&args(&[]), None, file).unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        let file: FileConfig = toml::from_str("[http]\ntrusted_proxies = [\"10.0.0/8\"]").unwrap();
        assert!(Config::merge(&args(&[]), None, file).is_err());
        let file: FileConfig = toml::from_str("[auth]\nargon2_memory_kib = 1").unwrap();
        assert!(Config::merge(&args(&[]), None, file).is_err());
        let file: FileConfig = toml::from_str("[auth]\nargon2_memory_kib = 4096").unwrap();
        let c = Config::merge(&args(&[]), None, file).unwrap();
        assert_eq!(c.auth.argon2.memory_kib, 4096);
        assert_eq!(c.auth.max_keys_per_user, 100);
    }

    #[test]
    fn the_production_settings_in_deploy_are_valid() {
        let text = include_str!("../../deploy/k8s/base/revo.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        let c = Config::merge(&args(&[]), None, file).unwrap();
        assert_eq!(c.stream_limits.replicas, 3);
        assert_eq!(c.auth.password_hash_concurrency, 2);
        // The compose stack's settings (one NATS server: one replica).
        let text = include_str!("../../deploy/compose/revo.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        let c = Config::merge(&args(&[]), None, file).unwrap();
        assert_eq!(c.stream_limits.replicas, 1);
    }

    #[test]
    fn jetstream_limits_are_read_and_checked() {
        let c = Config::merge(&args(&[]), None, FileConfig::default()).unwrap();
        assert_eq!(c.stream_limits, revo_nats::StreamLimits::default());
        let file: FileConfig =
            toml::from_str("[jetstream]\nreplicas = 3\nmax_age_secs = 86400\nmax_bytes = 1000000")
                .unwrap();
        let c = Config::merge(&args(&[]), None, file).unwrap();
        assert_eq!(c.stream_limits.replicas, 3);
        assert_eq!(c.stream_limits.max_age, Duration::from_secs(86400));
        assert_eq!(c.stream_limits.max_bytes, Some(1_000_000));
        for bad in [
            "replicas = 0",
            "replicas = 7",
            "max_age_secs = 10",
            "max_bytes = 0",
        ] {
            let file: FileConfig = toml::from_str(&format!("[jetstream]\n{bad}")).unwrap();
            assert!(Config::merge(&args(&[]), None, file).is_err(), "{bad}");
        }
    }

    #[test]
    fn jwt_keys_from_the_environment() {
        let keys = parse_jwt_keys("k2:second-secret,k1:first:with:colons").unwrap();
        assert_eq!(keys[0].kid, "k2");
        assert_eq!(keys[1].secret, b"first:with:colons");
        assert!(parse_jwt_keys("nocolon").is_err());
    }
}
