//! A model's own OS thread: it owns the loaded model, takes jobs from a bounded queue and
//! decodes up to `max_batch` of them together, admitting new ones between steps, in order, while
//! their cache positions (prompt + max_tokens each) fit `max_batch_tokens`. Inference never runs
//! on async threads.
//!
//! Shutdown: [`ModelThread::shutdown`] tells the thread to stop; it answers what is still
//! running or queued with `model_unavailable`, drops the model on its own thread and exits, and
//! the caller joins it. The process must not exit with a decode step in flight: ONNX Runtime's
//! globals are torn down at exit under a running session (a crash on SIGTERM).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{
    sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError,
};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use revo_engine::engine::SeqId;
use revo_engine::local::{LocalModel, Update};

use super::{failure, Event, Failure, Job, ModelSettings, Outcome, SubmitError};

/// What a model thread is doing, for heartbeats and metrics.
#[derive(Default)]
pub struct Stats {
    pub loaded: AtomicBool,
    /// Jobs waiting in the queue.
    pub queued: AtomicUsize,
    /// Sequences being decoded.
    pub active: AtomicUsize,
    /// Tokens produced since start.
    pub tokens: AtomicU64,
    /// `cpu` or `cuda:N`, once loaded; the load error otherwise.
    pub device: Mutex<String>,
    /// Set by `shutdown`: stop at the next step.
    stop: AtomicBool,
}

/// One model's thread, seen from outside.
pub struct ModelThread {
    jobs: SyncSender<Job>,
    pub stats: Arc<Stats>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// How often an idle model thread looks for a stop.
const IDLE_CHECK: Duration = Duration::from_millis(50);

fn stopping() -> Failure {
    Failure {
        code: "model_unavailable",
        message: "the server is shutting down; retry on another".into(),
    }
}

impl ModelThread {
    /// Starts the thread; the model loads on it, so a slow or broken model never holds up the
    /// caller. `worker` names who generates, in outcomes and events.
    pub fn spawn(
        name: &str,
        dir: PathBuf,
        runtime: Option<PathBuf>,
        settings: &ModelSettings,
        worker: String,
    ) -> std::io::Result<ModelThread> {
        let (tx, rx) = sync_channel::<Job>(settings.queue);
        let stats = Arc::new(Stats::default());
        let (s, settings, model) = (stats.clone(), settings.clone(), name.to_owned());
        let handle = std::thread::Builder::new()
            .name(format!("model-{name}"))
            .spawn(move || run(&model, &dir, runtime.as_deref(), &settings, &worker, &s, rx))?;
        Ok(ModelThread {
            jobs: tx,
            stats,
            thread: Mutex::new(Some(handle)),
        })
    }

    /// Stops the thread (running and queued jobs fail with `model_unavailable`) and waits up
    /// to `timeout` for it to drop its model and exit. False if it did not in time.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.stats.stop.store(true, Ordering::Release);
        let Some(handle) = self.thread.lock().ok().and_then(|mut t| t.take()) else {
            return true;
        };
        let joined = tokio::task::spawn_blocking(move || handle.join().is_ok());
        matches!(tokio::time::timeout(timeout, joined).await, Ok(Ok(true)))
    }

    pub fn submit(&self, model: &str, job: Job) -> Result<(), SubmitError> {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.jobs.try_send(job).map_err(|e| {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => SubmitError::Busy(model.to_owned()),
                TrySendError::Disconnected(_) => SubmitError::Down(model.to_owned()),
            }
        })
    }
}

struct Running {
    job: Job,
    started: Instant,
    first: Option<Instant>,
    /// Cache positions it may need: prompt tokens + max_tokens.
    need: usize,
}

/// A job with the cache positions it may need, its chat (if any) rendered; a chat the
/// template cannot render is answered here and dropped.
fn sized(model: &LocalModel, mut job: Job, stats: &Stats) -> Option<(Job, usize)> {
    if let Some(messages) = job.messages.take() {
        match model.render(&messages) {
            Ok(p) => job.prompt = p,
            Err(e) => {
                stats.queued.fetch_sub(1, Ordering::Relaxed);
                let f = Failure {
                    code: "chat_template_failed",
                    message: e.to_string(),
                };
                let _ = job.events.send(Event::Done(Err(f)));
                return None;
            }
        }
    }
    let prompt = model.encode(&job.prompt).map_or(0, |ids| ids.len());
    let need = prompt + job.sampling.max_tokens;
    Some((job, need))
}

fn run(
    name: &str,
    dir: &Path,
    runtime: Option<&Path>,
    settings: &ModelSettings,
    worker: &str,
    stats: &Stats,
    jobs: Receiver<Job>,
) {
    let loaded = revo_engine::engine::locate_runtime(runtime)
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            LocalModel::open(dir, &rt, settings.threads, settings.device).map_err(|e| e.to_string())
        });
    let mut model = match loaded {
        Ok(m) => {
            let device = m.device().to_string();
            tracing::info!(model = name, device, "local model loaded");
            if let Ok(mut d) = stats.device.lock() {
                *d = device;
            }
            stats.loaded.store(true, Ordering::Relaxed);
            m
        }
        Err(e) => {
            tracing::error!(model = name, error = %e, "local model failed to load");
            if let Ok(mut d) = stats.device.lock() {
                d.clone_from(&e);
            }
            // The reason names files and libraries of this machine: the log has it, callers
            // get the fact.
            let e = format!("model `{name}` failed to load; the server log says why");
            // Answer whatever arrives with the reason, until the queue closes or a stop.
            while !stats.stop.load(Ordering::Acquire) {
                match jobs.recv_timeout(IDLE_CHECK) {
                    Ok(job) => {
                        stats.queued.fetch_sub(1, Ordering::Relaxed);
                        let _ = job.events.send(Event::Done(Err(Failure {
                            code: "model_unavailable",
                            message: e.clone(),
                        })));
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            return;
        }
    };
    let device = model.device().to_string();
    let mut running: HashMap<SeqId, Running> = HashMap::new();
    let mut closed = false;
    // The next job in line, taken from the queue but waiting for room in the batch.
    let mut held: Option<(Job, usize)> = None;
    loop {
        if stats.stop.load(Ordering::Acquire) {
            // Everything still here fails cleanly; the model drops on this thread on return.
            for (seq, r) in running.drain() {
                model.cancel(seq);
                let _ = r.job.events.send(Event::Done(Err(stopping())));
            }
            for job in held
                .take()
                .map(|(j, _)| j)
                .into_iter()
                .chain(jobs.try_iter())
            {
                stats.queued.fetch_sub(1, Ordering::Relaxed);
                let _ = job.events.send(Event::Done(Err(stopping())));
            }
            stats.active.store(0, Ordering::Relaxed);
            return;
        }
        // Idle: wait for work.
        if model.active() == 0 && held.is_none() {
            if closed {
                return;
            }
            match jobs.recv_timeout(IDLE_CHECK) {
                Ok(job) => held = sized(&model, job, stats),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        // Admit jobs in order while the batch has a slot and the cache budget allows (a job
        // bigger than the budget runs when the batch is empty).
        loop {
            if held.is_none() && !closed {
                match jobs.try_recv() {
                    Ok(job) => held = sized(&model, job, stats),
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => closed = true,
                }
            }
            let Some((job, need)) = held.take() else {
                break;
            };
            let reserved: usize = running.values().map(|r| r.need).sum();
            let full = model.active() >= settings.max_batch
                || (model.active() > 0 && reserved + need > settings.max_batch_tokens);
            if full {
                held = Some((job, need));
                break;
            }
            admit(
                &mut model,
                &mut running,
                (job, need),
                stats,
                worker,
                &device,
            );
        }
        stats.active.store(model.active(), Ordering::Relaxed);
        if model.active() == 0 {
            continue;
        }
        match model.step() {
            Ok(updates) => {
                stats
                    .tokens
                    .fetch_add(updates.len() as u64, Ordering::Relaxed);
                for (seq, update) in updates {
                    deliver(&mut model, &mut running, seq, update, worker, &device);
                }
            }
            Err(e) => {
                tracing::error!(model = name, error = %e, "a decode step failed");
                let f = failure(&e);
                for (_, r) in running.drain() {
                    let _ = r.job.events.send(Event::Done(Err(f.clone())));
                }
            }
        }
        stats.active.store(model.active(), Ordering::Relaxed);
    }
}

fn admit(
    model: &mut LocalModel,
    running: &mut HashMap<SeqId, Running>,
    (job, need): (Job, usize),
    stats: &Stats,
    worker: &str,
    device: &str,
) {
    stats.queued.fetch_sub(1, Ordering::Relaxed);
    let started = job.received;
    match model.start(&job.prompt, &job.sampling, &job.stop) {
        Ok((seq, update)) => {
            stats.tokens.fetch_add(1, Ordering::Relaxed);
            let r = Running {
                job,
                started,
                first: None,
                need,
            };
            running.insert(seq, r);
            deliver(model, running, seq, update, worker, device);
        }
        Err(e) => {
            let _ = job.events.send(Event::Done(Err(failure(&e))));
        }
    }
}

/// Passes a sequence's update to its requester; a requester that went away stops it.
fn deliver(
    model: &mut LocalModel,
    running: &mut HashMap<SeqId, Running>,
    seq: SeqId,
    update: Update,
    worker: &str,
    device: &str,
) {
    let Some(r) = running.get_mut(&seq) else {
        return;
    };
    if let Some(l) = update.logprobs {
        if r.job.events.send(Event::Logprobs(l)).is_err() {
            model.cancel(seq);
            running.remove(&seq);
            return;
        }
    }
    if let Some(text) = update.text {
        r.first.get_or_insert_with(Instant::now);
        if r.job.events.send(Event::Text(text)).is_err() {
            model.cancel(seq);
            running.remove(&seq);
            return;
        }
    }
    if let Some(g) = update.done {
        if let Some(r) = running.remove(&seq) {
            let ms = |d: std::time::Duration| d.as_millis() as u64;
            let first = r.first.unwrap_or_else(Instant::now);
            let _ = r.job.events.send(Event::Done(Ok(Outcome {
                time_to_first_token_ms: ms(first - r.started),
                duration_ms: ms(r.started.elapsed()),
                text: g.text,
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.completion_tokens,
                finish: g.finish,
                worker: worker.to_owned(),
                device: device.to_owned(),
            })));
        }
    }
}
