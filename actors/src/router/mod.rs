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
//! - **Recording**: when the request ends, every attempt is appended as one
//!   `generation.attempt` event each, in one append, before the caller hears the outcome. The
//!   task reads a cloud answer to its end even when the caller has gone, so the ledger holds
//!   what the provider bills; a local generation stops (it is free, and the GPU is better
//!   spent elsewhere).

pub mod breaker;
pub mod budget;
pub mod catalog;
pub mod provider;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prometheus::{CounterVec, HistogramVec, IntCounterVec, IntGaugeVec};
use revo_events::family::generation::{GenerationEvent, PriceSheet, TokenUsage};
use revo_events::family::models::GENERATION_STREAM;
use revo_events::{AppendRequest, EventFamily, EventMeta, EventStore, ExpectedVersion, Usd};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::model_thread::{self, Job, SubmitError, FAILURE_CODES};
use breaker::{Breaker, BreakerSettings, State};
use catalog::{Catalog, Entry, Provider};
use provider::{ChatMessage, ChatRequest, Piece, Reply, UpstreamError};

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
        }
    }
}

/// The router's metrics (registered by the node with the others).
#[derive(Clone)]
pub struct RouterMetrics {
    /// Attempts by model, provider and outcome.
    pub attempts: IntCounterVec,
    pub tokens: IntCounterVec,
    pub cost_usd: CounterVec,
    /// `first_choice`, `fallback`, `retry`, `no_candidate`, `escalated`.
    pub decisions: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    /// Time in Revo, excluding the provider, per request.
    pub overhead: HistogramVec,
}

impl RouterMetrics {
    pub fn new() -> prometheus::Result<RouterMetrics> {
        use prometheus::{HistogramOpts, Opts};
        Ok(RouterMetrics {
            attempts: IntCounterVec::new(
                Opts::new(
                    "revo_router_attempts_total",
                    "Attempts by catalogue model, provider and outcome (`completed`, `failed`, `cancelled`)",
                ),
                &["model", "provider", "outcome"],
            )?,
            tokens: IntCounterVec::new(
                Opts::new(
                    "revo_router_tokens_total",
                    "Billed tokens by model, provider and kind (input, cache_read, cache_write, output, reasoning)",
                ),
                &["model", "provider", "kind"],
            )?,
            cost_usd: CounterVec::new(
                Opts::new(
                    "revo_router_cost_usd_total",
                    "Spend by model and provider (for dashboards; the ledger holds the exact figure)",
                ),
                &["model", "provider"],
            )?,
            decisions: IntCounterVec::new(
                Opts::new(
                    "revo_router_decisions_total",
                    "Router decisions: first_choice, fallback, retry, no_candidate",
                ),
                &["decision"],
            )?,
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "revo_router_breaker_state",
                    "Circuit breaker per model: 0 closed, 1 half-open, 2 open",
                ),
                &["model"],
            )?,
            overhead: HistogramVec::new(
                HistogramOpts::new(
                    "revo_gateway_overhead_seconds",
                    "Time a routed request spent in Revo, excluding the provider, by provider",
                )
                .buckets(vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
                ]),
                &["provider"],
            )?,
        })
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.attempts.clone()),
            Box::new(self.tokens.clone()),
            Box::new(self.cost_usd.clone()),
            Box::new(self.decisions.clone()),
            Box::new(self.breaker_state.clone()),
            Box::new(self.overhead.clone()),
        ]
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
    /// plus a few tokens per message for the template's role markers.
    fn worst_case_tokens(&self) -> u64 {
        match self {
            Input::Chat(m) => m.iter().map(|m| m.content.len() as u64 + 8).sum(),
            Input::Prompt(p) => p.len() as u64,
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
    /// Ask providers for a stream (the caller streams) or a whole answer.
    pub stream: bool,
    pub options: RouteOptions,
}

/// One attempt, as the answer reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttemptReport {
    pub model: String,
    pub provider: &'static str,
    /// `completed`, `failed` or `cancelled`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub cost_usd: Usd,
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
            let outcome = run(&inner, &req, candidates, &tickets, &tx).await;
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
        if worst == Usd::ZERO || !b.applies(req.user_id, req.key_id) {
            return Ok(Vec::new());
        }
        match b.admit(req.user_id, req.key_id, worst).await {
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
        if let Some(name) = &o.model_preference {
            let first = entries.iter().find(|e| &e.name == name).ok_or_else(|| {
                Refusal::new(
                    404,
                    "model_not_found",
                    format!("no model `{name}` in the catalogue (GET /ai/models lists them)"),
                )
            })?;
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
        for e in order {
            let skip = |why: &mut Vec<String>, reason: String| {
                why.push(format!("{}: {reason}", e.name));
            };
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
                continue;
            }
            if breakers.get(&e.name).is_some_and(|b| !b.available(now)) {
                skip(&mut why, "circuit open".into());
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
            return Err(Refusal::new(
                503,
                "no_model_available",
                format!("no model can serve this request now: {}", why.join("; ")),
            ));
        }
        Ok(out)
    }
}

impl Entry {
    /// The prices as recorded in attempts.
    pub fn prices_sheet(&self) -> PriceSheet {
        PriceSheet {
            input: self.prices.input_usd_per_mtok,
            cache_read: self.prices.cached_input_usd_per_mtok,
            cache_write: self.prices.cache_write_usd_per_mtok,
            output: self.prices.output_usd_per_mtok,
        }
    }
}

/// Tokens a provider may add to a prompt with tools (Anthropic's tool-use system prompt is a
/// few hundred).
const TOOLS_ALLOWANCE: u64 = 1024;

/// The most a request can cost: the prompt's worst case at the dearest input rate, and
/// `max_tokens` of output.
pub fn worst_cost(p: &PriceSheet, worst_in: u64, max_tokens: u32) -> Usd {
    let dearest_in = p.input.max(p.cache_write).max(p.cache_read);
    let input = dearest_in.cost(worst_in);
    input
        .checked_add(p.output.cost(u64::from(max_tokens)))
        .unwrap_or(input)
}

/// The most output tokens that keep the worst case within `limit`: the prompt priced at the
/// dearest input rate (a cache write may cost more than plain input), the rest for output.
/// `None` if the prompt alone may exceed it; `u32::MAX` for free output.
pub fn output_cap(p: &PriceSheet, worst_in: u64, limit: Usd) -> Option<u32> {
    let dearest_in = p.input.max(p.cache_write).max(p.cache_read);
    let left = limit.checked_sub(dearest_in.cost(worst_in))?;
    let per_token = p.output.cost(1).picos();
    if per_token == 0 {
        return Some(u32::MAX);
    }
    Some(u32::try_from(left.picos() / per_token).unwrap_or(u32::MAX))
}

/// One attempt's record.
struct Attempt {
    entry: Entry,
    outcome: &'static str,
    error: Option<UpstreamError>,
    finish_reason: Option<String>,
    usage: TokenUsage,
    usage_reported: bool,
    first_ms: Option<u64>,
    duration: Duration,
}

impl Attempt {
    fn cost(&self) -> Usd {
        self.entry.prices_sheet().cost(&self.usage)
    }

    fn report(&self) -> AttemptReport {
        AttemptReport {
            model: self.entry.name.clone(),
            provider: self.entry.provider.as_str(),
            outcome: self.outcome,
            error: self.error.as_ref().map(|e| e.to_string()),
            cost_usd: self.cost(),
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
}

async fn run(
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
            let (ended, attempt) = attempt(i, req, cand, tx).await;
            let breaker_result = match &ended {
                Ended::Completed(..) => None,
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
        });
    }
    let mut refusal = match last_err {
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

/// One attempt at one model; pieces go to the caller as they come.
async fn attempt(
    i: &Inner,
    req: &RouteRequest,
    cand: &Candidate,
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
        first_ms: None,
        duration: Duration::ZERO,
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
                rec.finish_reason = Some(finish_reason);
                rec.usage_reported = usage.is_some();
                rec.usage = usage.unwrap_or_default();
                break Ended::Completed(std::mem::take(&mut text), std::mem::take(&mut calls));
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
        if !sent {
            sent = true;
            let started = Update::Started {
                model: cand.entry.name.clone(),
                provider: cand.entry.provider.as_str(),
                served_locally: cand.entry.provider.is_local(),
            };
            caller_gone = tx.send(started).await.is_err();
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
    if e.provider == Provider::Local {
        return open_local(i, req, cand);
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

/// A local model's answer, as pieces: its worker's events.
fn open_local(i: &Inner, req: &RouteRequest, cand: &Candidate) -> Result<Reply, UpstreamError> {
    use revo_engine::engine::Sampling;
    let sampling = Sampling {
        max_tokens: cand.max_tokens as usize,
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        top_k: 0,
        repetition_penalty: 1.0,
        seed: req.seed,
    };
    sampling.validate().map_err(|e| UpstreamError::Status {
        status: 422,
        code: Some("invalid_parameter".into()),
        message: e.to_string(),
        retry_after: None,
    })?;
    let (prompt, messages) = match &req.input {
        Input::Prompt(p) => (p.clone(), None),
        Input::Chat(m) => (
            String::new(),
            Some(
                m.iter()
                    .map(|m| revo_engine::local::Message {
                        role: m.role.clone(),
                        content: m.content.clone(),
                    })
                    .collect(),
            ),
        ),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job {
        prompt,
        messages,
        sampling,
        stop: req.stop.clone(),
        events: tx,
        received: Instant::now(),
    };
    i.local.submit(&cand.entry.model, job).map_err(|e| {
        let (status, code) = match e {
            SubmitError::Busy(_) => (503, "model_busy"),
            _ => (503, "model_unavailable"),
        };
        UpstreamError::Status {
            status,
            code: Some(code.into()),
            message: e.to_string(),
            retry_after: None,
        }
    })?;
    let stream = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await? {
            model_thread::Event::Text(t) => Some((Ok(Piece::Text(t)), Some(rx))),
            model_thread::Event::Done(Ok(o)) => {
                let usage = TokenUsage {
                    input: o.prompt_tokens as u64,
                    output: o.completion_tokens as u64,
                    ..TokenUsage::default()
                };
                let done = Piece::Done {
                    finish_reason: crate::model_worker::wire::finish_reason(o.finish).into(),
                    usage: Some(usage),
                };
                Some((Ok(done), None))
            }
            model_thread::Event::Done(Err(f)) => {
                let status = FAILURE_CODES
                    .iter()
                    .find(|(c, _)| *c == f.code)
                    .map_or(500, |(_, s)| *s);
                let e = UpstreamError::Status {
                    status,
                    code: Some(f.code.into()),
                    message: f.message,
                    retry_after: None,
                };
                Some((Err(e), None))
            }
        }
    });
    Ok(Box::pin(stream))
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
            prices: e.prices_sheet(),
            cost_usd: cost,
            time_to_first_token_ms: a.first_ms,
            duration_ms: a.duration.as_millis() as u64,
            holds: holds.to_vec(),
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
        events,
    );
    if let Err(e) = i.store.append(append).await {
        tracing::error!(id = %req.id, error = %e, "could not record a generation's attempts");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use revo_events::UsdPerMtok;

    #[test]
    fn the_output_cap_keeps_the_worst_case_within_the_limit() {
        let p = PriceSheet {
            input: UsdPerMtok::parse("2.50").unwrap(),
            cache_read: UsdPerMtok::parse("1.25").unwrap(),
            cache_write: UsdPerMtok::ZERO,
            output: UsdPerMtok::parse("10").unwrap(),
        };
        // 1,000 prompt tokens at most: $0.0025; $0.01 leaves $0.0075 = 750 output tokens.
        let limit = Usd::parse("0.01").unwrap();
        let cap = output_cap(&p, 1000, limit).unwrap();
        assert_eq!(cap, 750);
        let worst = p
            .input
            .cost(1000)
            .checked_add(p.output.cost(u64::from(cap)));
        assert!(worst.unwrap() <= limit);
        assert!(p.input.cost(1000).checked_add(p.output.cost(751)).unwrap() > limit);
        assert_eq!(output_cap(&p, 1_000_000, limit), None);
        assert_eq!(
            output_cap(&PriceSheet::default(), 10, limit),
            Some(u32::MAX)
        );
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
