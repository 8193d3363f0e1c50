//! `POST /ai/generate`: Revo's own generation API, through the router (the helpers it shares
//! with the compatible endpoints are in `routed.rs`).

use actix_web::{post, web, HttpRequest, HttpResponse};
use revo_actors::router::provider::ChatMessage;
use revo_actors::router::{Answer, AttemptReport, Input, RouteOptions, Update};
use revo_events::TokenUsage;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::Json;
use super::openapi::{BodyErrors, CallerErrors};
use super::routed::{
    base_request, check_messages, check_sampling, finish, invalid, openai_logprobs, opening,
    parse_cost_limit, parse_logprobs, parse_route, refusal_error, served_by, sse_response,
    sse_stream, start,
};
use super::AppState;

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
