//! The cost-optimising router: for each request, pick the models that may serve it from the
//! catalogue (`catalog.rs`), cheapest and most local first, and try them in turn.
//!
//! - **Selection** (at once, before anything is sent): `force_local`, `model_preference`,
//!   capabilities (tools), the context window, the key a cloud model needs, the workers a
//!   local model needs, the model's circuit breaker (`breaker.rs`), and `cost_limit`, which
//!   caps the output tokens asked for so that the request cannot cost more (the prompt's worst
//!   case is its byte count, since a token covers at least one byte).
//! - **Attempts** run on their own task ([`Router::route`] returns a receiver): retries of the
//!   same model with jittered back-off on 429/5xx/529 and connection errors (at least the
//!   provider's `Retry-After`), then the next candidate, transparently until the first piece
//!   of the answer has gone out; after it, a failure ends the answer with an error.
//! - **Cascade** (`route: "cascade"`): a local model's (or local server's) answer that is not
//!   the last candidate is held back until it ends; its confidence (the geometric mean of its
//!   tokens' probabilities, from the log-probabilities) must reach the threshold and it must
//!   not be cut short by a cap below the request's (the model's maximum, or `cost_limit`'s),
//!   or the request escalates to the next candidate. Both attempts
//!   are recorded, the held-back one as `escalated` with its confidence.
//! - **Recording**: when the request ends, every attempt is appended as one
//!   `generation.attempt` event each, in one append, before the caller hears the outcome. The
//!   task reads a cloud answer to its end even when the caller has gone, so the ledger holds
//!   what the provider bills; a local generation stops (it is free, and the GPU is better
//!   spent elsewhere).

pub mod breaker;
pub mod budget;
pub mod catalog;
mod cost;
mod metrics;
pub mod provider;
mod run;

pub use cost::{output_cap, worst_cost};
pub use metrics::RouterMetrics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use revo_engine::local::TokenLogprob;
use revo_events::family::generation::TokenUsage;
use revo_events::{EventMeta, EventStore, Usd};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::model_thread::{Job, SubmitError};
use breaker::{Breaker, BreakerSettings, State};
use catalog::{Catalog, Entry, Provider};
use cost::TOOLS_ALLOWANCE;
use provider::ChatMessage;

/// The cascade's default bar: a local answer whose tokens average (geometrically) under this
/// probability escalates.
pub const DEFAULT_CASCADE_THRESHOLD: f64 = 0.5;

/// How long a local server's probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The local models, as the router sees them (the edge's model client).
pub trait LocalModels: Send + Sync {
    fn submit(&self, model: &str, job: Job) -> Result<(), SubmitError>;
    fn live_workers(&self, model: &str) -> usize;
}

#[derive(Debug, Clone)]
pub struct RouterSettings {
    pub connect_timeout: Duration,
    /// From sending the request to the first piece of the answer.
    pub first_token_timeout: Duration,
    /// Longest silence between two pieces.
    pub idle_timeout: Duration,
    /// Longest a whole attempt may take.
    pub total_timeout: Duration,
    /// Retries of one model before the next is tried.
    pub max_retries: u32,
    pub retry_base: Duration,
    /// A retry that would wait longer (a long `Retry-After`) goes to the next model instead.
    pub max_retry_wait: Duration,
    /// `max_tokens` when the request names none.
    pub default_max_tokens: u32,
    pub breaker: BreakerSettings,
    /// The cascade's confidence bar when neither the request nor the model sets one.
    pub cascade_threshold: f64,
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            connect_timeout: Duration::from_secs(5),
            first_token_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(600),
            max_retries: 2,
            retry_base: Duration::from_millis(250),
            max_retry_wait: Duration::from_secs(2),
            default_max_tokens: 1024,
            breaker: BreakerSettings::default(),
            cascade_threshold: DEFAULT_CASCADE_THRESHOLD,
        }
    }
}

/// What to send: a chat, or a bare prompt (OpenAI's completions; a cloud model gets it as
/// one user message).
#[derive(Debug, Clone)]
pub enum Input {
    Chat(Vec<ChatMessage>),
    Prompt(String),
}

impl Input {
    fn messages(&self) -> Vec<ChatMessage> {
        match self {
            Input::Chat(m) => m.clone(),
            Input::Prompt(p) => vec![ChatMessage {
                role: "user".into(),
                content: p.clone(),
            }],
        }
    }

    /// Bytes of text sent: an upper bound on its tokens (every token covers a byte or more),
    /// plus a few tokens per message for the template's role markers (a prompt goes to chat
    /// providers as one message).
    fn worst_case_tokens(&self) -> u64 {
        match self {
            Input::Chat(m) => m.iter().map(|m| m.content.len() as u64 + 8).sum(),
            Input::Prompt(p) => p.len() as u64 + 8,
        }
    }
}

/// The caller's wishes, as `/ai/generate` names them.
#[derive(Debug, Clone, Default)]
pub struct RouteOptions {
    pub force_local: bool,
    /// A catalogue name; `None` is `auto`.
    pub model_preference: Option<String>,
    /// Most this request may cost.
    pub cost_limit: Option<Usd>,
    /// Whether models other than the first choice may serve.
    pub fallback_allowed: bool,
    /// `route: "cascade"`: local answers are held back and judged before they are served.
    pub cascade: bool,
    /// The cascade's bar for this request (0 to 1); `None`: the model's, then the router's.
    pub confidence_threshold: Option<f64>,
    /// `model_preference` names a model of the local registry that the catalogue does not
    /// list (the caller checked it exists): it serves as a free local entry.
    pub registry_model: bool,
}

#[derive(Debug, Clone)]
pub struct RouteRequest {
    /// The request id (`generation/<id>` in the log).
    pub id: String,
    pub user_id: Uuid,
    pub key_id: Option<Uuid>,
    pub meta: EventMeta,
    pub input: Input,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    /// Local models only: keep the `top_k` likeliest tokens (0: all), and the repetition
    /// penalty (1: off). Cloud providers do not take them.
    pub top_k: Option<u32>,
    pub repetition_penalty: Option<f32>,
    /// Return each token's log-probability and this many alternatives (local models).
    pub logprobs: Option<usize>,
    /// Ask providers for a stream (the caller streams) or a whole answer.
    pub stream: bool,
    pub options: RouteOptions,
}

/// One attempt, as the answer reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttemptReport {
    pub model: String,
    pub provider: &'static str,
    /// `completed`, `failed`, `cancelled` or `escalated` (held back by the cascade).
    pub outcome: &'static str,
    /// Why it failed, or why the cascade escalated (`low_confidence`, `truncated`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub cost_usd: Usd,
    /// The answer's confidence, where log-probabilities were computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}

/// A served request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub model: String,
    pub provider: &'static str,
    pub upstream_model: String,
    pub served_locally: bool,
    pub text: String,
    /// OpenAI-format `tool_calls` pieces, in order (deltas when streamed).
    pub tool_calls: Vec<serde_json::Value>,
    pub finish_reason: String,
    pub usage: TokenUsage,
    pub cost: Usd,
    pub attempts: Vec<AttemptReport>,
    /// Each token's log-probabilities, when the request asked and the model gave them.
    pub logprobs: Vec<TokenLogprob>,
    /// The geometric mean of the tokens' probabilities, where they were computed.
    pub confidence: Option<f64>,
}

/// A request no model served.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
    pub attempts: Vec<AttemptReport>,
    /// For `budget_exceeded`: what the budget has left in its period (dollars).
    pub remaining: Option<String>,
}

impl Refusal {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
            retry_after: None,
            attempts: Vec::new(),
            remaining: None,
        }
    }
}

/// What the caller hears, in order: `Started` once a model answers, its pieces, then `Done`.
#[derive(Debug)]
pub enum Update {
    Started {
        model: String,
        provider: &'static str,
        served_locally: bool,
    },
    Text(String),
    ToolCall(serde_json::Value),
    /// A token's log-probabilities (when the request asked), before the text it completes.
    Logprobs(TokenLogprob),
    Done(Box<Result<Answer, Refusal>>),
}

/// A model the router may try, with the output cap it may ask for.
#[derive(Debug, Clone)]
struct Candidate {
    entry: Entry,
    max_tokens: u32,
    /// The most this model can cost for the request.
    worst: Usd,
}

/// Why a model is not available now, or `None`.
pub fn unavailable_reason(
    entry: &Entry,
    keys: &HashMap<String, String>,
    local: &dyn LocalModels,
) -> Option<String> {
    match entry.provider {
        Provider::Local => (local.live_workers(&entry.model) == 0)
            .then(|| format!("no worker serves local model `{}`", entry.model)),
        _ => match &entry.api_key_env {
            Some(env) if !keys.contains_key(env) => Some(format!("no API key: set {env}")),
            _ => None,
        },
    }
}

struct Inner {
    catalog: Arc<Catalog>,
    settings: RouterSettings,
    http: reqwest::Client,
    /// `api_key_env` → the key, read once at start.
    keys: HashMap<String, String>,
    local: Arc<dyn LocalModels>,
    store: Arc<dyn EventStore>,
    breakers: Mutex<HashMap<String, Breaker>>,
    /// OpenAI-compatible servers that did not answer their last probe, and why.
    unreachable: Mutex<HashMap<String, String>>,
    metrics: RouterMetrics,
    budgets: Option<budget::Budgets>,
    /// The requests being routed, drained at shutdown so each is recorded.
    tasks: tokio_util::task::TaskTracker,
}

/// The router's handle (cheap to clone).
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl Router {
    pub fn new(
        catalog: Arc<Catalog>,
        settings: RouterSettings,
        keys: HashMap<String, String>,
        local: Arc<dyn LocalModels>,
        store: Arc<dyn EventStore>,
        metrics: RouterMetrics,
        budgets: Option<budget::Budgets>,
    ) -> Result<Router, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Router {
            inner: Arc::new(Inner {
                catalog,
                settings,
                http,
                keys,
                local,
                store,
                breakers: Mutex::new(HashMap::new()),
                unreachable: Mutex::new(HashMap::new()),
                metrics,
                budgets,
                tasks: tokio_util::task::TaskTracker::new(),
            }),
        })
    }

    /// Waits (up to `timeout`) for the requests being routed to end and be recorded; called
    /// after the HTTP server has stopped and before the actors (local workers, the store).
    pub async fn drain(&self, timeout: Duration) -> bool {
        let t = &self.inner.tasks;
        t.close();
        tokio::time::timeout(timeout, t.wait()).await.is_ok()
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// Why `entry` cannot serve now (keys, workers, breaker), or `None`.
    pub fn why_unavailable(&self, entry: &Entry) -> Option<String> {
        let i = &self.inner;
        if let Some(why) = unavailable_reason(entry, &i.keys, i.local.as_ref()) {
            return Some(why);
        }
        if let Some(why) = self.unreachable(&entry.name) {
            return Some(why);
        }
        let now = Instant::now();
        let b = i.breakers.lock().unwrap_or_else(|p| p.into_inner());
        match b.get(&entry.name) {
            Some(br) if !br.available(now) => {
                let secs = br
                    .retry_at()
                    .map_or(0, |t| t.saturating_duration_since(now).as_secs());
                Some(format!(
                    "circuit open after repeated failures (next probe in {secs} s)"
                ))
            }
            _ => None,
        }
    }

    fn unreachable(&self, name: &str) -> Option<String> {
        let u = self
            .inner
            .unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        u.get(name).cloned()
    }

    /// Probes every OpenAI-compatible server (`GET {base_url}/models`) now, and then every
    /// `every`, under the supervisor as `router.probe`: a server that does not answer is
    /// skipped by the router (and shown so in `GET /ai/models`) until it does.
    pub fn start_probe(&self, sup: &crate::kit::Supervisor, every: Duration) {
        let router = self.clone();
        sup.spawn("router.probe", move |ctx| {
            let router = router.clone();
            async move {
                // An unreachable server is the server's state, shown per model in
                // `GET /ai/models`, not this actor's.
                ctx.health.ready();
                loop {
                    router.probe_once().await;
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(every) => {}
                    }
                }
            }
        });
    }

    pub async fn probe_once(&self) {
        let i = &self.inner;
        let servers = i
            .catalog
            .entries
            .iter()
            .filter(|e| e.provider == Provider::OpenaiCompatible);
        let checks = servers.map(|e| async move {
            let url = format!(
                "{}/models",
                e.base_url
                    .as_deref()
                    .unwrap_or_default()
                    .trim_end_matches('/')
            );
            let mut rb = i.http.get(url).timeout(PROBE_TIMEOUT);
            if let Some(k) = e.api_key_env.as_ref().and_then(|k| i.keys.get(k)) {
                rb = rb.bearer_auth(k);
            }
            let why = match rb.send().await {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("the server answered its probe with {}", r.status())),
                Err(e) => Some(format!(
                    "the server is unreachable: {}",
                    provider::describe(e)
                )),
            };
            (e.name.clone(), why)
        });
        let results = futures::future::join_all(checks).await;
        let mut u = i.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        for (name, why) in results {
            match why {
                Some(w) => u.insert(name, w),
                None => u.remove(&name),
            };
        }
    }

    /// The breaker state of a model.
    pub fn breaker_state(&self, name: &str) -> &'static str {
        let b = self
            .inner
            .breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        b.get(name)
            .map_or(State::Closed, |br| br.state(Instant::now()))
            .as_str()
    }

    /// Chooses the models for `req` and starts trying them. A request no model may serve is
    /// refused at once (nothing is recorded: nothing was sent).
    pub async fn route(&self, req: RouteRequest) -> Result<mpsc::Receiver<Update>, Refusal> {
        let no_candidate = |r: Refusal| {
            let label = if r.code == "budget_exceeded" {
                "budget_refused"
            } else {
                "no_candidate"
            };
            self.inner
                .metrics
                .decisions
                .with_label_values(&[label])
                .inc();
            r
        };
        let mut candidates = self.candidates(&req).map_err(no_candidate)?;
        let tickets = self
            .admit(&req, &mut candidates)
            .await
            .map_err(no_candidate)?;
        // Bounded: a local model's pieces come as fast as it decodes; a slow reader slows the
        // forwarding task, never memory.
        let (tx, rx) = mpsc::channel(256);
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            let outcome = run::run(&inner, &req, candidates, &tickets, &tx).await;
            // Settled after the attempts are recorded: a lease released later never precedes
            // the spend it covered in the log.
            if let Some(b) = &inner.budgets {
                let cost = match &outcome {
                    Ok(a) => a.cost,
                    Err(r) => r
                        .attempts
                        .iter()
                        .fold(Usd::ZERO, |s, a| s.checked_add(a.cost_usd).unwrap_or(s)),
                };
                for t in tickets {
                    b.settle(t, cost).await;
                }
            }
            let _ = tx.send(Update::Done(Box::new(outcome))).await;
        });
        Ok(rx)
    }

    /// The most `req` can cost on whichever model may serve it now (a workflow checks it
    /// against its run's cost limit before starting a step); a refusal if none may.
    pub fn worst_case(&self, req: &RouteRequest) -> Result<Usd, Refusal> {
        Ok(self
            .candidates(req)?
            .iter()
            .map(|c| c.worst)
            .max()
            .unwrap_or(Usd::ZERO))
    }

    /// Holds the request's worst case on the caller's budgets. A budget that cannot pay
    /// leaves only the free (local) models; with none, the request is refused with `402`.
    async fn admit(
        &self,
        req: &RouteRequest,
        candidates: &mut Vec<Candidate>,
    ) -> Result<Vec<budget::Ticket>, Refusal> {
        let Some(b) = &self.inner.budgets else {
            return Ok(Vec::new());
        };
        let worst = candidates
            .iter()
            .map(|c| c.worst)
            .max()
            .unwrap_or(Usd::ZERO);
        if worst == Usd::ZERO {
            return Ok(Vec::new());
        }
        let keys = match b.lineage(req.key_id).await {
            Ok(k) => k,
            Err(e) => {
                return Err(Refusal::new(
                    503,
                    "budget_unavailable",
                    format!("budgets cannot be checked now: {e}"),
                ))
            }
        };
        if !b.applies(req.user_id, &keys) {
            return Ok(Vec::new());
        }
        match b.admit(req.user_id, &keys, worst).await {
            Ok(t) => Ok(t),
            Err(e) => {
                candidates.retain(|c| c.worst == Usd::ZERO);
                if !candidates.is_empty() {
                    // A spent cloud budget never blocks free local models.
                    return Ok(Vec::new());
                }
                Err(match e {
                    budget::BudgetError::Exceeded(x) => {
                        let mut r = Refusal::new(
                            402,
                            "budget_exceeded",
                            format!(
                                "a budget ({}, period {}) has ${} left, less than this request's worst case ${worst}; free local models were not available",
                                x.budget_id, x.period, x.remaining
                            ),
                        );
                        r.remaining = Some(x.remaining.to_string());
                        r
                    }
                    budget::BudgetError::Store(m) => Refusal::new(503, "budget_unavailable", m),
                })
            }
        }
    }

    fn candidates(&self, req: &RouteRequest) -> Result<Vec<Candidate>, Refusal> {
        let i = &self.inner;
        let o = &req.options;
        let entries = &i.catalog.entries;
        let mut order: Vec<&Entry> = Vec::with_capacity(entries.len());
        let adhoc;
        if let Some(name) = &o.model_preference {
            let first = match entries.iter().find(|e| &e.name == name) {
                Some(e) => e,
                None if o.registry_model => {
                    adhoc = Entry::registry_model(name);
                    &adhoc
                }
                None => {
                    return Err(Refusal::new(
                        404,
                        "model_not_found",
                        format!("no model `{name}` in the catalogue (GET /ai/models lists them)"),
                    ))
                }
            };
            order.push(first);
        }
        if o.model_preference.is_none() || o.fallback_allowed {
            let first = o.model_preference.as_deref();
            order.extend(entries.iter().filter(|e| Some(e.name.as_str()) != first));
        }
        let worst_in = req.input.worst_case_tokens()
            + req
                .tools
                .as_ref()
                .map_or(0, |t| t.to_string().len() as u64 + TOOLS_ALLOWANCE);
        // A realistic estimate for fitting the window (about 4 bytes a token); the model
        // itself refuses a prompt that does not fit, and the next one is tried.
        let estimate_in = worst_in / 4;
        let wants_tools = req.tools.is_some();
        let now = Instant::now();
        let breakers = i.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let mut why = Vec::new();
        // Whether every model skipped was unavailable now (no worker, key, server or breaker)
        // rather than unfit for the request.
        let mut only_down = true;
        for e in order {
            let skip = |why: &mut Vec<String>, reason: String| {
                why.push(format!("{}: {reason}", e.name));
            };
            only_down = false;
            if o.force_local && !e.provider.is_local() {
                skip(&mut why, "not local (force_local)".into());
                continue;
            }
            if wants_tools && !e.capabilities.iter().any(|c| c == "tools") {
                skip(&mut why, "does not take tools".into());
                continue;
            }
            if estimate_in >= u64::from(e.context_window) {
                skip(
                    &mut why,
                    format!(
                        "the prompt (about {estimate_in} tokens) does not fit its {}-token window",
                        e.context_window
                    ),
                );
                continue;
            }
            if let Some(reason) = unavailable_reason(e, &i.keys, i.local.as_ref())
                .or_else(|| self.unreachable(&e.name))
            {
                skip(&mut why, reason);
                only_down = true;
                continue;
            }
            if breakers.get(&e.name).is_some_and(|b| !b.available(now)) {
                skip(&mut why, "circuit open".into());
                only_down = true;
                continue;
            }
            let asked = req.max_tokens.unwrap_or(i.settings.default_max_tokens);
            let mut max_tokens = asked.min(e.max_output_tokens);
            if let Some(limit) = o.cost_limit {
                match output_cap(&e.prices_sheet(), worst_in, limit) {
                    Some(cap) if cap > 0 => max_tokens = max_tokens.min(cap),
                    _ => {
                        skip(
                            &mut why,
                            format!("cost_limit ${limit} cannot pay for the prompt and one output token"),
                        );
                        continue;
                    }
                }
            }
            let p = e.prices_sheet();
            let worst = worst_cost(&p, worst_in, max_tokens);
            out.push(Candidate {
                entry: e.clone(),
                max_tokens,
                worst,
            });
        }
        if !o.fallback_allowed {
            out.truncate(1);
        }
        if out.is_empty() {
            // One named model that is down says so, as the local completions API always has.
            let code = if why.len() == 1 && only_down {
                "model_unavailable"
            } else {
                "no_model_available"
            };
            return Err(Refusal::new(
                503,
                code,
                format!("no model can serve this request now: {}", why.join("; ")),
            ));
        }
        Ok(out)
    }
}
