//! Local generation. Each model runs on its own OS thread (`thread.rs`) that batches the
//! sequences it decodes. `revo serve` in embedded mode runs those threads itself; in cluster mode
//! it sends requests over NATS to `revo worker` processes (`remote.rs`, `worker.rs`, protocol in
//! `wire.rs`). Either way a request is a [`Job`] whose text pieces and outcome come back as
//! [`Event`]s.

pub mod remote;
pub mod thread;
pub mod wire;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use revo_models::engine::{Device, Finish, Sampling};
use tokio::sync::mpsc;

use thread::ModelThread;

/// How local models run.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    /// ONNX Runtime threads per model.
    pub threads: usize,
    /// Sequences decoded together per model.
    pub max_batch: usize,
    /// Cache positions (prompt + max_tokens, summed over the batch) a model's batch may
    /// reserve; bounds its cache memory (SmolLM2-135M: 46 KiB per position).
    pub max_batch_tokens: usize,
    /// Jobs waiting per model beyond those decoding; past it, requests are refused (`503`).
    pub queue: usize,
    pub device: Device,
    /// Edges: a worker silent this long (no token, no keep-alive) is lost.
    pub worker_timeout: Duration,
    /// Workers: how often they announce themselves, and keep running requests alive.
    pub heartbeat: Duration,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            threads: 2,
            max_batch: 16,
            max_batch_tokens: 32_768,
            queue: 16,
            device: Device::Cpu,
            worker_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
        }
    }
}

/// One generation request.
pub struct Job {
    pub prompt: String,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    /// Where text pieces and the outcome go. Unbounded so that a slow client never stalls the
    /// batch; a job produces at most `max_tokens` pieces.
    pub events: mpsc::UnboundedSender<Event>,
    /// When the request arrived (time to first token counts from here).
    pub received: Instant,
}

#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Result<Outcome, Failure>),
}

/// Why a generation failed: an error code for the client and a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
}

/// The failure codes, each with the HTTP status it answers with.
pub const FAILURE_CODES: &[(&str, u16)] = &[
    ("invalid_parameter", 422),
    ("context_length_exceeded", 400),
    ("model_unavailable", 503),
    ("model_busy", 503),
    ("worker_lost", 502),
    ("generation_failed", 500),
];

/// The static code for a code received from elsewhere (a worker).
pub fn known_code(code: &str) -> &'static str {
    FAILURE_CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("generation_failed", |(c, _)| c)
}

pub(crate) fn failure(e: &revo_models::local::LocalError) -> Failure {
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

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish: Finish,
    pub time_to_first_token_ms: u64,
    pub duration_ms: u64,
    /// The node or worker that generated it, and on what device.
    pub worker: String,
    pub device: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("no local model named `{0}`")]
    Unknown(String),
    #[error("model `{0}` has too many requests waiting; try again shortly")]
    Busy(String),
    #[error("model `{0}` is not running (it failed to load; see the server log)")]
    Down(String),
    #[error("no worker serves model `{0}` (start one: revo worker --model {0})")]
    NoWorker(String),
}

/// The edge's way to its models.
pub enum Inference {
    /// Embedded mode: a thread per registered model, in this process.
    Local(HashMap<String, ModelThread>),
    /// Cluster mode: `revo worker` processes over NATS.
    Remote(remote::Remote),
}

impl Inference {
    /// Starts a thread per model (`name`, directory).
    pub fn local(
        runtime: Option<PathBuf>,
        models: Vec<(String, PathBuf)>,
        settings: &ModelSettings,
        node: &str,
    ) -> Self {
        let mut threads = HashMap::new();
        for (name, dir) in models {
            match ModelThread::spawn(&name, dir, runtime.clone(), settings, node.to_owned()) {
                Ok(t) => {
                    threads.insert(name, t);
                }
                Err(e) => tracing::error!(model = %name, error = %e, "cannot start a model thread"),
            }
        }
        Inference::Local(threads)
    }

    /// Stops every local model thread and waits for them (embedded mode; a no-op for remote
    /// workers, which stop themselves).
    pub async fn shutdown(&self, timeout: Duration) {
        if let Inference::Local(threads) = self {
            for (name, t) in threads {
                if !t.shutdown(timeout).await {
                    tracing::warn!(model = %name, "a model thread did not stop in time");
                }
            }
        }
    }

    pub async fn submit(&self, model: &str, job: Job) -> Result<(), SubmitError> {
        match self {
            Inference::Local(threads) => threads
                .get(model)
                .ok_or_else(|| SubmitError::Unknown(model.to_owned()))?
                .submit(model, job),
            Inference::Remote(remote) => remote.submit(model, job),
        }
    }
}
