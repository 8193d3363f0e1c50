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
use revo_events::family::workflow::{ParentRef, RunEvent, RUN_STREAM};
use revo_events::{EventFamily, EventMeta, RunState, RunStatus, StepStatus, StoreError, Usd};
use serde_json::Value;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::definition::{Definition, Kind, Step};
use super::steps::{self, Done, Fail, StepCtx};
use super::{remaining, Engine, NewRun, RunCmd};
use crate::kit::Inbox;

/// How often an idle actor reads its stream anyway (a lost wake-up costs at most this).
const POLL: Duration = Duration::from_secs(3);

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
                Err(Stop::Store(e)) => {
                    tracing::warn!(run = %self.state.run_id, error = %e, "workflow run: store unavailable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = cancel.cancelled() => break,
                    }
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
        let event = match o.result {
            Ok(d) => {
                let output = d.output.to_string();
                if output.len() + 1024 > self.engine.inner.settings.max_payload {
                    RunEvent::StepFailed {
                        step: o.step.clone(),
                        item: o.item,
                        attempt: o.attempt,
                        code: "output_too_large".into(),
                        message: format!(
                            "the step's output is {} bytes, over the event limit",
                            output.len()
                        ),
                        cost_usd: d.cost,
                        retry_at: None,
                    }
                } else {
                    RunEvent::StepCompleted {
                        step: o.step.clone(),
                        item: o.item,
                        output,
                        cost_usd: d.cost,
                        generation: d.generation,
                        duration_ms: o.elapsed.as_millis() as u64,
                    }
                }
            }
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
                Err(Stop::Store(e)) => {
                    // Shutting down: the outcome is lost with the attempt, which the next
                    // owner runs again.
                    if self.engine.inner.cancel.is_cancelled() {
                        return Ok(());
                    }
                    tracing::warn!(run = %self.state.run_id, error = %e, "recording a step outcome; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(fenced) => return Err(fenced),
            }
        }
    }

    /// What is due now: events to append, and attempts to start once they are recorded.
    async fn plan(&mut self) -> Result<(Vec<RunEvent>, Vec<Start>), Stop> {
        let now = Utc::now();
        let s = &self.state;
        if let Some(t) = self.def.timeout {
            if now >= s.created_at + chrono::Duration::from_std(t).unwrap_or_default() {
                self.tasks.abort_all();
                self.inflight.clear();
                return Ok((
                    vec![RunEvent::Failed {
                        code: "run_timeout".into(),
                        message: format!(
                            "the run took longer than its timeout of {} s",
                            t.as_secs()
                        ),
                        step: None,
                    }],
                    Vec::new(),
                ));
            }
        }
        // A step out of attempts fails the run.
        if let Some((id, st)) = s
            .steps
            .iter()
            .find(|(_, st)| st.status == StepStatus::Failed)
        {
            self.tasks.abort_all();
            self.inflight.clear();
            let (code, message) = st
                .error
                .as_ref()
                .map(|e| (e.code.clone(), e.message.clone()))
                .unwrap_or_else(|| ("step_failed".into(), "the step failed".into()));
            return Ok((
                vec![RunEvent::Failed {
                    code,
                    message,
                    step: Some(id.clone()),
                }],
                Vec::new(),
            ));
        }
        if self.def.steps.iter().all(|st| settled(&self.state, &st.id)) {
            let output = self.run_output();
            return Ok((
                vec![RunEvent::Completed {
                    output: output.to_string(),
                }],
                Vec::new(),
            ));
        }
        let mut events = Vec::new();
        let mut starts = Vec::new();
        let mut reserved = self.reserved();
        let def = self.def.clone();
        for step in &def.steps {
            let st = self.state.steps.get(&step.id);
            let status = st.map_or(StepStatus::Pending, |x| x.status);
            match status {
                StepStatus::Completed | StepStatus::Skipped | StepStatus::Failed => continue,
                StepStatus::Waiting => {
                    let Some(st) = st else { continue };
                    if st.fire_at.is_some_and(|t| t <= now) {
                        events.push(RunEvent::TimerFired {
                            step: step.id.clone(),
                        });
                    } else if let Some(a) = &st.approval {
                        if a.approved.is_none() && a.expires_at.is_some_and(|t| t <= now) {
                            events.push(RunEvent::ApprovalDecided {
                                step: step.id.clone(),
                                approved: false,
                                by: None,
                                comment: Some("the approval timed out".into()),
                            });
                        }
                    }
                    continue;
                }
                StepStatus::Running => {
                    match &step.kind {
                        Kind::Map { .. } => {
                            self.plan_map(step, &mut events, &mut starts, &mut reserved);
                        }
                        Kind::Workflow { .. } => {
                            if let Some(child) = st.and_then(|x| x.child_run) {
                                self.plan_child(step, child, &mut events).await?;
                            }
                        }
                        _ => {
                            // Running in the log but not here: its node died mid-attempt, or
                            // this actor restarted. The attempt is lost; run the next one.
                            if !self.inflight.contains_key(&key(&step.id, None)) {
                                let attempt = st.map_or(0, |x| x.attempts) + 1;
                                self.plan_attempt(
                                    step,
                                    attempt,
                                    &mut events,
                                    &mut starts,
                                    &mut reserved,
                                );
                            }
                        }
                    }
                    continue;
                }
                StepStatus::Pending => {}
            }
            // Pending: its dependencies must be settled.
            if !step.deps.iter().all(|d| settled(&self.state, d)) {
                continue;
            }
            if self.skipped(step) {
                events.push(RunEvent::StepSkipped {
                    step: step.id.clone(),
                });
                continue;
            }
            if st.and_then(|x| x.retry_at).is_some_and(|t| t > now) {
                continue;
            }
            let attempt = st.map_or(0, |x| x.attempts) + 1;
            match &step.kind {
                Kind::Template { .. } | Kind::Condition { .. } => {
                    let scope_steps = |id: &str| self.output_of(id);
                    let r = steps::inline(&step.kind, &self.input, &scope_steps);
                    events.push(match r {
                        Ok(v) => RunEvent::StepCompleted {
                            step: step.id.clone(),
                            item: None,
                            output: v.to_string(),
                            cost_usd: Usd::ZERO,
                            generation: None,
                            duration_ms: 0,
                        },
                        Err(f) => RunEvent::StepFailed {
                            step: step.id.clone(),
                            item: None,
                            attempt,
                            code: f.code,
                            message: f.message,
                            cost_usd: Usd::ZERO,
                            retry_at: None,
                        },
                    });
                }
                Kind::Sleep { seconds } => {
                    let d = chrono::Duration::milliseconds((seconds * 1000.0) as i64);
                    events.push(RunEvent::TimerSet {
                        step: step.id.clone(),
                        fire_at: now + d,
                    });
                }
                Kind::Approval { timeout, .. } => {
                    events.push(RunEvent::ApprovalRequested {
                        step: step.id.clone(),
                        reason: "step".into(),
                        cost_so_far: self.state.cost_usd,
                        estimated_remaining: self.estimate_remaining(),
                        expires_at: timeout
                            .map(|t| now + chrono::Duration::from_std(t).unwrap_or_default()),
                    });
                }
                Kind::Map { .. } => {
                    events.push(RunEvent::StepStarted {
                        step: step.id.clone(),
                        item: None,
                        attempt,
                    });
                }
                Kind::Workflow { workflow_id, input } => {
                    self.plan_start_child(step, *workflow_id, input, attempt, &mut events)
                        .await?;
                }
                Kind::Generate(_) | Kind::Extract { .. } | Kind::Http { .. } => {
                    self.plan_attempt(step, attempt, &mut events, &mut starts, &mut reserved);
                }
            }
            // One cost-limit decision at a time: it depends on what the others reserve.
            if events.iter().any(|e| {
                matches!(e, RunEvent::ApprovalRequested { reason, .. } if reason == "cost_limit")
                    || matches!(e, RunEvent::Failed { .. })
            }) {
                break;
            }
        }
        if events.iter().any(|e| matches!(e, RunEvent::Failed { .. })) {
            events.retain(|e| matches!(e, RunEvent::Failed { .. }));
            starts.clear();
        }
        Ok((events, starts))
    }

    /// A pending step is skipped when it is on a branch not taken, or when everything it
    /// depends on was skipped.
    fn skipped(&self, step: &Step) -> bool {
        if let Some((cond, then)) = self.def.branch_of(&step.id) {
            let taken = self.output_of(cond).and_then(|v| v.as_bool());
            if taken != Some(then) {
                return true;
            }
        }
        !step.deps.is_empty()
            && step.deps.iter().all(|d| {
                self.state
                    .steps
                    .get(d)
                    .is_some_and(|x| x.status == StepStatus::Skipped)
            })
    }

    /// The most a step's model calls can cost now, or `None` if no model may take them.
    fn worst_case(&self, step: &Step, item: Option<&Value>) -> Result<Usd, Fail> {
        let mut total = Usd::ZERO;
        let gens: Vec<&Kind> = match &step.kind {
            Kind::Map { steps, .. } => steps.iter().map(|s| &s.kind).collect(),
            k => vec![k],
        };
        for k in gens {
            if let Some(g) = k.gen() {
                let scope_steps = |id: &str| self.output_of(id);
                let w = steps::worst_case(
                    &self.engine,
                    &self.state,
                    g,
                    &self.input,
                    &scope_steps,
                    item,
                )?;
                total = total.checked_add(w).unwrap_or(total);
            }
        }
        Ok(total)
    }

    /// The estimated cost of every step not yet done (their prompts as far as they can be
    /// rendered now).
    fn estimate_remaining(&self) -> Usd {
        let mut total = Usd::ZERO;
        for step in &self.def.steps {
            if self
                .state
                .steps
                .get(&step.id)
                .is_some_and(|s| s.status.is_settled())
            {
                continue;
            }
            let per = self.worst_case(step, None).unwrap_or(Usd::ZERO);
            let n = match &step.kind {
                Kind::Map { items, .. } => self.map_items(items).map_or(1, |v| v.len() as u128),
                _ => 1,
            };
            total = total
                .checked_add(Usd::from_picos(per.picos().saturating_mul(n)))
                .unwrap_or(total);
        }
        total
    }

    /// Starts an attempt of a generate / extract / http step (or a map item), unless the
    /// run's cost limit forbids it.
    fn plan_attempt(
        &self,
        step: &Step,
        attempt: u32,
        events: &mut Vec<RunEvent>,
        starts: &mut Vec<Start>,
        reserved: &mut Usd,
    ) {
        self.plan_item(step, None, None, attempt, events, starts, reserved);
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_item(
        &self,
        step: &Step,
        item: Option<u32>,
        value: Option<Value>,
        attempt: u32,
        events: &mut Vec<RunEvent>,
        starts: &mut Vec<Start>,
        reserved: &mut Usd,
    ) {
        let st = self.state.steps.get(&step.id);
        let mut reserve = Usd::ZERO;
        if self.state.cost_limit.is_some() && !st.is_some_and(|x| x.cost_approved) {
            let worst = match self.worst_case(step, value.as_ref()) {
                Ok(w) => w,
                Err(f) => {
                    events.push(RunEvent::StepFailed {
                        step: step.id.clone(),
                        item,
                        attempt,
                        code: f.code,
                        message: f.message,
                        cost_usd: Usd::ZERO,
                        retry_at: None,
                    });
                    return;
                }
            };
            let left = remaining(&self.state, *reserved).unwrap_or(Usd::ZERO);
            if worst > left {
                if !self.inflight.is_empty() || !starts.is_empty() {
                    // Others hold part of the limit: wait for them to settle.
                    return;
                }
                let limit = self.state.cost_limit.unwrap_or(Usd::ZERO);
                let message = format!(
                    "`{}` could cost up to ${worst}; the run has spent ${} of its ${limit} limit",
                    step.id, self.state.cost_usd
                );
                if self.def.cost_approval && item.is_none() {
                    events.push(RunEvent::ApprovalRequested {
                        step: step.id.clone(),
                        reason: "cost_limit".into(),
                        cost_so_far: self.state.cost_usd,
                        estimated_remaining: self.estimate_remaining(),
                        expires_at: None,
                    });
                } else {
                    events.push(RunEvent::Failed {
                        code: "run_cost_limit".into(),
                        message,
                        step: Some(step.id.clone()),
                    });
                }
                return;
            }
            reserve = worst;
        }
        *reserved = reserved.checked_add(reserve).unwrap_or(*reserved);
        events.push(RunEvent::StepStarted {
            step: step.id.clone(),
            item,
            attempt,
        });
        starts.push(Start {
            step: step.id.clone(),
            item,
            value,
            attempt,
            reserve,
        });
    }

    fn map_items(&self, items: &str) -> Result<Vec<Value>, Fail> {
        let scope_steps = |id: &str| self.output_of(id);
        steps::map_items(items, &self.input, &scope_steps)
    }

    fn plan_map(
        &mut self,
        step: &Step,
        events: &mut Vec<RunEvent>,
        starts: &mut Vec<Start>,
        reserved: &mut Usd,
    ) {
        let Kind::Map {
            items, concurrency, ..
        } = &step.kind
        else {
            return;
        };
        let attempts = self.state.steps.get(&step.id).map_or(1, |s| s.attempts);
        let cached = self.items.get(&step.id).cloned();
        let list = match cached.map_or_else(|| self.map_items(items).map(Arc::new), Ok) {
            Ok(l) => {
                self.items.insert(step.id.clone(), l.clone());
                l
            }
            Err(f) => {
                events.push(RunEvent::StepFailed {
                    step: step.id.clone(),
                    item: None,
                    attempt: attempts,
                    code: f.code,
                    message: f.message,
                    cost_usd: Usd::ZERO,
                    retry_at: None,
                });
                return;
            }
        };
        let Some(st) = self.state.steps.get(&step.id) else {
            return;
        };
        let done = |i: u32| {
            st.items
                .get(&i)
                .is_some_and(|x| x.status == StepStatus::Completed)
        };
        if (0..list.len() as u32).all(done) {
            let outputs: Vec<Value> = (0..list.len() as u32)
                .map(|i| {
                    st.items
                        .get(&i)
                        .and_then(|x| x.output.as_deref())
                        .and_then(|o| serde_json::from_str(o).ok())
                        .unwrap_or(Value::Null)
                })
                .collect();
            events.push(RunEvent::StepCompleted {
                step: step.id.clone(),
                item: None,
                output: Value::Array(outputs).to_string(),
                cost_usd: Usd::ZERO,
                generation: None,
                duration_ms: 0,
            });
            return;
        }
        let now = Utc::now();
        let mut running = self
            .inflight
            .keys()
            .filter(|(s, i)| s == &step.id && i.is_some())
            .count();
        for (i, value) in list.iter().cloned().enumerate() {
            if running >= *concurrency {
                break;
            }
            let i = i as u32;
            let it = st.items.get(&i);
            if done(i) || self.inflight.contains_key(&key(&step.id, Some(i))) {
                continue;
            }
            if it.and_then(|x| x.retry_at).is_some_and(|t| t > now) {
                continue;
            }
            let attempt = it.map_or(0, |x| x.attempts) + 1;
            let before = starts.len();
            self.plan_item(
                step,
                Some(i),
                Some(value),
                attempt,
                events,
                starts,
                reserved,
            );
            if starts.len() == before {
                break;
            }
            running += 1;
        }
    }

    async fn plan_start_child(
        &self,
        step: &Step,
        workflow_id: Uuid,
        input: &Value,
        attempt: u32,
        events: &mut Vec<RunEvent>,
    ) -> Result<(), Stop> {
        let fail = |code: &str, message: String| RunEvent::StepFailed {
            step: step.id.clone(),
            item: None,
            attempt,
            code: code.into(),
            message,
            cost_usd: Usd::ZERO,
            retry_at: None,
        };
        let row = self
            .engine
            .workflows_view()
            .read()
            .get(&workflow_id)
            .filter(|w| !w.archived)
            .cloned();
        let Some(row) = row else {
            events.push(fail(
                "workflow_not_found",
                format!("no workflow {workflow_id}"),
            ));
            return Ok(());
        };
        if row.owner != self.state.user_id {
            events.push(fail(
                "workflow_not_found",
                format!("no workflow {workflow_id}"),
            ));
            return Ok(());
        }
        let depth = self.state.parent.as_ref().map_or(0, |p| p.depth) + 1;
        if depth > super::definition::MAX_DEPTH {
            events.push(fail(
                "too_deep",
                format!(
                    "workflows nest too deep: at most {} levels",
                    super::definition::MAX_DEPTH
                ),
            ));
            return Ok(());
        }
        let scope_steps = |id: &str| self.output_of(id);
        let child_input = match steps::render_input(input, &self.input, &scope_steps) {
            Ok(v) => v,
            Err(f) => {
                events.push(fail(&f.code, f.message));
                return Ok(());
            }
        };
        let r = self
            .engine
            .execute(NewRun {
                workflow: &row,
                input: child_input,
                user_id: self.state.user_id,
                key_id: self.state.key_id,
                idempotency_key: None,
                meta: self.meta.clone(),
                parent: Some(ParentRef {
                    run_id: self.state.run_id,
                    step: step.id.clone(),
                    depth,
                }),
            })
            .await;
        match r {
            Ok((child, _)) => events.push(RunEvent::ChildStarted {
                step: step.id.clone(),
                child_run: child.run_id,
            }),
            Err(super::EngineError::Unavailable(m)) => {
                return Err(Stop::Store(StoreError::Unavailable(m)))
            }
            Err(e) => {
                let message = match &e {
                    super::EngineError::Invalid(p) => p
                        .iter()
                        .map(|p| format!("{}: {}", p.path, p.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                    other => other.to_string(),
                };
                events.push(fail("child_refused", message));
            }
        }
        Ok(())
    }

    async fn plan_child(
        &self,
        step: &Step,
        child: Uuid,
        events: &mut Vec<RunEvent>,
    ) -> Result<(), Stop> {
        let state = match self.engine.load(child).await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(()),
            Err(e) => return Err(Stop::Store(StoreError::Unavailable(e.to_string()))),
        };
        let attempt = self.state.steps.get(&step.id).map_or(1, |s| s.attempts);
        match state.status {
            RunStatus::Completed => events.push(RunEvent::StepCompleted {
                step: step.id.clone(),
                item: None,
                output: state.output.unwrap_or_else(|| "null".into()),
                cost_usd: state.cost_usd,
                generation: None,
                duration_ms: 0,
            }),
            RunStatus::Failed | RunStatus::Cancelled => events.push(RunEvent::StepFailed {
                step: step.id.clone(),
                item: None,
                attempt,
                code: "child_failed".into(),
                message: format!(
                    "child run {child} {}: {}",
                    state.status.as_str(),
                    state.error.map(|e| e.message).unwrap_or_default()
                ),
                cost_usd: state.cost_usd,
                retry_at: None,
            }),
            _ => {}
        }
        Ok(())
    }

    /// The definition's `output`, or every leaf step's output by id.
    fn run_output(&self) -> Value {
        let scope_steps = |id: &str| self.output_of(id);
        if let Some(o) = &self.def.output {
            return steps::render_input(o, &self.input, &scope_steps).unwrap_or(Value::Null);
        }
        let mut m = serde_json::Map::new();
        for id in self.def.leaves() {
            m.insert(id.to_owned(), self.output_of(id).unwrap_or(Value::Null));
        }
        Value::Object(m)
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
