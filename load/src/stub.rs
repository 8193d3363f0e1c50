//! An instant OpenAI-compatible server for the gateway-overhead benchmark
//! (`load/router/bench.sh`): HTTP/1.1 with keep-alive, answering every chat completion at once
//! with a fixed answer and usage, whole or as server-sent events (`"stream": true`), so the
//! time measured through Revo is Revo's own. With `--bill-by-size` (the cost report,
//! `load/router/cost_report.sh`) the usage it reports grows with the request: a prompt token
//! per 4 bytes of body, as a real provider bills a longer prompt more.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Report prompt tokens from the request's size instead of a fixed 12.
    #[arg(long)]
    bill_by_size: bool,
}

const WORDS: [&str; 8] = [
    "Paris ", "is ", "the ", "capital ", "of ", "France, ", "of ", "course.",
];

fn usage(prompt_tokens: usize) -> String {
    format!(
        r#"{{"prompt_tokens":{prompt_tokens},"completion_tokens":8,"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":0}}}}"#,
        prompt_tokens + 8
    )
}

fn whole(usage: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-stub","object":"chat.completion","created":1,"model":"stub","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"stop"}}],"usage":{usage}}}"#,
        WORDS.concat()
    )
}

fn streamed(usage: &str) -> String {
    let mut out = String::new();
    for w in WORDS {
        out.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-stub\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"stub\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{w}\"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    out.push_str("data: {\"id\":\"chatcmpl-stub\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"stub\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    out.push_str(&format!(
        "data: {{\"id\":\"chatcmpl-stub\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"stub\",\"choices\":[],\"usage\":{usage}}}\n\ndata: [DONE]\n\n"
    ));
    out
}

fn response(ctype: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    println!("{}", listener.local_addr()?);
    let fixed = usage(12);
    let whole = response("application/json", &whole(&fixed));
    let streamed = response("text/event-stream", &streamed(&fixed));
    let models = response("application/json", r#"{"object":"list","data":[]}"#);
    let replies = std::sync::Arc::new((whole, streamed, models));
    let by_size = args.bill_by_size;
    loop {
        let (conn, _) = listener.accept().await?;
        let _ = conn.set_nodelay(true);
        let replies = replies.clone();
        tokio::spawn(async move {
            let _ = serve(conn, &replies, by_size).await;
        });
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Requests on one connection, in turn, until the client closes it.
async fn serve(
    mut conn: TcpStream,
    replies: &(Vec<u8>, Vec<u8>, Vec<u8>),
    by_size: bool,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = &buf[head_end..head_end + len];
        let stream = find(body, b"\"stream\":true").is_some();
        if head.starts_with("get") {
            conn.write_all(&replies.2).await?;
        } else if by_size {
            let u = usage(len.div_ceil(4));
            let reply = if stream {
                response("text/event-stream", &streamed(&u))
            } else {
                response("application/json", &whole(&u))
            };
            conn.write_all(&reply).await?;
        } else {
            conn.write_all(if stream { &replies.1 } else { &replies.0 })
                .await?;
        }
        buf.drain(..head_end + len);
    }
}
