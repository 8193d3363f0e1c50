//! Talking to models: over HTTP, OpenAI's chat completions (OpenAI itself, and Ollama, vLLM,
//! llama.cpp or any server speaking it) and Anthropic's messages, each streamed (SSE) or not;
//! and Revo's own local models through their workers (`local.rs`). A provider turns one request into a [`Reply`]: pieces of text (and tool-call deltas)
//! as they come, then how it finished and the usage the provider billed, read the way that
//! provider defines it.
//!
//! Nothing here retries: the router is the only retry loop, so a failure comes back as an
//! [`UpstreamError`] that says whether a retry or another model could help.

pub mod anthropic;
pub mod local;
pub mod openai;

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use revo_events::TokenUsage;
use serde::{Deserialize, Serialize};

/// One chat message. Content is text; tool results and calls pass through as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// What the router asks of one model.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The upstream model id.
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Already capped by the router (cost limit, the model's max output).
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    /// OpenAI-format tool definitions and choice, passed to providers that take tools.
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    /// Ask for each token's log-probability and this many alternatives (OpenAI's dialect).
    pub logprobs: Option<usize>,
    pub stream: bool,
}

/// A piece of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    /// A token's log-probabilities (local models, when asked).
    Logprobs(revo_engine::local::TokenLogprob),
    /// The worker that generated a local answer and its device (just before `Done`).
    Worker {
        node: String,
        device: String,
    },
    /// An OpenAI-format `tool_calls` delta (or, unstreamed, the whole call).
    ToolCall(serde_json::Value),
    /// The end: OpenAI's finish reason (`stop`, `length`, `tool_calls`, `content_filter`)
    /// and the billed usage, if the provider said.
    Done {
        finish_reason: String,
        usage: Option<TokenUsage>,
    },
}

/// Why a call failed, and what may help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach the provider: {0}")]
    Connect(String),
    /// `first_token`, `idle` or `total`.
    #[error("the provider timed out ({0})")]
    Timeout(&'static str),
    #[error("the provider answered {status}: {message}")]
    Status {
        status: u16,
        /// The provider's error code or type (`insufficient_quota`, `overloaded_error`).
        code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// An error event mid-stream, a cut stream or a body that is not the provider's format.
    #[error("the provider's answer broke off: {0}")]
    Broken(String),
}

impl UpstreamError {
    /// Worth another try at the same model: 429 (but not an exhausted quota), 5xx, 529,
    /// connection errors and timeouts before anything was answered. Other 4xx never are.
    pub fn retryable(&self) -> bool {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Timeout(_) => true,
            UpstreamError::Status { status, code, .. } => {
                (*status == 429 && !self.is_quota(code)) || *status >= 500
            }
            UpstreamError::Broken(_) => true,
        }
    }

    fn is_quota(&self, code: &Option<String>) -> bool {
        code.as_deref() == Some("insufficient_quota")
    }

    /// Counts against the model's circuit breaker: a request the caller got wrong (400, 413,
    /// 422) says nothing about the model's health.
    pub fn trips_breaker(&self) -> bool {
        match self {
            UpstreamError::Status {
                status: 400 | 404 | 413 | 422,
                ..
            } => false,
            // A local model whose queue is full is busy, not broken; a worker that died took
            // only itself away (the model's other workers serve the retry, and a model with no
            // worker left is refused as `model_unavailable`, which does trip it).
            UpstreamError::Status { code, .. } => {
                !matches!(code.as_deref(), Some("model_busy" | "worker_lost"))
            }
            _ => true,
        }
    }

    /// The request itself is at fault (another model would refuse it too), except for a
    /// context that is too long, which a bigger model may take.
    pub fn is_request_fault(&self) -> bool {
        match self {
            UpstreamError::Status { status, code, .. } => {
                matches!(status, 400 | 413 | 422)
                    && code.as_deref() != Some("context_length_exceeded")
            }
            _ => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The code the client sees, and recorded in the attempt.
    pub fn code(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "upstream_unreachable",
            UpstreamError::Timeout(_) => "upstream_timeout",
            UpstreamError::Status { status: 429, .. } => "upstream_rate_limited",
            UpstreamError::Status {
                status: 400 | 413 | 422,
                ..
            } => "upstream_rejected",
            UpstreamError::Status { .. } => "upstream_error",
            UpstreamError::Broken(_) => "upstream_broken",
        }
    }
}

/// The stream of pieces of one call.
pub type Reply = Pin<Box<dyn Stream<Item = Result<Piece, UpstreamError>> + Send>>;

/// `retry-after-ms` (OpenAI, milliseconds) or `Retry-After` (seconds).
pub(crate) fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let num = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    num("retry-after-ms")
        .map(|ms| Duration::from_millis(ms as u64))
        .or_else(|| num("retry-after").map(|s| Duration::from_millis((s * 1000.0) as u64)))
}

/// Reads an error response into an [`UpstreamError`], keeping the provider's code.
pub(crate) async fn status_error(resp: reqwest::Response) -> UpstreamError {
    let status = resp.status().as_u16();
    let retry_after = retry_after(resp.headers());
    // Bounded: an error body is small, and a hostile server must not grow us.
    let body = read_capped(resp, 64 * 1024).await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let err = &v["error"];
    let code = err["code"]
        .as_str()
        .or_else(|| err["type"].as_str())
        .map(str::to_owned);
    let mut message = err["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
    if matches!(status, 401 | 403) {
        // Providers quote part of the key they refused ("Incorrect API key provided:
        // sk-...abcd"): the operator's key, which callers must not see.
        message = "the provider refused Revo's credentials for this model (an operator should \
                   check the key its api_key_env names)"
            .into();
    }
    // Errors reach clients and logs: a hostile server's 64 KiB message does not.
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    UpstreamError::Status {
        status,
        code,
        message,
        retry_after,
    }
}

/// A whole body up to `cap` bytes (more is an error).
pub(crate) async fn read_capped(resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(describe)?;
        if body.len() + chunk.len() > cap {
            return Err(format!("the answer is over {cap} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A whole (non-streamed) answer as JSON, bounded by [`MAX_BODY`].
pub(crate) async fn read_json(resp: reqwest::Response) -> Result<serde_json::Value, UpstreamError> {
    let bytes = read_capped(resp, MAX_BODY)
        .await
        .map_err(UpstreamError::Broken)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| UpstreamError::Broken(format!("the answer is not JSON: {e}")))
}

/// The pieces of a whole answer, as a reply.
pub(crate) fn replay(pieces: Vec<Piece>) -> Reply {
    Box::pin(futures::stream::iter(pieces.into_iter().map(Ok)))
}

/// Largest non-streamed answer read (16 MiB): far above any max_tokens, and bounded.
pub(crate) const MAX_BODY: usize = 16 << 20;

/// Largest streamed answer read (64 MiB of server-sent events: a 128k-token answer in
/// verbose chunks fits); past it the stream is cut, so a server that never ends an event
/// cannot grow us.
pub(crate) const MAX_STREAM: usize = 64 << 20;

/// Longest provider error message kept.
const MAX_MESSAGE: usize = 512;

/// A transport error with its causes, without the URL (base URLs of local servers are
/// internal addresses, and errors reach clients).
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Sends a request, mapping transport failures.
pub(crate) async fn send(rb: reqwest::RequestBuilder) -> Result<reqwest::Response, UpstreamError> {
    let resp = rb.send().await.map_err(|e| {
        if e.is_timeout() {
            UpstreamError::Timeout("first_token")
        } else {
            UpstreamError::Connect(describe(e))
        }
    })?;
    if !resp.status().is_success() {
        return Err(status_error(resp).await);
    }
    Ok(resp)
}

/// The server-sent events of a response, as (event name, data).
pub(crate) fn sse_events(
    resp: reqwest::Response,
) -> impl Stream<Item = Result<(String, String), UpstreamError>> + Send {
    use eventsource_stream::Eventsource;
    let mut read = 0usize;
    let capped = resp.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(describe)?;
        read += chunk.len();
        if read > MAX_STREAM {
            return Err(format!("the streamed answer is over {MAX_STREAM} bytes"));
        }
        Ok(chunk)
    });
    capped.eventsource().map(|e| {
        e.map(|e| (e.event, e.data)).map_err(|e| {
            UpstreamError::Broken(match e {
                eventsource_stream::EventStreamError::Transport(t) => t,
                other => other.to_string(),
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_retried_and_what_trips_the_breaker() {
        let st = |status: u16, code: Option<&str>| UpstreamError::Status {
            status,
            code: code.map(str::to_owned),
            message: String::new(),
            retry_after: None,
        };
        assert!(st(429, None).retryable());
        assert!(!st(429, Some("insufficient_quota")).retryable());
        assert!(st(529, Some("overloaded_error")).retryable());
        assert!(st(503, None).retryable());
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(!st(s, None).retryable(), "{s}");
        }
        for s in [400, 413, 422] {
            assert!(!st(s, None).trips_breaker(), "{s}");
        }
        assert!(st(401, None).trips_breaker());
        assert!(st(500, None).trips_breaker());
        assert!(!st(502, Some("worker_lost")).trips_breaker());
        assert!(!st(503, Some("model_busy")).trips_breaker());
        assert!(st(503, Some("model_unavailable")).trips_breaker());
        assert!(!st(400, Some("context_length_exceeded")).is_request_fault());
        assert!(st(422, None).is_request_fault());
    }

    #[test]
    fn retry_after_reads_milliseconds_then_seconds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut bad = reqwest::header::HeaderMap::new();
        bad.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&bad), None);
    }
}
