//! What the routed endpoints share (`/ai/generate`, OpenAI's and Anthropic's compatible APIs in
//! `chat.rs`, `/v1/completions`): checking the request, building a route request from the
//! caller, waiting for the model that serves it, streaming its pieces, and mapping refusals.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::Bytes;
use revo_actors::router::provider::ChatMessage;
use revo_actors::router::{
    Answer, Input, Refusal, RouteOptions, RouteRequest, TokenLogprob, Update,
};
use revo_events::Usd;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use utoipa::ToSchema;

use super::access::Caller;
use super::error::ApiError;
use super::AppState;
use crate::identity::Via;

/// Most messages in one request, and most bytes of text in them (the body limit bounds it
/// too; this keeps the worst-case cost estimate meaningful).
pub const MAX_MESSAGES: usize = 1024;

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

/// `422 invalid_parameter`.
pub fn invalid(message: impl Into<String>) -> ApiError {
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
    let (user, key, id) = (req.user_id, req.key_id, req.id.clone());
    let rx = state
        .router
        .route(req)
        .await
        .map_err(|r| refusal_error(&r))?;
    // Progress for the user's WebSocket sessions subscribed to `generation`.
    Ok(revo_actors::rooms::progress::tee(
        &state.realtime,
        user,
        key,
        id,
        rx,
    ))
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

/// Revo's routing options, as extra body fields of the compatible endpoints.
#[derive(Deserialize, ToSchema, Default)]
pub struct Routing {
    /// Revo: only local models.
    pub force_local: Option<bool>,
    /// Revo: most this request may cost, dollars as a decimal string.
    pub cost_limit: Option<String>,
    /// Revo: whether another model may serve (default: false for a named model, true for
    /// `auto`).
    pub fallback_allowed: Option<bool>,
    /// Revo: `auto` or `cascade` (see `POST /ai/generate`).
    pub route: Option<String>,
    /// Revo: the cascade's confidence bar, 0 to 1.
    pub confidence_threshold: Option<f64>,
}

impl Routing {
    /// The router's options for a request naming `model` (`auto`: the router picks).
    pub fn options(&self, model: &str) -> Result<RouteOptions, ApiError> {
        let auto = model == "auto";
        Ok(RouteOptions {
            force_local: self.force_local.unwrap_or(false),
            model_preference: (!auto).then(|| model.to_owned()),
            cost_limit: parse_cost_limit(self.cost_limit.as_deref())?,
            fallback_allowed: self.fallback_allowed.unwrap_or(auto),
            cascade: parse_route(self.route.as_deref(), self.confidence_threshold)?,
            confidence_threshold: self.confidence_threshold,
            registry_model: false,
        })
    }
}
