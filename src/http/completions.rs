//! `POST /v1/completions`: OpenAI's (legacy) completions shape, through the router like every
//! generation: `model` is a catalogue name, `auto`, or a model of the local registry the
//! catalogue does not list (served locally, free). `stream: true` answers with server-sent
//! events.

use actix_web::{post, web, HttpRequest, HttpResponse};
use chrono::Utc;
use revo_actors::router::{Answer, Input, TokenLogprob, Update};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::Json;
use super::openapi::{BodyErrors, CallerErrors};
use super::routed::Routing;
use super::routed::{
    base_request, check_sampling, finish, invalid, opening, refusal_error, served_by, sse_response,
    sse_stream, start,
};
use super::AppState;

pub const MAX_TOKENS_LIMIT: u32 = 4096;

/// Most alternatives per token OpenAI's completions `logprobs` takes.
pub const MAX_LOGPROBS: u32 = 5;

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
    /// A catalogue name, `auto`, or a local model's registry name (`revo models list`).
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
    /// Local models: 0 is no limit.
    pub top_k: Option<u32>,
    /// Local models.
    #[schema(exclusive_minimum = 0, maximum = 10)]
    pub repetition_penalty: Option<f32>,
    pub stop: Option<Stop>,
    /// Same seed and parameters, same output.
    pub seed: Option<u64>,
    pub stream: Option<bool>,
    /// Each token's log-probability and this many likeliest alternatives (0 to 5; local
    /// models).
    #[schema(minimum = 0, maximum = 5)]
    pub logprobs: Option<u32>,
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

#[derive(Serialize, ToSchema)]
pub struct Choice {
    pub text: String,
    pub index: u32,
    /// With `logprobs`: `tokens`, `token_logprobs`, `top_logprobs` and `text_offset`.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
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
    fn of(a: &Answer) -> Usage {
        let u = &a.usage;
        Usage {
            prompt_tokens: u.prompt(),
            completion_tokens: u.output,
            total_tokens: u.prompt() + u.output,
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
    /// Revo: the provider that served, whether locally, and the exact cost (last chunk).
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revo: Option<Value>,
}

fn revo(a: &Answer) -> Value {
    json!({"provider": a.provider, "served_locally": a.served_locally, "cost_usd": a.cost.to_string()})
}

/// Tokens' log-probabilities in the completions format; `offset` is where the first token
/// starts (after the prompt, in characters).
fn legacy_logprobs(tokens: &[TokenLogprob], offset: &mut usize) -> Value {
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in tokens {
        text_offset.push(*offset);
        *offset += t.token.chars().count();
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let m: serde_json::Map<String, Value> = t
                .top
                .iter()
                .map(|a| (a.token.clone(), json!(a.logprob)))
                .collect();
            Value::Object(m)
        })
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| t.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

/// Generates text from a prompt (OpenAI's completions API), through the router.
#[utoipa::path(
    tag = "models",
    security(("bearer" = ["generate"])),
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion; with `stream: true`, server-sent events of `Completion` chunks ending with `data: [DONE]`; headers `x-revo-model`, `x-revo-provider`, `x-revo-served-locally` and (unstreamed) `x-revo-cost-usd`", body = Completion),
        (status = 400, description = "The prompt and `max_tokens` do not fit the model's context (`context_length_exceeded`)", body = ErrorBody),
        (status = 404, description = "No such model in the catalogue or the local registry", body = ErrorBody),
        (status = 502, description = "The worker generating the text stopped answering (`worker_lost`), or every model tried failed", body = ErrorBody),
        (status = 503, description = "The model is busy (`model_busy`), not loaded or has no worker (`model_unavailable`), or no model can serve (`no_model_available`)", body = ErrorBody),
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
    let max_tokens = r.max_tokens.unwrap_or(16);
    if max_tokens == 0 || max_tokens > MAX_TOKENS_LIMIT {
        return Err(invalid(format!("max_tokens is 1 to {MAX_TOKENS_LIMIT}")));
    }
    if r.prompt.is_empty() {
        return Err(invalid("prompt is empty"));
    }
    let stop = match r.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    check_sampling(Some(max_tokens), r.temperature, r.top_p, &stop)?;
    if r.repetition_penalty
        .is_some_and(|p| !(p > 0.0 && p <= 10.0))
    {
        return Err(invalid("repetition_penalty is above 0 and at most 10"));
    }
    if r.logprobs.is_some_and(|k| k > MAX_LOGPROBS) {
        return Err(invalid(format!("logprobs is 0 to {MAX_LOGPROBS}")));
    }
    // Spelled out, not flattened: serde cannot deny unknown fields beside a flattened struct.
    let options = Routing {
        force_local: r.force_local,
        cost_limit: r.cost_limit,
        fallback_allowed: r.fallback_allowed,
        route: r.route,
        confidence_threshold: r.confidence_threshold,
    }
    .options(&r.model)?;
    let id = format!("cmpl-{}", Uuid::now_v7().simple());
    let created = Utc::now().timestamp();
    let stream = r.stream.unwrap_or(false);
    let offset = r.prompt.chars().count();
    let mut rr = base_request(&caller, &req, id.clone(), Input::Prompt(r.prompt));
    rr.max_tokens = Some(max_tokens);
    rr.temperature = r.temperature;
    rr.top_p = r.top_p;
    rr.top_k = r.top_k;
    rr.repetition_penalty = r.repetition_penalty;
    rr.stop = stop;
    rr.seed = r.seed;
    rr.stream = stream;
    rr.logprobs = r.logprobs.map(|k| k as usize);
    rr.options = options;
    let rx = start(&state, rr).await?;
    let mut ctx = Chunks {
        id,
        created,
        model: String::new(),
        pending: r.logprobs.map(|_| Vec::new()),
        offset,
    };
    if !stream {
        let a = finish(rx).await.map_err(|r| refusal_error(&r))?;
        let mut b = HttpResponse::Ok();
        served_by(&mut b, &a.model, a.provider, a.served_locally, Some(a.cost));
        ctx.model = a.model.clone();
        if let Some(p) = &mut ctx.pending {
            p.clone_from(&a.logprobs);
        }
        let mut c = ctx.completion(a.text.clone(), Some(&a.finish_reason), Some(Usage::of(&a)));
        c.revo = Some(revo(&a));
        return Ok(b.json(c));
    }
    // Streaming: one chunk per piece of text, then the finish with usage, then [DONE]. A
    // client that leaves drops the body; a local generation then stops at its next token.
    let (started, rx) = opening(rx).await?;
    ctx.model = started.model.clone();
    let frames = sse_stream(rx, ctx, |ctx: &mut Chunks, u| match u {
        Update::Text(t) => (ctx.sse(t, None, None, None), true),
        Update::Logprobs(l) => {
            if let Some(p) = &mut ctx.pending {
                p.push(l);
            }
            (String::new(), true)
        }
        Update::Started { .. } | Update::ToolCall(_) => (String::new(), true),
        Update::Done(r) => match *r {
            Ok(a) => {
                let last = ctx.sse(
                    String::new(),
                    Some(&a.finish_reason),
                    Some(Usage::of(&a)),
                    Some(revo(&a)),
                );
                (last + SSE_DONE, false)
            }
            Err(r) => {
                let e = json!({"error": {"code": r.code, "message": r.message}});
                (format!("data: {e}\n\n{SSE_DONE}"), false)
            }
        },
    });
    Ok(sse_response(&started, String::new(), frames))
}

const SSE_DONE: &str = "data: [DONE]\n\n";

/// One completion's chunks: its id, and the log-probabilities not sent yet.
struct Chunks {
    id: String,
    created: i64,
    model: String,
    pending: Option<Vec<TokenLogprob>>,
    /// Where the next token starts, in characters from the prompt's start.
    offset: usize,
}

impl Chunks {
    fn completion(
        &mut self,
        text: String,
        finish: Option<&str>,
        usage: Option<Usage>,
    ) -> Completion {
        let logprobs = self.pending.as_mut().map(|p| {
            let tokens = std::mem::take(p);
            legacy_logprobs(&tokens, &mut self.offset)
        });
        Completion {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![Choice {
                text,
                index: 0,
                logprobs,
                finish_reason: finish.map(str::to_owned),
            }],
            usage,
            revo: None,
        }
    }

    fn sse(
        &mut self,
        text: String,
        finish: Option<&str>,
        usage: Option<Usage>,
        revo: Option<Value>,
    ) -> String {
        let mut c = self.completion(text, finish, usage);
        c.revo = revo;
        format!(
            "data: {}\n\n",
            serde_json::to_string(&c).unwrap_or_default()
        )
    }
}
