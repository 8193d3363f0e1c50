//! The cluster scenario's HTTP side: the load's users, rooms and workflows, the mixed API
//! requests, and how a client of a cluster retries.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use serde_json::{json, Value};

use super::{Args, Sample, Tally, User};

pub(super) fn pick_kind(n: u64, generate_share: f64) -> &'static str {
    // A fixed spread (deterministic, so runs compare): generation at its share, the rest
    // spread over reads of the caller, the catalogue, rooms and room history.
    let slot = (n.wrapping_mul(2654435761) % 1000) as f64 / 1000.0;
    if slot < generate_share {
        return "generate";
    }
    ["me", "models", "rooms", "history", "me", "rooms"][(n % 6) as usize]
}

pub(super) async fn api_call(
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
pub(super) async fn send_retrying(
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
pub(super) async fn setup(
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
