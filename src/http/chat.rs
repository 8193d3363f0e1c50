//! The wire formats programs already speak, through the router: OpenAI's
//! `POST /v1/chat/completions` and `GET /v1/models`, and Anthropic's `POST /v1/messages`.
//! Official SDKs work unchanged against them (`base_url` pointed at Revo, a Revo API key as
//! the key; Anthropic's `x-api-key` header is accepted like a bearer token).
//!
//! `model` is a catalogue name (that model, no fallback unless `fallback_allowed` is sent) or
//! `auto` (the router picks, with fallback). Revo's routing options ride along as extra body
//! fields (`force_local`, `cost_limit`, `fallback_allowed`, `route`,
//! `confidence_threshold`), which the SDKs send with
//! `extra_body`. Unknown OpenAI or Anthropic fields are ignored, as other compatible servers
//! do, so a newer SDK keeps working.

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use chrono::Utc;
use revo_actors::router::provider::ChatMessage;
use revo_actors::router::{Answer, Input, Update};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::Json;
use super::openapi::{BodyErrors, CallerErrors};
use super::routed::Routing;
use super::routed::{
    base_request, check_messages, check_sampling, finish, invalid, openai_logprobs, opening,
    parse_logprobs, refusal_error, served_by, sse_response, sse_stream, start,
};
use super::AppState;
use revo_actors::router::TokenLogprob;

/// Message content: a string, or parts of which only text is taken.
fn text_of(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match p["type"].as_str() {
                    Some("text") => out.push_str(p["text"].as_str().unwrap_or_default()),
                    Some(other) => {
                        return Err(invalid(format!(
                            "content parts of type `{other}` are not supported (text only)"
                        )))
                    }
                    None => return Err(invalid("a content part has no `type`")),
                }
            }
            Ok(out)
        }
        _ => Err(invalid("content is a string or an array of parts")),
    }
}

/// One string or several.
fn stop_of(v: &Option<Value>) -> Result<Vec<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid("stop is a string or strings"))
            })
            .collect(),
        Some(_) => Err(invalid("stop is a string or strings")),
    }
}

#[derive(Deserialize, ToSchema)]
pub struct OpenAiMessage {
    pub role: String,
    /// A string, or an array of `{"type": "text", "text": ...}` parts.
    #[schema(value_type = Object)]
    pub content: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// OpenAI's chat completion request (the fields Revo reads; others are ignored).
#[derive(Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A catalogue name, or `auto`.
    pub model: String,
    pub messages: Vec<OpenAiMessage>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    #[schema(value_type = Object)]
    pub stop: Option<Value>,
    pub seed: Option<u64>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Passed to providers that take tools (the router only picks those).
    #[schema(value_type = Object)]
    pub tools: Option<Value>,
    #[schema(value_type = Object)]
    pub tool_choice: Option<Value>,
    /// Each token's log-probability (local models).
    pub logprobs: Option<bool>,
    /// With `logprobs`: alternatives per token, 0 to 20.
    pub top_logprobs: Option<u32>,
    #[serde(flatten)]
    pub routing: Routing,
}

fn openai_usage(a: &Answer) -> Value {
    let u = &a.usage;
    json!({
        "prompt_tokens": u.prompt(),
        "completion_tokens": u.output,
        "total_tokens": u.prompt() + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cache_read},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    })
}

/// Streamed tool-call deltas or whole calls, as one `tool_calls` array.
fn merged_tool_calls(pieces: &[Value]) -> Option<Value> {
    let mut calls: Vec<Value> = Vec::new();
    for piece in pieces {
        for d in piece.as_array().map(Vec::as_slice).unwrap_or_default() {
            let index = d["index"].as_u64().unwrap_or(calls.len() as u64) as usize;
            if index >= calls.len() {
                calls.resize(
                    index + 1,
                    json!({"type": "function", "function": {"name": "", "arguments": ""}}),
                );
            }
            let c = &mut calls[index];
            if let Some(id) = d.get("id").filter(|v| !v.is_null()) {
                c["id"] = id.clone();
            }
            if let Some(n) = d["function"]["name"].as_str() {
                c["function"]["name"] = json!(n);
            }
            if let Some(a) = d["function"]["arguments"].as_str() {
                let prev = c["function"]["arguments"].as_str().unwrap_or_default();
                c["function"]["arguments"] = json!(format!("{prev}{a}"));
            }
        }
    }
    (!calls.is_empty()).then_some(Value::Array(calls))
}

struct ChunkCtx {
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
    /// Log-probabilities of tokens whose text has not gone out yet (it may be held back
    /// while it could start a stop sequence): they ride with the next piece of text.
    pending: Option<Vec<TokenLogprob>>,
}

impl ChunkCtx {
    fn chunk(&mut self, delta: Value, finish: Option<&str>) -> String {
        let logprobs = match &mut self.pending {
            Some(p) if !p.is_empty() => openai_logprobs(&std::mem::take(p)),
            _ => Value::Null,
        };
        let c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        });
        format!("data: {c}\n\n")
    }
}

/// OpenAI's chat completions, served by the router.
#[utoipa::path(
    tag = "ai",
    security(("bearer" = ["generate"])),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A `chat.completion`, or with `stream: true` server-sent `chat.completion.chunk`s ending with `data: [DONE]`; headers `x-revo-model`, `x-revo-provider`, `x-revo-served-locally` and (unstreamed) `x-revo-cost-usd`", body = Object),
        (status = 404, description = "No such catalogue model", body = ErrorBody),
        (status = 502, description = "Every model tried failed", body = ErrorBody),
        (status = 503, description = "No model can serve this request now", body = ErrorBody),
        BodyErrors,
        CallerErrors,
    )
)]
#[post("/v1/chat/completions")]
pub async fn chat_completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: Json<ChatCompletionRequest>,
) -> Result<HttpResponse, ApiError> {
    let r = body.0;
    if r.n.is_some_and(|n| n != 1) {
        return Err(invalid("n must be 1"));
    }
    let chat = r
        .messages
        .iter()
        .map(|m| {
            Ok(ChatMessage {
                role: m.role.clone(),
                content: text_of(m.content.as_ref().unwrap_or(&Value::Null))?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    check_messages(&chat)?;
    let stop = stop_of(&r.stop)?;
    let max_tokens = r.max_completion_tokens.or(r.max_tokens);
    check_sampling(max_tokens, r.temperature, r.top_p, &stop)?;
    let logprobs = parse_logprobs(r.logprobs, r.top_logprobs)?;
    let id = format!("chatcmpl-{}", Uuid::now_v7().simple());
    let stream = r.stream.unwrap_or(false);
    let mut rr = base_request(&caller, &req, id.clone(), Input::Chat(chat));
    rr.max_tokens = max_tokens;
    rr.temperature = r.temperature;
    rr.top_p = r.top_p;
    rr.stop = stop;
    rr.seed = r.seed;
    rr.tools = r.tools.filter(|t| !t.is_null());
    rr.tool_choice = r.tool_choice.filter(|t| !t.is_null());
    rr.stream = stream;
    rr.logprobs = logprobs;
    rr.options = r.routing.options(&r.model)?;
    let rx = start(&state, rr).await?;
    let created = Utc::now().timestamp();
    if !stream {
        let a = finish(rx).await.map_err(|r| refusal_error(&r))?;
        let mut message = json!({"role": "assistant", "content": a.text});
        if let Some(calls) = merged_tool_calls(&a.tool_calls) {
            message["tool_calls"] = calls;
            if a.text.is_empty() {
                message["content"] = Value::Null;
            }
        }
        let mut b = HttpResponse::Ok();
        served_by(&mut b, &a.model, a.provider, a.served_locally, Some(a.cost));
        return Ok(b.json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": a.model,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs.map(|_| openai_logprobs(&a.logprobs)), "finish_reason": a.finish_reason}],
            "usage": openai_usage(&a),
            "system_fingerprint": null,
            "revo": {"provider": a.provider, "served_locally": a.served_locally, "cost_usd": a.cost.to_string()},
        })));
    }
    let include_usage = r
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let (started, rx) = opening(rx).await?;
    let mut ctx = ChunkCtx {
        id,
        created,
        model: started.model.clone(),
        include_usage,
        pending: logprobs.map(|_| Vec::new()),
    };
    let first = ctx.chunk(json!({"role": "assistant", "content": ""}), None);
    let frames = sse_stream(rx, ctx, |ctx: &mut ChunkCtx, u| match u {
        Update::Text(t) => (ctx.chunk(json!({ "content": t }), None), true),
        Update::Logprobs(l) => {
            if let Some(p) = &mut ctx.pending {
                p.push(l);
            }
            (String::new(), true)
        }
        Update::ToolCall(v) => (ctx.chunk(json!({ "tool_calls": v }), None), true),
        Update::Started { .. } => (String::new(), true),
        Update::Done(r) => match *r {
            Ok(a) => {
                let mut out = ctx.chunk(json!({}), Some(&a.finish_reason));
                if ctx.include_usage {
                    let c = json!({
                        "id": ctx.id, "object": "chat.completion.chunk", "created": ctx.created,
                        "model": ctx.model, "choices": [], "usage": openai_usage(&a),
                        "revo": {"provider": a.provider, "served_locally": a.served_locally, "cost_usd": a.cost.to_string()},
                    });
                    out.push_str(&format!("data: {c}\n\n"));
                }
                out.push_str("data: [DONE]\n\n");
                (out, false)
            }
            Err(r) => {
                let e = json!({"error": {"message": r.message, "type": "upstream_error", "code": r.code}});
                (format!("data: {e}\n\ndata: [DONE]\n\n"), false)
            }
        },
    });
    Ok(sse_response(&started, first, frames))
}

/// The catalogue as OpenAI's model list (`auto` first: the router's choice).
#[utoipa::path(
    tag = "ai",
    security(("bearer" = ["generate"])),
    responses((status = 200, description = "OpenAI's `list` of `model` objects", body = Object), CallerErrors)
)]
#[get("/v1/models")]
pub async fn list_models(state: web::Data<AppState>) -> HttpResponse {
    let mut data = vec![json!({"id": "auto", "object": "model", "created": 0, "owned_by": "revo"})];
    data.extend(state.router.catalog().entries.iter().map(
        |e| json!({"id": e.name, "object": "model", "created": 0, "owned_by": e.provider.as_str()}),
    ));
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}

#[derive(Deserialize, ToSchema)]
pub struct AnthropicMessage {
    pub role: String,
    /// A string, or an array of `{"type": "text", "text": ...}` blocks.
    #[schema(value_type = Object)]
    pub content: Value,
}

/// Anthropic's messages request (the fields Revo reads; others are ignored).
#[derive(Deserialize, ToSchema)]
pub struct MessagesRequest {
    /// A catalogue name, or `auto`.
    pub model: String,
    pub max_tokens: u32,
    pub messages: Vec<AnthropicMessage>,
    /// A string or text blocks.
    #[schema(value_type = Object)]
    pub system: Option<Value>,
    pub stop_sequences: Option<Vec<String>>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stream: Option<bool>,
    #[serde(flatten)]
    pub routing: Routing,
}

fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

fn anthropic_usage(a: &Answer) -> Value {
    json!({
        "input_tokens": a.usage.input,
        "cache_read_input_tokens": a.usage.cache_read,
        "cache_creation_input_tokens": a.usage.cache_write,
        "output_tokens": a.usage.output,
    })
}

fn sse(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// Anthropic's messages API, served by the router.
#[utoipa::path(
    tag = "ai",
    security(("bearer" = ["generate"])),
    request_body = MessagesRequest,
    responses(
        (status = 200, description = "A `message`, or with `stream: true` Anthropic's server-sent events (`message_start` … `message_stop`)", body = Object),
        (status = 404, description = "No such catalogue model", body = ErrorBody),
        (status = 502, description = "Every model tried failed", body = ErrorBody),
        (status = 503, description = "No model can serve this request now", body = ErrorBody),
        BodyErrors,
        CallerErrors,
    )
)]
#[post("/v1/messages")]
pub async fn messages(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: Json<MessagesRequest>,
) -> Result<HttpResponse, ApiError> {
    let r = body.0;
    let mut chat = Vec::with_capacity(r.messages.len() + 1);
    if let Some(system) = &r.system {
        chat.push(ChatMessage {
            role: "system".into(),
            content: text_of(system)?,
        });
    }
    for m in &r.messages {
        if !matches!(m.role.as_str(), "user" | "assistant") {
            return Err(invalid("a message's role is user or assistant"));
        }
        chat.push(ChatMessage {
            role: m.role.clone(),
            content: text_of(&m.content)?,
        });
    }
    check_messages(&chat)?;
    let stop = r.stop_sequences.unwrap_or_default();
    check_sampling(Some(r.max_tokens), r.temperature, r.top_p, &stop)?;
    let id = format!("msg_{}", Uuid::now_v7().simple());
    let stream = r.stream.unwrap_or(false);
    let mut rr = base_request(&caller, &req, id.clone(), Input::Chat(chat));
    rr.max_tokens = Some(r.max_tokens);
    rr.temperature = r.temperature;
    rr.top_p = r.top_p;
    rr.stop = stop;
    rr.stream = stream;
    rr.options = r.routing.options(&r.model)?;
    let rx = start(&state, rr).await?;
    if !stream {
        let a = finish(rx).await.map_err(|r| refusal_error(&r))?;
        let mut b = HttpResponse::Ok();
        served_by(&mut b, &a.model, a.provider, a.served_locally, Some(a.cost));
        return Ok(b.json(json!({
            "id": id, "type": "message", "role": "assistant", "model": a.model,
            "content": [{"type": "text", "text": a.text}],
            "stop_reason": stop_reason(&a.finish_reason), "stop_sequence": null,
            "usage": anthropic_usage(&a),
        })));
    }
    let (started, rx) = opening(rx).await?;
    let first = sse(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": started.model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}}}),
    ) + &sse(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    let frames = sse_stream(rx, (), |_: &mut (), u| match u {
        Update::Text(t) => (
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
            ),
            true,
        ),
        Update::ToolCall(_) | Update::Started { .. } | Update::Logprobs(_) => (String::new(), true),
        Update::Done(r) => match *r {
            Ok(a) => {
                let out = sse(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ) + &sse(
                    "message_delta",
                    json!({"type": "message_delta",
                           "delta": {"stop_reason": stop_reason(&a.finish_reason), "stop_sequence": null},
                           "usage": anthropic_usage(&a)}),
                ) + &sse("message_stop", json!({"type": "message_stop"}));
                (out, false)
            }
            Err(r) => (
                sse(
                    "error",
                    json!({"type": "error", "error": {"type": "api_error", "message": r.message}}),
                ),
                false,
            ),
        },
    });
    Ok(sse_response(&started, first, frames))
}
