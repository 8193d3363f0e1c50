//! An instant OpenAI-compatible server for the gateway-overhead benchmark
//! (`load/router/bench.sh`): HTTP/1.1 with keep-alive, answering every chat completion at once
//! with a fixed answer and usage, whole or as server-sent events (`"stream": true`), so the
//! time measured through Revo is Revo's own.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

const WORDS: [&str; 8] = [
    "Paris ", "is ", "the ", "capital ", "of ", "France, ", "of ", "course.",
];

const USAGE: &str = r#"{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20,"prompt_tokens_details":{"cached_tokens":0}}"#;

fn whole() -> String {
    format!(
        r#"{{"id":"chatcmpl-stub","object":"chat.completion","created":1,"model":"stub","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"stop"}}],"usage":{USAGE}}}"#,
        WORDS.concat()
    )
}

fn streamed() -> String {
    let mut out = String::new();
    for w in WORDS {
        out.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-stub\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"stub\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{w}\"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    out.push_str("data: {\"id\":\"chatcmpl-stub\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"stub\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    out.push_str(&format!(
        "data: {{\"id\":\"chatcmpl-stub\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"stub\",\"choices\":[],\"usage\":{USAGE}}}\n\ndata: [DONE]\n\n"
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
    let whole = response("application/json", &whole());
    let streamed = response("text/event-stream", &streamed());
    let models = response("application/json", r#"{"object":"list","data":[]}"#);
    let replies = std::sync::Arc::new((whole, streamed, models));
    loop {
        let (conn, _) = listener.accept().await?;
        let _ = conn.set_nodelay(true);
        let replies = replies.clone();
        tokio::spawn(async move {
            let _ = serve(conn, &replies).await;
        });
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Requests on one connection, in turn, until the client closes it.
async fn serve(mut conn: TcpStream, replies: &(Vec<u8>, Vec<u8>, Vec<u8>)) -> std::io::Result<()> {
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
        let reply = if head.starts_with("get") {
            &replies.2
        } else if find(body, b"\"stream\":true").is_some() {
            &replies.1
        } else {
            &replies.0
        };
        conn.write_all(reply).await?;
        buf.drain(..head_end + len);
    }
}
