//! `POST /v1/completions`: OpenAI's completions shape, served by a local model through the
//! in-process worker (`src/inference.rs`); `stream: true` answers with server-sent events.

use actix_web::http::StatusCode;
use actix_web::{post, web, HttpRequest, HttpResponse};
use bytes::Bytes;
use chrono::Utc;
use revo_engine::engine::Sampling;
use revo_events::family::models::GENERATION_STREAM;
use revo_events::{AppendRequest, EventFamily, EventMeta, ExpectedVersion, ModelEvent};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use utoipa::ToSchema;
use uuid::Uuid;

use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::Json;
use super::openapi::{BodyErrors, CallerErrors};
use super::AppState;
use revo_actors::model_thread::{Event, Failure, Job, Outcome, SubmitError, FAILURE_CODES};
use revo_actors::model_worker::wire::finish_reason;

pub const MAX_TOKENS_LIMIT: u32 = 4096;

/// `stop`: one string or up to four.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    /// A local model's registry name (`revo models list`).
    pub model: String,
    #[schema(min_length = 1)]
    pub prompt: String,
    /// Default 16, as OpenAI's.
    #[schema(minimum = 1, maximum = 4096)]
    pub max_tokens: Option<u32>,
    /// 0 is greedy; default 1.
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    /// 0: no limit.
    pub top_k: Option<u32>,
    #[schema(exclusive_minimum = 0, maximum = 10)]
    pub repetition_penalty: Option<f32>,
    pub stop: Option<Stop>,
    /// Same seed and parameters, same output.
    pub seed: Option<u64>,
    pub stream: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct Choice {
    pub text: String,
    pub index: u32,
    /// Always null (not computed).
    pub logprobs: Option<String>,
    /// `stop` or `length`; null in all but the last streamed chunk.
    pub finish_reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    fn of(o: &Outcome) -> Usage {
        Usage {
            prompt_tokens: o.prompt_tokens as u64,
            completion_tokens: o.completion_tokens as u64,
            total_tokens: (o.prompt_tokens + o.completion_tokens) as u64,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    /// `text_completion`.
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Option<Usage>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::unprocessable("invalid_parameter", message)
}

fn sampling(r: &CompletionRequest) -> Result<(Sampling, Vec<String>), ApiError> {
    let max_tokens = r.max_tokens.unwrap_or(16);
    if max_tokens == 0 || max_tokens > MAX_TOKENS_LIMIT {
        return Err(invalid(format!("max_tokens is 1 to {MAX_TOKENS_LIMIT}")));
    }
    if r.prompt.is_empty() {
        return Err(invalid("prompt is empty"));
    }
    let s = Sampling {
        max_tokens: max_tokens as usize,
        temperature: r.temperature.unwrap_or(1.0),
        top_p: r.top_p.unwrap_or(1.0),
        top_k: r.top_k.unwrap_or(0) as usize,
        repetition_penalty: r.repetition_penalty.unwrap_or(1.0),
        seed: r.seed,
        logprobs: None,
    };
    s.validate().map_err(|e| invalid(e.to_string()))?;
    let stop = match &r.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(invalid("stop is up to 4 non-empty strings"));
    }
    Ok((s, stop))
}

fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
}

fn failed(f: Failure) -> ApiError {
    let status = FAILURE_CODES
        .iter()
        .find(|(c, _)| *c == f.code)
        .and_then(|(_, s)| StatusCode::from_u16(*s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let e = ApiError::new(status, f.code, f.message);
    if f.code == "model_busy" {
        e.with_retry_after(1)
    } else {
        e
    }
}

/// Appends `generation.completed` (before the caller answers, so a completed generation is
/// never missing from the log). A failure is logged, not returned: the text was generated.
async fn record(
    store: std::sync::Arc<dyn revo_events::EventStore>,
    id: String,
    model: String,
    o: Outcome,
    meta: EventMeta,
) {
    let ev = ModelEvent::GenerationCompleted {
        id: id.clone(),
        model,
        node: o.worker.clone(),
        device: o.device.clone(),
        prompt_tokens: o.prompt_tokens as u64,
        completion_tokens: o.completion_tokens as u64,
        time_to_first_token_ms: o.time_to_first_token_ms,
        duration_ms: o.duration_ms,
        finish_reason: finish_reason(o.finish).into(),
    };
    let appended = match ev.to_new_event(meta) {
        Ok(new) => store
            .append(AppendRequest::new(
                GENERATION_STREAM,
                &id,
                ExpectedVersion::NoStream,
                vec![new],
            ))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = appended {
        tracing::warn!(error = %e, "could not record a generation");
    }
}

/// Generates text with a local model (OpenAI's completions API).
#[utoipa::path(
    tag = "models",
    security(("bearer" = ["generate"])),
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion; with `stream: true`, server-sent events of `Completion` chunks ending with `data: [DONE]`", body = Completion),
        (status = 404, description = "No such local model", body = ErrorBody),
        (status = 502, description = "The worker generating the text stopped answering (`worker_lost`)", body = ErrorBody),
        (status = 503, description = "The model is busy (`model_busy`), not loaded or has no worker (`model_unavailable`)", body = ErrorBody),
        BodyErrors,
        CallerErrors,
    )
)]
#[post("/v1/completions")]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: Json<CompletionRequest>,
) -> Result<HttpResponse, ApiError> {
    let r = body.0;
    let (sampling, stop) = sampling(&r)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = Job {
        prompt: r.prompt,
        messages: None,
        sampling,
        stop,
        events: tx,
        received: std::time::Instant::now(),
    };
    if let Err(e) = state.inference.submit(&r.model, job) {
        let not_found = || ApiError::new(StatusCode::NOT_FOUND, "model_not_found", e.to_string());
        return Err(match &e {
            SubmitError::Unknown(_) => not_found(),
            SubmitError::Busy(_) => unavailable("model_busy", e.to_string()).with_retry_after(1),
            SubmitError::Down(_) => unavailable("model_unavailable", e.to_string()),
            // No worker serves it: a model the registry does not know is a 404. The registry
            // is this edge's live view (memory), never a fold of the log per request.
            SubmitError::NoWorker(m) => {
                let known = state.models.read().get(m).is_some();
                if known {
                    unavailable("model_unavailable", e.to_string())
                } else {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        "model_not_found",
                        format!("no local model named `{m}`"),
                    )
                }
            }
        });
    }
    let id = format!("cmpl-{}", Uuid::now_v7().simple());
    let created = Utc::now().timestamp();
    let meta = caller.meta(&req);
    if !r.stream.unwrap_or(false) {
        loop {
            match rx.recv().await {
                Some(Event::Text(_) | Event::Logprobs(_)) => {}
                Some(Event::Done(Ok(o))) => {
                    state.metrics.generation.completed(&r.model, &o);
                    record(
                        state.store.clone(),
                        id.clone(),
                        r.model.clone(),
                        o.clone(),
                        meta,
                    )
                    .await;
                    let usage = Some(Usage::of(&o));
                    return Ok(HttpResponse::Ok().json(Completion {
                        id,
                        object: "text_completion".into(),
                        created,
                        model: r.model,
                        choices: vec![Choice {
                            text: o.text,
                            index: 0,
                            logprobs: None,
                            finish_reason: Some(finish_reason(o.finish).into()),
                        }],
                        usage,
                    }));
                }
                Some(Event::Done(Err(f))) => {
                    state.metrics.generation.failed(&r.model, f.code);
                    return Err(failed(f));
                }
                None => return Err(unavailable("model_unavailable", "the model worker stopped")),
            }
        }
    }
    // Streaming: one SSE event per piece of text, then the finish, then [DONE]. The response
    // body turns worker events into SSE bytes as the client reads them; a client that leaves
    // drops the body and with it `rx`, which stops the worker at its next token.
    let sse = Sse {
        rx,
        state,
        id,
        created,
        model: r.model,
        meta,
    };
    let stream = futures::stream::unfold(Some(sse), |sse| async move {
        let mut sse = sse?;
        let (bytes, more) = sse.next().await;
        Some((Ok::<_, actix_web::Error>(bytes), more.then_some(sse)))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(stream))
}

/// A streamed completion: worker events in, SSE bytes out.
struct Sse {
    rx: mpsc::UnboundedReceiver<Event>,
    state: web::Data<AppState>,
    id: String,
    created: i64,
    model: String,
    meta: EventMeta,
}

const SSE_DONE: &str = "data: [DONE]\n\n";

impl Sse {
    fn chunk(&self, text: String, finish: Option<&str>, usage: Option<Usage>) -> String {
        let c = Completion {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![Choice {
                text,
                index: 0,
                logprobs: None,
                finish_reason: finish.map(str::to_owned),
            }],
            usage,
        };
        format!(
            "data: {}\n\n",
            serde_json::to_string(&c).unwrap_or_default()
        )
    }

    /// The next bytes of the body, and whether more follow.
    async fn next(&mut self) -> (Bytes, bool) {
        match self.rx.recv().await {
            Some(Event::Text(t)) => (Bytes::from(self.chunk(t, None, None)), true),
            Some(Event::Logprobs(_)) => (Bytes::new(), true),
            Some(Event::Done(Ok(o))) => {
                let st = &self.state;
                st.metrics.generation.completed(&self.model, &o);
                let (id, model) = (self.id.clone(), self.model.clone());
                record(st.store.clone(), id, model, o.clone(), self.meta.clone()).await;
                let usage = Usage::of(&o);
                let last = self.chunk(String::new(), Some(finish_reason(o.finish)), Some(usage));
                (Bytes::from(last + SSE_DONE), false)
            }
            Some(Event::Done(Err(f))) => {
                self.state.metrics.generation.failed(&self.model, f.code);
                let e = json!({"error": {"code": f.code, "message": f.message}});
                (Bytes::from(format!("data: {e}\n\n{SSE_DONE}")), false)
            }
            None => (Bytes::from_static(SSE_DONE.as_bytes()), false),
        }
    }
}
