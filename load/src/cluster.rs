//! `revo-load cluster`: the product's claims end to end through a load balancer
//! (deploy/cluster/cluster.sh starts one): many users at once making mixed API calls at a fixed
//! rate (open loop), many WebSocket connections in rooms with messages flowing, local
//! generations through the router, and workflows running meanwhile. Clients behave as real ones
//! should: a request that fails on the way (connection lost, 502/503/504) is retried with the
//! same idempotency key or client id, and a WebSocket that drops reconnects through the load
//! balancer and resumes from its last offset. At the end it checks that nothing acknowledged
//! was lost: every acknowledged message reached every connection of its room, and every
//! workflow run finished. Prints a JSON summary; writes a Markdown report with SVG plots.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::report;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// The load balancer's base URL.
    #[arg(long)]
    url: String,
    /// The password of `admin` (creates the load's users).
    #[arg(long)]
    admin_password: String,
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// WebSocket connections per user (each in the user's room).
    #[arg(long, default_value_t = 10)]
    ws_per_user: usize,
    /// Users per room.
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    /// HTTP requests per minute, spread evenly (open loop: they start on time whatever the
    /// latency).
    #[arg(long, default_value_t = 1200)]
    requests_per_min: u64,
    /// The share of those requests that generate text (`POST /ai/generate`, 8 tokens).
    #[arg(long, default_value_t = 0.15)]
    generate_share: f64,
    /// Messages per second sent in each room (by one connection of the room's first user).
    #[arg(long, default_value_t = 1.0)]
    room_messages_per_s: f64,
    /// Workflow runs started per minute (template + local generate).
    #[arg(long, default_value_t = 30)]
    workflows_per_min: u64,
    /// Where to write report.md and its SVG plots.
    #[arg(long)]
    report: Option<PathBuf>,
    /// A title for the report.
    #[arg(long, default_value = "Cluster scenario")]
    title: String,
    /// Lines of text (e.g. the machine, the topology, what was killed) for the report.
    #[arg(long)]
    note: Vec<String>,
    /// Clients do not retry a request that failed (to see every failure the cluster lets
    /// through; the load balancer still redispatches a refused connection).
    #[arg(long)]
    no_retry: bool,
}

/// One finished HTTP request: when it started (ms since the scenario began), how long it took
/// (retries included), its kind, whether it finally succeeded, and how many tries it took.
#[derive(Clone)]
pub struct Sample {
    pub at_ms: u64,
    pub latency: Duration,
    pub kind: &'static str,
    pub ok: bool,
    pub tries: u32,
}

#[derive(Default)]
struct Tally {
    no_retry: bool,
    http: Mutex<Vec<Sample>>,
    /// (ms since start, send-to-receipt latency) of every WebSocket delivery.
    ws: Mutex<Vec<(u64, Duration)>>,
    failures: Mutex<BTreeMap<String, usize>>,
    local: AtomicUsize,
    generated: AtomicUsize,
    ws_open: AtomicUsize,
    ws_peak: AtomicUsize,
    reconnects: AtomicUsize,
    ws_errors: AtomicUsize,
    resumed_frames: AtomicU64,
}

impl Tally {
    fn fail(&self, why: String) {
        if let Ok(mut f) = self.failures.lock() {
            *f.entry(why).or_default() += 1;
        }
    }
}

struct User {
    id: String,
    token: String,
    room: String,
    workflow: Option<String>,
}

/// A room's acknowledged offsets (by its sender) and what each connection received.
#[derive(Default)]
struct RoomLog {
    acked: Mutex<HashSet<i64>>,
    /// Per connection: (first offset it could expect: the room's offset when it first joined,
    /// offsets received).
    seen: Mutex<Vec<(i64, HashSet<i64>)>>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    if a.users == 0 || a.room_size == 0 || a.requests_per_min == 0 {
        bail!("--users, --room-size and --requests-per-min must be at least 1");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = a.url.trim_end_matches('/').to_owned();
    let run_tag = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    eprintln!("setting up {} users ...", a.users);
    let users = Arc::new(setup(&http, &base, &a, &run_tag).await?);
    eprintln!("load for {} s", a.duration_s);
    let tally = Arc::new(Tally {
        no_retry: a.no_retry,
        ..Tally::default()
    });
    let rooms: Arc<HashMap<String, RoomLog>> = Arc::new(
        users
            .iter()
            .map(|u| (u.room.clone(), RoomLog::default()))
            .collect(),
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.duration_s);
    let stop_ws = tokio_util::sync::CancellationToken::new();

    // WebSockets first (staggered over 5 s), so messages flow while the API load runs.
    let mut ws_tasks = Vec::new();
    let total_ws = a.users * a.ws_per_user;
    for (i, u) in users.iter().enumerate() {
        for c in 0..a.ws_per_user {
            let n = i * a.ws_per_user + c;
            let delay = Duration::from_millis((5000 * n / total_ws.max(1)) as u64);
            let sender = i % a.room_size == 0 && c == 0;
            let w = WsClient {
                base: base.clone(),
                user: u.id.clone(),
                token: u.token.clone(),
                room: u.room.clone(),
                rate: if sender { a.room_messages_per_s } else { 0.0 },
                tally: tally.clone(),
                rooms: rooms.clone(),
                start,
                deadline,
                stop: stop_ws.clone(),
            };
            ws_tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                w.run().await
            }));
        }
    }

    // The API load: one request every 60/rate seconds, each on its own task.
    let api = {
        let (http, base, users, tally, a) = (
            http.clone(),
            base.clone(),
            users.clone(),
            tally.clone(),
            a.clone(),
        );
        tokio::spawn(async move {
            let every = Duration::from_secs_f64(60.0 / a.requests_per_min.max(1) as f64);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n: u64 = 0;
            let mut running = Vec::new();
            while Instant::now() < deadline {
                tick.tick().await;
                n += 1;
                let u = n as usize * 7919 % users.len();
                let kind = pick_kind(n, a.generate_share);
                let (http, base, users, tally) =
                    (http.clone(), base.clone(), users.clone(), tally.clone());
                running.push(tokio::spawn(async move {
                    api_call(&http, &base, &users[u], kind, n, &tally, start).await;
                }));
            }
            for t in running {
                let _ = t.await;
            }
        })
    };

    // Workflows: started at a fixed rate by the users that own one, each with an
    // Idempotency-Key (a retried execute returns the same run).
    let flows = {
        let (http, base, users, tally, a) = (
            http.clone(),
            base.clone(),
            users.clone(),
            tally.clone(),
            a.clone(),
        );
        tokio::spawn(async move {
            let owners: Vec<_> = users.iter().filter(|u| u.workflow.is_some()).collect();
            let mut runs = Vec::new();
            if owners.is_empty() || a.workflows_per_min == 0 {
                return runs;
            }
            let every = Duration::from_secs_f64(60.0 / a.workflows_per_min as f64);
            let mut tick = tokio::time::interval(every);
            let mut n = 0usize;
            while Instant::now() < deadline {
                tick.tick().await;
                let u = owners[n % owners.len()];
                n += 1;
                let wf = u.workflow.clone().unwrap_or_default();
                let body = json!({"input": {"topic": format!("topic {n}")}});
                let key = uuid::Uuid::now_v7().to_string();
                let url = format!("{base}/workflows/{wf}/execute");
                let (_, r) = send_retrying(&tally, "workflow", start, || {
                    http.post(&url)
                        .bearer_auth(&u.token)
                        .header("idempotency-key", &key)
                        .json(&body)
                })
                .await;
                if let Some(id) = r.as_ref().and_then(|v| v["id"].as_str()) {
                    runs.push((u.token.clone(), id.to_owned()));
                }
            }
            runs
        })
    };

    let _ = api.await;
    let runs = flows.await.unwrap_or_default();
    let load_secs = start.elapsed().as_secs_f64();
    // Let the last messages arrive, then close every socket.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_ws.cancel();
    for t in ws_tasks {
        let _ = t.await;
    }

    // Every run must finish (a run whose edge died is taken over by another).
    let (mut completed, mut failed, mut unfinished) = (0, 0, 0);
    let finish_by = Instant::now() + Duration::from_secs(120);
    for (token, id) in &runs {
        loop {
            let r = http
                .get(format!("{base}/runs/{id}"))
                .bearer_auth(token)
                .send()
                .await;
            let run = match r {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                _ => None,
            };
            let status = run.as_ref().and_then(|v| v["status"].as_str());
            match status {
                Some("completed") => {
                    completed += 1;
                    break;
                }
                Some(s @ ("failed" | "cancelled")) => {
                    failed += 1;
                    // Which step failed, and why (the run's own record).
                    let why: Vec<String> = run
                        .as_ref()
                        .and_then(|v| v["steps"].as_object())
                        .map(|steps| {
                            steps
                                .iter()
                                .filter(|(_, st)| st["status"] == "failed")
                                .map(|(k, st)| {
                                    format!("{k}: {} ({} attempts)", st["error"], st["attempts"])
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    tally.fail(format!("workflow run {id} {s}: {}", why.join("; ")));
                    break;
                }
                _ if Instant::now() > finish_by => {
                    unfinished += 1;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    // Nothing acknowledged is lost: every connection has every acked offset from where it
    // started.
    let (mut acked, mut missing) = (0usize, 0usize);
    for log in rooms.values() {
        let acks = log.acked.lock().map(|a| a.clone()).unwrap_or_default();
        acked += acks.len();
        if let Ok(seen) = log.seen.lock() {
            for (from, got) in seen.iter() {
                missing += acks
                    .iter()
                    .filter(|o| **o > *from && !got.contains(o))
                    .count();
            }
        }
    }

    let http_samples = tally.http.lock().map(|s| s.clone()).unwrap_or_default();
    let ws_samples = tally.ws.lock().map(|s| s.clone()).unwrap_or_default();
    let failures = tally.failures.lock().map(|f| f.clone()).unwrap_or_default();
    let lat: Vec<Duration> = http_samples.iter().map(|s| s.latency).collect();
    let failed_http = http_samples.iter().filter(|s| !s.ok).count();
    let retried = http_samples.iter().filter(|s| s.tries > 1).count();
    let ws_lat: Vec<Duration> = ws_samples.iter().map(|s| s.1).collect();
    let generated = tally.generated.load(Ordering::Relaxed);
    let local = tally.local.load(Ordering::Relaxed);
    let q = |v: &[Duration], p: f64| report::quantile(v, p).as_secs_f64() * 1e3;
    let summary = json!({
        "users": a.users,
        "load_seconds": load_secs,
        "http": {
            "requests": http_samples.len(),
            "per_minute": http_samples.len() as f64 * 60.0 / load_secs,
            "failed": failed_http,
            "retried": retried,
            "p50_ms": q(&lat, 0.5), "p95_ms": q(&lat, 0.95), "p99_ms": q(&lat, 0.99),
        },
        "generations": {
            "total": generated, "local": local,
            "local_share": if generated == 0 { 0.0 } else { local as f64 / generated as f64 },
        },
        "ws": {
            "connections": total_ws,
            "peak_open": tally.ws_peak.load(Ordering::Relaxed),
            "reconnects": tally.reconnects.load(Ordering::Relaxed),
            "errors": tally.ws_errors.load(Ordering::Relaxed),
            "resumed_frames": tally.resumed_frames.load(Ordering::Relaxed),
            "messages_acked": acked,
            "deliveries": ws_samples.len(),
            "missing": missing,
            "p50_ms": q(&ws_lat, 0.5), "p95_ms": q(&ws_lat, 0.95), "p99_ms": q(&ws_lat, 0.99),
        },
        "workflows": {
            "started": runs.len(), "completed": completed, "failed": failed,
            "unfinished": unfinished,
        },
        "failures": failures,
    });
    if let Some(dir) = &a.report {
        report::write(dir, &a.title, &a.note, &summary, &http_samples, &ws_samples)?;
        eprintln!("report in {}", dir.join("report.md").display());
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

fn pick_kind(n: u64, generate_share: f64) -> &'static str {
    // A fixed spread (deterministic, so runs compare): generation at its share, the rest
    // spread over reads of the caller, the catalogue, rooms and room history.
    let slot = (n.wrapping_mul(2654435761) % 1000) as f64 / 1000.0;
    if slot < generate_share {
        return "generate";
    }
    ["me", "models", "rooms", "history", "me", "rooms"][(n % 6) as usize]
}

async fn api_call(
    http: &reqwest::Client,
    base: &str,
    u: &User,
    kind: &'static str,
    n: u64,
    tally: &Tally,
    start: Instant,
) {
    let (ok, body) = send_retrying(tally, kind, start, || match kind {
        "me" => http.get(format!("{base}/users/me")).bearer_auth(&u.token),
        "models" => http.get(format!("{base}/ai/models")).bearer_auth(&u.token),
        "rooms" => http.get(format!("{base}/rooms")).bearer_auth(&u.token),
        "history" => http
            .get(format!("{base}/rooms/{}/events?after=0&limit=50", u.room))
            .bearer_auth(&u.token),
        _ => http
            .post(format!("{base}/ai/generate"))
            .bearer_auth(&u.token)
            .json(&json!({
                "prompt": format!("Name a colour ({n})."),
                "max_tokens": 8,
                "temperature": 0,
            })),
    })
    .await;
    if kind == "generate" && ok {
        tally.generated.fetch_add(1, Ordering::Relaxed);
        if body.as_ref().and_then(|b| b["served_locally"].as_bool()) == Some(true) {
            tally.local.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends until a final answer: a lost connection or a 502/503/504 is retried (up to 6 tries,
/// backing off from 100 ms), as a client of a cluster should. Records one sample.
async fn send_retrying(
    tally: &Tally,
    kind: &'static str,
    start: Instant,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> (bool, Option<Value>) {
    let began = Instant::now();
    let mut tries = 0;
    let (ok, body, why) = loop {
        tries += 1;
        let outcome = match make().send().await {
            Ok(r) => {
                let status = r.status();
                let body = r.json::<Value>().await.ok();
                if status.is_success() {
                    break (true, body, String::new());
                }
                let retryable = matches!(status.as_u16(), 502..=504);
                (
                    retryable,
                    format!(
                        "{kind} {status} {}",
                        body.map(|b| b["code"].to_string()).unwrap_or_default()
                    ),
                )
            }
            Err(e) => (true, format!("{kind} {}", short(&e))),
        };
        if !outcome.0 || tries >= 6 || tally.no_retry {
            break (false, None, outcome.1);
        }
        tokio::time::sleep(Duration::from_millis(100 << (tries - 1).min(4))).await;
    };
    if !ok {
        tally.fail(why);
    }
    let sample = Sample {
        at_ms: began.duration_since(start).as_millis() as u64,
        latency: began.elapsed(),
        kind,
        ok,
        tries,
    };
    if let Ok(mut s) = tally.http.lock() {
        s.push(sample);
    }
    (ok, body)
}

fn short(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "connect error"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_decode() || e.is_body() {
        "body error"
    } else {
        "request error"
    }
}

async fn post(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let mut req = http.post(&url).json(&body);
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    let r = req.send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{url}: {status} {v}");
    }
    Ok(v)
}

async fn login(http: &reqwest::Client, base: &str, user: &str, pw: &str) -> anyhow::Result<String> {
    let v = post(
        http,
        format!("{base}/auth/login"),
        "",
        json!({"username": user, "password": pw}),
    )
    .await?;
    v["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token")
}

/// Users (developers), one room per `room_size` users with all of them members, and a small
/// workflow for one user in five.
async fn setup(
    http: &reqwest::Client,
    base: &str,
    a: &Args,
    tag: &str,
) -> anyhow::Result<Vec<User>> {
    let admin = login(http, base, "admin", &a.admin_password).await?;
    let password = format!("load-password-{tag}");
    // Argon2 bounds concurrent hashing; 16 at a time keeps every edge busy without 503s.
    let made: Vec<anyhow::Result<(String, String)>> = futures::stream::iter(0..a.users)
        .map(|i| {
            let (admin, password) = (admin.clone(), password.clone());
            async move {
                let name = format!("load-{tag}-{i}");
                let v = post(
                    http,
                    format!("{base}/users"),
                    &admin,
                    json!({"username": name, "password": password, "roles": ["developer"]}),
                )
                .await?;
                let id = v["id"].as_str().context("no user id")?.to_owned();
                // Another edge may not have the new user yet (edges learn it from the event
                // stream, milliseconds later): a fresh user's first login is retried briefly.
                let mut tries = 0;
                let token = loop {
                    match login(http, base, &name, &password).await {
                        Ok(t) => break t,
                        Err(e) if tries >= 20 => {
                            return Err(e.context(format!("logging in as {name}")))
                        }
                        Err(_) => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                };
                Ok((id, token))
            }
        })
        .buffered(16)
        .collect()
        .await;
    let made = made.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let mut users = Vec::new();
    for group in made.chunks(a.room_size.max(1)) {
        let (owner_id, owner_token) = &group[0];
        let members: Vec<Value> = group[1..]
            .iter()
            .map(|(id, _)| json!({"user_id": id, "role": "member"}))
            .collect();
        let room = post(
            http,
            format!("{base}/rooms"),
            owner_token,
            json!({"name": format!("load {tag} {owner_id}"), "members": members}),
        )
        .await?;
        let room = room["id"].as_str().context("no room id")?.to_owned();
        for (id, token) in group {
            users.push(User {
                id: id.clone(),
                token: token.clone(),
                room: room.clone(),
                workflow: None,
            });
        }
    }
    let definition = json!({
        "name": "load: summarise a topic",
        "input": {"type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]},
        "steps": [
            {"id": "ask", "type": "template", "template": "One word about {{ input.topic }}:"},
            {"id": "say", "type": "generate", "after": ["ask"], "prompt": "{{ steps.ask.output }}",
             "max_tokens": 4, "force_local": true},
        ],
    });
    for u in users.iter_mut().step_by(5) {
        let v = post(
            http,
            format!("{base}/workflows"),
            &u.token,
            definition.clone(),
        )
        .await?;
        u.workflow = v["id"].as_str().map(str::to_owned);
    }
    Ok(users)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct WsClient {
    base: String,
    user: String,
    token: String,
    room: String,
    /// Messages per second this connection sends (0: it only listens).
    rate: f64,
    tally: Arc<Tally>,
    rooms: Arc<HashMap<String, RoomLog>>,
    start: Instant,
    deadline: Instant,
    stop: tokio_util::sync::CancellationToken,
}

impl WsClient {
    /// Connects, joins, and on any drop reconnects through the load balancer and rejoins
    /// after the last offset it has; a sender resends what was not acknowledged (same
    /// client_id: the room deduplicates).
    async fn run(self) {
        let mut first: Option<i64> = None;
        let mut last: Option<i64> = None;
        let mut got: HashSet<i64> = HashSet::new();
        let mut pending: BTreeMap<String, String> = BTreeMap::new();
        let mut sent = 0u64;
        let mut attempt = 0u32;
        while !self.stop.is_cancelled() {
            if attempt > 0 {
                self.tally.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            attempt += 1;
            let mut ws = match self.connect().await {
                Ok(ws) => ws,
                Err(_) => {
                    self.tally.ws_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            let mut join = json!({"type": "room.join", "room": self.room});
            if let Some(l) = last {
                join["after"] = json!(l);
            }
            if ws
                .send(Message::Text(join.to_string().into()))
                .await
                .is_err()
            {
                continue;
            }
            let open = self.tally.ws_open.fetch_add(1, Ordering::Relaxed) + 1;
            self.tally.ws_peak.fetch_max(open, Ordering::Relaxed);
            let mut joined = false;
            let mut resend = true;
            let mut send_tick = tokio::time::interval(if self.rate > 0.0 {
                Duration::from_secs_f64(1.0 / self.rate)
            } else {
                Duration::from_secs(3600)
            });
            let mut ping = tokio::time::interval(Duration::from_secs(15));
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => {
                        let _ = ws.close(None).await;
                        break;
                    }
                    _ = ping.tick() => {
                        let p = json!({"type": "ping"}).to_string();
                        if ws.send(Message::Text(p.into())).await.is_err() { break; }
                    }
                    _ = send_tick.tick(), if joined && self.rate > 0.0 => {
                        // Unacknowledged messages again after a reconnect, then a new one.
                        let mut out: Vec<(String, String)> = Vec::new();
                        if resend {
                            out.extend(pending.iter().map(|(c, t)| (c.clone(), t.clone())));
                            resend = false;
                        }
                        if Instant::now() < self.deadline {
                            sent += 1;
                            let cid = format!("{}-{sent}", self.user);
                            let text = format!("t:{}", now_us());
                            pending.insert(cid.clone(), text.clone());
                            out.push((cid, text));
                        }
                        let mut failed = false;
                        for (cid, text) in out {
                            let f = json!({"type": "message.send", "room": self.room,
                                           "client_id": cid, "text": text});
                            if ws.send(Message::Text(f.to_string().into())).await.is_err() {
                                failed = true;
                                break;
                            }
                        }
                        if failed { break; }
                    }
                    m = ws.next() => {
                        let Some(Ok(m)) = m else { break };
                        let Message::Text(t) = m else { continue };
                        let Ok(f) = serde_json::from_str::<Value>(&t) else { continue };
                        match f["type"].as_str() {
                            Some("room.joined") => {
                                joined = true;
                                if first.is_none() {
                                    first = f["offset"].as_i64();
                                    last = first;
                                }
                            }
                            Some("message.new") => {
                                let Some(o) = f["offset"].as_i64() else { continue };
                                if !joined {
                                    self.tally.resumed_frames.fetch_add(1, Ordering::Relaxed);
                                }
                                got.insert(o);
                                last = Some(last.map_or(o, |l| l.max(o)));
                                let text = f["text"].as_str().unwrap_or("");
                                if let Some(sent_us) = text.strip_prefix("t:").and_then(|s| s.parse::<u64>().ok()) {
                                    let lat = Duration::from_micros(now_us().saturating_sub(sent_us));
                                    let at = self.start.elapsed().as_millis() as u64;
                                    if let Ok(mut s) = self.tally.ws.lock() { s.push((at, lat)); }
                                }
                            }
                            Some("message.ack") => {
                                if let (Some(cid), Some(o)) = (f["client_id"].as_str(), f["offset"].as_i64()) {
                                    pending.remove(cid);
                                    if let Some(log) = self.rooms.get(&self.room) {
                                        if let Ok(mut a) = log.acked.lock() { a.insert(o); }
                                    }
                                }
                            }
                            Some("error") => {
                                self.tally.fail(format!("ws error frame {}", f["code"]));
                            }
                            _ => {}
                        }
                    }
                }
            }
            self.tally.ws_open.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(log) = self.rooms.get(&self.room) {
            if let Ok(mut s) = log.seen.lock() {
                s.push((first.unwrap_or(i64::MAX), got));
            }
        }
        if !pending.is_empty() {
            self.tally
                .fail(format!("{} messages never acknowledged", pending.len()));
        }
    }

    async fn connect(&self) -> anyhow::Result<Ws> {
        let url = format!(
            "{}/ws/{}",
            self.base.replacen("http://", "ws://", 1),
            self.user
        );
        let mut req = url.into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {}", self.token).parse()?);
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await??;
        // The welcome frame.
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Text(_))) => Ok(ws),
            other => bail!("no welcome: {other:?}"),
        }
    }
}
