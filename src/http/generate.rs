//! `POST /ai/generate`: Revo's own generation API, through the router. Also the helpers the
//! OpenAI- and Anthropic-compatible endpoints share (`chat.rs`): building a route request
//! from the caller, waiting for the model that serves it, and mapping refusals.

use actix_web::http::StatusCode;
use actix_web::{post, web, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::Bytes;
use revo_actors::router::provider::ChatMessage;
use revo_actors::router::{
    Answer, AttemptReport, Input, Refusal, RouteOptions, RouteRequest, TokenLogprob, Update,
};
use revo_events::{TokenUsage, Usd};
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
use crate::identity::Via;

/// Most messages in one request, and most bytes of text in them (the body limit bounds it
/// too; this keeps the worst-case cost estimate meaningful).
pub const MAX_MESSAGES: usize = 1024;

#[derive(Deserialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// A single user turn (as `messages` with one user message); or `messages`. Raw text
    /// continuation is `POST /v1/completions`.
    pub prompt: Option<String>,
    pub messages: Option<Vec<Message>>,
    /// Default: `[router] default_max_tokens` (1024), capped by each model's maximum and by
    /// `cost_limit`.
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    pub stop: Option<Vec<String>>,
    pub seed: Option<u64>,
    /// Only models served locally (free).
    pub force_local: Option<bool>,
    /// `auto` (the router picks) or a catalogue name.
    pub model_preference: Option<String>,
    /// The most this request may cost, in dollars, as a decimal string (`"0.01"`).
    #[schema(value_type = Option<String>, example = "0.01")]
    pub cost_limit: Option<String>,
    /// Whether another model may serve when the first choice cannot (default true).
    pub fallback_allowed: Option<bool>,
    /// `auto` (default), or `cascade`: a local answer is held back until it ends and served
    /// only if its confidence reaches `confidence_threshold` and no cap below `max_tokens`
    /// cut it; otherwise the next model answers (both attempts are recorded).
    pub route: Option<String>,
    /// The cascade's bar, 0 to 1: the geometric mean of the answer's token probabilities.
    /// Default: the model's `confidence_threshold`, then `[router] cascade_threshold` (0.5).
    pub confidence_threshold: Option<f64>,
    /// Return each token's log-probability (local models), in OpenAI's chat format.
    pub logprobs: Option<bool>,
    /// With `logprobs`: this many likeliest alternatives per token, 0 to 20.
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<u32>,
    /// Server-sent events: `started`, `token`…, then `completed` or `error`.
    pub stream: Option<bool>,
}

/// Tokens of an answer, by kind.
#[derive(Serialize, ToSchema)]
pub struct UsageView {
    /// Prompt tokens neither read from nor written to a cache.
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Includes `reasoning_tokens`.
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub total_tokens: u64,
}

impl From<&TokenUsage> for UsageView {
    fn from(u: &TokenUsage) -> Self {
        UsageView {
            input_tokens: u.input,
            cache_read_tokens: u.cache_read,
            cache_write_tokens: u.cache_write,
            output_tokens: u.output,
            reasoning_tokens: u.reasoning,
            total_tokens: u.prompt() + u.output,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    pub model: String,
    pub provider: String,
    /// `completed`, `failed`, `cancelled` or `escalated` (held back by the cascade).
    pub outcome: String,
    /// Why it failed, or why the cascade escalated (`low_confidence`, `truncated`).
    pub error: Option<String>,
    #[schema(value_type = String)]
    pub cost_usd: String,
    /// The answer's confidence, where the tokens' log-probabilities were computed.
    pub confidence: Option<f64>,
}

impl From<&AttemptReport> for AttemptView {
    fn from(a: &AttemptReport) -> Self {
        AttemptView {
            model: a.model.clone(),
            provider: a.provider.to_owned(),
            outcome: a.outcome.to_owned(),
            error: a.error.clone(),
            cost_usd: a.cost_usd.to_string(),
            confidence: a.confidence,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct GenerateResponse {
    pub id: String,
    /// The catalogue model that answered, its provider and the upstream model id.
    pub model: String,
    pub provider: String,
    pub upstream_model: String,
    pub text: String,
    pub finish_reason: String,
    pub usage: UsageView,
    /// What the request cost, every attempt included, in dollars (exact decimal string).
    #[schema(value_type = String, example = "0.0026")]
    pub cost_usd: String,
    pub served_locally: bool,
    pub attempts: Vec<AttemptView>,
    /// The geometric mean of the answer's token probabilities, where computed (local
    /// models under the cascade or with `logprobs`).
    pub confidence: Option<f64>,
    /// With `logprobs: true`: `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<serde_json::Value>,
}

impl GenerateResponse {
    fn of(id: &str, a: &Answer) -> GenerateResponse {
        GenerateResponse {
            id: id.to_owned(),
            model: a.model.clone(),
            provider: a.provider.to_owned(),
            upstream_model: a.upstream_model.clone(),
            text: a.text.clone(),
            finish_reason: a.finish_reason.clone(),
            usage: UsageView::from(&a.usage),
            cost_usd: a.cost.to_string(),
            served_locally: a.served_locally,
            attempts: a.attempts.iter().map(AttemptView::from).collect(),
            confidence: a.confidence,
            logprobs: None,
        }
    }
}

/// Tokens' log-probabilities in OpenAI's chat format (`choices[].logprobs`). `bytes` is the
/// token's UTF-8, or null for a token holding part of a character.
pub fn openai_logprobs(tokens: &[TokenLogprob]) -> serde_json::Value {
    let bytes = |t: &str| {
        if t.contains('\u{FFFD}') {
            serde_json::Value::Null
        } else {
            json!(t.as_bytes())
        }
    };
    let content: Vec<serde_json::Value> = tokens
        .iter()
        .map(|t| {
            let top: Vec<serde_json::Value> = t
                .top
                .iter()
                .map(|a| json!({"token": a.token, "logprob": a.logprob, "bytes": bytes(&a.token)}))
                .collect();
            json!({"token": t.token, "logprob": t.logprob, "bytes": bytes(&t.token), "top_logprobs": top})
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

/// `logprobs` and `top_logprobs` as the router takes them: `None` when not asked.
pub fn parse_logprobs(logprobs: Option<bool>, top: Option<u32>) -> Result<Option<usize>, ApiError> {
    match (logprobs.unwrap_or(false), top) {
        (false, Some(_)) => Err(invalid("top_logprobs needs logprobs: true")),
        (_, Some(k)) if k as usize > revo_engine::engine::MAX_TOP_LOGPROBS => {
            Err(invalid("top_logprobs is 0 to 20"))
        }
        (true, k) => Ok(Some(k.unwrap_or(0) as usize)),
        (false, None) => Ok(None),
    }
}

/// `route` (`auto` or `cascade`) and the cascade's `confidence_threshold`.
pub fn parse_route(route: Option<&str>, threshold: Option<f64>) -> Result<bool, ApiError> {
    let cascade = match route.unwrap_or("auto") {
        "auto" => false,
        "cascade" => true,
        other => {
            return Err(invalid(format!(
                "route `{other}` is unknown (`auto` or `cascade`)"
            )))
        }
    };
    if threshold.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return Err(invalid("confidence_threshold is 0 to 1"));
    }
    if threshold.is_some() && !cascade {
        return Err(invalid("confidence_threshold needs route: \"cascade\""));
    }
    Ok(cascade)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::unprocessable("invalid_parameter", message)
}

/// Checks what every generation endpoint shares.
pub fn check_sampling(
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    stop: &[String],
) -> Result<(), ApiError> {
    if max_tokens == Some(0) {
        return Err(invalid("max_tokens must be at least 1"));
    }
    if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(invalid("temperature is 0 to 2"));
    }
    if top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return Err(invalid("top_p is above 0 and at most 1"));
    }
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(invalid("stop is up to 4 non-empty strings"));
    }
    Ok(())
}

pub fn check_messages(messages: &[ChatMessage]) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Err(invalid("messages is empty"));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(invalid(format!("at most {MAX_MESSAGES} messages")));
    }
    for m in messages {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(invalid(format!(
                "unknown role `{}` (system, user, assistant or tool)",
                m.role
            )));
        }
    }
    Ok(())
}

/// A route request for the caller (ids, event metadata) with everything else defaulted.
pub fn base_request(caller: &Caller, req: &HttpRequest, id: String, input: Input) -> RouteRequest {
    let p = &caller.0;
    RouteRequest {
        id,
        user_id: p.user_id,
        key_id: match p.via {
            Via::Key { key_id } => Some(key_id),
            Via::Token { .. } => None,
        },
        meta: caller.meta(req),
        input,
        max_tokens: None,
        temperature: None,
        top_p: None,
        stop: Vec::new(),
        seed: None,
        tools: None,
        tool_choice: None,
        top_k: None,
        repetition_penalty: None,
        logprobs: None,
        stream: false,
        options: RouteOptions {
            fallback_allowed: true,
            ..RouteOptions::default()
        },
    }
}

pub fn parse_cost_limit(s: Option<&str>) -> Result<Option<Usd>, ApiError> {
    s.map(|s| Usd::parse(s).map_err(|e| invalid(format!("cost_limit: {e}"))))
        .transpose()
}

/// A refusal as an HTTP error (its attempts are in the log, and in the message's count).
pub fn refusal_error(r: &Refusal) -> ApiError {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut e = ApiError::new(status, r.code, r.message.clone());
    if let Some(left) = &r.remaining {
        // A budget refusal: retrying cannot help, and the SDKs honour this header.
        e.remaining_usd = Some(left.clone());
        e.no_retry = true;
        return e;
    }
    match r.retry_after {
        Some(d) => e.with_retry_after(d.as_secs().max(1)),
        None if r.status == 503 => e.with_retry_after(1),
        None => e,
    }
}

/// Starts routing; a request no model may take is refused at once. A named model the
/// catalogue does not list but the local registry does serves as a free local model.
pub async fn start(
    state: &AppState,
    mut req: RouteRequest,
) -> Result<mpsc::Receiver<Update>, ApiError> {
    if let Some(m) = &req.options.model_preference {
        let listed = state.router.catalog().entries.iter().any(|e| &e.name == m);
        // The registry is this edge's live view (memory), never a fold of the log.
        req.options.registry_model = !listed && state.models.read().get(m).is_some();
    }
    state.router.route(req).await.map_err(|r| refusal_error(&r))
}

/// The model that answers a streamed request.
pub struct Started {
    pub model: String,
    pub provider: &'static str,
    pub served_locally: bool,
}

/// Waits until a model answers, so the response's headers can name it; a refusal before
/// that is an HTTP error. An answer without a single piece still streams (its end alone).
pub async fn opening(
    mut rx: mpsc::Receiver<Update>,
) -> Result<(Started, mpsc::Receiver<Update>), ApiError> {
    loop {
        match rx.recv().await {
            Some(Update::Started {
                model,
                provider,
                served_locally,
            }) => {
                let started = Started {
                    model,
                    provider,
                    served_locally,
                };
                return Ok((started, rx));
            }
            Some(Update::Done(r)) => {
                let a = (*r).map_err(|r| refusal_error(&r))?;
                let (tx, rx) = mpsc::channel(1);
                let started = Started {
                    model: a.model.clone(),
                    provider: a.provider,
                    served_locally: a.served_locally,
                };
                let _ = tx.try_send(Update::Done(Box::new(Ok(a))));
                return Ok((started, rx));
            }
            Some(_) => {}
            None => {
                return Err(refusal_error(&Refusal::new(
                    500,
                    "router_failed",
                    "the router stopped without an answer",
                )))
            }
        }
    }
}

/// A server-sent events response naming the model that answers: `first`, then `frames`.
pub fn sse_response(
    s: &Started,
    first: String,
    frames: impl futures::Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
) -> HttpResponse {
    let mut b = HttpResponse::Ok();
    served_by(&mut b, &s.model, s.provider, s.served_locally, None);
    b.content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"));
    let head = futures::stream::once(async move { Ok(Bytes::from(first)) });
    b.streaming(futures::StreamExt::chain(head, frames))
}

/// Waits for the whole answer.
pub async fn finish(mut rx: mpsc::Receiver<Update>) -> Result<Answer, Refusal> {
    loop {
        match rx.recv().await {
            Some(Update::Done(r)) => return *r,
            Some(_) => {}
            None => {
                return Err(Refusal::new(
                    500,
                    "router_failed",
                    "the router stopped without an answer",
                ))
            }
        }
    }
}

/// The headers every routed answer carries.
pub fn served_by(
    b: &mut HttpResponseBuilder,
    model: &str,
    provider: &str,
    served_locally: bool,
    cost: Option<Usd>,
) {
    b.insert_header(("x-revo-model", model.to_owned()))
        .insert_header(("x-revo-provider", provider.to_owned()))
        .insert_header(("x-revo-served-locally", served_locally.to_string()));
    if let Some(c) = cost {
        b.insert_header(("x-revo-cost-usd", c.to_string()));
    }
}

/// Streams `rx` as SSE, each update through `frame` (the bytes to send, and whether more
/// follow).
pub fn sse_stream<S: Send + 'static>(
    rx: mpsc::Receiver<Update>,
    st: S,
    frame: fn(&mut S, Update) -> (String, bool),
) -> impl futures::Stream<Item = Result<Bytes, actix_web::Error>> {
    futures::stream::unfold(Some((rx, st)), move |s| async move {
        let (mut rx, mut st) = s?;
        let u = rx.recv().await?;
        let (bytes, more) = frame(&mut st, u);
        Some((Ok(Bytes::from(bytes)), more.then_some((rx, st))))
    })
}

fn event(name: &str, data: &impl Serialize) -> String {
    format!(
        "event: {name}\ndata: {}\n\n",
        serde_json::to_string(data).unwrap_or_default()
    )
}

/// Generates through the router: local models first, the cloud when it must.
#[utoipa::path(
    tag = "ai",
    security(("bearer" = ["generate"])),
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "The answer, with the model that served it and what it cost; with `stream: true`, server-sent events `started`, `token`, then `completed` (this body) or `error`", body = GenerateResponse),
        (status = 404, description = "`model_preference` names no catalogue model", body = ErrorBody),
        (status = 502, description = "Every model tried failed (`upstream_*`)", body = ErrorBody),
        (status = 503, description = "No model can serve this request now (`no_model_available`)", body = ErrorBody),
        BodyErrors,
        CallerErrors,
    )
)]
#[post("/ai/generate")]
pub async fn generate(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: Json<GenerateRequest>,
) -> Result<HttpResponse, ApiError> {
    let r = body.0;
    let input = match (r.prompt, r.messages) {
        // A single user turn: chat models (local ones through their template) answer it;
        // raw text continuation is `/v1/completions`.
        (Some(p), None) if !p.is_empty() => Input::Chat(vec![ChatMessage {
            role: "user".into(),
            content: p,
        }]),
        (None, Some(m)) => {
            let m: Vec<ChatMessage> = m
                .into_iter()
                .map(|m| ChatMessage {
                    role: m.role,
                    content: m.content,
                })
                .collect();
            check_messages(&m)?;
            Input::Chat(m)
        }
        (Some(_), None) => return Err(invalid("prompt is empty")),
        _ => return Err(invalid("give `prompt` or `messages`, not both")),
    };
    let cascade = parse_route(r.route.as_deref(), r.confidence_threshold)?;
    let logprobs = parse_logprobs(r.logprobs, r.top_logprobs)?;
    let stop = r.stop.unwrap_or_default();
    check_sampling(r.max_tokens, r.temperature, r.top_p, &stop)?;
    let id = format!("gen-{}", Uuid::now_v7().simple());
    let stream = r.stream.unwrap_or(false);
    let mut rr = base_request(&caller, &req, id.clone(), input);
    rr.max_tokens = r.max_tokens;
    rr.temperature = r.temperature;
    rr.top_p = r.top_p;
    rr.stop = stop;
    rr.seed = r.seed;
    rr.stream = stream;
    rr.logprobs = logprobs;
    rr.options = RouteOptions {
        force_local: r.force_local.unwrap_or(false),
        model_preference: r.model_preference.filter(|m| m != "auto"),
        cost_limit: parse_cost_limit(r.cost_limit.as_deref())?,
        fallback_allowed: r.fallback_allowed.unwrap_or(true),
        cascade,
        confidence_threshold: r.confidence_threshold,
        registry_model: false,
    };
    let rx = start(&state, rr).await?;
    let with_logprobs = |a: &Answer| {
        let mut g = GenerateResponse::of(&id, a);
        if logprobs.is_some() {
            g.logprobs = Some(openai_logprobs(&a.logprobs));
        }
        g
    };
    if !stream {
        let a = finish(rx).await.map_err(|r| refusal_error(&r))?;
        let mut b = HttpResponse::Ok();
        served_by(&mut b, &a.model, a.provider, a.served_locally, Some(a.cost));
        return Ok(b.json(with_logprobs(&a)));
    }
    let (started, rx) = opening(rx).await?;
    let first = event(
        "started",
        &json!({"id": id, "model": started.model, "provider": started.provider, "served_locally": started.served_locally}),
    );
    let frames = sse_stream(rx, (id, logprobs.is_some()), |(id, lp), u| match u {
        Update::Text(t) => (event("token", &json!({ "text": t })), true),
        Update::ToolCall(v) => (event("tool_call", &json!({ "tool_calls": v })), true),
        // The tokens' log-probabilities come whole with `completed`.
        Update::Started { .. } | Update::Logprobs(_) => (String::new(), true),
        Update::Done(r) => match *r {
            Ok(a) => {
                let mut g = GenerateResponse::of(id, &a);
                if *lp {
                    g.logprobs = Some(openai_logprobs(&a.logprobs));
                }
                (event("completed", &g), false)
            }
            Err(r) => {
                let attempts: Vec<AttemptView> = r.attempts.iter().map(AttemptView::from).collect();
                let e = json!({"code": r.code, "message": r.message, "attempts": attempts});
                (event("error", &e), false)
            }
        },
    });
    Ok(sse_response(&started, first, frames))
}
