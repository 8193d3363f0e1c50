//! One run's state: the fold of its stream ([`RunState`]), in full (the executor, `GET
//! /runs/{id}`) or without definitions, inputs and outputs (the `workflow_runs` projection).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ParentRef, RunEvent};
use crate::envelope::RecordedEvent;
use crate::family::EventFamily;
use crate::money::Usd;
use crate::projection::ProjectionError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Waiting,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Waiting,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Pending,
    Running,
    Waiting,
    Completed,
    Failed,
    Skipped,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Waiting => "waiting",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }

    /// Done for its dependants: they may run (a skipped step's dependants are skipped too).
    pub fn is_settled(self) -> bool {
        matches!(self, StepStatus::Completed | StepStatus::Skipped)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub reason: String,
    pub cost_so_far: Usd,
    pub estimated_remaining: Usd,
    pub requested_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// `None` while waiting.
    pub approved: Option<bool>,
    pub by: Option<Uuid>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepError {
    pub code: String,
    pub message: String,
}

/// One item of a `map` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemState {
    pub status: StepStatus,
    pub attempts: u32,
    pub output: Option<String>,
    pub cost_usd: Usd,
    pub retry_at: Option<DateTime<Utc>>,
    pub error: Option<StepError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub status: StepStatus,
    pub attempts: u32,
    /// JSON text (kept by the full fold only).
    pub output: Option<String>,
    pub cost_usd: Usd,
    pub error: Option<StepError>,
    /// When a failed attempt runs again.
    pub retry_at: Option<DateTime<Utc>>,
    /// A `sleep` step's timer.
    pub fire_at: Option<DateTime<Utc>>,
    pub approval: Option<Approval>,
    /// The run's cost limit was waived for this step by an approval.
    pub cost_approved: bool,
    pub child_run: Option<Uuid>,
    pub generation: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// A `map` step's items (full fold only; the light fold counts them).
    pub items: BTreeMap<u32, ItemState>,
    pub items_done: u32,
}

impl StepState {
    fn new() -> StepState {
        StepState {
            status: StepStatus::Pending,
            attempts: 0,
            output: None,
            cost_usd: Usd::ZERO,
            error: None,
            retry_at: None,
            fire_at: None,
            approval: None,
            cost_approved: false,
            child_run: None,
            generation: None,
            started_at: None,
            finished_at: None,
            items: BTreeMap::new(),
            items_done: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunError {
    pub code: String,
    pub message: String,
    pub step: Option<String>,
}

/// One run: the fold of its stream. The `full` fold (what the executor and `GET /runs/{id}`
/// use) keeps the definition, input and outputs; the light one (the `workflow_runs`
/// projection) keeps states, costs and times only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: Uuid,
    pub workflow_id: Uuid,
    pub workflow_version: u32,
    pub user_id: Uuid,
    pub key_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub definition: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub input: String,
    pub idempotency_key: Option<String>,
    pub parent: Option<ParentRef>,
    pub cost_limit: Option<Usd>,
    pub status: RunStatus,
    pub owner: Option<String>,
    /// Claims after the first: takeovers and resumptions.
    pub claims: u32,
    pub steps: BTreeMap<String, StepState>,
    pub cost_usd: Usd,
    pub error: Option<RunError>,
    pub output: Option<String>,
    /// The stream's version this state reflects.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    full: bool,
}

impl RunState {
    /// An empty state, only to be overwritten.
    pub fn placeholder() -> RunState {
        RunState {
            run_id: Uuid::nil(),
            workflow_id: Uuid::nil(),
            workflow_version: 0,
            user_id: Uuid::nil(),
            key_id: None,
            definition: String::new(),
            input: String::new(),
            idempotency_key: None,
            parent: None,
            cost_limit: None,
            status: RunStatus::Queued,
            owner: None,
            claims: 0,
            steps: BTreeMap::new(),
            cost_usd: Usd::ZERO,
            error: None,
            output: None,
            version: 0,
            created_at: DateTime::<Utc>::MIN_UTC,
            updated_at: DateTime::<Utc>::MIN_UTC,
            finished_at: None,
            full: true,
        }
    }

    /// Folds a run's events (in version order) into its full state; `None` before
    /// `run.created`.
    pub fn fold<'a>(
        events: impl IntoIterator<Item = &'a RecordedEvent>,
    ) -> Result<Option<RunState>, ProjectionError> {
        let mut state: Option<RunState> = None;
        for ev in events {
            let e = RunEvent::decode(&ev.envelope).map_err(|x| ProjectionError::decode(ev, x))?;
            RunState::apply(&mut state, &e, ev, true);
        }
        Ok(state)
    }

    /// The time before which nothing is due: the earliest timer, retry or approval deadline.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        let mut due: Option<DateTime<Utc>> = None;
        let mut add = |t: Option<DateTime<Utc>>| {
            if let Some(t) = t {
                due = Some(due.map_or(t, |d| d.min(t)));
            }
        };
        for s in self.steps.values() {
            if s.status == StepStatus::Waiting {
                add(s.fire_at);
                add(s.approval.as_ref().and_then(|a| a.expires_at));
            }
            if s.status == StepStatus::Pending {
                add(s.retry_at);
            }
            for i in s.items.values() {
                if i.status == StepStatus::Pending {
                    add(i.retry_at);
                }
            }
        }
        due
    }

    fn step(&mut self, id: &str) -> &mut StepState {
        self.steps
            .entry(id.to_owned())
            .or_insert_with(StepState::new)
    }

    /// Recomputes the run's status from its steps (unless it has ended).
    fn settle_status(&mut self) {
        if self.status.is_terminal() {
            return;
        }
        let running = self.steps.values().any(|s| s.status == StepStatus::Running);
        let waiting = self.steps.values().any(|s| s.status == StepStatus::Waiting);
        self.status = if running || (!waiting && self.owner.is_some()) {
            RunStatus::Running
        } else if waiting {
            RunStatus::Waiting
        } else {
            RunStatus::Queued
        };
    }

    /// Folds one event. `full` keeps definitions, inputs and outputs.
    pub fn apply(state: &mut Option<RunState>, e: &RunEvent, ev: &RecordedEvent, full: bool) {
        let at = ev.envelope.occurred_at;
        if let RunEvent::Created {
            run_id,
            workflow_id,
            workflow_version,
            user_id,
            key_id,
            definition,
            input,
            idempotency_key,
            parent,
            cost_limit,
        } = e
        {
            *state = Some(RunState {
                run_id: *run_id,
                workflow_id: *workflow_id,
                workflow_version: *workflow_version,
                user_id: *user_id,
                key_id: *key_id,
                definition: if full {
                    definition.clone()
                } else {
                    String::new()
                },
                input: if full { input.clone() } else { String::new() },
                idempotency_key: idempotency_key.clone(),
                parent: parent.clone(),
                cost_limit: *cost_limit,
                status: RunStatus::Queued,
                owner: None,
                claims: 0,
                steps: BTreeMap::new(),
                cost_usd: Usd::ZERO,
                error: None,
                output: None,
                version: ev.envelope.version,
                created_at: at,
                updated_at: at,
                finished_at: None,
                full,
            });
            return;
        }
        let Some(s) = state.as_mut() else { return };
        s.version = ev.envelope.version;
        s.updated_at = at;
        let full = s.full;
        let add = |a: &mut Usd, b: Usd| *a = a.checked_add(b).unwrap_or(*a);
        match e {
            RunEvent::Created { .. } => {}
            RunEvent::Claimed { node } => {
                if s.owner.is_some() {
                    s.claims += 1;
                }
                s.owner = Some(node.clone());
            }
            RunEvent::StepStarted {
                step,
                item,
                attempt,
            } => {
                let st = s.step(step);
                st.status = StepStatus::Running;
                st.started_at.get_or_insert(at);
                st.retry_at = None;
                match item {
                    Some(i) if full => {
                        let it = st.items.entry(*i).or_insert_with(|| ItemState {
                            status: StepStatus::Pending,
                            attempts: 0,
                            output: None,
                            cost_usd: Usd::ZERO,
                            retry_at: None,
                            error: None,
                        });
                        it.status = StepStatus::Running;
                        it.attempts = *attempt;
                        it.retry_at = None;
                    }
                    Some(_) => {}
                    None => st.attempts = *attempt,
                }
            }
            RunEvent::StepCompleted {
                step,
                item,
                output,
                cost_usd,
                generation,
                ..
            } => {
                add(&mut s.cost_usd, *cost_usd);
                let st = s.step(step);
                add(&mut st.cost_usd, *cost_usd);
                match item {
                    Some(i) => {
                        st.items_done += 1;
                        if full {
                            if let Some(it) = st.items.get_mut(i) {
                                it.status = StepStatus::Completed;
                                it.output = Some(output.clone());
                                add(&mut it.cost_usd, *cost_usd);
                            }
                        }
                    }
                    None => {
                        st.status = StepStatus::Completed;
                        st.error = None;
                        st.finished_at = Some(at);
                        st.generation = generation.clone();
                        if full {
                            st.output = Some(output.clone());
                        }
                    }
                }
            }
            RunEvent::StepFailed {
                step,
                item,
                code,
                message,
                cost_usd,
                retry_at,
                ..
            } => {
                add(&mut s.cost_usd, *cost_usd);
                let st = s.step(step);
                add(&mut st.cost_usd, *cost_usd);
                let err = StepError {
                    code: code.clone(),
                    message: message.clone(),
                };
                let status = if retry_at.is_some() {
                    StepStatus::Pending
                } else {
                    StepStatus::Failed
                };
                match item {
                    Some(i) => {
                        if full {
                            if let Some(it) = st.items.get_mut(i) {
                                it.status = status;
                                it.retry_at = *retry_at;
                                it.error = Some(err.clone());
                            }
                        }
                        // One item out of retries fails the step.
                        if status == StepStatus::Failed {
                            st.status = StepStatus::Failed;
                            st.error = Some(err);
                            st.finished_at = Some(at);
                        }
                    }
                    None => {
                        st.status = status;
                        st.retry_at = *retry_at;
                        st.error = Some(err);
                        if status == StepStatus::Failed {
                            st.finished_at = Some(at);
                        }
                    }
                }
            }
            RunEvent::StepSkipped { step } => {
                let st = s.step(step);
                st.status = StepStatus::Skipped;
                st.finished_at = Some(at);
            }
            RunEvent::TimerSet { step, fire_at } => {
                let st = s.step(step);
                st.status = StepStatus::Waiting;
                st.fire_at = Some(*fire_at);
                st.started_at.get_or_insert(at);
            }
            RunEvent::TimerFired { step } => {
                // The sleep step completes with the timer.
                let st = s.step(step);
                st.status = StepStatus::Completed;
                st.finished_at = Some(at);
                if full {
                    st.output = Some("null".into());
                }
            }
            RunEvent::ApprovalRequested {
                step,
                reason,
                cost_so_far,
                estimated_remaining,
                expires_at,
            } => {
                let st = s.step(step);
                st.status = StepStatus::Waiting;
                st.started_at.get_or_insert(at);
                st.approval = Some(Approval {
                    reason: reason.clone(),
                    cost_so_far: *cost_so_far,
                    estimated_remaining: *estimated_remaining,
                    requested_at: at,
                    expires_at: *expires_at,
                    approved: None,
                    by: None,
                    comment: None,
                });
            }
            RunEvent::ApprovalDecided {
                step,
                approved,
                by,
                comment,
            } => {
                let st = s.step(step);
                let reason = st.approval.as_ref().map(|a| a.reason.clone());
                if let Some(a) = st.approval.as_mut() {
                    a.approved = Some(*approved);
                    a.by = *by;
                    a.comment = comment.clone();
                }
                match (reason.as_deref(), approved) {
                    // Approved over the cost limit: the step may now start.
                    (Some("cost_limit"), true) => {
                        st.status = StepStatus::Pending;
                        st.cost_approved = true;
                    }
                    (_, true) => {
                        st.status = StepStatus::Completed;
                        st.finished_at = Some(at);
                        if full {
                            let out =
                                serde_json::json!({"approved": true, "by": by, "comment": comment});
                            st.output = Some(out.to_string());
                        }
                    }
                    (_, false) => {
                        st.status = StepStatus::Failed;
                        st.finished_at = Some(at);
                        st.error = Some(StepError {
                            code: if by.is_some() {
                                "rejected".into()
                            } else {
                                "approval_timeout".into()
                            },
                            message: comment
                                .clone()
                                .unwrap_or_else(|| "the approval was not given".into()),
                        });
                    }
                }
            }
            RunEvent::ChildStarted { step, child_run } => {
                let st = s.step(step);
                st.child_run = Some(*child_run);
                st.status = StepStatus::Running;
            }
            RunEvent::Retried { .. } => {
                s.status = RunStatus::Queued;
                s.error = None;
                s.finished_at = None;
                for st in s.steps.values_mut() {
                    if st.status == StepStatus::Failed {
                        st.status = StepStatus::Pending;
                        st.error = None;
                        st.finished_at = None;
                        st.approval = None;
                        for it in st.items.values_mut() {
                            if it.status == StepStatus::Failed {
                                it.status = StepStatus::Pending;
                                it.error = None;
                            }
                        }
                    }
                }
            }
            RunEvent::Cancelled { reason, .. } => {
                s.status = RunStatus::Cancelled;
                s.finished_at = Some(at);
                s.error = Some(RunError {
                    code: "cancelled".into(),
                    message: reason.clone(),
                    step: None,
                });
                for st in s.steps.values_mut() {
                    if matches!(st.status, StepStatus::Running | StepStatus::Waiting) {
                        st.status = StepStatus::Failed;
                        st.error = Some(StepError {
                            code: "cancelled".into(),
                            message: reason.clone(),
                        });
                    }
                }
            }
            RunEvent::Completed { output } => {
                s.status = RunStatus::Completed;
                s.finished_at = Some(at);
                if full {
                    s.output = Some(output.clone());
                }
            }
            RunEvent::Failed {
                code,
                message,
                step,
            } => {
                s.status = RunStatus::Failed;
                s.finished_at = Some(at);
                s.error = Some(RunError {
                    code: code.clone(),
                    message: message.clone(),
                    step: step.clone(),
                });
            }
        }
        s.settle_status();
    }
}
