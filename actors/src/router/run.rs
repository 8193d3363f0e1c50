//! One routed request, on its own task: the attempts at each candidate (retries, failover,
//! breakers, timeouts), pieces forwarded to the caller, and the attempts recorded at the end.

use std::time::{Duration, Instant};

use futures::StreamExt;
use revo_events::family::generation::{GenerationEvent, TokenUsage};
use revo_events::family::models::GENERATION_STREAM;
use revo_events::{AppendRequest, EventFamily, ExpectedVersion, Usd};
use tokio::sync::mpsc;

use super::catalog::{Entry, Provider};
use super::provider::{self, ChatRequest, Piece, Reply, UpstreamError};
use super::{
    budget, Answer, AttemptReport, Candidate, Inner, Refusal, RouteRequest, TokenLogprob, Update,
};
use crate::model_thread;

/// One attempt's record.
struct Attempt {
    entry: Entry,
    outcome: &'static str,
    error: Option<UpstreamError>,
    finish_reason: Option<String>,
    usage: TokenUsage,
    usage_reported: bool,
    /// The most this attempt could cost (what its budgets hold for it).
    worst: Usd,
    first_ms: Option<u64>,
    duration: Duration,
    /// Tokens' log-probabilities (local models, when computed) and their confidence.
    logprobs: Vec<TokenLogprob>,
    confidence: Option<f64>,
    /// Why the cascade held this answer back.
    escalation: Option<&'static str>,
    /// The worker and device that generated a local answer.
    worker: Option<(String, String)>,
}

impl Attempt {
    /// Something came back but its usage never did (a provider that reports none, a cut
    /// stream): the attempt is charged its worst case, never nothing.
    fn usage_estimated(&self) -> bool {
        !self.usage_reported && self.worst > Usd::ZERO
    }

    fn cost(&self) -> Usd {
        if self.usage_estimated() {
            return self.worst;
        }
        self.entry.prices_sheet().cost(&self.usage)
    }

    fn report(&self) -> AttemptReport {
        AttemptReport {
            model: self.entry.name.clone(),
            provider: self.entry.provider.as_str(),
            outcome: self.outcome,
            error: self
                .error
                .as_ref()
                .map(|e| e.to_string())
                .or_else(|| self.escalation.map(str::to_owned)),
            cost_usd: self.cost(),
            confidence: self.confidence,
        }
    }
}

/// How an attempt ended.
enum Ended {
    Completed(String, Vec<serde_json::Value>),
    /// Failed before anything reached the caller: another try may serve.
    Before(UpstreamError),
    /// Failed (or the caller left) after pieces reached the caller.
    After(UpstreamError),
    /// Held back by the cascade (nothing reached the caller): the next candidate serves.
    Escalated,
}

/// The geometric mean of the tokens' probabilities: exp of their mean log-probability, in
/// [0, 1]. `None` without tokens, or from a model whose logits are not numbers (which must
/// never pass the cascade's bar).
pub(super) fn confidence(tokens: &[TokenLogprob]) -> Option<f64> {
    if tokens.is_empty() {
        return None;
    }
    let sum: f64 = tokens.iter().map(|t| f64::from(t.logprob)).sum();
    Some((sum / tokens.len() as f64).exp()).filter(|c| c.is_finite())
}

pub(super) async fn run(
    i: &Inner,
    req: &RouteRequest,
    candidates: Vec<Candidate>,
    tickets: &[budget::Ticket],
    tx: &mpsc::Sender<Update>,
) -> Result<Answer, Refusal> {
    let started = Instant::now();
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut last_err: Option<UpstreamError> = None;
    let mut answer: Option<(String, Vec<serde_json::Value>, usize)> = None;
    'models: for (n, cand) in candidates.iter().enumerate() {
        let decision = if n == 0 { "first_choice" } else { "fallback" };
        for retry in 0..=i.settings.max_retries {
            if !acquire(i, &cand.entry.name) {
                continue 'models;
            }
            i.metrics
                .decisions
                .with_label_values(&[if retry > 0 { "retry" } else { decision }])
                .inc();
            // The cascade judges a local answer only while a later candidate could do better.
            let gated =
                req.options.cascade && cand.entry.provider.is_local() && n + 1 < candidates.len();
            let (ended, attempt) = attempt(i, req, cand, gated, tx).await;
            let breaker_result = match &ended {
                Ended::Completed(..) | Ended::Escalated => None,
                Ended::Before(e) | Ended::After(e) => Some(e.clone()),
            };
            settle_breaker(i, &cand.entry.name, breaker_result.as_ref());
            attempts.push(attempt);
            match ended {
                Ended::Completed(text, calls) => {
                    answer = Some((text, calls, attempts.len() - 1));
                    break 'models;
                }
                Ended::After(e) => {
                    last_err = Some(e);
                    break 'models;
                }
                Ended::Escalated => {
                    let why = attempts.last().and_then(|a| a.escalation).unwrap_or("");
                    i.metrics
                        .escalations
                        .with_label_values(&[&cand.entry.name, why])
                        .inc();
                    continue 'models;
                }
                Ended::Before(e) => {
                    let fault = e.is_request_fault();
                    let again = e.retryable() && retry < i.settings.max_retries;
                    let wait = backoff(i.settings.retry_base, retry, e.retry_after());
                    last_err = Some(e);
                    if fault {
                        break 'models;
                    }
                    let too_long = wait > i.settings.max_retry_wait
                        || started.elapsed() + wait > i.settings.total_timeout;
                    if !again || too_long {
                        continue 'models;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
    let reports: Vec<AttemptReport> = attempts.iter().map(Attempt::report).collect();
    let holds: Vec<revo_events::Hold> = tickets.iter().map(|t| t.hold.clone()).collect();
    record(i, req, &attempts, &holds).await;
    let provider_time: Duration = attempts.iter().map(|a| a.duration).sum();
    if let Some((text, tool_calls, at)) = answer {
        let a = &attempts[at];
        i.metrics
            .overhead
            .with_label_values(&[a.entry.provider.as_str()])
            .observe(
                started
                    .elapsed()
                    .saturating_sub(provider_time)
                    .as_secs_f64(),
            );
        return Ok(Answer {
            model: a.entry.name.clone(),
            provider: a.entry.provider.as_str(),
            upstream_model: a.entry.model.clone(),
            served_locally: a.entry.provider.is_local(),
            text,
            tool_calls,
            finish_reason: a.finish_reason.clone().unwrap_or_else(|| "stop".into()),
            usage: a.usage,
            cost: attempts
                .iter()
                .fold(Usd::ZERO, |s, a| s.checked_add(a.cost()).unwrap_or(s)),
            attempts: reports,
            logprobs: if req.logprobs.is_some() {
                a.logprobs.clone()
            } else {
                Vec::new()
            },
            confidence: a.confidence,
        });
    }
    let last_local = attempts.last().is_some_and(|a| a.entry.provider.is_local());
    let mut refusal = match last_err {
        // A local model's own failure keeps its code and status (`context_length_exceeded`,
        // `model_busy`, `worker_lost`, ...), as the local APIs have always answered.
        Some(UpstreamError::Status {
            status,
            code: Some(code),
            message,
            ..
        }) if last_local => {
            let code = model_thread::known_code(&code);
            let mut r = Refusal::new(status, code, message);
            if code == "model_busy" {
                r.retry_after = Some(Duration::from_secs(1));
            }
            r
        }
        Some(e) if e.is_request_fault() => {
            let status = match &e {
                UpstreamError::Status { status, .. } => *status,
                _ => 400,
            };
            Refusal::new(status, "upstream_rejected", e.to_string())
        }
        Some(e) => {
            let mut r = Refusal::new(502, e.code(), e.to_string());
            r.retry_after = e.retry_after();
            r
        }
        None => Refusal::new(
            503,
            "no_model_available",
            "every candidate's circuit opened before it could be tried",
        ),
    };
    refusal.attempts = reports;
    Err(refusal)
}

/// Takes the model's breaker for one request.
fn acquire(i: &Inner, name: &str) -> bool {
    let mut b = i.breakers.lock().unwrap_or_else(|p| p.into_inner());
    b.entry(name.to_owned())
        .or_default()
        .acquire(Instant::now())
}

fn settle_breaker(i: &Inner, name: &str, err: Option<&UpstreamError>) {
    let mut b = i.breakers.lock().unwrap_or_else(|p| p.into_inner());
    let br = b.entry(name.to_owned()).or_default();
    match err {
        None => br.success(&i.settings.breaker),
        Some(e) if e.trips_breaker() => {
            br.failure(Instant::now(), e.retry_after(), &i.settings.breaker)
        }
        // Not the model's fault: the probe (if this was it) is handed back.
        Some(_) => br.release(),
    }
    i.metrics
        .breaker_state
        .with_label_values(&[name])
        .set(br.state(Instant::now()).gauge());
}

/// Exponential back-off with full jitter, never shorter than the provider asked.
fn backoff(base: Duration, retry: u32, retry_after: Option<Duration>) -> Duration {
    let cap = base.saturating_mul(2u32.saturating_pow(retry.min(10)));
    let jittered = cap.mul_f64(rand::random::<f64>());
    jittered.max(retry_after.unwrap_or_default())
}

/// One attempt at one model; pieces go to the caller as they come, or, `gated` by the
/// cascade, once the whole answer has been judged.
async fn attempt(
    i: &Inner,
    req: &RouteRequest,
    cand: &Candidate,
    gated: bool,
    tx: &mpsc::Sender<Update>,
) -> (Ended, Attempt) {
    let t0 = Instant::now();
    let mut rec = Attempt {
        entry: cand.entry.clone(),
        outcome: "failed",
        error: None,
        finish_reason: None,
        usage: TokenUsage::default(),
        usage_reported: false,
        worst: cand.worst,
        first_ms: None,
        duration: Duration::ZERO,
        logprobs: Vec::new(),
        confidence: None,
        escalation: None,
        worker: None,
    };
    let s = &i.settings;
    let deadline = tokio::time::Instant::now() + s.total_timeout;
    let opened = match tokio::time::timeout_at(
        deadline.min(tokio::time::Instant::now() + s.first_token_timeout),
        open(i, req, cand),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout("first_token")),
    };
    let mut reply = match opened {
        Ok(r) => r,
        Err(e) => {
            rec.duration = t0.elapsed();
            rec.error = Some(e.clone());
            // Refused or unanswered: nothing was billed.
            rec.usage_reported = true;
            return (Ended::Before(e), rec);
        }
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut sent = false;
    let mut caller_gone = false;
    // What a gated answer would have sent, released if it passes.
    let mut held: Vec<Update> = Vec::new();
    let started = || Update::Started {
        model: cand.entry.name.clone(),
        provider: cand.entry.provider.as_str(),
        served_locally: cand.entry.provider.is_local(),
    };
    let local = cand.entry.provider == Provider::Local;
    let ended = loop {
        let limit = if rec.first_ms.is_none() {
            t0 + s.first_token_timeout
        } else {
            Instant::now() + s.idle_timeout
        };
        let wait = tokio::time::Instant::from_std(limit).min(deadline);
        let piece = match tokio::time::timeout_at(wait, reply.next()).await {
            Err(_) => Err(UpstreamError::Timeout(
                if tokio::time::Instant::now() >= deadline {
                    "total"
                } else if rec.first_ms.is_none() {
                    "first_token"
                } else {
                    "idle"
                },
            )),
            Ok(None) => Err(UpstreamError::Broken(
                "the answer ended without a finish".into(),
            )),
            Ok(Some(p)) => p,
        };
        let piece = match piece {
            Ok(p) => p,
            Err(e) if sent || caller_gone => break Ended::After(e),
            Err(e) => break Ended::Before(e),
        };
        if rec.first_ms.is_none() {
            rec.first_ms = Some(t0.elapsed().as_millis() as u64);
        }
        let update = match piece {
            Piece::Done {
                finish_reason,
                usage,
            } => {
                rec.usage_reported = usage.is_some();
                rec.usage = usage.unwrap_or_default();
                rec.confidence = confidence(&rec.logprobs);
                if gated {
                    let bar = req
                        .options
                        .confidence_threshold
                        .or(cand.entry.confidence_threshold)
                        .unwrap_or(s.cascade_threshold);
                    // Cut short by a cap below what the request asked (the model's own
                    // maximum, or cost_limit's): a later model may finish it. Cut by the
                    // request's own max_tokens, any model would be cut alike.
                    let asked = req.max_tokens.unwrap_or(s.default_max_tokens);
                    // Revo's engine always gives log-probabilities (none: an empty answer); a
                    // local server that gives none cannot be judged on confidence.
                    let judged = cand.entry.provider == Provider::Local || !rec.logprobs.is_empty();
                    let why = if finish_reason == "length" && cand.max_tokens < asked {
                        Some("truncated")
                    } else if judged && rec.confidence.is_none_or(|c| c < bar) {
                        Some("low_confidence")
                    } else {
                        None
                    };
                    rec.finish_reason = Some(finish_reason);
                    if why.is_some() {
                        rec.escalation = why;
                        break Ended::Escalated;
                    }
                    // It passed: what was held back goes out now.
                    for u in std::iter::once(started()).chain(held.drain(..)) {
                        if tx.send(u).await.is_err() {
                            caller_gone = true;
                            break;
                        }
                    }
                } else {
                    rec.finish_reason = Some(finish_reason);
                }
                break Ended::Completed(std::mem::take(&mut text), std::mem::take(&mut calls));
            }
            Piece::Worker { node, device } => {
                rec.worker = Some((node, device));
                continue;
            }
            Piece::Logprobs(l) => {
                let wanted = req.logprobs.is_some();
                let update = wanted.then(|| Update::Logprobs(l.clone()));
                rec.logprobs.push(l);
                match update {
                    Some(u) => u,
                    None => continue,
                }
            }
            Piece::Text(t) => {
                text.push_str(&t);
                Update::Text(t)
            }
            Piece::ToolCall(v) => {
                calls.push(v.clone());
                Update::ToolCall(v)
            }
        };
        if caller_gone {
            continue;
        }
        if gated {
            held.push(update);
            continue;
        }
        if !sent {
            sent = true;
            caller_gone = tx.send(started()).await.is_err();
        }
        if !caller_gone {
            caller_gone = tx.send(update).await.is_err();
        }
        if caller_gone && local {
            // A local generation is free and its worker better spent elsewhere: drop it.
            break Ended::After(UpstreamError::Broken("the caller went away".into()));
        }
    };
    rec.duration = t0.elapsed();
    match &ended {
        Ended::Completed(..) => rec.outcome = "completed",
        Ended::Escalated => rec.outcome = "escalated",
        Ended::After(_) if caller_gone => rec.outcome = "cancelled",
        _ => {}
    }
    if let Ended::Before(e) | Ended::After(e) = &ended {
        rec.error = Some(e.clone());
        // Nothing came back, so nothing was billed; something did and its usage never came.
        rec.usage_reported = rec.first_ms.is_none();
    }
    (ended, rec)
}

/// Opens the model's answer.
async fn open(i: &Inner, req: &RouteRequest, cand: &Candidate) -> Result<Reply, UpstreamError> {
    let e = &cand.entry;
    // The cascade needs the log-probabilities of local answers (a local model's or a local
    // server's) even when the caller does not, and records the last tier's confidence too.
    let logprobs = req
        .logprobs
        .or((req.options.cascade && e.provider.is_local()).then_some(0));
    if e.provider == Provider::Local {
        let local = i.local.as_ref();
        return provider::local::call(local, &e.model, req, cand.max_tokens, logprobs);
    }
    let chat = ChatRequest {
        model: e.model.clone(),
        messages: req.input.messages(),
        max_tokens: cand.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stop: req.stop.clone(),
        seed: req.seed,
        tools: req.tools.clone(),
        tool_choice: req.tool_choice.clone(),
        logprobs,
        stream: req.stream,
    };
    let key = e
        .api_key_env
        .as_ref()
        .and_then(|k| i.keys.get(k))
        .map(String::as_str);
    let base = e.base_url.as_deref().unwrap_or_default();
    match e.provider {
        Provider::Anthropic => provider::anthropic::call(&i.http, base, key, &chat).await,
        Provider::Openai => {
            provider::openai::call(&i.http, base, key, &chat, provider::openai::Dialect::Openai)
                .await
        }
        _ => {
            let d = provider::openai::Dialect::Compatible;
            provider::openai::call(&i.http, base, key, &chat, d).await
        }
    }
}

/// Appends every attempt of the request in one append (logged, not returned, on failure:
/// the answer was produced and is not withheld for the ledger's sake).
async fn record(i: &Inner, req: &RouteRequest, attempts: &[Attempt], holds: &[revo_events::Hold]) {
    if attempts.is_empty() {
        return;
    }
    let mut events = Vec::with_capacity(attempts.len());
    for (n, a) in attempts.iter().enumerate() {
        let e = &a.entry;
        let (model, provider) = (e.name.as_str(), e.provider.as_str());
        let m = &i.metrics;
        m.attempts
            .with_label_values(&[model, provider, a.outcome])
            .inc();
        for (kind, v) in [
            ("input", a.usage.input),
            ("cache_read", a.usage.cache_read),
            ("cache_write", a.usage.cache_write),
            ("output", a.usage.output),
            ("reasoning", a.usage.reasoning),
        ] {
            if v > 0 {
                m.tokens
                    .with_label_values(&[model, provider, kind])
                    .inc_by(v);
            }
        }
        let cost = a.cost();
        if cost > Usd::ZERO {
            let dollars = cost.picos() as f64 / 1e12;
            m.cost_usd
                .with_label_values(&[model, provider])
                .inc_by(dollars);
        }
        let ev = GenerationEvent::Attempt {
            id: req.id.clone(),
            attempt: n as u32 + 1,
            user_id: req.user_id,
            key_id: req.key_id,
            model: e.name.clone(),
            provider: provider.into(),
            upstream_model: e.model.clone(),
            served_locally: e.provider.is_local(),
            outcome: a.outcome.into(),
            error_code: a.error.as_ref().map(|e| e.code().to_owned()),
            finish_reason: a.finish_reason.clone(),
            usage: a.usage,
            usage_reported: a.usage_reported,
            usage_estimated: a.usage_estimated(),
            prices: e.prices_sheet(),
            cost_usd: cost,
            time_to_first_token_ms: a.first_ms,
            duration_ms: a.duration.as_millis() as u64,
            holds: holds.to_vec(),
            confidence: a.confidence,
            escalation: a.escalation.map(str::to_owned),
            node: a.worker.as_ref().map(|w| w.0.clone()),
            device: a.worker.as_ref().map(|w| w.1.clone()),
        };
        match ev.to_new_event(req.meta.clone()) {
            Ok(new) => events.push(new),
            Err(e) => tracing::error!(error = %e, "cannot encode a generation attempt"),
        }
    }
    let append = AppendRequest::new(
        GENERATION_STREAM,
        &req.id,
        ExpectedVersion::NoStream,
        events.clone(),
    );
    let r = match i.store.append(append).await {
        // The id was used before (a client's reused request id): the spend is recorded all
        // the same, after what is there, never dropped.
        Err(revo_events::StoreError::Conflict { .. }) => {
            tracing::warn!(id = %req.id, "a generation id was used before; recording after it");
            let again =
                AppendRequest::new(GENERATION_STREAM, &req.id, ExpectedVersion::Any, events);
            i.store.append(again).await.map(|_| ())
        }
        r => r.map(|_| ()),
    };
    if let Err(e) = r {
        tracing::error!(id = %req.id, error = %e, "could not record a generation's attempts");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_is_the_geometric_mean_and_never_a_nan() {
        let t = |logprob: f32| TokenLogprob {
            token: "x".into(),
            logprob,
            top: Vec::new(),
        };
        let c = confidence(&[t(0.5f32.ln()), t(0.125f32.ln())]).unwrap();
        assert!((c - 0.25).abs() < 1e-6, "{c}");
        assert_eq!(confidence(&[]), None);
        assert_eq!(confidence(&[t(f32::NAN), t(0.0)]), None);
        assert_eq!(confidence(&[t(f32::NEG_INFINITY)]), Some(0.0));
    }

    #[test]
    fn back_off_is_jittered_under_its_cap_and_honours_retry_after() {
        for retry in 0..4 {
            let d = backoff(Duration::from_millis(100), retry, None);
            assert!(d <= Duration::from_millis(100 << retry));
        }
        let d = backoff(Duration::from_millis(100), 0, Some(Duration::from_secs(2)));
        assert_eq!(d, Duration::from_secs(2));
    }
}
