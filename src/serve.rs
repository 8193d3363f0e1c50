//! `revo serve`: the edge with its relay and projections, and a graceful shutdown that drains
//! in-flight appends and the relay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpServer};
use anyhow::Context;
use chrono::Utc;
use revo_actors::kit::{HealthBoard, Supervisor};
use revo_actors::projector::Projector;
use revo_actors::rate_limit::gossip;
use revo_actors::store_probe::StoreProbe;
use revo_actors::{LiveView, Relay, RelayConfig};
use revo_events::family::system::NODE_STREAM;
use revo_events::{
    AppendRequest, Directory, EventFamily, EventMeta, EventStore, ExpectedVersion,
    ModelsProjection, SystemEvent,
};
use revo_nats::Subjects;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{Config, Mode};
use crate::http::{self, AppState};
use crate::identity::password::Hasher;
use crate::identity::throttle::LoginThrottle;
use crate::identity::token::{JwtKey, TokenKeys};
use crate::identity::{Identity, IdentitySettings};
use crate::inference::Inference;
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
    // Every actor of the node runs under this supervisor: one tracker, one cancellation, one
    // health board (read by /health/ready).
    let board = HealthBoard::default();
    let sup = Supervisor::new(tasks.clone(), cancel.clone(), board.clone())
        .with_restart_counter(metrics.actor_restarts.clone());
    // The health endpoints read the probe's latest result; they never query the store.
    let store_probe = StoreProbe::spawn(
        store.clone(),
        Duration::from_secs(1),
        Duration::from_secs(2),
        &sup,
    );
    let relay = Relay {
        log: store.clone(),
        checkpoints: store.clone(),
        leases: store.clone(),
        bus: bus.clone(),
        subjects: subjects.clone(),
        config: RelayConfig::default(),
        metrics: metrics.relay.clone(),
    };
    sup.spawn("relay", move |ctx| {
        let relay = relay.clone();
        async move {
            relay.supervised(ctx).await;
            Ok(())
        }
    });
    let audit = revo_actors::audit::Audit::start(
        store.clone(),
        bus.clone(),
        subjects.clone(),
        node_id.clone(),
        &sup,
        metrics.audit_lost.clone(),
    );
    let identity = Arc::new(open_identity(&config, store.clone(), &node_id, &sup).await?);
    match identity
        .bootstrap_admin(config.auth.admin_password.clone())
        .await
    {
        Ok(Some((admin, password))) => {
            let mut e = revo_events::family::audit::AuditEntry {
                at: chrono::Utc::now(),
                actor: Default::default(),
                action: "system.bootstrap".into(),
                target: Some(format!("user:{admin}")),
                outcome: "success".into(),
                client: None,
                user_agent: None,
                request_id: None,
                count: 1,
                detail: Default::default(),
            };
            e.detail.insert("node".into(), node_id.clone());
            e.detail.insert(
                "password".into(),
                if password.is_some() {
                    "generated"
                } else {
                    "REVO_ADMIN_PASSWORD"
                }
                .into(),
            );
            audit.record(e);
            if let Some(password) = password {
                announce_admin_password(&config, &password)?;
            }
        }
        Ok(None) => {}
        Err(e) => return Err(anyhow::anyhow!("creating the first admin: {e}")),
    }
    if matches!(config.mode, Mode::Cluster { .. }) {
        let (limiter, bus, subjects) = (identity.limiter.clone(), bus.clone(), subjects.clone());
        sup.spawn("rate_limit.gossip", move |ctx| {
            let (limiter, bus, subjects) = (limiter.clone(), bus.clone(), subjects.clone());
            gossip::run(limiter, bus, subjects, ctx)
        });
    }
    let (access, docs) = http::prepare()?;
    let models = view::<ModelsProjection>(&store, 500, &sup, "loading the model registry").await?;

    // Embedded mode: every registered local model gets a thread in this process. Cluster
    // mode: requests go to `revo worker` processes over NATS.
    let inference = Arc::new(
        match &config.mode {
            Mode::Embedded { .. } => {
                let local: Vec<(String, std::path::PathBuf)> = models
                    .read()
                    .all()
                    .map(|m| (m.name.clone(), config.models_dir().join(&m.dir)))
                    .collect();
                Inference::embedded(
                    &sup,
                    config.ort_dylib.clone(),
                    local,
                    &config.models,
                    &node_id,
                    subjects.clone(),
                )
                .await?
            }
            Mode::Cluster { nats_url, .. } => {
                Inference::cluster(&sup, nats_url, subjects.clone(), &config.models)
                    .await
                    .context("connecting to NATS for the model workers")?
            }
        }
        .counted(metrics.generation.clone()),
    );
    // Embedded: answer only once the local models can take requests.
    inference.wait_local(Duration::from_secs(120)).await;
    let projectors = projections::all()
        .into_iter()
        .map(|p| {
            let m = metrics.projector(p.name());
            Projector {
                log: store.clone(),
                read_models: store.clone(),
                projection: p,
                metrics: m,
                batch: 1000,
                poll: Duration::from_millis(500),
            }
            .spawn(&sup)
        })
        .collect();

    // Keys are read once, here; a key set later needs a restart (documented).
    let keys = config
        .catalog
        .entries
        .iter()
        .filter_map(|e| e.api_key_env.clone())
        .filter_map(|var| {
            let v = std::env::var(&var).ok()?;
            let v = v.trim().to_owned();
            (!v.is_empty()).then_some((var, v))
        })
        .collect();
    let budget_view =
        view::<revo_events::BudgetsProjection>(&store, 200, &sup, "loading the budgets").await?;
    let budgets = revo_actors::router::budget::Budgets::new(
        budget_view,
        identity.directory().clone(),
        store.clone(),
        node_id.clone(),
        config.budgets.clone(),
    );
    budgets.start(&sup, Duration::from_millis(500));
    let router = revo_actors::router::Router::new(
        Arc::new(config.catalog.clone()),
        config.router.clone(),
        keys,
        inference.clone(),
        store.clone(),
        metrics.router.clone(),
        Some(budgets.clone()),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    router.probe_once().await;
    let ledger =
        view::<revo_events::LedgerProjection>(&store, 500, &sup, "loading the cost ledger").await?;
    router.start_probe(&sup, Duration::from_secs(10));
    let realtime = start_realtime(
        &config,
        store.clone(),
        bus.clone(),
        &subjects,
        &node_id,
        &metrics,
        &sup,
    )
    .await?;

    realtime.set_audit(audit.clone());
    let workflows = start_workflows(
        &config,
        store.clone(),
        bus.clone(),
        &subjects,
        &node_id,
        &metrics,
        router.clone(),
        realtime.clone(),
        models.clone(),
        identity.directory().clone(),
        &sup,
    )
    .await?;

    store_probe.first(Duration::from_secs(5)).await;
    let state = web::Data::new(AppState {
        store: store.clone(),
        bus: bus.clone(),
        metrics: metrics.clone(),
        identity,
        inference: inference.clone(),
        health: board,
        models,
        access: Arc::new(access),
        docs: Arc::new(docs),
        node_id: node_id.clone(),
        mode: config.mode.name(),
        started: Instant::now(),
        projectors,
        forwarding: http::client_addr::Forwarding {
            enabled: config.http.trust_forwarded,
            trusted: config.trusted_proxies.clone(),
        },
        store_probe,
        router: router.clone(),
        budgets,
        reference_model: config.reference_model.clone(),
        ledger,
        realtime: realtime.clone(),
        realtime_session: revo_actors::rooms::SessionSettings::default(),
        followers: http::quota::PerUser::new(config.workflows.max_followers_per_user),
        workflows,
        rooms_config: config.rooms.clone(),
        connections: http::quota::PerUser::new(config.rooms.max_connections_per_user),
        pending_upgrades: Arc::new(tokio::sync::Semaphore::new(
            config.rooms.max_pending_upgrades,
        )),
        allowed_origins: config.allowed_origins.clone(),
        audit: audit.clone(),
    });
    let limits = config.http;
    let server = HttpServer::new(move || http::app(state.clone(), limits))
        // Streamed answers are many small writes: without TCP_NODELAY each waits for the
        // client's delayed ACK (40 ms a piece on Linux).
        .on_connect(|conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
        })
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
    // WebSocket sessions say `bye` and close, so the server's graceful stop does not wait
    // on them.
    realtime.close_all();
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
    if !router.drain(Duration::from_secs(10)).await {
        tracing::warn!("routed requests still running at shutdown were not recorded");
    }
    sup.shutdown().await;
    // Then the model threads (their workers have stopped) finish or fail what they hold and
    // are joined while the runtime library is still loaded.
    inference.shutdown(Duration::from_secs(10)).await;
    store.close().await;
    bus.close().await;
    match outcome {
        Some(Err(e)) => Err(e).context("HTTP server failed"),
        _ => Ok(()),
    }
}

/// The real-time hub (rooms, sessions, presence) and the views it reads.
async fn start_realtime(
    config: &Config,
    store: Arc<dyn EventStore>,
    bus: Arc<dyn revo_nats::Bus>,
    subjects: &Subjects,
    node_id: &str,
    metrics: &Metrics,
    sup: &Supervisor,
) -> anyhow::Result<revo_actors::rooms::Hub> {
    let rooms = view::<revo_events::RoomsProjection>(&store, 200, sup, "loading the rooms").await?;
    let presence =
        view::<revo_events::PresenceProjection>(&store, 200, sup, "loading presence").await?;
    let mut settings = revo_actors::rooms::HubSettings::default();
    settings.room.max_payload = config.max_payload_bytes;
    settings.room.max_doc_bytes = config.rooms.max_doc_bytes;
    settings.room.max_docs = config.rooms.max_docs_per_room;
    settings.room.max_doc_bytes_per_user = config.rooms.max_doc_bytes_per_user;
    settings.room.state_snapshot_every = i64::from(config.rooms.state_snapshot_every);
    let hub = revo_actors::rooms::Hub::new(
        store,
        bus,
        subjects.clone(),
        node_id.to_owned(),
        settings,
        metrics.realtime.clone(),
        rooms,
        presence,
        sup,
    );
    hub.start(sup);
    Ok(hub)
}

/// The workflow engine and the views it reads; it resumes this store's unfinished runs.
#[allow(clippy::too_many_arguments)]
async fn start_workflows(
    config: &Config,
    store: Arc<dyn EventStore>,
    bus: Arc<dyn revo_nats::Bus>,
    subjects: &Subjects,
    node_id: &str,
    metrics: &Metrics,
    router: revo_actors::router::Router,
    hub: revo_actors::rooms::Hub,
    models: LiveView<ModelsProjection>,
    directory: LiveView<Directory>,
    sup: &Supervisor,
) -> anyhow::Result<revo_actors::workflows::Engine> {
    let hub_for_sessions = hub.clone();
    let workflows =
        view::<revo_events::WorkflowsProjection>(&store, 200, sup, "loading the workflows").await?;
    let runs =
        view::<revo_events::RunsProjection>(&store, 200, sup, "loading the workflow runs").await?;
    let engine = revo_actors::workflows::Engine::new(
        store,
        bus,
        subjects.clone(),
        router,
        hub,
        models,
        runs,
        workflows,
        directory,
        node_id.to_owned(),
        config.workflows.clone(),
        metrics.workflows.clone(),
        sup,
    );
    engine.start(sup);
    hub_for_sessions.set_workflows(engine.clone());
    Ok(engine)
}

/// A projection folded in memory, following the store (polled every `poll_ms` at most).
async fn view<P: revo_events::Projection + Default + Sync>(
    store: &Arc<dyn EventStore>,
    poll_ms: u64,
    sup: &Supervisor,
    what: &'static str,
) -> anyhow::Result<LiveView<P>> {
    LiveView::<P>::start(
        store.clone(),
        store.as_ref(),
        Duration::from_millis(poll_ms),
        sup,
    )
    .await
    .context(what)
}

/// The JWT keys: configured ones, or (embedded mode only) a key kept in the data directory.
fn jwt_keys(config: &Config) -> anyhow::Result<(Vec<JwtKey>, String)> {
    if !config.auth.jwt_keys.is_empty() {
        let signer = config
            .auth
            .jwt_signing_kid
            .clone()
            .unwrap_or_else(|| config.auth.jwt_keys[0].kid.clone());
        return Ok((config.auth.jwt_keys.clone(), signer));
    }
    let Mode::Embedded { data_dir } = &config.mode else {
        anyhow::bail!(
            "cluster mode needs JWT keys shared by every edge: set REVO_JWT_KEYS=kid:secret \
             (secrets of at least 32 bytes) or [auth] jwt_keys in revo.toml"
        );
    };
    let path = data_dir.join("jwt.key");
    let secret = match std::fs::read(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rand::RngCore;
            let mut raw = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            write_private(&path, hex.as_bytes())?;
            hex.into_bytes()
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok((
        vec![JwtKey {
            kid: "local".into(),
            secret,
        }],
        "local".into(),
    ))
}

/// Hands the generated first-admin password to the operator without putting it in logs: on a
/// terminal it is shown once; otherwise (containers, services, whose stdout is collected) it
/// goes to `<data_dir>/admin-password`, readable only by Revo's user, and only the path is
/// printed.
fn announce_admin_password(config: &Config, password: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!(
            "First start: created user `admin` with password {password}\n\
             Log in with POST /auth/login and change it with PATCH /users/{{id}}."
        );
        return Ok(());
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let path = config.data_dir.join("admin-password");
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("replacing {}", path.display())),
    }
    write_private(&path, format!("{password}\n").as_bytes())?;
    println!(
        "First start: created user `admin`; its password is in {} (readable only by this \
         user). Log in, change it with PATCH /users/{{id}}, then delete the file.",
        path.display()
    );
    Ok(())
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

async fn open_identity(
    config: &Config,
    store: Arc<dyn EventStore>,
    node_id: &str,
    sup: &Supervisor,
) -> anyhow::Result<Identity> {
    let (keys, signer) = jwt_keys(config)?;
    let tokens = TokenKeys::new(&keys, &signer, config.auth.token_ttl)?;
    let tickets = crate::identity::ticket::Tickets::new(
        &keys
            .iter()
            .find(|k| k.kid == signer)
            .map(|k| k.secret.clone())
            .unwrap_or_default(),
    );
    let view = view::<Directory>(&store, 500, sup, "loading the user directory").await?;
    let a = &config.auth;
    Ok(Identity::new(
        store,
        view,
        IdentitySettings {
            tokens,
            tickets,
            limits: a.limits,
            throttle: LoginThrottle::new(
                a.login_max_failures,
                a.login_max_failures_per_addr,
                a.login_window,
            ),
            hasher: Arc::new(
                Hasher::new(a.argon2, a.password_hash_concurrency, a.password_hash_queue)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
            max_keys_per_user: a.max_keys_per_user,
        },
        node_id,
        sup.tracker().clone(),
    ))
}

pub(crate) async fn shutdown_signal() {
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
