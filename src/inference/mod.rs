//! Wiring local generation: one path in both modes. The edge talks to a
//! [`ModelClient`](revo_actors::model_client::ModelClient) over a work transport; model workers
//! (`revo_actors::model_worker`) answer on it. Embedded `revo serve` runs a worker per local
//! model in this process over the in-process transport; in cluster mode the transport is NATS
//! and the workers are `revo worker` processes (`worker.rs`).

pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use revo_actors::kit::Supervisor;
use revo_actors::model_client::ModelClient;
use revo_actors::model_thread::{Event, Job, ModelSettings, ModelThread, SubmitError};
use tokio::sync::mpsc;

use crate::metrics::GenerationMetrics;
use revo_actors::model_worker::{self, WorkerId};
use revo_nats::{MemoryWork, NatsWork, Subjects, WorkTransport};

/// How long embedded workers let running generations finish at shutdown (the HTTP server has
/// already drained its requests by then).
const EMBEDDED_DRAIN: Duration = Duration::from_secs(5);

/// The edge's way to its models (a handle: requests go through the client's transport).
pub struct Inference {
    client: ModelClient,
    /// Models this process runs (embedded mode), with their threads, joined at shutdown.
    local: Vec<(String, Arc<ModelThread>)>,
    /// Generations counted by model (`revo_generations_total` and kin), whichever API asked.
    metrics: Option<GenerationMetrics>,
    /// The counting forwarders (each ends with its generation).
    forwarders: tokio_util::task::TaskTracker,
}

impl Inference {
    /// Embedded mode: a model thread and a supervised worker per local model (`name`,
    /// directory), on an in-process transport.
    pub async fn embedded(
        sup: &Supervisor,
        runtime: Option<PathBuf>,
        models: Vec<(String, PathBuf)>,
        settings: &ModelSettings,
        node: &str,
        subjects: Subjects,
    ) -> anyhow::Result<Inference> {
        let work: Arc<dyn WorkTransport> = Arc::new(MemoryWork::new());
        // The client listens for heartbeats before any worker sends one.
        let client = Self::client(sup, work.clone(), subjects.clone(), settings).await?;
        let mut local = Vec::new();
        for (name, dir) in models {
            let thread =
                match ModelThread::spawn(&name, dir, runtime.clone(), settings, node.into()) {
                    Ok(t) => Arc::new(t),
                    Err(e) => {
                        tracing::error!(model = %name, error = %e, "cannot start a model thread");
                        continue;
                    }
                };
            local.push((name.clone(), thread.clone()));
            let (work, subjects, settings) = (work.clone(), subjects.clone(), settings.clone());
            let node = node.to_owned();
            sup.spawn(&format!("model_worker.{name}"), move |ctx| {
                let (work, subjects, settings) = (work.clone(), subjects.clone(), settings.clone());
                let (thread, name, node) = (thread.clone(), name.clone(), node.clone());
                async move {
                    // A model that does not load still serves: each request is answered with
                    // why (`model_unavailable`), and the node stays up for the others.
                    let device = match model_worker::loaded(&thread).await {
                        Ok(d) => d,
                        Err(e) => {
                            ctx.health
                                .degraded(format!("model `{name}` did not load: {e}"));
                            "none".into()
                        }
                    };
                    let who = WorkerId {
                        id: node,
                        model: name,
                        device,
                    };
                    model_worker::serve(work, subjects, thread, who, settings, EMBEDDED_DRAIN, ctx)
                        .await
                }
            });
        }
        Ok(Inference {
            client,
            local,
            metrics: None,
            forwarders: tokio_util::task::TaskTracker::new(),
        })
    }

    /// Counts every generation this edge asks for in `metrics`.
    pub fn counted(mut self, metrics: GenerationMetrics) -> Inference {
        self.metrics = Some(metrics);
        self
    }

    /// Cluster mode: the client over NATS; `revo worker` processes serve.
    pub async fn cluster(
        sup: &Supervisor,
        nats_url: &str,
        subjects: Subjects,
        settings: &ModelSettings,
    ) -> anyhow::Result<Inference> {
        let work: Arc<dyn WorkTransport> =
            Arc::new(NatsWork::connect(nats_url, "revo-edge").await?);
        Ok(Inference {
            client: Self::client(sup, work, subjects, settings).await?,
            local: Vec::new(),
            metrics: None,
            forwarders: tokio_util::task::TaskTracker::new(),
        })
    }

    async fn client(
        sup: &Supervisor,
        work: Arc<dyn WorkTransport>,
        subjects: Subjects,
        settings: &ModelSettings,
    ) -> anyhow::Result<ModelClient> {
        Ok(ModelClient::start(work, subjects, settings.worker_timeout, sup).await?)
    }

    /// Waits (up to `timeout`) until every local model has loaded, or failed to, and its
    /// worker is heard from: before that, requests would find no worker. Embedded mode only.
    pub async fn wait_local(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        for (name, _) in &self.local {
            while self.client.live_workers(name).is_empty() {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(model = %name, "local model worker not serving yet");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Workers serving `model` now.
    pub fn live_workers(&self, model: &str) -> usize {
        self.client.live_workers(model).len()
    }

    /// `(model, workers, queued, active)` for every model a worker has announced.
    pub fn census(&self) -> Vec<(String, usize, usize, usize)> {
        self.client.census()
    }

    pub fn submit(&self, model: &str, job: Job) -> Result<(), SubmitError> {
        self.client.submit(model, job)
    }

    /// Joins this process's model threads (after their workers have stopped): each finishes
    /// or fails what it holds and drops its model while the runtime library is still loaded.
    pub async fn shutdown(&self, timeout: Duration) {
        self.forwarders.close();
        for (_, t) in &self.local {
            if !t.shutdown(timeout).await {
                tracing::warn!("a model thread did not stop in time");
            }
        }
    }
}

impl revo_actors::router::LocalModels for Inference {
    /// Submits through a small forwarder that counts the outcome; a requester that leaves
    /// (its receiver closed) drops the forwarder's receiver too, which stops the generation.
    fn submit(&self, model: &str, mut job: Job) -> Result<(), SubmitError> {
        let Some(m) = self.metrics.clone() else {
            return Inference::submit(self, model, job);
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let out = std::mem::replace(&mut job.events, tx);
        Inference::submit(self, model, job)?;
        let model = model.to_owned();
        self.forwarders.spawn(async move {
            loop {
                let ev = tokio::select! {
                    ev = rx.recv() => ev,
                    _ = out.closed() => None,
                };
                let Some(ev) = ev else { return };
                if let Event::Done(done) = &ev {
                    match done {
                        Ok(o) => m.completed(&model, o),
                        Err(f) => m.failed(&model, f.code),
                    }
                }
                if out.send(ev).is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    fn live_workers(&self, model: &str) -> usize {
        Inference::live_workers(self, model)
    }
}
