//! WebSocket scenarios against a running `revo serve` (load/ws/bench.sh starts them):
//!
//! - `ws-idle`: N idle connections on one edge; the edge's resident memory before and after.
//! - `ws-fanout`: one room with N subscribers (on the sender's edge or another); send-to-
//!   receipt latency of every delivery, and deliveries per second.
//! - `ws-recovery`: a client rejoining after N missed events: time until it has them all.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::stats::{ms, summarize};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(clap::Args)]
pub struct Common {
    /// The edge's base URL (`http://127.0.0.1:8080`).
    #[arg(long)]
    url: String,
    /// A token or API key of `--user`.
    #[arg(long)]
    token: String,
    #[arg(long)]
    user: String,
}

#[derive(clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// The edge's process id (its memory is read from /proc).
    #[arg(long)]
    pid: u32,
    /// The edge's memory before any of the connections being measured (KiB), when another
    /// process opened part of them (this one's own reading otherwise).
    #[arg(long)]
    baseline_kb: Option<u64>,
    /// Keep the connections open this long after reporting.
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Connections opened by other processes, counted in the figure.
    #[arg(long, default_value_t = 0)]
    others: usize,
}

#[derive(clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Where the subscribers connect (default: the sender's edge).
    #[arg(long)]
    subscribers_url: Option<String>,
    #[arg(long)]
    room: String,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Messages per second from the sender.
    #[arg(long, default_value_t = 20)]
    rate: u64,
}

#[derive(clap::Args)]
pub struct RecoveryArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    room: String,
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

async fn connect(base: &str, user: &str, token: &str) -> anyhow::Result<Ws> {
    let url = format!("{}/ws/{user}", base.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let welcome = next_frame(&mut ws).await?;
    if welcome["type"] != "welcome" {
        bail!("expected welcome, got {welcome}");
    }
    Ok(ws)
}

async fn next_frame(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.next().await.context("the socket closed")?? {
            Message::Text(t) => return Ok(serde_json::from_str(&t)?),
            Message::Close(c) => bail!("closed: {c:?}"),
            _ => {}
        }
    }
}

async fn send(ws: &mut Ws, v: Value) -> anyhow::Result<()> {
    ws.send(Message::Text(v.to_string().into())).await?;
    Ok(())
}

/// Joins `room` (after `after`) and returns (frames before `room.joined`, its offset).
async fn join(ws: &mut Ws, room: &str, after: Option<i64>) -> anyhow::Result<(usize, i64)> {
    let mut frame = json!({"type": "room.join", "room": room});
    if let Some(a) = after {
        frame["after"] = json!(a);
    }
    send(ws, frame).await?;
    let mut missed = 0;
    loop {
        let f = next_frame(ws).await?;
        match f["type"].as_str() {
            Some("room.joined") => return Ok((missed, f["offset"].as_i64().unwrap_or(0))),
            Some("error") => bail!("join refused: {f}"),
            _ if f.get("offset").is_some() => missed += 1,
            _ => {}
        }
    }
}

fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

pub async fn idle(a: IdleArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let before = rss_kb(a.pid)?;
    eprintln!("rss_before_kb={before}");
    let before = a.baseline_kb.unwrap_or(before);
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        let permit = sem.clone().acquire_owned().await?;
        let (url, user, token) = (c.url.clone(), c.user.clone(), c.token.clone());
        tasks.push(tokio::spawn(async move {
            let r = connect(&url, &user, &token).await;
            drop(permit);
            r
        }));
    }
    let mut sockets = Vec::with_capacity(a.connections);
    for t in tasks {
        sockets.push(t.await??);
    }
    let opened = started.elapsed();
    // Let the edge settle (presence events written, buffers shrunk).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_kb(a.pid)?;
    let total = a.connections + a.others;
    let per = (after.saturating_sub(before) * 1024) / total as u64;
    println!("| idle connections | opened in (this process) | edge RSS before | after | per connection |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.1} s | {:.1} MiB | {:.1} MiB | {:.1} KB |",
        total,
        opened.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per as f64 / 1000.0
    );
    tokio::time::sleep(Duration::from_secs(a.hold)).await;
    drop(sockets);
    Ok(())
}

pub async fn fanout(a: FanoutArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let sub_url = a.subscribers_url.clone().unwrap_or_else(|| c.url.clone());
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(a.subscribers * a.messages)));
    let last_receipt = Arc::new(Mutex::new(Instant::now()));
    let ready = Arc::new(tokio::sync::Barrier::new(a.subscribers + 1));
    let sem = Arc::new(tokio::sync::Semaphore::new(128));
    let mut subs = Vec::new();
    for _ in 0..a.subscribers {
        let (url, user, token, room) = (
            sub_url.clone(),
            c.user.clone(),
            c.token.clone(),
            a.room.clone(),
        );
        let (lat, last, ready, sem) = (
            latencies.clone(),
            last_receipt.clone(),
            ready.clone(),
            sem.clone(),
        );
        let n = a.messages;
        subs.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await?;
            let mut ws = connect(&url, &user, &token).await?;
            join(&mut ws, &room, None).await?;
            drop(permit);
            ready.wait().await;
            let mut got = 0;
            let mut mine = Vec::with_capacity(n);
            while got < n {
                let f = next_frame(&mut ws).await?;
                if f["type"] != "message.new" {
                    continue;
                }
                let sent: u128 = f["text"].as_str().and_then(|t| t.parse().ok()).unwrap_or(0);
                mine.push(Duration::from_micros(now_us().saturating_sub(sent) as u64));
                got += 1;
            }
            if let Ok(mut l) = last.lock() {
                *l = Instant::now().max(*l);
            }
            if let Ok(mut l) = lat.lock() {
                l.extend(mine);
            }
            anyhow::Ok(())
        }));
    }
    let mut writer = connect(&c.url, &c.user, &c.token).await?;
    join(&mut writer, &a.room, None).await?;
    ready.wait().await;
    let started = Instant::now();
    let gap = Duration::from_micros(1_000_000 / a.rate.max(1));
    let mut tick = tokio::time::interval(gap);
    let (mut tx, mut rx) = writer.split();
    // Drain the writer's own frames so its queue never fills.
    let reader = tokio::spawn(async move { while rx.next().await.is_some() {} });
    for i in 0..a.messages {
        tick.tick().await;
        let frame = json!({"type": "message.send", "room": a.room,
            "client_id": format!("f{i}-{}", now_us()), "text": now_us().to_string()});
        tx.send(Message::Text(frame.to_string().into())).await?;
    }
    for s in subs {
        s.await??;
    }
    reader.abort();
    let elapsed = last_receipt
        .lock()
        .map(|l| l.duration_since(started))
        .unwrap_or_default();
    let samples = std::mem::take(&mut *latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let delivered = samples.len();
    let s = summarize(samples);
    let across = if a.subscribers_url.is_some() {
        "two edges"
    } else {
        "one edge"
    };
    println!("| fan-out | subscribers | messages | deliveries | p50 ms | p99 ms | max ms | deliveries/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {across} | {} | {} | {delivered} | {} | {} | {} | {:.0} |",
        a.subscribers,
        a.messages,
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        delivered as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

pub async fn recovery(a: RecoveryArgs) -> anyhow::Result<()> {
    let c = &a.common;
    // Each connection may send a burst of 200 frames (then 100/s): the missed events come
    // from enough writers to be written at once.
    const PER_WRITER: usize = 150;
    let mut writers = Vec::new();
    let mut start = 0;
    for _ in 0..a.events.div_ceil(PER_WRITER) {
        let mut w = connect(&c.url, &c.user, &c.token).await?;
        start = start.max(join(&mut w, &a.room, None).await?.1);
        writers.push(w);
    }
    let mut times = Vec::new();
    let mut after = start;
    for round in 0..a.rounds {
        let mut tasks = Vec::new();
        for (n, mut w) in writers.drain(..).enumerate() {
            let room = a.room.clone();
            let count = PER_WRITER.min(a.events - n * PER_WRITER);
            tasks.push(tokio::spawn(async move {
                for i in 0..count {
                    send(
                        &mut w,
                        json!({"type": "message.send", "room": room,
                        "client_id": format!("r{round}-{n}-{i}"), "text": format!("missed {i}")}),
                    )
                    .await?;
                }
                let mut last = 0;
                let mut acks = 0;
                while acks < count {
                    let f = next_frame(&mut w).await?;
                    if f["type"] == "message.ack" {
                        acks += 1;
                        last = last.max(f["offset"].as_i64().unwrap_or(0));
                    } else if f["type"] == "error" {
                        bail!("send refused: {f}");
                    }
                }
                anyhow::Ok((w, last))
            }));
        }
        let mut last = after;
        for t in tasks {
            let (w, l) = t.await??;
            last = last.max(l);
            writers.push(w);
        }
        // Let the rate limit's burst refill before the next round.
        let mut reader = connect(&c.url, &c.user, &c.token).await?;
        let t0 = Instant::now();
        let (missed, offset) = join(&mut reader, &a.room, Some(after)).await?;
        let took = t0.elapsed();
        if missed < a.events || offset < last {
            bail!(
                "recovered {missed} of {} (to offset {offset}, wanted {last})",
                a.events
            );
        }
        times.push(took);
        after = offset;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let s = summarize(times);
    println!("| missed events | rounds | median ms | max ms | events/s (median) |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {:.0} |",
        a.events,
        a.rounds,
        ms(s.p50),
        ms(s.max),
        a.events as f64 / s.p50.as_secs_f64()
    );
    Ok(())
}
