//! OpenAI's chat completions, as OpenAI serves it and as Ollama, vLLM and llama.cpp do.
//!
//! Usage, as each defines it: OpenAI's `prompt_tokens` includes `prompt_tokens_details.
//! cached_tokens` (split out here as cache reads) and `completion_tokens` includes
//! `completion_tokens_details.reasoning_tokens`. Streamed, the usage comes in a last chunk with
//! no choices, after the finish reason, when `stream_options.include_usage` is set (always
//! asked for here); vLLM and Ollama follow that, and llama.cpp's server also reports
//! `timings.prompt_n` / `predicted_n` (and `cache_n` reused from its cache), read when it
//! sends no `usage`.

use std::collections::VecDeque;

use futures::StreamExt;
use revo_engine::local::{TokenLogprob, TopLogprob};
use revo_events::TokenUsage;
use serde_json::{json, Value};

use super::{read_json, replay, send, sse_events, ChatRequest, Piece, Reply, UpstreamError};

/// OpenAI itself wants `max_completion_tokens` (its reasoning models refuse `max_tokens`);
/// servers speaking its older dialect want `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Openai,
    Compatible,
}

pub fn body(req: &ChatRequest, dialect: Dialect) -> Value {
    let mut b = json!({
        "model": req.model,
        "messages": req.messages,
        "stream": req.stream,
    });
    let max = match dialect {
        Dialect::Openai => "max_completion_tokens",
        Dialect::Compatible => "max_tokens",
    };
    b[max] = json!(req.max_tokens);
    if req.stream {
        b["stream_options"] = json!({"include_usage": true});
    }
    if let Some(t) = req.temperature {
        b["temperature"] = json!(t);
    }
    if let Some(p) = req.top_p {
        b["top_p"] = json!(p);
    }
    if !req.stop.is_empty() {
        b["stop"] = json!(req.stop);
    }
    if let Some(s) = req.seed {
        b["seed"] = json!(s);
    }
    if let Some(t) = &req.tools {
        b["tools"] = t.clone();
    }
    if let Some(t) = &req.tool_choice {
        b["tool_choice"] = t.clone();
    }
    if let Some(k) = req.logprobs {
        b["logprobs"] = json!(true);
        if k > 0 {
            b["top_logprobs"] = json!(k);
        }
    }
    b
}

/// A choice's `logprobs.content` entries, as pieces (none when absent or malformed: they are
/// an extra, never a reason to fail an answer).
fn logprob_pieces(choice: &Value) -> Vec<Piece> {
    let entry = |v: &Value| {
        Some(TokenLogprob {
            token: v["token"].as_str()?.to_owned(),
            logprob: v["logprob"].as_f64()? as f32,
            top: v["top_logprobs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| {
                            Some(TopLogprob {
                                token: t["token"].as_str()?.to_owned(),
                                logprob: t["logprob"].as_f64()? as f32,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    };
    choice["logprobs"]["content"]
        .as_array()
        .map(|c| c.iter().filter_map(entry).map(Piece::Logprobs).collect())
        .unwrap_or_default()
}

/// The usage of a response or chunk, if it carries one.
pub fn usage_of(v: &Value) -> Option<TokenUsage> {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let u = &v["usage"];
    if u.is_object() && u.get("prompt_tokens").is_some() {
        let prompt = n(&u["prompt_tokens"]);
        let cached = n(&u["prompt_tokens_details"]["cached_tokens"]).min(prompt);
        return Some(TokenUsage {
            input: prompt - cached,
            cache_read: cached,
            cache_write: 0,
            output: n(&u["completion_tokens"]),
            reasoning: n(&u["completion_tokens_details"]["reasoning_tokens"]),
        });
    }
    let t = &v["timings"];
    if t.is_object() && t.get("predicted_n").is_some() {
        return Some(TokenUsage {
            input: n(&t["prompt_n"]),
            cache_read: n(&t["cache_n"]),
            output: n(&t["predicted_n"]),
            ..TokenUsage::default()
        });
    }
    None
}

/// Calls `{base_url}/chat/completions`.
pub async fn call(
    http: &reqwest::Client,
    base_url: &str,
    key: Option<&str>,
    req: &ChatRequest,
    dialect: Dialect,
) -> Result<Reply, UpstreamError> {
    let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
    let mut rb = http.post(url).json(&body(req, dialect));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let resp = send(rb).await?;
    if req.stream {
        return Ok(stream(resp));
    }
    Ok(replay(whole(&read_json(resp).await?)?))
}

/// A non-streamed answer as pieces.
fn whole(v: &Value) -> Result<Vec<Piece>, UpstreamError> {
    let choice = v["choices"]
        .get(0)
        .ok_or_else(|| UpstreamError::Broken("the answer has no choices".into()))?;
    let mut out = logprob_pieces(choice);
    if let Some(t) = choice["message"]["content"].as_str() {
        if !t.is_empty() {
            out.push(Piece::Text(t.to_owned()));
        }
    }
    if let Some(calls) = choice["message"].get("tool_calls").filter(|c| c.is_array()) {
        out.push(Piece::ToolCall(calls.clone()));
    }
    out.push(Piece::Done {
        finish_reason: choice["finish_reason"]
            .as_str()
            .unwrap_or("stop")
            .to_owned(),
        usage: usage_of(v),
    });
    Ok(out)
}

struct StreamState<S> {
    events: S,
    finish: Option<String>,
    usage: Option<TokenUsage>,
    ended: bool,
    /// Pieces of a chunk not yet handed out (its tokens' log-probabilities, then its text).
    pending: VecDeque<Piece>,
}

/// A streamed answer: chunks until `data: [DONE]`; the finish waits for the usage chunk.
fn stream(resp: reqwest::Response) -> Reply {
    let st = StreamState {
        events: Box::pin(sse_events(resp)),
        finish: None,
        usage: None,
        ended: false,
        pending: VecDeque::new(),
    };
    Box::pin(futures::stream::unfold(st, |mut st| async move {
        if let Some(p) = st.pending.pop_front() {
            return Some((Ok(p), st));
        }
        if st.ended {
            return None;
        }
        loop {
            let Some(ev) = st.events.next().await else {
                // The body ended without [DONE]: finished if a finish reason came, else cut.
                st.ended = true;
                return Some((done_or_cut(&mut st), st));
            };
            let data = match ev {
                Ok((_, data)) => data,
                Err(e) => {
                    st.ended = true;
                    return Some((Err(e), st));
                }
            };
            if data.trim() == "[DONE]" {
                st.ended = true;
                return Some((done_or_cut(&mut st), st));
            }
            let v: Value = match serde_json::from_str(&data) {
                Ok(v) => v,
                Err(e) => {
                    st.ended = true;
                    return Some((Err(UpstreamError::Broken(format!("bad chunk: {e}"))), st));
                }
            };
            if let Some(err) = v.get("error") {
                st.ended = true;
                let msg = err["message"].as_str().unwrap_or("error event").to_owned();
                return Some((Err(UpstreamError::Broken(msg)), st));
            }
            if let Some(u) = usage_of(&v) {
                st.usage = Some(u);
            }
            let Some(choice) = v["choices"].get(0) else {
                continue;
            };
            if let Some(f) = choice["finish_reason"].as_str() {
                st.finish = Some(f.to_owned());
            }
            let delta = &choice["delta"];
            st.pending.extend(logprob_pieces(choice));
            if let Some(calls) = delta.get("tool_calls").filter(|c| c.is_array()) {
                st.pending.push_back(Piece::ToolCall(calls.clone()));
            }
            match delta["content"].as_str() {
                Some(t) if !t.is_empty() => st.pending.push_back(Piece::Text(t.to_owned())),
                _ => {}
            }
            if let Some(p) = st.pending.pop_front() {
                return Some((Ok(p), st));
            }
        }
    }))
}

fn done_or_cut<S>(st: &mut StreamState<S>) -> Result<Piece, UpstreamError> {
    match st.finish.take() {
        Some(finish_reason) => Ok(Piece::Done {
            finish_reason,
            usage: st.usage.take(),
        }),
        None => Err(UpstreamError::Broken(
            "the stream ended before the answer finished".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_usage_splits_cached_tokens_out_of_the_prompt() {
        let v = json!({"usage": {
            "prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 100}
        }});
        let u = usage_of(&v).unwrap();
        assert_eq!(
            (u.input, u.cache_read, u.output, u.reasoning),
            (176, 1024, 300, 100)
        );
        assert_eq!(u.prompt(), 1200);
    }

    #[test]
    fn llama_cpp_timings_stand_in_for_a_missing_usage() {
        let v = json!({"timings": {"prompt_n": 12, "cache_n": 4, "predicted_n": 30}});
        let u = usage_of(&v).unwrap();
        assert_eq!((u.input, u.cache_read, u.output), (12, 4, 30));
        assert_eq!(usage_of(&json!({"usage": null})), None);
    }

    #[test]
    fn the_dialects_name_the_output_cap_differently() {
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![],
            max_tokens: 7,
            temperature: None,
            top_p: None,
            stop: vec![],
            seed: None,
            tools: None,
            tool_choice: None,
            logprobs: None,
            stream: true,
        };
        let b = body(&req, Dialect::Openai);
        assert_eq!(b["max_completion_tokens"], 7);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(body(&req, Dialect::Compatible)["max_tokens"], 7);
    }
}
