//! `revo worker --model NAME`: one model on this machine, serving a NATS queue group
//! (`<prefix>.cmd.model.<name>`) with the protocol of `wire.rs`, announcing itself with
//! heartbeats. Adding workers adds capacity. It needs NATS and the model's directory; the
//! registry is read from the store once, at start. Generation events are written by the edge
//! that took the request (it knows the caller).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use revo_nats::{Subjects, WorkClient, WorkMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::thread::{ModelThread, Stats};
use super::wire::{Heartbeat, Reply, Request};
use super::{Event, Failure, Job, ModelSettings, SubmitError};
use crate::config::{Config, Mode};

/// How long a stopping worker lets running requests finish.
const DRAIN: Duration = Duration::from_secs(30);

pub async fn run(config: Config, model: String) -> anyhow::Result<()> {
    let Mode::Cluster { nats_url, .. } = &config.mode else {
        bail!(
            "revo worker runs in cluster mode (REVO_DATABASE_URL and REVO_NATS_URL); in \
             embedded mode revo serve runs the local models itself"
        );
    };
    let metrics = crate::metrics::Metrics::new()?;
    let store = crate::node::open_store(&config, metrics.store.clone(), false).await?;
    let row = crate::models::registry(store.as_ref())
        .await?
        .get(&model)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no model named `{model}` (revo models list)"))?;
    let dir = config.models_dir().join(&row.dir);
    let subjects = Subjects::new(&config.nats_prefix).map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = WorkClient::connect(nats_url, "revo-worker")
        .await
        .with_context(|| format!("connecting to NATS at {nats_url}"))?;
    let id = Uuid::now_v7().to_string();
    let settings = config.models.clone();
    let thread = ModelThread::spawn(&model, dir, config.ort_dylib.clone(), &settings, id.clone())?;
    // Take requests only once the model is loaded; a model that does not load stops the worker.
    let device = loop {
        if thread.stats.loaded.load(Ordering::Relaxed) {
            break thread
                .stats
                .device
                .lock()
                .map(|d| d.clone())
                .unwrap_or_default();
        }
        let d = thread
            .stats
            .device
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        if !d.is_empty() {
            bail!("model `{model}` did not load: {d}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut requests = client
        .queue_subscribe(&subjects.model_requests(&model)?, "workers")
        .await?;
    let mut cancels = client.subscribe(&subjects.worker_cancel(&id)?).await?;
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let beat = subjects.signal("worker", &model)?;
    tasks.spawn(heartbeats(
        client.clone(),
        beat,
        thread.stats.clone(),
        base_heartbeat(&id, &model, &device, &settings),
        settings.heartbeat,
        cancel.clone(),
    ));
    let running: Arc<Mutex<HashMap<String, CancellationToken>>> = Arc::default();
    let worker = Worker {
        client: client.clone(),
        id: id.clone(),
        device,
        heartbeat: settings.heartbeat,
    };
    tracing::info!(worker = %id, model, "revo worker ready");
    eprintln!("revo worker {id} serving model `{model}`");
    let mut stop = std::pin::pin!(crate::serve::shutdown_signal());
    loop {
        tokio::select! {
            m = requests.next() => {
                let Some(m) = m else { break };
                worker.take(&thread, &model, m, &running, &tasks).await;
            }
            c = cancels.next() => {
                let Some(c) = c else { break };
                let inbox = String::from_utf8_lossy(&c.payload).into_owned();
                if let Some(t) = running.lock().ok().and_then(|mut r| r.remove(&inbox)) {
                    t.cancel();
                }
            }
            _ = &mut stop => break,
        }
    }
    // Stop taking requests, let running ones finish, then say nothing more.
    tracing::info!(worker = %id, "stopping: draining running requests");
    drop(requests);
    tasks.close();
    let _ = tokio::time::timeout(DRAIN, async {
        while running.lock().map(|r| !r.is_empty()).unwrap_or(false) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    cancel.cancel();
    tasks.wait().await;
    let _ = client.flush().await;
    if !thread.shutdown(Duration::from_secs(10)).await {
        tracing::warn!(worker = %id, "the model thread did not stop in time");
    }
    Ok(())
}

fn base_heartbeat(id: &str, model: &str, device: &str, s: &ModelSettings) -> Heartbeat {
    Heartbeat {
        worker: id.to_owned(),
        model: model.to_owned(),
        device: device.to_owned(),
        loaded: true,
        queued: 0,
        active: 0,
        max_batch: s.max_batch,
        tokens_per_s: 0.0,
        every_ms: s.heartbeat.as_millis() as u64,
    }
}

async fn heartbeats(
    client: WorkClient,
    subject: String,
    stats: Arc<Stats>,
    mut hb: Heartbeat,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    let (mut last_tokens, mut last_at) = (0u64, Instant::now());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let tokens = stats.tokens.load(Ordering::Relaxed);
        let now = Instant::now();
        let secs = (now - last_at).as_secs_f64();
        hb.tokens_per_s = if secs > 0.0 {
            (tokens - last_tokens) as f64 / secs
        } else {
            0.0
        };
        (last_tokens, last_at) = (tokens, now);
        hb.queued = stats.queued.load(Ordering::Relaxed);
        hb.active = stats.active.load(Ordering::Relaxed);
        if let Ok(payload) = serde_json::to_vec(&hb) {
            if let Err(e) = client.publish(&subject, payload.into()).await {
                tracing::warn!(error = %e, "heartbeat not sent");
            }
        }
    }
}

#[derive(Clone)]
struct Worker {
    client: WorkClient,
    id: String,
    device: String,
    heartbeat: Duration,
}

impl Worker {
    async fn send(&self, inbox: &str, reply: &Reply) {
        if let Ok(payload) = serde_json::to_vec(reply) {
            let _ = self.client.publish(inbox, payload.into()).await;
        }
    }

    /// Queues one request and relays its events to the requester's inbox.
    async fn take(
        &self,
        thread: &ModelThread,
        model: &str,
        msg: WorkMessage,
        running: &Arc<Mutex<HashMap<String, CancellationToken>>>,
        tasks: &TaskTracker,
    ) {
        let Some(inbox) = msg.reply else {
            return;
        };
        let request = match serde_json::from_slice::<Request>(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                let f = Failure {
                    code: "invalid_parameter",
                    message: format!("unreadable request: {e}"),
                };
                return self.send(&inbox, &Reply::error(&f)).await;
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let job = Job {
            sampling: request.sampling,
            prompt: request.prompt,
            stop: request.stop,
            events: tx,
            received: Instant::now(),
        };
        if let Err(e) = thread.submit(model, job) {
            let code = match e {
                SubmitError::Busy(_) => "model_busy",
                _ => "model_unavailable",
            };
            let f = Failure {
                code,
                message: e.to_string(),
            };
            return self.send(&inbox, &Reply::error(&f)).await;
        }
        let accepted = Reply::Accepted {
            worker: self.id.clone(),
            device: self.device.clone(),
        };
        self.send(&inbox, &accepted).await;
        let stop = CancellationToken::new();
        if let Ok(mut r) = running.lock() {
            r.insert(inbox.clone(), stop.clone());
        }
        let (me, running) = (self.clone(), running.clone());
        tasks.spawn(async move {
            let mut alive = tokio::time::interval(me.heartbeat);
            alive.tick().await;
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(Event::Text(text)) => me.send(&inbox, &Reply::Text { text }).await,
                        Some(Event::Done(outcome)) => {
                            let reply = match outcome {
                                Ok(o) => Reply::done(o),
                                Err(f) => Reply::error(&f),
                            };
                            me.send(&inbox, &reply).await;
                            break;
                        }
                        None => break,
                    },
                    _ = alive.tick() => me.send(&inbox, &Reply::Alive).await,
                    // Dropping `rx` stops the sequence at the model's next step.
                    _ = stop.cancelled() => break,
                }
            }
            if let Ok(mut r) = running.lock() {
                r.remove(&inbox);
            }
        });
    }
}
