//! The `workflow` and `workflow_run` families: durable workflows.
//!
//! - Stream `workflow/<id>`: a definition's versions ([`WorkflowEvent`]). Each `PUT` appends a
//!   new immutable version; a run keeps a copy of the version it started on.
//! - Stream `workflow_run/<id>`: one run ([`RunEvent`]). Its state is the fold of its stream
//!   ([`RunState`]); the node executing it writes at the exact version it folded, so a stale
//!   owner's write is refused once another node has claimed the run (`run.claimed`).
//!
//! Two projections read them: `workflows` (every definition's latest version) and
//! `workflow_runs` (every run's state without outputs: what lists and takeover scans need).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::RecordedEvent;
use crate::family::EventFamily;
use crate::money::Usd;
use crate::projection::{from_rows, to_rows, Projection, ProjectionError, Rows};

mod state;

pub use state::{
    Approval, ItemState, RunError, RunState, RunStatus, StepError, StepState, StepStatus,
};

pub const WORKFLOW_STREAM: &str = "workflow";
pub const RUN_STREAM: &str = "workflow_run";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum WorkflowEvent {
    /// Version 1. `definition` is the definition's JSON text, as validated.
    #[serde(rename = "workflow.created")]
    Created {
        workflow_id: Uuid,
        name: String,
        owner: Uuid,
        definition: String,
    },
    /// The next version.
    #[serde(rename = "workflow.updated")]
    Updated {
        version: u32,
        name: String,
        definition: String,
    },
    #[serde(rename = "workflow.archived")]
    Archived {},
}

impl EventFamily for WorkflowEvent {
    fn event_type(&self) -> &'static str {
        match self {
            WorkflowEvent::Created { .. } => "workflow.created",
            WorkflowEvent::Updated { .. } => "workflow.updated",
            WorkflowEvent::Archived { .. } => "workflow.archived",
        }
    }

    fn current_schema(event_type: &str) -> Option<u32> {
        match event_type {
            "workflow.created" | "workflow.updated" | "workflow.archived" => Some(1),
            _ => None,
        }
    }
}

/// The run (and its step) that started a child run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    pub run_id: Uuid,
    pub step: String,
    /// How deep the child is: 1 for a top-level run's child.
    #[serde(default)]
    pub depth: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum RunEvent {
    /// A run of `workflow_version`, with a copy of that version's definition and the input
    /// (both JSON text).
    #[serde(rename = "run.created")]
    Created {
        run_id: Uuid,
        workflow_id: Uuid,
        workflow_version: u32,
        user_id: Uuid,
        key_id: Option<Uuid>,
        definition: String,
        input: String,
        idempotency_key: Option<String>,
        parent: Option<ParentRef>,
        cost_limit: Option<Usd>,
    },
    /// `node` executes the run from here on; earlier owners' writes are refused.
    #[serde(rename = "run.claimed")]
    Claimed { node: String },
    /// An attempt of a step (or of one item of a `map` step) began.
    #[serde(rename = "step.started")]
    StepStarted {
        step: String,
        item: Option<u32>,
        attempt: u32,
    },
    /// `output` is JSON text. `generation` names the router request of a `generate` step (its
    /// `generation/<id>` stream holds the attempts and their cost).
    #[serde(rename = "step.completed")]
    StepCompleted {
        step: String,
        item: Option<u32>,
        output: String,
        cost_usd: Usd,
        generation: Option<String>,
        duration_ms: u64,
    },
    /// `retry_at` set: the step runs again then; unset: the step (and the run) failed.
    #[serde(rename = "step.failed")]
    StepFailed {
        step: String,
        item: Option<u32>,
        attempt: u32,
        code: String,
        message: String,
        cost_usd: Usd,
        retry_at: Option<DateTime<Utc>>,
    },
    /// A step on a branch not taken, or after one.
    #[serde(rename = "step.skipped")]
    StepSkipped { step: String },
    #[serde(rename = "timer.set")]
    TimerSet {
        step: String,
        fire_at: DateTime<Utc>,
    },
    #[serde(rename = "timer.fired")]
    TimerFired { step: String },
    /// `reason`: `step` (an `approval` step) or `cost_limit` (the next step could exceed the
    /// run's limit and the definition asks for approval then).
    #[serde(rename = "approval.requested")]
    ApprovalRequested {
        step: String,
        reason: String,
        cost_so_far: Usd,
        estimated_remaining: Usd,
        expires_at: Option<DateTime<Utc>>,
    },
    /// `by` unset: the approval timed out (a rejection).
    #[serde(rename = "approval.decided")]
    ApprovalDecided {
        step: String,
        approved: bool,
        by: Option<Uuid>,
        comment: Option<String>,
    },
    #[serde(rename = "child.started")]
    ChildStarted { step: String, child_run: Uuid },
    /// Failed steps run again (their attempts go on counting).
    #[serde(rename = "run.retried")]
    Retried { by: Uuid },
    #[serde(rename = "run.cancelled")]
    Cancelled { by: Option<Uuid>, reason: String },
    #[serde(rename = "run.completed")]
    Completed { output: String },
    #[serde(rename = "run.failed")]
    Failed {
        code: String,
        message: String,
        step: Option<String>,
    },
}

impl EventFamily for RunEvent {
    fn event_type(&self) -> &'static str {
        match self {
            RunEvent::Created { .. } => "run.created",
            RunEvent::Claimed { .. } => "run.claimed",
            RunEvent::StepStarted { .. } => "step.started",
            RunEvent::StepCompleted { .. } => "step.completed",
            RunEvent::StepFailed { .. } => "step.failed",
            RunEvent::StepSkipped { .. } => "step.skipped",
            RunEvent::TimerSet { .. } => "timer.set",
            RunEvent::TimerFired { .. } => "timer.fired",
            RunEvent::ApprovalRequested { .. } => "approval.requested",
            RunEvent::ApprovalDecided { .. } => "approval.decided",
            RunEvent::ChildStarted { .. } => "child.started",
            RunEvent::Retried { .. } => "run.retried",
            RunEvent::Cancelled { .. } => "run.cancelled",
            RunEvent::Completed { .. } => "run.completed",
            RunEvent::Failed { .. } => "run.failed",
        }
    }

    fn current_schema(event_type: &str) -> Option<u32> {
        match event_type {
            "run.created" | "run.claimed" | "step.started" | "step.completed" | "step.failed"
            | "step.skipped" | "timer.set" | "timer.fired" | "approval.requested"
            | "approval.decided" | "child.started" | "run.retried" | "run.cancelled"
            | "run.completed" | "run.failed" => Some(1),
            _ => None,
        }
    }
}

/// One definition: its latest version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRow {
    pub workflow_id: Uuid,
    pub name: String,
    pub owner: Uuid,
    pub version: u32,
    pub definition: String,
    pub archived: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The stream's version (for appends that must not race).
    pub stream_version: i64,
}

/// Every definition (`workflows`, keyed by id).
#[derive(Debug, Default, Clone)]
pub struct WorkflowsProjection {
    rows: BTreeMap<String, WorkflowRow>,
}

impl WorkflowsProjection {
    pub fn get(&self, id: &Uuid) -> Option<&WorkflowRow> {
        self.rows.get(&id.to_string())
    }

    pub fn all(&self) -> impl Iterator<Item = &WorkflowRow> {
        self.rows.values()
    }
}

impl Projection for WorkflowsProjection {
    fn name(&self) -> &'static str {
        "workflows"
    }

    fn apply(
        &mut self,
        event: &RecordedEvent,
        dirty: &mut BTreeSet<String>,
    ) -> Result<(), ProjectionError> {
        let env = &event.envelope;
        if env.stream_type != WORKFLOW_STREAM {
            return Ok(());
        }
        let e = WorkflowEvent::decode(env).map_err(|x| ProjectionError::decode(event, x))?;
        let at = env.occurred_at;
        match e {
            WorkflowEvent::Created {
                workflow_id,
                name,
                owner,
                definition,
            } => {
                self.rows.insert(
                    env.stream_id.clone(),
                    WorkflowRow {
                        workflow_id,
                        name,
                        owner,
                        version: 1,
                        definition,
                        archived: false,
                        created_at: at,
                        updated_at: at,
                        stream_version: env.version,
                    },
                );
            }
            WorkflowEvent::Updated {
                version,
                name,
                definition,
            } => {
                if let Some(r) = self.rows.get_mut(&env.stream_id) {
                    r.version = version;
                    r.name = name;
                    r.definition = definition;
                    r.updated_at = at;
                    r.stream_version = env.version;
                }
            }
            WorkflowEvent::Archived {} => {
                if let Some(r) = self.rows.get_mut(&env.stream_id) {
                    r.archived = true;
                    r.updated_at = at;
                    r.stream_version = env.version;
                }
            }
        }
        dirty.insert(env.stream_id.clone());
        Ok(())
    }

    fn row(&self, key: &str) -> Option<serde_json::Value> {
        self.rows
            .get(key)
            .and_then(|r| serde_json::to_value(r).ok())
    }

    fn rows(&self) -> Rows {
        to_rows(&self.rows)
    }

    fn load(&mut self, rows: Rows) -> Result<(), ProjectionError> {
        self.rows = from_rows(rows)?;
        Ok(())
    }
}

/// Finished runs each user keeps in `workflow_runs` (the newest by finish time): older ones
/// leave the view, so what every edge holds in memory is bounded by the users' unfinished
/// runs plus this many each. `GET /runs/{id}` reads any run from its stream.
pub const RETAINED_FINISHED_PER_USER: usize = 1000;

/// Every unfinished run, and each user's most recent finished ones, without their outputs
/// (`workflow_runs`, keyed by run id): lists, metrics and the takeover scan read it.
#[derive(Debug, Default, Clone)]
pub struct RunsProjection {
    runs: BTreeMap<String, RunState>,
    /// Per user: the finished runs kept, by (finish time, id), so which leave is decided by
    /// the runs alone and a fold from zero keeps the same ones as a fold from saved rows.
    finished: std::collections::HashMap<Uuid, BTreeSet<(DateTime<Utc>, String)>>,
}

fn finished_key(s: &RunState) -> DateTime<Utc> {
    s.finished_at.unwrap_or(s.created_at)
}

impl RunsProjection {
    pub fn get(&self, id: &Uuid) -> Option<&RunState> {
        self.runs.get(&id.to_string())
    }

    pub fn all(&self) -> impl Iterator<Item = &RunState> {
        self.runs.values()
    }

    /// Runs not yet ended.
    pub fn active(&self) -> impl Iterator<Item = &RunState> {
        self.runs.values().filter(|r| !r.status.is_terminal())
    }
}

impl Projection for RunsProjection {
    fn name(&self) -> &'static str {
        "workflow_runs"
    }

    fn apply(
        &mut self,
        event: &RecordedEvent,
        dirty: &mut BTreeSet<String>,
    ) -> Result<(), ProjectionError> {
        let env = &event.envelope;
        if env.stream_type != RUN_STREAM {
            return Ok(());
        }
        let e = RunEvent::decode(env).map_err(|x| ProjectionError::decode(event, x))?;
        let id = env.stream_id.clone();
        let mut state = self.runs.remove(&id);
        if let Some(s) = state.as_ref().filter(|s| s.status.is_terminal()) {
            // Retried (or changed) after it finished: tracked again below if still finished.
            if let Some(set) = self.finished.get_mut(&s.user_id) {
                set.remove(&(finished_key(s), id.clone()));
            }
        }
        RunState::apply(&mut state, &e, event, false);
        let Some(s) = state else {
            return Ok(());
        };
        let (user, terminal, key) = (s.user_id, s.status.is_terminal(), finished_key(&s));
        self.runs.insert(id.clone(), s);
        dirty.insert(id.clone());
        if terminal {
            let set = self.finished.entry(user).or_default();
            set.insert((key, id));
            while set.len() > RETAINED_FINISHED_PER_USER {
                let Some((_, old)) = set.pop_first() else {
                    break;
                };
                self.runs.remove(&old);
                dirty.insert(old);
            }
        }
        Ok(())
    }

    fn row(&self, key: &str) -> Option<serde_json::Value> {
        self.runs
            .get(key)
            .and_then(|r| serde_json::to_value(r).ok())
    }

    fn rows(&self) -> Rows {
        to_rows(&self.runs)
    }

    fn load(&mut self, rows: Rows) -> Result<(), ProjectionError> {
        self.runs = from_rows(rows)?;
        self.finished.clear();
        for (id, s) in self.runs.iter().filter(|(_, s)| s.status.is_terminal()) {
            self.finished
                .entry(s.user_id)
                .or_default()
                .insert((finished_key(s), id.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, EventMeta};
    use chrono::TimeZone;

    fn rec(run: Uuid, version: i64, second: i64, e: &RunEvent) -> RecordedEvent {
        let n = e.to_new_event(EventMeta::default()).unwrap();
        RecordedEvent {
            position: version,
            envelope: Envelope {
                event_id: n.event_id,
                stream_type: RUN_STREAM.into(),
                stream_id: run.to_string(),
                version,
                event_type: n.event_type,
                schema: n.schema,
                occurred_at: Utc.timestamp_opt(1_800_000_000 + second, 0).unwrap(),
                meta: n.meta,
                payload: n.payload,
            },
        }
    }

    #[test]
    fn each_user_keeps_a_bounded_number_of_finished_runs_and_every_unfinished_one() {
        let (user, other) = (Uuid::now_v7(), Uuid::now_v7());
        let mut p = RunsProjection::default();
        let mut dirty = BTreeSet::new();
        let mut runs = Vec::new();
        let n = RETAINED_FINISHED_PER_USER + 4;
        for i in 0..n as i64 {
            let run = Uuid::now_v7();
            let created = RunEvent::Created {
                run_id: run,
                workflow_id: Uuid::nil(),
                workflow_version: 1,
                user_id: if i == 0 { other } else { user },
                key_id: None,
                definition: "{}".into(),
                input: "{}".into(),
                idempotency_key: None,
                parent: None,
                cost_limit: None,
            };
            p.apply(&rec(run, 1, i, &created), &mut dirty).unwrap();
            runs.push(run);
        }
        // One stays unfinished; the rest finish in order.
        for (i, run) in runs.iter().enumerate().skip(1) {
            if i == 5 {
                continue;
            }
            let done = RunEvent::Completed {
                output: "{}".into(),
            };
            p.apply(&rec(*run, 2, 10_000 + i as i64, &done), &mut dirty)
                .unwrap();
        }
        let mine = p.all().filter(|r| r.user_id == user).count();
        assert_eq!(
            mine,
            RETAINED_FINISHED_PER_USER + 1,
            "the bound plus the unfinished run"
        );
        assert!(p.get(&runs[5]).is_some(), "an unfinished run never leaves");
        assert!(p.get(&runs[1]).is_none() && p.get(&runs[2]).is_none());
        assert!(
            p.get(&runs[0]).is_some(),
            "another user's run is theirs to count"
        );
        // Saved and loaded, the view keeps the same runs and goes on evicting the same way.
        let mut q = RunsProjection::default();
        q.load(p.rows()).unwrap();
        assert_eq!(q.rows(), p.rows());
        p.apply(
            &rec(
                runs[5],
                2,
                20_000,
                &RunEvent::Completed {
                    output: "{}".into(),
                },
            ),
            &mut dirty,
        )
        .unwrap();
        q.apply(
            &rec(
                runs[5],
                2,
                20_000,
                &RunEvent::Completed {
                    output: "{}".into(),
                },
            ),
            &mut dirty,
        )
        .unwrap();
        assert_eq!(q.rows(), p.rows());
        assert_eq!(
            p.all().filter(|r| r.user_id == user).count(),
            RETAINED_FINISHED_PER_USER
        );
    }
}
