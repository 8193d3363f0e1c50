//! Stub model servers speaking the real wire formats over HTTP/1.1: OpenAI's chat
//! completions (and its llama.cpp-like variant, which reports `timings` instead of `usage`)
//! and Anthropic's messages, streamed or not, with scripted failures. Each records the
//! requests it got and the usage it billed, so tests compare the ledger with the bill.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    /// OpenAI's format without `usage`; the final chunk carries llama.cpp's `timings`.
    LlamaCpp,
    Anthropic,
    /// OpenAI's format with no usage at all (a server that ignores `include_usage`).
    NoUsage,
}

/// What the stub does with one request.
#[derive(Debug, Clone)]
pub enum Script {
    /// Answers `text` (streamed word by word when asked) and bills the usage.
    Answer,
    /// Answers after this many milliseconds.
    Delay(u64),
    /// An error status with the provider's error body and extra headers.
    Status(u16, &'static str, Vec<(&'static str, &'static str)>),
    /// Accepts and never sends a byte.
    Stall,
    /// Streams `n` pieces, then closes the connection mid-answer.
    Cut(usize),
    /// Streams `n` pieces, then an error event.
    ErrorEvent(usize),
}

/// What the stub billed for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Billed {
    /// Uncached input, cache reads, cache writes, output.
    pub input: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub output: u64,
}

pub struct Stub {
    pub port: u16,
    pub wire: Wire,
    pub requests: Arc<Mutex<Vec<Value>>>,
    pub billed: Arc<Mutex<Vec<Billed>>>,
    scripts: Arc<Mutex<Vec<Script>>>,
    usage: Arc<Mutex<Option<Billed>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The answer every stub gives: eight words.
pub const TEXT: &str = "Paris is the capital of France, of course.";
/// The usage the stubs bill for an answer: 1,200 prompt tokens (1,024 from cache for OpenAI;
/// for Anthropic 100 uncached, 1,000 read and 100 written), 40 output.
pub const OUTPUT_TOKENS: u64 = 40;

impl Stub {
    /// A stub answering with `scripts` in order (the last one repeats).
    pub async fn start(wire: Wire, scripts: Vec<Script>) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let billed = Arc::new(Mutex::new(Vec::new()));
        let scripts = Arc::new(Mutex::new(scripts));
        let usage = Arc::new(Mutex::new(None));
        let (r, b, s, u) = (
            requests.clone(),
            billed.clone(),
            scripts.clone(),
            usage.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (r, b, s) = (r.clone(), b.clone(), s.clone());
                let bill = u.lock().unwrap().unwrap_or_else(|| billed_for(wire));
                tokio::spawn(async move {
                    let _ = serve(conn, wire, bill, r, b, s).await;
                });
            }
        });
        Stub {
            port,
            wire,
            requests,
            billed,
            scripts,
            usage,
            task,
        }
    }

    /// Bills `b` for every answer from now on (OpenAI wire: `input` is the uncached prompt).
    pub fn set_usage(&self, b: Billed) {
        *self.usage.lock().unwrap() = Some(b);
    }

    pub fn base_url(&self) -> String {
        match self.wire {
            Wire::Anthropic => format!("http://127.0.0.1:{}", self.port),
            _ => format!("http://127.0.0.1:{}/v1", self.port),
        }
    }

    pub fn hits(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn set_scripts(&self, scripts: Vec<Script>) {
        *self.scripts.lock().unwrap() = scripts;
    }

    pub fn total_billed(&self) -> Billed {
        let mut t = Billed::default();
        for b in self.billed.lock().unwrap().iter() {
            t.input += b.input;
            t.cache_read += b.cache_read;
            t.cache_write += b.cache_write;
            t.output += b.output;
        }
        t
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn billed_for(wire: Wire) -> Billed {
    match wire {
        Wire::OpenAi | Wire::LlamaCpp | Wire::NoUsage => Billed {
            input: 176,
            cache_read: 1024,
            cache_write: 0,
            output: OUTPUT_TOKENS,
        },
        Wire::Anthropic => Billed {
            input: 100,
            cache_read: 1000,
            cache_write: 100,
            output: OUTPUT_TOKENS,
        },
    }
}

/// Reads one request: (path, headers lowercased, JSON body).
async fn read_request(conn: &mut TcpStream) -> Option<(String, Vec<(String, String)>, Value)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split_whitespace().nth(1)?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    Some((path, headers, body))
}

async fn serve(
    mut conn: TcpStream,
    wire: Wire,
    bill: Billed,
    requests: Arc<Mutex<Vec<Value>>>,
    billed: Arc<Mutex<Vec<Billed>>>,
    scripts: Arc<Mutex<Vec<Script>>>,
) -> std::io::Result<()> {
    // One request per connection keeps the stub simple; clients open another.
    let Some((path, headers, mut body)) = read_request(&mut conn).await else {
        return Ok(());
    };
    if path.ends_with("/models") {
        let b = json!({"object": "list", "data": []}).to_string();
        return respond(&mut conn, 200, "application/json", &[], &b).await;
    }
    let auth = headers
        .iter()
        .find(|(k, _)| k == "authorization" || k == "x-api-key")
        .map(|(_, v)| v.clone());
    body["_auth"] = json!(auth);
    let script = {
        let s = scripts.lock().unwrap();
        let n = requests.lock().unwrap().len();
        s.get(n).or(s.last()).cloned().unwrap_or(Script::Answer)
    };
    requests.lock().unwrap().push(body.clone());
    let stream = body["stream"].as_bool().unwrap_or(false);
    let script = match script {
        Script::Delay(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Script::Answer
        }
        s => s,
    };
    match script {
        Script::Status(code, err, extra) => {
            let b = match wire {
                Wire::Anthropic => {
                    json!({"type": "error", "error": {"type": err, "message": format!("stub {code}")}})
                }
                _ => {
                    json!({"error": {"message": format!("stub {code}"), "type": err, "code": err}})
                }
            };
            respond(&mut conn, code, "application/json", &extra, &b.to_string()).await
        }
        Script::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
        Script::Answer if !stream => {
            billed.lock().unwrap().push(bill);
            let b = whole(wire, bill, &body);
            respond(&mut conn, 200, "application/json", &[], &b.to_string()).await
        }
        s => {
            let (pieces, ending) = match s {
                Script::Cut(n) => (n, Ending::Cut),
                Script::ErrorEvent(n) => (n, Ending::Error),
                _ => (usize::MAX, Ending::Finish),
            };
            if ending == Ending::Finish {
                // A cut or failed stream reports no usage, so none is counted here either.
                billed.lock().unwrap().push(bill);
            }
            stream_answer(&mut conn, wire, bill, &body, pieces, ending).await
        }
    }
}

#[derive(PartialEq)]
enum Ending {
    Finish,
    Cut,
    Error,
}

async fn respond(
    conn: &mut TcpStream,
    code: u16,
    ctype: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

fn openai_usage(b: Billed) -> Value {
    json!({
        "prompt_tokens": b.input + b.cache_read,
        "completion_tokens": b.output,
        "total_tokens": b.input + b.cache_read + b.output,
        "prompt_tokens_details": {"cached_tokens": b.cache_read},
        "completion_tokens_details": {"reasoning_tokens": 0}
    })
}

fn anthropic_usage(b: Billed) -> Value {
    json!({
        "input_tokens": b.input,
        "cache_read_input_tokens": b.cache_read,
        "cache_creation_input_tokens": b.cache_write,
        "output_tokens": b.output
    })
}

/// OpenAI's `logprobs` entry for the `i`th word of the answer (made up, but each word its own
/// value, so a client can tell them apart): `-0.1 × (i + 1)`, one alternative.
fn stub_logprob(i: usize, w: &str) -> Value {
    let lp = -0.1 * (i as f64 + 1.0);
    json!({"token": w, "logprob": lp, "bytes": w.as_bytes(),
           "top_logprobs": [{"token": w, "logprob": lp, "bytes": w.as_bytes()}]})
}

fn wants_logprobs(req: &Value) -> bool {
    req["logprobs"] == json!(true)
}

fn whole(wire: Wire, b: Billed, req: &Value) -> Value {
    let model = req["model"].clone();
    match wire {
        Wire::Anthropic => json!({
            "id": "msg_stub", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": TEXT}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": anthropic_usage(b),
        }),
        _ => {
            let mut v = json!({
                "id": "chatcmpl-stub", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT},
                             "finish_reason": "stop", "logprobs": null}],
            });
            if wants_logprobs(req) {
                let content: Vec<Value> = TEXT
                    .split_inclusive(' ')
                    .enumerate()
                    .map(|(i, w)| stub_logprob(i, w))
                    .collect();
                v["choices"][0]["logprobs"] = json!({"content": content});
            }
            match wire {
                Wire::OpenAi => v["usage"] = openai_usage(b),
                Wire::LlamaCpp => {
                    v["timings"] = json!({"prompt_n": b.input, "cache_n": b.cache_read,
                                          "predicted_n": b.output})
                }
                _ => {}
            }
            v
        }
    }
}

async fn stream_answer(
    conn: &mut TcpStream,
    wire: Wire,
    b: Billed,
    req: &Value,
    pieces: usize,
    ending: Ending,
) -> std::io::Result<()> {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
    conn.write_all(head.as_bytes()).await?;
    let words: Vec<String> = TEXT.split_inclusive(' ').map(str::to_owned).collect();
    let ev = |name: &str, data: Value| match wire {
        Wire::Anthropic => format!("event: {name}\ndata: {data}\n\n"),
        _ => format!("data: {data}\n\n"),
    };
    let mut out = Vec::new();
    if wire == Wire::Anthropic {
        let mut u = anthropic_usage(b);
        u["output_tokens"] = json!(1);
        out.push(ev("message_start", json!({"type": "message_start", "message": {"id": "msg_stub", "type": "message", "role": "assistant", "model": req["model"], "content": [], "usage": u}})));
        out.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
        out.push(ev("ping", json!({"type": "ping"})));
    }
    for (i, w) in words.iter().enumerate() {
        let logprobs = if wants_logprobs(req) {
            json!({"content": [stub_logprob(i, w)]})
        } else {
            Value::Null
        };
        out.push(match wire {
            Wire::Anthropic => ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}})),
            _ => ev("", json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1, "model": req["model"], "choices": [{"index": 0, "delta": {"content": w}, "logprobs": logprobs, "finish_reason": null}]})),
        });
    }
    let preamble = if wire == Wire::Anthropic { 3 } else { 0 };
    let take = preamble + pieces.min(words.len());
    for (i, e) in out.iter().enumerate() {
        if i >= take {
            break;
        }
        conn.write_all(e.as_bytes()).await?;
        conn.flush().await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match ending {
        Ending::Cut if pieces < words.len() => return conn.shutdown().await,
        Ending::Error if pieces < words.len() => {
            let e = match wire {
                Wire::Anthropic => ev(
                    "error",
                    json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                ),
                _ => ev(
                    "",
                    json!({"error": {"message": "stub mid-stream error", "type": "server_error"}}),
                ),
            };
            conn.write_all(e.as_bytes()).await?;
            return conn.shutdown().await;
        }
        _ => {}
    }
    let mut tail = Vec::new();
    match wire {
        Wire::Anthropic => {
            tail.push(ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
            // Cumulative: an early delta, then the final count.
            tail.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": null}, "usage": {"output_tokens": 3}})));
            tail.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": b.output}})));
            tail.push(ev("message_stop", json!({"type": "message_stop"})));
        }
        Wire::OpenAi => {
            tail.push(ev("", json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})));
            if req["stream_options"]["include_usage"] == true {
                tail.push(ev("", json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "choices": [], "usage": openai_usage(b)})));
            }
            tail.push("data: [DONE]\n\n".into());
        }
        Wire::NoUsage => {
            tail.push(ev("", json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})));
            tail.push("data: [DONE]\n\n".into());
        }
        Wire::LlamaCpp => {
            tail.push(ev("", json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "timings": {"prompt_n": b.input, "cache_n": b.cache_read, "predicted_n": b.output}})));
            tail.push("data: [DONE]\n\n".into());
        }
    }
    for e in tail {
        conn.write_all(e.as_bytes()).await?;
    }
    conn.shutdown().await
}
