//! `revo serve`: the edge with its relay and projections, and a graceful shutdown that drains
//! in-flight appends and the relay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};
use anyhow::Context;
use chrono::Utc;
use revo_actors::projector::Projector;
use revo_actors::{Relay, RelayConfig};
use revo_events::system::NODE_STREAM;
use revo_events::{
    AppendRequest, EventFamily, EventMeta, EventStore, ExpectedVersion, SystemEvent,
};
use revo_nats::Subjects;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{Config, Mode};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::node::{self, DataDirLock};
use crate::projections;

async fn record(store: &dyn EventStore, node_id: &str, event: SystemEvent) -> anyhow::Result<()> {
    let meta = EventMeta {
        actor: Some("system".into()),
        ..Default::default()
    };
    let ev = event.to_new_event(meta)?;
    store
        .append(AppendRequest::new(
            NODE_STREAM,
            node_id,
            ExpectedVersion::Any,
            vec![ev],
        ))
        .await?;
    Ok(())
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let _lock = DataDirLock::acquire(&config)?;
    let metrics = Arc::new(Metrics::new()?);
    let node_id = Uuid::now_v7().to_string();
    let store = node::open_store(&config, metrics.store.clone(), true).await?;
    let bus = node::open_bus(&config, &node_id).await?;
    let subjects = Subjects::new(&config.nats_prefix).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Streams are created or updated at start (the relay leader also re-checks); a bus that is
    // down now is not fatal: appends do not need it.
    if let Err(e) = bus.ensure().await {
        tracing::warn!(error = %e, "bus not ready at start; the relay will retry");
    }

    let hostname = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    record(
        store.as_ref(),
        &node_id,
        SystemEvent::NodeStarted {
            node_id: node_id.clone(),
            hostname,
            version: env!("CARGO_PKG_VERSION").into(),
            mode: config.mode.name().into(),
            started_at: Utc::now(),
        },
    )
    .await
    .context("recording node start")?;

    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let relay = Relay {
        store: store.clone(),
        bus: bus.clone(),
        subjects,
        config: RelayConfig::default(),
        metrics: metrics.relay.clone(),
    };
    tasks.spawn(relay.run(cancel.clone()));
    let projectors = projections::all()
        .into_iter()
        .map(|p| {
            let m = metrics.projector(p.name());
            Projector {
                store: store.clone(),
                projection: p,
                metrics: m,
                batch: 1000,
                poll: Duration::from_millis(500),
            }
            .spawn(&tasks, cancel.clone())
        })
        .collect();

    let state = web::Data::new(AppState {
        store: store.clone(),
        bus: bus.clone(),
        metrics: metrics.clone(),
        node_id: node_id.clone(),
        mode: config.mode.name(),
        started: Instant::now(),
        projectors,
        runtime: tokio::runtime::Handle::current(),
    });
    let server =
        HttpServer::new(move || App::new().app_data(state.clone()).configure(http::routes))
            .disable_signals()
            .shutdown_timeout(10)
            .bind(config.listen)
            .with_context(|| format!("listening on {}", config.listen))?
            .run();
    let handle = server.handle();
    let where_ = match &config.mode {
        Mode::Embedded { data_dir } => format!("embedded mode, data in {}", data_dir.display()),
        Mode::Cluster { .. } => "cluster mode".to_owned(),
    };
    tracing::info!(node_id, listen = %config.listen, "revo serve ready ({where_})");
    eprintln!(
        "revo serve listening on http://{} ({where_})",
        config.listen
    );

    let mut server = std::pin::pin!(server);
    let outcome = tokio::select! {
        r = &mut server => Some(r),
        _ = shutdown_signal() => None,
    };
    tracing::info!("shutting down");
    if outcome.is_none() {
        // Stop accepting, finish in-flight requests (bounded by the shutdown timeout).
        let stopping = handle.stop(true);
        let _ = tokio::join!(stopping, &mut server);
    }
    if let Err(e) = record(
        store.as_ref(),
        &node_id,
        SystemEvent::NodeStopped {
            node_id: node_id.clone(),
            stopped_at: Utc::now(),
            reason: "shutdown".into(),
        },
    )
    .await
    {
        tracing::warn!(error = %e, "could not record node stop");
    }
    // Actors drain (the relay publishes what is committed), then the store finishes queued
    // appends and closes.
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    store.close().await;
    bus.close().await;
    match outcome {
        Some(Err(e)) => Err(e).context("HTTP server failed"),
        _ => Ok(()),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
