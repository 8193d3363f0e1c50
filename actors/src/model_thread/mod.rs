//! A local model on its own OS thread (`thread.rs`), batching the sequences it decodes, and the
//! types of a generation request: a [`Job`] whose text pieces and outcome come back as
//! [`Event`]s. The thread is what `revo worker` and embedded `revo serve` both run, behind the
//! model worker actor (`model_worker`).

mod thread;

use std::time::{Duration, Instant};

use revo_engine::engine::{Device, Finish, Sampling};
use tokio::sync::mpsc;

pub use thread::{ModelThread, Stats};

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
    /// The text to continue; with `messages`, replaced by them rendered through the model's
    /// chat template (on the worker, which holds the template).
    pub prompt: String,
    pub messages: Option<Vec<revo_engine::local::Message>>,
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
    /// A generated token's log-probabilities (only when the job's sampling asks for them;
    /// they come before the text the token completes, which may be held back).
    Logprobs(revo_engine::local::TokenLogprob),
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
    ("chat_template_failed", 422),
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

pub(crate) fn failure(e: &revo_engine::local::LocalError) -> Failure {
    use revo_engine::engine::EngineError;
    use revo_engine::local::LocalError;
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
