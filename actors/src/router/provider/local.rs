//! Revo's own local models, as a provider: a request becomes a [`Job`] for the model's
//! worker (in process or over NATS, through the edge's model client), and the worker's events
//! become pieces: text, each token's log-probabilities when asked, the worker that served, then
//! the finish and usage (the model's own token counts; local answers are free).

use std::time::Instant;

use futures::StreamExt;
use revo_engine::engine::Sampling;
use revo_events::TokenUsage;
use tokio::sync::mpsc;

use super::{Piece, Reply, UpstreamError};
use crate::model_thread::{self, Job, SubmitError, FAILURE_CODES};
use crate::router::{Input, LocalModels, RouteRequest};

/// Starts generating with local model `model` (at most `max_tokens`, with `logprobs`
/// alternatives per token when asked): its worker's events as pieces.
pub(crate) fn call(
    local: &dyn LocalModels,
    model: &str,
    req: &RouteRequest,
    max_tokens: u32,
    logprobs: Option<usize>,
) -> Result<Reply, UpstreamError> {
    let sampling = Sampling {
        max_tokens: max_tokens as usize,
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        top_k: req.top_k.unwrap_or(0) as usize,
        repetition_penalty: req.repetition_penalty.unwrap_or(1.0),
        seed: req.seed,
        logprobs,
    };
    sampling.validate().map_err(|e| UpstreamError::Status {
        status: 422,
        code: Some("invalid_parameter".into()),
        message: e.to_string(),
        retry_after: None,
    })?;
    let (prompt, messages) = match &req.input {
        Input::Prompt(p) => (p.clone(), None),
        Input::Chat(m) => (
            String::new(),
            Some(
                m.iter()
                    .map(|m| revo_engine::local::Message {
                        role: m.role.clone(),
                        content: m.content.clone(),
                    })
                    .collect(),
            ),
        ),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job {
        prompt,
        messages,
        sampling,
        stop: req.stop.clone(),
        events: tx,
        received: Instant::now(),
    };
    local.submit(model, job).map_err(|e| {
        let (status, code) = match e {
            SubmitError::Busy(_) => (503, "model_busy"),
            _ => (503, "model_unavailable"),
        };
        UpstreamError::Status {
            status,
            code: Some(code.into()),
            message: e.to_string(),
            retry_after: None,
        }
    })?;
    // Each worker event is a piece, except the end: the worker that served, then `Done`.
    let stream = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await? {
            model_thread::Event::Text(t) => Some((vec![Ok(Piece::Text(t))], Some(rx))),
            model_thread::Event::Logprobs(l) => Some((vec![Ok(Piece::Logprobs(l))], Some(rx))),
            model_thread::Event::Done(Ok(o)) => {
                let usage = TokenUsage {
                    input: o.prompt_tokens as u64,
                    output: o.completion_tokens as u64,
                    ..TokenUsage::default()
                };
                let worker = Piece::Worker {
                    node: o.worker,
                    device: o.device,
                };
                let done = Piece::Done {
                    finish_reason: crate::model_worker::wire::finish_reason(o.finish).into(),
                    usage: Some(usage),
                };
                Some((vec![Ok(worker), Ok(done)], None))
            }
            model_thread::Event::Done(Err(f)) => {
                let status = FAILURE_CODES
                    .iter()
                    .find(|(c, _)| *c == f.code)
                    .map_or(500, |(_, s)| *s);
                let e = UpstreamError::Status {
                    status,
                    code: Some(f.code.into()),
                    message: f.message,
                    retry_after: None,
                };
                Some((vec![Err(e)], None))
            }
        }
    })
    .flat_map(futures::stream::iter);
    Ok(Box::pin(stream))
}
