//! A model's own OS thread: it owns the loaded model, takes jobs from a bounded queue and
//! decodes up to `max_batch` of them together, admitting new ones between steps, in order, while
//! their cache positions (prompt + max_tokens each) fit `max_batch_tokens`. Inference never runs
//! on async threads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use revo_models::engine::SeqId;
use revo_models::local::{LocalModel, Update};

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
}

/// One model's thread, seen from outside.
pub struct ModelThread {
    jobs: SyncSender<Job>,
    pub stats: Arc<Stats>,
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
        std::thread::Builder::new()
            .name(format!("model-{name}"))
            .spawn(move || run(&model, &dir, runtime.as_deref(), &settings, &worker, &s, rx))?;
        Ok(ModelThread { jobs: tx, stats })
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

/// A job with the cache positions it may need.
fn sized(model: &LocalModel, job: Job) -> (Job, usize) {
    let prompt = model.encode(&job.prompt).map_or(0, |ids| ids.len());
    let need = prompt + job.sampling.max_tokens;
    (job, need)
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
    let loaded = revo_models::engine::locate_runtime(runtime)
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
            // Answer whatever arrives with the reason, until the queue closes.
            for job in jobs {
                stats.queued.fetch_sub(1, Ordering::Relaxed);
                let _ = job.events.send(Event::Done(Err(Failure {
                    code: "model_unavailable",
                    message: e.clone(),
                })));
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
        // Idle: wait for work.
        if model.active() == 0 && held.is_none() {
            if closed {
                return;
            }
            match jobs.recv() {
                Ok(job) => held = Some(sized(&model, job)),
                Err(_) => return,
            }
        }
        // Admit jobs in order while the batch has a slot and the cache budget allows (a job
        // bigger than the budget runs when the batch is empty).
        loop {
            if held.is_none() && !closed {
                match jobs.try_recv() {
                    Ok(job) => held = Some(sized(&model, job)),
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
