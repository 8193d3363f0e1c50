//! Configuration, layered: defaults, then `revo.toml`, then `REVO_*` environment, then flags.
//! Unknown keys in the file and unknown `REVO_*` variables are errors, so a typo never silently
//! falls back to a default (e.g. embedded mode instead of the intended cluster).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::cli::GlobalArgs;

/// Every environment variable Revo reads.
pub const KNOWN_ENV: &[&str] = &[
    "REVO_CONFIG",
    "REVO_LISTEN",
    "REVO_DATA_DIR",
    "REVO_DATABASE_URL",
    "REVO_NATS_URL",
    "REVO_NATS_PREFIX",
    "REVO_MAX_PAYLOAD_BYTES",
    "REVO_DEDUP_WINDOW_SECS",
    "REVO_LOG",
    "REVO_LOG_FORMAT",
];

/// `revo.toml`. Every key is optional; absent keys keep their defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub nats_url: Option<String>,
    pub nats_prefix: Option<String>,
    pub max_payload_bytes: Option<usize>,
    pub dedup_window_secs: Option<u64>,
    pub log_format: Option<String>,
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
    pub max_payload_bytes: usize,
    pub dedup_window: Duration,
    pub log_format: LogFormat,
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
    pub fn load(args: &GlobalArgs, listen_flag: Option<&str>) -> anyhow::Result<Config> {
        check_env(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))?;
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None if Path::new("revo.toml").exists() => read_file(Path::new("revo.toml"))?,
            None => FileConfig::default(),
        };
        Self::merge(args, listen_flag, file)
    }

    pub fn merge(
        args: &GlobalArgs,
        listen_flag: Option<&str>,
        file: FileConfig,
    ) -> anyhow::Result<Config> {
        let listen = listen_flag
            .map(str::to_owned)
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
            (None, None) => Mode::Embedded { data_dir },
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
            .unwrap_or(crate::store::DEFAULT_MAX_PAYLOAD);
        if max_payload_bytes == 0 {
            bail!("max payload bytes must be positive");
        }
        let dedup = args
            .dedup_window_secs
            .or(file.dedup_window_secs)
            .unwrap_or(revo_nats::jetstream::DEFAULT_DEDUP_WINDOW.as_secs());
        if dedup == 0 {
            bail!("the dedup window must be at least one second");
        }
        let log_format = match args.log_format.clone().or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("log format `{other}` is not `text` or `json`"),
        };
        Ok(Config {
            listen,
            mode,
            nats_prefix,
            max_payload_bytes,
            dedup_window: Duration::from_secs(dedup),
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
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
        let c = Config::merge(&args(&["--data-dir", "/y"]), Some("127.0.0.1:9"), file).unwrap();
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
}
