//! What a run's actor decides each round: which steps are due (dependencies done, retries
//! and timers due, branches taken), what the run's cost limit allows, a `map`'s items, child
//! runs, and the run's output.

use std::sync::Arc;

use chrono::Utc;
use revo_events::family::workflow::{ParentRef, RunEvent};
use revo_events::{RunStatus, StepStatus, StoreError, Usd};
use serde_json::Value;
use uuid::Uuid;

use super::{key, settled, RunActor, Start, Stop};
use crate::workflows::definition::{Kind, Step};
use crate::workflows::steps::{self, Fail};
use crate::workflows::{remaining, NewRun};

impl RunActor {
    /// What is due now: events to append, and attempts to start once they are recorded.
    pub(super) async fn plan(&mut self) -> Result<(Vec<RunEvent>, Vec<Start>), Stop> {
        let now = Utc::now();
        let s = &self.state;
        // Every round, before any attempt: a run whose owner was disabled, or whose key was
        // revoked or expired, ends here with the reason.
        if let Some(why) = self.engine.standing(s.user_id, s.key_id) {
            self.tasks.abort_all();
            self.inflight.clear();
            return Ok((
                vec![RunEvent::Cancelled {
                    by: None,
                    reason: why.into(),
                }],
                Vec::new(),
            ));
        }
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
            let end = match self.run_output() {
                Ok(output) => RunEvent::Completed { output },
                Err(f) => RunEvent::Failed {
                    code: f.code,
                    message: f.message,
                    step: None,
                },
            };
            return Ok((vec![end], Vec::new()));
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
                    let r = steps::inline(
                        &step.kind,
                        &self.input,
                        &scope_steps,
                        self.engine.render_limit(),
                    )
                    .and_then(|v| self.fitting(v.to_string(), "the step's output"));
                    events.push(match r {
                        Ok(output) => RunEvent::StepCompleted {
                            step: step.id.clone(),
                            item: None,
                            output,
                            cost_usd: Usd::ZERO,
                            generation: None,
                            duration_ms: 0,
                        },
                        Err(f) => failed(step, None, attempt, f),
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
                    events.push(failed(step, item, attempt, f));
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
        steps::map_items(items, &self.input, &scope_steps, self.engine.render_limit())
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
                events.push(failed(step, None, attempts, f));
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
            let output = Value::Array(outputs).to_string();
            events.push(match self.fitting(output, "the map's outputs together") {
                Ok(output) => RunEvent::StepCompleted {
                    step: step.id.clone(),
                    item: None,
                    output,
                    cost_usd: Usd::ZERO,
                    generation: None,
                    duration_ms: 0,
                },
                // Terminal: retrying the same items gives the same outputs.
                Err(f) => failed(step, None, attempts, f),
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
        if depth > crate::workflows::definition::MAX_DEPTH {
            events.push(fail(
                "too_deep",
                format!(
                    "workflows nest too deep: at most {} levels",
                    crate::workflows::definition::MAX_DEPTH
                ),
            ));
            return Ok(());
        }
        let scope_steps = |id: &str| self.output_of(id);
        let limit = self.engine.render_limit();
        let child_input = match steps::render_input(input, &self.input, &scope_steps, limit) {
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
                replaces: self.state.steps.get(&step.id).and_then(|s| s.child_run),
            })
            .await;
        match r {
            Ok((child, _)) => events.push(RunEvent::ChildStarted {
                step: step.id.clone(),
                child_run: child.run_id,
            }),
            Err(crate::workflows::EngineError::Unavailable(m)) => {
                return Err(Stop::Store(StoreError::Unavailable(m)))
            }
            Err(e) => {
                let message = match &e {
                    crate::workflows::EngineError::Invalid(p) => p
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

    /// The definition's `output`, or every leaf step's output by id, as JSON text that fits
    /// in `run.completed`.
    fn run_output(&self) -> Result<String, Fail> {
        let scope_steps = |id: &str| self.output_of(id);
        let v = match &self.def.output {
            Some(o) => {
                steps::render_input(o, &self.input, &scope_steps, self.engine.render_limit())?
            }
            None => {
                let mut m = serde_json::Map::new();
                for id in self.def.leaves() {
                    m.insert(id.to_owned(), self.output_of(id).unwrap_or(Value::Null));
                }
                Value::Object(m)
            }
        };
        self.fitting(v.to_string(), "the run's output")
    }

    /// `json` if it fits in the event that records it; `output_too_large` if not.
    pub(super) fn fitting(&self, json: String, what: &str) -> Result<String, Fail> {
        if self.engine.output_fits(&json) {
            return Ok(json);
        }
        Err(Fail::new(
            "output_too_large",
            format!(
                "{what} is {} bytes, over the limit of {} bytes",
                json.len(),
                self.engine.render_limit()
            ),
        ))
    }
}

/// A step (or item) attempt that failed for good, with nothing spent: no retry.
fn failed(step: &Step, item: Option<u32>, attempt: u32, f: Fail) -> RunEvent {
    RunEvent::StepFailed {
        step: step.id.clone(),
        item,
        attempt,
        code: f.code,
        message: f.message,
        cost_usd: Usd::ZERO,
        retry_at: None,
    }
}
