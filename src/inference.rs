//! The in-process model worker of `revo serve`: each registered local model gets a dedicated
//! OS thread that owns the loaded model and takes jobs from a bounded queue (inference never
//! runs on async threads). A job streams text pieces back over a channel and ends with the
//! generation's outcome.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::Instant;

use revo_models::engine::{Finish, Sampling};
use revo_models::local::LocalModel;
use tokio::sync::mpsc;

/// Jobs waiting per model beyond the one running; past it, requests are refused (`503`).
pub const QUEUE: usize = 16;

pub struct Job {
    pub prompt: String,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    pub events: mpsc::Sender<Event>,
}

#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Result<Outcome, Failure>),
}

/// Why a generation failed: an error code for the client and a message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
}

fn failure(e: &revo_models::local::LocalError) -> Failure {
    use revo_models::engine::EngineError;
    use revo_models::local::LocalError;
    let code = match e {
        LocalError::Engine(EngineError::Context { .. }) => "context_length_exceeded",
        LocalError::Engine(EngineError::Sampling(_) | EngineError::EmptyPrompt) => {
            "invalid_parameter"
        }
        _ => "generation_failed",
    };
    Failure {
        code,
        message: e.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish: Finish,
    pub time_to_first_token_ms: u64,
    pub duration_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("no local model named `{0}`")]
    Unknown(String),
    #[error("model `{0}` has {QUEUE} requests waiting; try again shortly")]
    Busy(String),
    #[error("model `{0}` is not running (it failed to load; see the server log)")]
    Down(String),
}

/// Handles to every model's worker thread.
#[derive(Default)]
pub struct Inference {
    workers: HashMap<String, SyncSender<Job>>,
}

impl Inference {
    /// Starts a worker thread per model (`name`, directory). Models load on their threads, so a
    /// slow or broken model never holds up the server's start.
    pub fn start(runtime: Option<PathBuf>, models: Vec<(String, PathBuf)>, threads: usize) -> Self {
        let mut workers = HashMap::new();
        for (name, dir) in models {
            let (tx, rx) = sync_channel::<Job>(QUEUE);
            let runtime = runtime.clone();
            let model_name = name.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("model-{name}"))
                .spawn(move || worker(&model_name, &dir, runtime.as_deref(), threads, rx));
            match spawned {
                Ok(_) => {
                    workers.insert(name, tx);
                }
                Err(e) => tracing::error!(model = %name, error = %e, "cannot start a model thread"),
            }
        }
        Inference { workers }
    }

    pub fn models(&self) -> impl Iterator<Item = &String> {
        self.workers.keys()
    }

    pub fn submit(&self, model: &str, job: Job) -> Result<(), SubmitError> {
        let tx = self
            .workers
            .get(model)
            .ok_or_else(|| SubmitError::Unknown(model.to_owned()))?;
        tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::Busy(model.to_owned()),
            TrySendError::Disconnected(_) => SubmitError::Down(model.to_owned()),
        })
    }
}

fn worker(
    name: &str,
    dir: &Path,
    runtime: Option<&Path>,
    threads: usize,
    jobs: std::sync::mpsc::Receiver<Job>,
) {
    let loaded = revo_models::engine::locate_runtime(runtime)
        .map_err(|e| e.to_string())
        .and_then(|rt| LocalModel::open(dir, &rt, threads).map_err(|e| e.to_string()));
    let down = |message: String| Failure {
        code: "model_unavailable",
        message,
    };
    let mut model = match loaded {
        Ok(m) => {
            tracing::info!(model = name, "local model loaded");
            m
        }
        Err(e) => {
            tracing::error!(model = name, error = %e, "local model failed to load");
            // Answer whatever arrives with the reason, until the server stops.
            for job in jobs {
                let _ = job.events.blocking_send(Event::Done(Err(down(e.clone()))));
            }
            return;
        }
    };
    for job in jobs {
        let started = Instant::now();
        let mut first = None;
        let events = job.events.clone();
        let result = model.generate(&job.prompt, &job.sampling, &job.stop, |piece| {
            first.get_or_insert_with(Instant::now);
            // A client that went away stops the generation.
            events.blocking_send(Event::Text(piece.to_owned())).is_ok()
        });
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        let outcome = result
            .map(|g| Outcome {
                time_to_first_token_ms: first.map_or(0, |f| ms(f - started)),
                duration_ms: ms(started.elapsed()),
                text: g.text,
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.completion_tokens,
                finish: g.finish,
            })
            .map_err(|e| failure(&e));
        let _ = job.events.blocking_send(Event::Done(outcome));
    }
}
