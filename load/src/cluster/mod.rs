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

use anyhow::bail;
use serde_json::{json, Value};

use crate::report;

mod http;
mod ws;

use http::{api_call, pick_kind, send_retrying, setup};
use ws::WsClient;

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

    let (completed, failed, unfinished) = wait_for_runs(&http, &base, &runs, &tally).await;
    let (acked, missing) = lost_deliveries(&rooms);

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

/// Polls every run until it ends (two minutes at most): `(completed, failed, unfinished)`. A
/// run whose edge died is taken over by another, so every one must finish.
async fn wait_for_runs(
    http: &reqwest::Client,
    base: &str,
    runs: &[(String, String)],
    tally: &Tally,
) -> (usize, usize, usize) {
    let (mut completed, mut failed, mut unfinished) = (0, 0, 0);
    let finish_by = Instant::now() + Duration::from_secs(120);
    for (token, id) in runs {
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
    (completed, failed, unfinished)
}

/// `(messages acknowledged, deliveries missing)`: every connection must have every acked offset
/// of its room after the one it started from.
fn lost_deliveries(rooms: &HashMap<String, RoomLog>) -> (usize, usize) {
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
    (acked, missing)
}
