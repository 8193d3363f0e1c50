//! Wiring a node: the store and bus that the configured mode calls for.

use std::fs::File;
use std::sync::Arc;

use anyhow::Context;
use revo_events::EventStore;
use revo_nats::{Bus, JetStreamBus, JetStreamConfig, MemoryBus, Subjects};

use crate::config::{Config, Mode};
use crate::db::postgres::{self, PgStoreConfig};
use crate::db::sqlite::SqliteStoreConfig;
use crate::db::{PgStore, SqliteStore, StoreMetrics};

/// Opens the event store of the configured mode. Cluster mode migrates first when `migrate`.
pub async fn open_store(
    config: &Config,
    metrics: StoreMetrics,
    migrate: bool,
) -> anyhow::Result<Arc<dyn EventStore>> {
    Ok(match &config.mode {
        Mode::Embedded { data_dir } => {
            let mut c = SqliteStoreConfig::in_dir(data_dir);
            c.max_payload = config.max_payload_bytes;
            SqliteStore::open(c, metrics)
                .await
                .with_context(|| format!("opening the event store in {}", data_dir.display()))?
        }
        Mode::Cluster { database_url, .. } => {
            if migrate {
                postgres::migrate(database_url)
                    .await
                    .context("migrating Postgres")?;
            }
            let mut c = PgStoreConfig::new(database_url.clone());
            c.max_payload = config.max_payload_bytes;
            c.max_connections = config.database_max_connections;
            PgStore::open(c, metrics)
                .await
                .context("opening the Postgres event store")?
        }
    })
}

/// Connects the bus of the configured mode. JetStream keeps reconnecting in the background.
pub async fn open_bus(config: &Config, node_id: &str) -> anyhow::Result<Arc<dyn Bus>> {
    let subjects = Subjects::new(&config.nats_prefix).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(match &config.mode {
        Mode::Embedded { .. } => Arc::new(MemoryBus::new(config.dedup_window)),
        Mode::Cluster { nats_url, .. } => Arc::new(
            JetStreamBus::connect(JetStreamConfig {
                url: nats_url.clone(),
                subjects,
                dedup_window: config.dedup_window,
                connection_name: format!("revo {node_id}"),
                limits: config.stream_limits,
            })
            .await
            .context("connecting to NATS")?,
        ),
    })
}

/// Exclusive ownership of an embedded data directory, held while `revo serve` runs, so two
/// servers never share one SQLite store (its relay lease relies on this).
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(config: &Config) -> anyhow::Result<Option<Self>> {
        let Mode::Embedded { data_dir } = &config.mode else {
            return Ok(None);
        };
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let path = data_dir.join("revo.lock");
        let file = File::create(&path).with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(DataDirLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another `revo serve` is using {} (embedded mode allows one)",
                data_dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}
