//! The run actor: executes one run on this node, for as long as this node owns it.
//!
//! Each round it folds what it knows, decides what is due (`plan`), appends those events at
//! the exact version it folded, and only then starts the step attempts it recorded as
//! started. Step attempts run as tasks and report back; their outcome is appended the same
//! way. A version conflict means another writer appended: the actor reads what it missed and,
//! if that includes another node's `run.claimed`, stops at once (fenced).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use revo_events::family::workflow::{RunEvent, RUN_STREAM};
use revo_events::{EventFamily, EventMeta, RunState, StepStatus, StoreError, Usd};
use serde_json::Value;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::definition::{Definition, Step};
use super::steps::{self, Done, Fail, StepCtx};
use super::{Engine, RunCmd};
use crate::kit::Inbox;

mod plan;

/// How often an idle actor reads its stream anyway (a lost wake-up costs at most this).
const POLL: Duration = Duration::from_secs(3);
/// How long the actor waits before it tries a failed append again (it reads its stream first,
/// so a cancel stops it within this).
const RETRY: Duration = Duration::from_millis(500);

struct Outcome {
    step: String,
    item: Option<u32>,
    attempt: u32,
    kind: &'static str,
    result: Result<Done, Fail>,
    elapsed: Duration,
}

enum Stop {
    /// Another node owns the run now.
    Fenced,
    Store(StoreError),
}

pub(super) struct RunActor {
    engine: Engine,
    state: RunState,
    def: Arc<Definition>,
    input: Value,
    /// Attempts running here: (step, item) → what they reserved of the run's cost limit.
    inflight: HashMap<(String, Option<u32>), Usd>,
    tasks: JoinSet<Outcome>,
    meta: EventMeta,
    /// Each `map` step's items, rendered once (its inputs are done before it starts).
    items: HashMap<String, Arc<Vec<Value>>>,
}

fn key(step: &str, item: Option<u32>) -> (String, Option<u32>) {
    (step.to_owned(), item)
}

impl RunActor {
    pub(super) async fn start(engine: Engine, state: RunState, inbox: Inbox<RunCmd>) {
        let parsed = serde_json::from_str::<Value>(&state.definition)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                engine.parse(&v).map_err(|p| {
                    p.iter()
                        .map(|p| format!("{}: {}", p.path, p.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            });
        let input = serde_json::from_str(&state.input).unwrap_or(Value::Null);
        let meta = EventMeta {
            actor: Some("system".into()),
            correlation_id: Some(state.run_id),
            causation_id: None,
        };
        let mut actor = match parsed {
            Ok(def) => RunActor {
                engine,
                state,
                def: Arc::new(def),
                input,
                inflight: HashMap::new(),
                tasks: JoinSet::new(),
                meta,
                items: HashMap::new(),
            },
            Err(why) => {
                // A definition this build (or this node's allow-list) no longer accepts.
                let run = state.run_id;
                let mut a = RunActor {
                    engine,
                    state,
                    def: Arc::new(Definition {
                        name: String::new(),
                        input_schema: None,
                        steps: Vec::new(),
                        output: None,
                        cost_limit: None,
                        cost_approval: false,
                        timeout: None,
                    }),
                    input,
                    inflight: HashMap::new(),
                    tasks: JoinSet::new(),
                    meta,
                    items: HashMap::new(),
                };
                let e = RunEvent::Failed {
                    code: "invalid_definition".into(),
                    message: why,
                    step: None,
                };
                if let Err(Stop::Store(e)) = a.append(vec![e]).await {
                    tracing::warn!(run = %run, error = %e, "could not fail a run");
                }
                return;
            }
        };
        actor.run(inbox).await;
    }

    async fn run(&mut self, mut inbox: Inbox<RunCmd>) {
        let cancel = self.engine.inner.cancel.clone();
        loop {
            if self.state.status.is_terminal() {
                break;
            }
            match self.advance().await {
                Ok(()) => {}
                Err(Stop::Fenced) => {
                    tracing::info!(run = %self.state.run_id, "workflow run claimed by another node; stopping here");
                    break;
                }
                Err(Stop::Store(StoreError::PayloadTooLarge { size, limit, .. })) => {
                    // Terminal: the same events would be refused again at every retry.
                    let fail = RunEvent::Failed {
                        code: "output_too_large".into(),
                        message: format!(
                            "an event of the run is {size} bytes, over the limit of {limit}"
                        ),
                        step: None,
                    };
                    match self.append(vec![fail]).await {
                        Err(Stop::Fenced) => break,
                        Err(Stop::Store(e)) => {
                            // The store itself is failing: wait as for any outage.
                            tracing::warn!(run = %self.state.run_id, error = %e, "workflow run: could not record its failure; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(RETRY) => {}
                                _ = cancel.cancelled() => break,
                            }
                        }
                        Ok(_) => {}
                    }
                    continue;
                }
                Err(Stop::Store(e)) => {
                    tracing::warn!(run = %self.state.run_id, error = %e, "workflow run: store unavailable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = cancel.cancelled() => break,
                    }
                    // A cancel (or another node's claim) appended meanwhile ends the retries.
                    if let Err(Stop::Fenced) = self.refresh().await {
                        break;
                    }
                    continue;
                }
            }
            if self.state.status.is_terminal() {
                break;
            }
            let due = self.next_due();
            tokio::select! {
                cmd = inbox.recv() => match cmd {
                    // Its own events come back from the bus too: nothing to read for those.
                    Some(RunCmd::Wake(Some(v))) if v <= self.state.version => {}
                    Some(RunCmd::Wake(_)) => {
                        if let Err(Stop::Fenced) = self.refresh().await { break }
                    }
                    None => break,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    match done {
                        Ok(o) => if let Err(Stop::Fenced) = self.finish(o).await { break },
                        Err(e) => tracing::error!(run = %self.state.run_id, error = %e, "a step task ended without an outcome"),
                    }
                }
                // A timer, a deadline, or the poll (at most `POLL` apart): read the stream too,
                // in case a wake-up from the bus was lost.
                _ = tokio::time::sleep(due) => {
                    if let Err(Stop::Fenced) = self.refresh().await { break }
                }
                // Shutdown: the run stays claimed by this node, which stops answering; another
                // node (or this one, restarted) resumes it.
                _ = cancel.cancelled() => break,
            }
        }
        self.tasks.abort_all();
    }

    /// Until the next timer, retry or deadline (at most the poll interval).
    fn next_due(&self) -> Duration {
        let now = Utc::now();
        let mut due = self.state.next_due();
        if let Some(t) = self.def.timeout {
            let end = self.state.created_at + chrono::Duration::from_std(t).unwrap_or_default();
            due = Some(due.map_or(end, |d| d.min(end)));
        }
        due.map_or(POLL, |d| {
            (d - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(POLL)
                .max(Duration::from_millis(1))
        })
    }

    /// Reads what others appended since the version folded.
    async fn refresh(&mut self) -> Result<(), Stop> {
        let store = self.engine.inner.store.clone();
        let run = self.state.run_id.to_string();
        loop {
            let page = store
                .read_stream(RUN_STREAM, &run, self.state.version + 1, 1000)
                .await
                .map_err(Stop::Store)?;
            if page.is_empty() {
                return Ok(());
            }
            let mut s = Some(self.state.clone());
            let mut fenced = false;
            for rec in &page {
                let e = RunEvent::decode(&rec.envelope)
                    .map_err(|e| Stop::Store(StoreError::Backend(e.to_string())))?;
                if let RunEvent::Claimed { node } = &e {
                    fenced |= node != self.engine.node();
                }
                RunState::apply(&mut s, &e, rec, true);
            }
            if let Some(s) = s {
                self.state = s;
            }
            if fenced {
                return Err(Stop::Fenced);
            }
            if self.state.status.is_terminal() {
                // Cancelled (or ended) by someone else: stop the attempts at once.
                self.tasks.abort_all();
                self.inflight.clear();
            }
        }
    }

    /// Appends at the exact version folded. `Ok(false)`: someone else wrote first (now folded).
    async fn append(&mut self, events: Vec<RunEvent>) -> Result<bool, Stop> {
        let run = self.state.run_id;
        let r = super::append_run(
            &self.engine,
            run,
            Some(self.state.clone()),
            &events,
            &self.meta,
        )
        .await;
        match r {
            Ok(Some(s)) => {
                self.state = s;
                Ok(true)
            }
            Ok(None) => {
                self.refresh().await?;
                Ok(false)
            }
            Err(e) => Err(Stop::Store(e)),
        }
    }

    fn output_of(&self, id: &str) -> Option<Value> {
        let st = self.state.steps.get(id)?;
        if st.status != StepStatus::Completed {
            return None;
        }
        st.output
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok())
    }

    fn reserved(&self) -> Usd {
        self.inflight
            .values()
            .fold(Usd::ZERO, |a, b| a.checked_add(*b).unwrap_or(a))
    }

    fn ctx(&self, step: &Step, item: Option<u32>, attempt: u32) -> StepCtx {
        StepCtx {
            engine: self.engine.clone(),
            run: self.state.run_id,
            user: self.state.user_id,
            key: self.state.key_id,
            step: step.id.clone(),
            item,
            attempt,
            timeout: step.timeout,
        }
    }

    /// Decides and appends until nothing more is due now.
    async fn advance(&mut self) -> Result<(), Stop> {
        // Bounded: each round appends, and a run has finitely many things to record.
        for _ in 0..10_000 {
            if self.state.status.is_terminal() {
                return Ok(());
            }
            let before = self.state.version;
            if self.forward(Vec::new()).await? && self.state.version == before {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Folds an event into the state before it is appended, so that planning can look past
    /// it (the real envelope replaces it once the append succeeds).
    fn fold_ahead(&mut self, e: &RunEvent) {
        let rec = revo_events::RecordedEvent {
            position: 0,
            envelope: revo_events::Envelope {
                event_id: Uuid::nil(),
                stream_type: RUN_STREAM.into(),
                stream_id: self.state.run_id.to_string(),
                version: self.state.version + 1,
                event_type: e.event_type().into(),
                schema: 1,
                occurred_at: Utc::now(),
                meta: EventMeta::default(),
                payload: Vec::new(),
            },
        };
        let mut s = Some(std::mem::replace(&mut self.state, RunState::placeholder()));
        RunState::apply(&mut s, e, &rec, true);
        if let Some(s) = s {
            self.state = s;
        }
    }

    /// Appends `first`, then whatever is due once it is folded, as one append: a step's
    /// outcome goes with the next step's start, and template, condition and skipped steps
    /// are recorded with the step that made them due. `Ok(false)`: another writer came first
    /// (its events are folded; decide again).
    async fn forward(&mut self, first: Vec<RunEvent>) -> Result<bool, Stop> {
        let base = self.state.clone();
        for e in &first {
            self.fold_ahead(e);
        }
        let mut events = first;
        let mut starts = Vec::new();
        for _ in 0..1000 {
            if self.state.status.is_terminal() {
                break;
            }
            let (evs, st) = match self.plan().await {
                Ok(x) => x,
                Err(e) => {
                    self.state = base;
                    return Err(e);
                }
            };
            if evs.is_empty() {
                break;
            }
            // Only computed steps are planned past: an attempt, a timer or an approval
            // changes what the next round may start.
            let more = st.is_empty()
                && evs.iter().all(|e| {
                    matches!(
                        e,
                        RunEvent::StepCompleted { .. } | RunEvent::StepSkipped { .. }
                    )
                });
            for e in &evs {
                self.fold_ahead(e);
            }
            events.extend(evs);
            starts.extend(st);
            if !more {
                break;
            }
        }
        self.state = base;
        if events.is_empty() {
            return Ok(true);
        }
        if !self.append(events).await? {
            return Ok(false);
        }
        for s in starts {
            self.spawn(s);
        }
        Ok(true)
    }

    fn spawn(&mut self, s: Start) {
        let Some(step) = self.def.step(&s.step).cloned() else {
            return;
        };
        let ctx = self.ctx(&step, s.item, s.attempt);
        self.inflight.insert(key(&s.step, s.item), s.reserve);
        let kind = step.kind.name();
        let scope_steps: HashMap<String, Value> = self
            .state
            .steps
            .keys()
            .filter_map(|id| self.output_of(id).map(|v| (id.clone(), v)))
            .collect();
        let input = self.input.clone();
        let item = s.value;
        self.tasks.spawn(async move {
            let started = Instant::now();
            let result = steps::execute(&ctx, &step, &input, &scope_steps, item).await;
            Outcome {
                step: ctx.step.clone(),
                item: ctx.item,
                attempt: ctx.attempt,
                kind,
                result,
                elapsed: started.elapsed(),
            }
        });
    }

    /// Records an attempt's outcome (retrying the append through races).
    async fn finish(&mut self, o: Outcome) -> Result<(), Stop> {
        self.inflight.remove(&key(&o.step, o.item));
        let m = &self.engine.inner.metrics;
        let label = if o.result.is_ok() {
            "completed"
        } else {
            "failed"
        };
        m.step_seconds
            .with_label_values(&[o.kind, label])
            .observe(o.elapsed.as_secs_f64());
        let max_attempts = self.def.step(&o.step).map_or(1, |s| s.retry.max_attempts);
        let backoff = self
            .def
            .step(&o.step)
            .map_or(Duration::from_millis(500), |s| s.retry.backoff);
        let mut event = match o.result {
            Ok(d) => match self.fitting(d.output.to_string(), "the step's output") {
                Ok(output) => RunEvent::StepCompleted {
                    step: o.step.clone(),
                    item: o.item,
                    output,
                    cost_usd: d.cost,
                    generation: d.generation,
                    duration_ms: o.elapsed.as_millis() as u64,
                },
                Err(f) => RunEvent::StepFailed {
                    step: o.step.clone(),
                    item: o.item,
                    attempt: o.attempt,
                    code: f.code,
                    message: f.message,
                    cost_usd: d.cost,
                    retry_at: None,
                },
            },
            Err(f) => {
                let retry = f.retryable && o.attempt < max_attempts;
                if retry {
                    m.retries.with_label_values(&[o.kind]).inc();
                }
                let wait = backoff
                    .saturating_mul(1 << (o.attempt.saturating_sub(1)).min(10))
                    .min(Duration::from_secs(600));
                RunEvent::StepFailed {
                    step: o.step.clone(),
                    item: o.item,
                    attempt: o.attempt,
                    code: f.code,
                    message: f.message,
                    cost_usd: f.cost,
                    retry_at: retry
                        .then(|| Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default()),
                }
            }
        };
        loop {
            if self.state.status.is_terminal() {
                return Ok(());
            }
            // Still this attempt's to record (a takeover would have fenced us already).
            let current = self.state.steps.get(&o.step).is_some_and(|s| match o.item {
                None => s.status == StepStatus::Running && s.attempts == o.attempt,
                Some(i) => s
                    .items
                    .get(&i)
                    .is_none_or(|it| it.status == StepStatus::Running && it.attempts == o.attempt),
            });
            if !current {
                return Ok(());
            }
            match self.forward(vec![event.clone()]).await {
                Ok(true) => return Ok(()),
                Ok(false) => continue,
                Err(Stop::Store(StoreError::PayloadTooLarge { size, limit, .. }))
                    if is_too_large(&event) =>
                {
                    // Even the failure is refused (with what it made due): the run ends here.
                    let fail = RunEvent::Failed {
                        code: "output_too_large".into(),
                        message: format!(
                            "an event of the run is {size} bytes, over the limit of {limit}"
                        ),
                        step: Some(o.step.clone()),
                    };
                    return self
                        .append(vec![fail])
                        .await
                        .map(|_| ())
                        .or_else(|s| match s {
                            Stop::Fenced => Err(Stop::Fenced),
                            Stop::Store(_) => Ok(()),
                        });
                }
                Err(Stop::Store(StoreError::PayloadTooLarge { size, limit, .. })) => {
                    // Never retried: the outcome (or what it made due) would be refused again.
                    // Recorded as the attempt's terminal failure instead.
                    event = RunEvent::StepFailed {
                        step: o.step.clone(),
                        item: o.item,
                        attempt: o.attempt,
                        code: "output_too_large".into(),
                        message: format!(
                            "recording the step's outcome takes an event of {size} bytes, over the limit of {limit}"
                        ),
                        cost_usd: event_cost(&event),
                        retry_at: None,
                    };
                }
                Err(Stop::Store(e)) => {
                    // Shutting down: the outcome is lost with the attempt, which the next
                    // owner runs again.
                    if self.engine.inner.cancel.is_cancelled() {
                        return Ok(());
                    }
                    tracing::warn!(run = %self.state.run_id, error = %e, "recording a step outcome; retrying");
                    tokio::time::sleep(RETRY).await;
                    // A cancel appended meanwhile ends the retries.
                    self.refresh().await.or_else(|s| match s {
                        Stop::Fenced => Err(Stop::Fenced),
                        Stop::Store(_) => Ok(()),
                    })?;
                }
                Err(fenced) => return Err(fenced),
            }
        }
    }
}

fn is_too_large(e: &RunEvent) -> bool {
    matches!(e, RunEvent::StepFailed { code, .. } if code == "output_too_large")
}

/// What an attempt's outcome event charges the run.
fn event_cost(e: &RunEvent) -> Usd {
    match e {
        RunEvent::StepCompleted { cost_usd, .. } | RunEvent::StepFailed { cost_usd, .. } => {
            *cost_usd
        }
        _ => Usd::ZERO,
    }
}

fn settled(s: &RunState, id: &str) -> bool {
    s.steps.get(id).is_some_and(|st| st.status.is_settled())
}

/// An attempt to start once its `step.started` is recorded.
struct Start {
    step: String,
    item: Option<u32>,
    value: Option<Value>,
    attempt: u32,
    reserve: Usd,
}
