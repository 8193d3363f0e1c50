//! The model worker: one loaded model (a [`ModelThread`]) serving its model's queue group on the
//! work transport, with the protocol of `wire.rs`: it takes a request, answers `accepted`,
//! relays text pieces, keeps the requester's wait alive every heartbeat, ends with `done` or
//! `error`, drops a request whose requester cancels, and announces itself with heartbeats.
//!
//! `revo worker` runs it over NATS; embedded `revo serve` runs one per local model over the
//! in-process transport. Either way the edge reaches it through the model client
//! (`model_client`): one generation path.

pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use revo_nats::{Subjects, WorkMessage, WorkTransport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kit::Context;
use crate::model_thread::{Event, Failure, Job, ModelSettings, ModelThread, Stats, SubmitError};
use wire::{Heartbeat, Reply, Request};

/// How long a stopping worker lets running requests finish.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Waits until `thread` has loaded its model: its device, or why it did not load.
pub async fn loaded(thread: &ModelThread) -> Result<String, String> {
    loop {
        let device = thread
            .stats
            .device
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        if thread.stats.loaded.load(Ordering::Relaxed) {
            return Ok(device);
        }
        if !device.is_empty() {
            return Err(device);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Who a worker is.
#[derive(Clone)]
pub struct WorkerId {
    /// Unique per process (a UUID): the worker's cancel subject and what outcomes name.
    pub id: String,
    pub model: String,
    pub device: String,
}

/// Serves `thread` as `who` until `ctx.cancel`, then stops taking requests and lets running
/// ones finish (up to `drain`). The thread stays the caller's to shut down.
pub async fn serve(
    work: Arc<dyn WorkTransport>,
    subjects: Subjects,
    thread: Arc<ModelThread>,
    who: WorkerId,
    settings: ModelSettings,
    drain: Duration,
    ctx: Context,
) -> Result<(), String> {
    let err = |e: revo_nats::BusError| e.to_string();
    let request_subject = subjects
        .model_requests(&who.model)
        .map_err(|e| e.to_string())?;
    let cancel_subject = subjects.worker_cancel(&who.id).map_err(|e| e.to_string())?;
    let beat = subjects
        .signal("worker", &who.model)
        .map_err(|e| e.to_string())?;
    let mut requests = work
        .queue_subscribe(&request_subject, "workers")
        .await
        .map_err(err)?;
    let mut cancels = work.subscribe(&cancel_subject).await.map_err(err)?;
    let tasks = TaskTracker::new();
    let beats_stop = CancellationToken::new();
    tasks.spawn(heartbeats(
        work.clone(),
        beat,
        thread.stats.clone(),
        base_heartbeat(&who, &settings),
        settings.heartbeat,
        beats_stop.clone(),
    ));
    let running: Arc<Mutex<HashMap<String, CancellationToken>>> = Arc::default();
    let worker = Worker {
        work: work.clone(),
        id: who.id.clone(),
        device: who.device.clone(),
        heartbeat: settings.heartbeat,
    };
    ctx.health.ready();
    tracing::info!(worker = %who.id, model = %who.model, "model worker serving");
    loop {
        tokio::select! {
            m = requests.next() => {
                let Some(m) = m else { break };
                worker.take(&thread, &who.model, m, &running, &tasks).await;
            }
            c = cancels.next() => {
                let Some(c) = c else { break };
                let inbox = String::from_utf8_lossy(&c.payload).into_owned();
                if let Some(t) = running.lock().ok().and_then(|mut r| r.remove(&inbox)) {
                    t.cancel();
                }
            }
            _ = ctx.cancel.cancelled() => break,
        }
    }
    // Stop taking requests, let running ones finish, then say nothing more.
    tracing::info!(worker = %who.id, "model worker stopping: draining running requests");
    drop(requests);
    tasks.close();
    // Requesters that leave meanwhile still cancel theirs.
    let deadline = tokio::time::sleep(drain);
    tokio::pin!(deadline);
    while running.lock().map(|r| !r.is_empty()).unwrap_or(false) {
        tokio::select! {
            _ = &mut deadline => break,
            c = cancels.next() => {
                let Some(c) = c else { break };
                let inbox = String::from_utf8_lossy(&c.payload).into_owned();
                if let Some(t) = running.lock().ok().and_then(|mut r| r.remove(&inbox)) {
                    t.cancel();
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    // Whatever is still running now fails, so its requester hears why at once.
    let left: Vec<(String, CancellationToken)> = running
        .lock()
        .map(|mut r| r.drain().collect())
        .unwrap_or_default();
    for (inbox, stop) in left {
        stop.cancel();
        let f = Failure {
            code: "model_unavailable",
            message: "the worker is shutting down; retry".into(),
        };
        worker.send(&inbox, &Reply::error(&f)).await;
    }
    beats_stop.cancel();
    tasks.wait().await;
    let _ = work.flush().await;
    if ctx.cancel.is_cancelled() {
        Ok(())
    } else {
        // A subscription ended under a running worker: an error, so the supervisor serves
        // the model again rather than leave it without a worker.
        Err("the request or cancel subscription ended".to_owned())
    }
}

fn base_heartbeat(who: &WorkerId, s: &ModelSettings) -> Heartbeat {
    Heartbeat {
        worker: who.id.clone(),
        model: who.model.clone(),
        device: who.device.clone(),
        loaded: true,
        queued: 0,
        active: 0,
        max_batch: s.max_batch,
        tokens_per_s: 0.0,
        every_ms: s.heartbeat.as_millis() as u64,
    }
}

async fn heartbeats(
    work: Arc<dyn WorkTransport>,
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
            if let Err(e) = work.publish(&subject, payload.into()).await {
                tracing::warn!(error = %e, "heartbeat not sent");
            }
        }
    }
}

#[derive(Clone)]
struct Worker {
    work: Arc<dyn WorkTransport>,
    id: String,
    device: String,
    heartbeat: Duration,
}

impl Worker {
    async fn send(&self, inbox: &str, reply: &Reply) {
        if let Ok(payload) = serde_json::to_vec(reply) {
            let _ = self.work.publish(inbox, payload.into()).await;
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
            messages: request.messages,
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
                        Some(Event::Logprobs(logprobs)) => {
                            me.send(&inbox, &Reply::Logprobs { logprobs }).await
                        }
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
