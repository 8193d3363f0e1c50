//! Anthropic's messages API.
//!
//! Usage, as Anthropic defines it: `input_tokens` excludes cache reads
//! (`cache_read_input_tokens`) and cache writes (`cache_creation_input_tokens`), so the three
//! add up to the prompt; streamed, `message_start` carries the input side and
//! `message_delta.usage` is cumulative (its `output_tokens` is the total so far, never an
//! increment), so the last value read wins.

use std::collections::HashMap;

use futures::StreamExt;
use revo_events::TokenUsage;
use serde_json::{json, Value};

use super::{read_json, replay, send, sse_events, ChatRequest, Piece, Reply, UpstreamError};

pub const VERSION: &str = "2023-06-01";

/// OpenAI's finish reasons for Anthropic's stop reasons.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI-format tools as Anthropic's.
fn tools(openai: &Value) -> Value {
    let tools = openai.as_array().map(Vec::as_slice).unwrap_or_default();
    Value::Array(
        tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                json!({
                    "name": f["name"],
                    "description": f["description"],
                    "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object"})),
                })
            })
            .collect(),
    )
}

fn tool_choice(openai: &Value) -> Option<Value> {
    match openai {
        Value::String(s) if s == "auto" => Some(json!({"type": "auto"})),
        Value::String(s) if s == "required" => Some(json!({"type": "any"})),
        Value::String(s) if s == "none" => Some(json!({"type": "none"})),
        Value::Object(_) => openai["function"]["name"]
            .as_str()
            .map(|n| json!({"type": "tool", "name": n})),
        _ => None,
    }
}

pub fn body(req: &ChatRequest) -> Value {
    // System messages go to `system`; Anthropic's turns are only user and assistant.
    let system: Vec<&str> = req
        .messages
        .iter()
        .filter(|m| m.role == "system")
        .map(|m| m.content.as_str())
        .collect();
    let messages: Vec<Value> = req
        .messages
        .iter()
        .filter(|m| m.role != "system")
        .map(|m| {
            let role = if m.role == "assistant" {
                "assistant"
            } else {
                "user"
            };
            json!({"role": role, "content": m.content})
        })
        .collect();
    let mut b = json!({
        "model": req.model,
        "max_tokens": req.max_tokens,
        "messages": messages,
        "stream": req.stream,
    });
    if !system.is_empty() {
        b["system"] = json!(system.join("\n\n"));
    }
    if let Some(t) = req.temperature {
        // Anthropic's range is 0 to 1; OpenAI's reaches 2.
        b["temperature"] = json!(t.min(1.0));
    }
    if let Some(p) = req.top_p {
        b["top_p"] = json!(p);
    }
    if !req.stop.is_empty() {
        b["stop_sequences"] = json!(req.stop);
    }
    if let Some(t) = &req.tools {
        b["tools"] = tools(t);
    }
    if let Some(c) = req.tool_choice.as_ref().and_then(tool_choice) {
        b["tool_choice"] = c;
    }
    b
}

/// Reads the fields of an Anthropic `usage` object into `into`, keeping what it lacks.
pub fn read_usage(u: &Value, into: &mut TokenUsage) {
    let set = |field: &str, slot: &mut u64| {
        if let Some(n) = u[field].as_u64() {
            *slot = n;
        }
    };
    set("input_tokens", &mut into.input);
    set("cache_read_input_tokens", &mut into.cache_read);
    set("cache_creation_input_tokens", &mut into.cache_write);
    set("output_tokens", &mut into.output);
}

pub async fn call(
    http: &reqwest::Client,
    base_url: &str,
    key: Option<&str>,
    req: &ChatRequest,
) -> Result<Reply, UpstreamError> {
    let url = format!("{}/v1/messages", base_url.trim_end_matches('/'));
    let mut rb = http
        .post(url)
        .header("anthropic-version", VERSION)
        .json(&body(req));
    if let Some(k) = key {
        rb = rb.header("x-api-key", k);
    }
    let resp = send(rb).await?;
    if req.stream {
        return Ok(stream(resp));
    }
    Ok(replay(whole(&read_json(resp).await?)))
}

fn whole(v: &Value) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut calls = Vec::new();
    for block in v["content"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        match block["type"].as_str() {
            Some("text") => {
                if let Some(t) = block["text"].as_str().filter(|t| !t.is_empty()) {
                    out.push(Piece::Text(t.to_owned()));
                }
            }
            Some("tool_use") => calls.push(json!({
                "index": calls.len(),
                "id": block["id"],
                "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            _ => {}
        }
    }
    if !calls.is_empty() {
        out.push(Piece::ToolCall(Value::Array(calls)));
    }
    let mut usage = TokenUsage::default();
    read_usage(&v["usage"], &mut usage);
    out.push(Piece::Done {
        finish_reason: finish_reason(v["stop_reason"].as_str().unwrap_or("end_turn")).into(),
        usage: v["usage"].is_object().then_some(usage),
    });
    out
}

struct StreamState<S> {
    events: S,
    usage: TokenUsage,
    usage_seen: bool,
    stop_reason: Option<String>,
    /// Anthropic's content block index → OpenAI's tool call index.
    tool_index: HashMap<u64, usize>,
    ended: bool,
}

fn stream(resp: reqwest::Response) -> Reply {
    let st = StreamState {
        events: Box::pin(sse_events(resp)),
        usage: TokenUsage::default(),
        usage_seen: false,
        stop_reason: None,
        tool_index: HashMap::new(),
        ended: false,
    };
    Box::pin(futures::stream::unfold(st, |mut st| async move {
        if st.ended {
            return None;
        }
        loop {
            let Some(ev) = st.events.next().await else {
                st.ended = true;
                let cut = "the stream ended before message_stop";
                return Some((Err(UpstreamError::Broken(cut.into())), st));
            };
            let (name, data) = match ev {
                Ok(e) => e,
                Err(e) => {
                    st.ended = true;
                    return Some((Err(e), st));
                }
            };
            let v: Value = match serde_json::from_str(&data) {
                Ok(v) => v,
                Err(e) => {
                    st.ended = true;
                    return Some((Err(UpstreamError::Broken(format!("bad event: {e}"))), st));
                }
            };
            // The event name is also the data's `type`; either will do.
            let kind = if name.is_empty() || name == "message" {
                v["type"].as_str().unwrap_or_default().to_owned()
            } else {
                name
            };
            match kind.as_str() {
                "message_start" => {
                    let u = &v["message"]["usage"];
                    st.usage_seen |= u.is_object();
                    read_usage(u, &mut st.usage);
                }
                "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                    let index = st.tool_index.len();
                    st.tool_index
                        .insert(v["index"].as_u64().unwrap_or_default(), index);
                    let b = &v["content_block"];
                    let call = json!([{
                        "index": index, "id": b["id"], "type": "function",
                        "function": {"name": b["name"], "arguments": ""},
                    }]);
                    return Some((Ok(Piece::ToolCall(call)), st));
                }
                "content_block_delta" => {
                    let d = &v["delta"];
                    match d["type"].as_str() {
                        Some("text_delta") => {
                            let t = d["text"].as_str().unwrap_or_default();
                            if !t.is_empty() {
                                return Some((Ok(Piece::Text(t.to_owned())), st));
                            }
                        }
                        Some("input_json_delta") => {
                            let block = v["index"].as_u64().unwrap_or_default();
                            let index = st.tool_index.get(&block).copied().unwrap_or(0);
                            let call = json!([{
                                "index": index,
                                "function": {"arguments": d["partial_json"]},
                            }]);
                            return Some((Ok(Piece::ToolCall(call)), st));
                        }
                        _ => {}
                    }
                }
                "message_delta" => {
                    if let Some(r) = v["delta"]["stop_reason"].as_str() {
                        st.stop_reason = Some(r.to_owned());
                    }
                    let u = &v["usage"];
                    st.usage_seen |= u.is_object();
                    read_usage(u, &mut st.usage);
                }
                "message_stop" => {
                    st.ended = true;
                    let reason = st.stop_reason.as_deref().unwrap_or("end_turn");
                    let done = Piece::Done {
                        finish_reason: finish_reason(reason).into(),
                        usage: st.usage_seen.then_some(st.usage),
                    };
                    return Some((Ok(done), st));
                }
                "error" => {
                    st.ended = true;
                    let e = &v["error"];
                    let msg = format!(
                        "{}: {}",
                        e["type"].as_str().unwrap_or("error"),
                        e["message"].as_str().unwrap_or_default()
                    );
                    return Some((Err(UpstreamError::Broken(msg)), st));
                }
                _ => {}
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::provider::ChatMessage;

    #[test]
    fn cumulative_usage_keeps_the_last_value_and_the_input_side() {
        let mut u = TokenUsage::default();
        read_usage(
            &json!({"input_tokens": 20, "cache_read_input_tokens": 1000,
                    "cache_creation_input_tokens": 50, "output_tokens": 1}),
            &mut u,
        );
        read_usage(&json!({"output_tokens": 15}), &mut u);
        read_usage(&json!({"output_tokens": 42}), &mut u);
        assert_eq!(
            (u.input, u.cache_read, u.cache_write, u.output),
            (20, 1000, 50, 42)
        );
        assert_eq!(u.prompt(), 1070);
    }

    #[test]
    fn system_messages_move_to_system_and_tools_are_translated() {
        let req = ChatRequest {
            model: "claude".into(),
            messages: vec![
                ChatMessage {
                    role: "system".into(),
                    content: "be brief".into(),
                },
                ChatMessage {
                    role: "user".into(),
                    content: "hi".into(),
                },
            ],
            max_tokens: 10,
            temperature: Some(1.5),
            top_p: None,
            stop: vec!["END".into()],
            seed: None,
            tools: Some(
                json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
            ),
            tool_choice: Some(json!("required")),
            logprobs: None,
            stream: false,
        };
        let b = body(&req);
        assert_eq!(b["system"], "be brief");
        assert_eq!(b["messages"].as_array().unwrap().len(), 1);
        assert_eq!(b["temperature"], 1.0);
        assert_eq!(b["stop_sequences"][0], "END");
        assert_eq!(b["tools"][0]["name"], "f");
        assert_eq!(b["tool_choice"]["type"], "any");
    }
}
