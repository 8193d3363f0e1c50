//! `revo worker --model NAME`: one model on this machine serving its NATS queue group
//! (`<prefix>.cmd.model.<name>`) as a model worker (`revo_actors::model_worker`). Adding
//! workers adds capacity. It needs NATS and the model's directory; the registry is read from
//! the store once, at start. Generation events are written by the edge that took the request
//! (it knows the caller).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use revo_actors::kit::{Context, Health};
use revo_actors::model_thread::ModelThread;
use revo_actors::model_worker::{self, WorkerId, DRAIN};
use revo_nats::{NatsWork, Subjects, WorkTransport};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Config, Mode};

pub async fn run(config: Config, model: String) -> anyhow::Result<()> {
    let Mode::Cluster { nats_url, .. } = &config.mode else {
        bail!(
            "revo worker runs in cluster mode (REVO_DATABASE_URL and REVO_NATS_URL); in \
             embedded mode revo serve runs the local models itself"
        );
    };
    let metrics = crate::metrics::Metrics::new()?;
    let store = crate::node::open_store(&config, metrics.store.clone(), false).await?;
    let row = crate::registry::load(store.as_ref())
        .await?
        .get(&model)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no model named `{model}` (revo models list)"))?;
    store.close().await;
    let dir = config.models_dir().join(&row.dir);
    let subjects = Subjects::new(&config.nats_prefix).map_err(|e| anyhow::anyhow!("{e}"))?;
    let work: Arc<dyn WorkTransport> = Arc::new(
        NatsWork::connect(nats_url, "revo-worker")
            .await
            .with_context(|| {
                format!(
                    "connecting to NATS at {}",
                    crate::config::redacted_url(nats_url)
                )
            })?,
    );
    let id = Uuid::now_v7().to_string();
    let settings = config.models.clone();
    let thread = Arc::new(ModelThread::spawn(
        &model,
        dir,
        config.ort_dylib.clone(),
        &settings,
        id.clone(),
    )?);
    // Take requests only once the model is loaded; a model that does not load stops the worker.
    let device = match model_worker::loaded(&thread).await {
        Ok(d) => d,
        Err(e) => {
            thread.shutdown(Duration::from_secs(5)).await;
            bail!("model `{model}` did not load: {e}");
        }
    };
    let cancel = CancellationToken::new();
    eprintln!("revo worker {id} serving model `{model}`");
    let who = WorkerId {
        id: id.clone(),
        model,
        device,
    };
    let ctx = Context {
        cancel: cancel.clone(),
        health: Health::detached(),
    };
    let serving = model_worker::serve(work, subjects, thread.clone(), who, settings, DRAIN, ctx);
    tokio::pin!(serving);
    // SIGTERM: stop taking requests and drain (serve returns once it has).
    let served = tokio::select! {
        r = &mut serving => r,
        _ = crate::serve::shutdown_signal() => {
            cancel.cancel();
            serving.await
        }
    };
    if !thread.shutdown(Duration::from_secs(10)).await {
        tracing::warn!(worker = %id, "the model thread did not stop in time");
    }
    served.map_err(|e| anyhow::anyhow!("{e}"))
}
