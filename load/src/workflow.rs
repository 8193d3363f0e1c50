//! Workflow step overhead (`load/workflows/bench.sh`): a workflow of 10 `template` steps and one
//! of 10 `generate` steps against an instant model, each step reading the one before, run one
//! at a time (latency) and many at once (throughput), beside the same 10 model calls made
//! directly through `POST /ai/generate`.
//!
//! A run's time is the server's own: from its `run.created` to its `run.completed` event
//! (`created_at` and `finished_at` of `GET /runs/{id}`). The client learns that a run ended
//! from its `workflow.completed` frame on one WebSocket subscribed to `workflow` (polling
//! would load the server it measures). The direct calls are timed by this client, HTTP
//! included.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

use crate::stats::{ms, summarize};

#[derive(clap::Args)]
pub struct Args {
    /// An edge, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// A bearer credential with `workflows:write` and `generate`.
    #[arg(long)]
    token: String,
    /// The catalogue entry of an instant model (`revo-load stub`).
    #[arg(long, default_value = "stub")]
    model: String,
    /// Runs of each workflow, one after another.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Runs in flight at once for the throughput figure.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long the throughput phase lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

const STEPS: usize = 10;

/// Runs that ended (by id), and who waits for which.
#[derive(Default)]
struct Ended {
    done: HashSet<String>,
    waiting: HashMap<String, oneshot::Sender<()>>,
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
    ended: Arc<Mutex<Ended>>,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {v}");
        }
        Ok(v)
    }

    async fn create(&self, def: Value) -> anyhow::Result<String> {
        let v = self
            .call(reqwest::Method::POST, "/workflows", Some(def))
            .await?;
        Ok(v["id"].as_str().context("no id")?.to_owned())
    }

    /// Runs `wf` to its end; the server's time from creation to completion.
    async fn run(&self, wf: &str) -> anyhow::Result<Duration> {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/workflows/{wf}/execute"),
                Some(json!({"input": {}})),
            )
            .await?;
        let id = v["id"].as_str().context("no run id")?.to_owned();
        let rx = {
            let mut e = self.ended.lock().unwrap_or_else(|p| p.into_inner());
            if e.done.remove(&id) {
                None
            } else {
                let (tx, rx) = oneshot::channel();
                e.waiting.insert(id.clone(), tx);
                Some(rx)
            }
        };
        if let Some(rx) = rx {
            tokio::time::timeout(Duration::from_secs(60), rx)
                .await
                .context("the run did not end within 60 s")?
                .context("the WebSocket closed")?;
        }
        let r = self
            .call(reqwest::Method::GET, &format!("/runs/{id}"), None)
            .await?;
        if r["status"] != "completed" {
            bail!("run {id} ended: {r}");
        }
        let t = |k: &str| {
            r[k].as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        };
        let (Some(a), Some(b)) = (t("created_at"), t("finished_at")) else {
            bail!("run {id} has no times: {r}");
        };
        Ok((b - a).to_std().unwrap_or_default())
    }

    /// Follows the user's `workflow` frames; each run's end wakes its waiter.
    async fn follow(&self) -> anyhow::Result<()> {
        let me = self.call(reqwest::Method::GET, "/users/me", None).await?;
        let user = me["user"]["id"].as_str().context("no user id")?.to_owned();
        let mut req =
            format!("{}/ws/{user}", self.url.replacen("http", "ws", 1)).into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {}", self.token).parse()?);
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
        ws.send(Message::Text(
            json!({"type": "subscribe", "topics": ["workflow"]})
                .to_string()
                .into(),
        ))
        .await?;
        let ended = self.ended.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(f) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                if !matches!(
                    f["type"].as_str(),
                    Some("workflow.completed" | "workflow.failed" | "workflow.cancelled")
                ) {
                    continue;
                }
                let Some(id) = f["run_id"].as_str() else {
                    continue;
                };
                let mut e = ended.lock().unwrap_or_else(|p| p.into_inner());
                match e.waiting.remove(id) {
                    Some(tx) => {
                        let _ = tx.send(());
                    }
                    None => {
                        e.done.insert(id.to_owned());
                    }
                }
            }
        });
        Ok(())
    }
}

fn chain(kind: &str, model: &str) -> Value {
    let steps: Vec<Value> = (0..STEPS)
        .map(|i| {
            let prev = if i == 0 {
                String::new()
            } else {
                format!(" {{{{ steps.s{}.output | json }}}}", i - 1)
            };
            match kind {
                "template" => json!({"id": format!("s{i}"), "type": "template", "template": format!("step {i}{prev}")}),
                _ => json!({"id": format!("s{i}"), "type": "generate", "model": model, "max_tokens": 16,
                            "prompt": format!("step {i}{}", if i == 0 { String::new() } else { format!(" after {{{{ steps.s{}.output | json }}}}", i - 1) })}),
            }
        })
        .collect();
    json!({"name": format!("bench-{kind}"), "steps": steps})
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let c = Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(a.concurrency * 2)
            .build()?,
        url: a.url.trim_end_matches('/').to_owned(),
        token: a.token.clone(),
        ended: Arc::default(),
    };
    c.follow().await?;
    let wf_t = c.create(chain("template", &a.model)).await?;
    let wf_g = c.create(chain("generate", &a.model)).await?;
    // Warm-up: connections, the model's breaker, the views.
    for _ in 0..3 {
        c.run(&wf_t).await?;
        c.run(&wf_g).await?;
    }

    println!(
        "### One run at a time ({} runs each, 10 steps a run)",
        a.runs
    );
    println!();
    println!("| workflow | per step p50 | per step p99 | run p50 |");
    println!("|---|---|---|---|");
    for (name, wf) in [("10 template steps", &wf_t), ("10 generate steps", &wf_g)] {
        let mut runs = Vec::new();
        for _ in 0..a.runs {
            runs.push(c.run(wf).await?);
        }
        let s = summarize(runs.clone());
        let per = summarize(runs.iter().map(|d| *d / STEPS as u32).collect());
        println!(
            "| {name} | {} | {} | {} |",
            ms(per.p50),
            ms(per.p99),
            ms(s.p50)
        );
    }
    // The same 10 model calls made directly, one after another, as one "run".
    let mut direct = Vec::new();
    for _ in 0..a.runs {
        let t = Instant::now();
        for i in 0..STEPS {
            c.call(
                reqwest::Method::POST,
                "/ai/generate",
                Some(json!({"prompt": format!("step {i}"), "model_preference": a.model, "max_tokens": 16})),
            )
            .await?;
        }
        direct.push(t.elapsed());
    }
    let per = summarize(direct.iter().map(|d| *d / STEPS as u32).collect());
    let s = summarize(direct);
    println!(
        "| 10 direct `POST /ai/generate` calls (client-timed) | {} | {} | {} |",
        ms(per.p50),
        ms(per.p99),
        ms(s.p50)
    );
    println!();

    println!(
        "### Many at once ({} runs in flight, {} s each)",
        a.concurrency, a.seconds
    );
    println!();
    println!("| workflow | steps/s | runs completed | run p50 | run p99 |");
    println!("|---|---|---|---|---|");
    for (name, wf) in [("10 template steps", &wf_t), ("10 generate steps", &wf_g)] {
        let deadline = Instant::now() + Duration::from_secs(a.seconds);
        let started = Instant::now();
        let workers = (0..a.concurrency).map(|_| {
            let c = &c;
            async move {
                let mut times = Vec::new();
                while Instant::now() < deadline {
                    times.push(c.run(wf).await?);
                }
                anyhow::Ok(times)
            }
        });
        let mut all = Vec::new();
        for r in futures::future::join_all(workers).await {
            all.extend(r?);
        }
        let wall = started.elapsed().as_secs_f64();
        let n = all.len();
        let s = summarize(all);
        println!(
            "| {name} | {:.0} | {n} | {} | {} |",
            (n * STEPS) as f64 / wall,
            ms(s.p50),
            ms(s.p99)
        );
    }
    // The same model calls made directly, 10 in a row per client, as many clients at once.
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let started = Instant::now();
    let workers = (0..a.concurrency).map(|_| {
        let (c, model) = (&c, a.model.as_str());
        async move {
            let mut times = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                for i in 0..STEPS {
                    c.call(
                        reqwest::Method::POST,
                        "/ai/generate",
                        Some(json!({"prompt": format!("step {i}"), "model_preference": model, "max_tokens": 16})),
                    )
                    .await?;
                }
                times.push(t.elapsed());
            }
            anyhow::Ok(times)
        }
    });
    let mut all = Vec::new();
    for r in futures::future::join_all(workers).await {
        all.extend(r?);
    }
    let wall = started.elapsed().as_secs_f64();
    let n = all.len();
    let s = summarize(all);
    println!(
        "| 10 direct `POST /ai/generate` calls (client-timed) | {:.0} | {n} | {} | {} |",
        (n * STEPS) as f64 / wall,
        ms(s.p50),
        ms(s.p99)
    );
    Ok(())
}
