//! A run's events as `workflow.*` frames: the same JSON over WebSocket (to the run's user's
//! sessions subscribed to `workflow`) and over SSE (`GET /runs/{id}/events`). `offset` is the
//! event's version in the run's stream: a late subscriber resumes after it.

use revo_events::family::workflow::RunEvent;
use serde_json::{json, Value};
use uuid::Uuid;

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

/// The frame for one stored event.
pub fn of_event(run: Uuid, offset: i64, e: &RunEvent) -> Value {
    let mut f = match e {
        RunEvent::Created {
            workflow_id,
            workflow_version,
            parent,
            ..
        } => json!({"type": "workflow.started", "workflow_id": workflow_id,
            "version": workflow_version, "parent_run": parent.as_ref().map(|p| p.run_id)}),
        RunEvent::Claimed { node } => json!({"type": "workflow.claimed", "node": node}),
        RunEvent::StepStarted {
            step,
            item,
            attempt,
        } => {
            json!({"type": "workflow.step.started", "step": step, "item": item, "attempt": attempt})
        }
        RunEvent::StepCompleted {
            step,
            item,
            output,
            cost_usd,
            ..
        } => json!({"type": "workflow.step.completed", "step": step, "item": item,
            "output": parse(output), "cost_usd": cost_usd.to_string()}),
        RunEvent::StepFailed {
            step,
            item,
            attempt,
            code,
            message,
            retry_at,
            ..
        } => json!({"type": "workflow.step.failed", "step": step, "item": item, "attempt": attempt,
            "code": code, "message": message, "retry_at": retry_at}),
        RunEvent::StepSkipped { step } => json!({"type": "workflow.step.skipped", "step": step}),
        RunEvent::TimerSet { step, fire_at } => {
            json!({"type": "workflow.timer.set", "step": step, "fire_at": fire_at})
        }
        RunEvent::TimerFired { step } => json!({"type": "workflow.timer.fired", "step": step}),
        RunEvent::ApprovalRequested {
            step,
            reason,
            cost_so_far,
            estimated_remaining,
            expires_at,
        } => json!({"type": "workflow.approval.requested", "step": step, "reason": reason,
            "cost_so_far_usd": cost_so_far.to_string(),
            "estimated_remaining_usd": estimated_remaining.to_string(), "expires_at": expires_at}),
        RunEvent::ApprovalDecided {
            step,
            approved,
            by,
            comment,
        } => json!({"type": "workflow.approval.decided", "step": step, "approved": approved,
            "by": by, "comment": comment}),
        RunEvent::ChildStarted { step, child_run } => {
            json!({"type": "workflow.child.started", "step": step, "child_run": child_run})
        }
        RunEvent::Retried { by } => json!({"type": "workflow.retried", "by": by}),
        RunEvent::Cancelled { by, reason } => {
            json!({"type": "workflow.cancelled", "by": by, "reason": reason})
        }
        RunEvent::Completed { output } => {
            json!({"type": "workflow.completed", "output": parse(output)})
        }
        RunEvent::Failed {
            code,
            message,
            step,
        } => json!({"type": "workflow.failed", "code": code, "message": message, "step": step}),
    };
    f["run_id"] = json!(run);
    f["offset"] = json!(offset);
    f
}

/// Generated text of a step as it streams (not stored; no offset).
pub fn progress(run: Uuid, step: &str, item: Option<u32>, text: &str) -> Value {
    json!({"type": "workflow.progress", "run_id": run, "step": step, "item": item, "text": text})
}
