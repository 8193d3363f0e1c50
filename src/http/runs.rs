//! `/runs`: workflow runs (docs/workflows.md): lists, one run folded from its stream, people's
//! decisions (cancel, approve, reject, retry, appended at the exact version of the run's
//! stream), and the run's `workflow.*` frames as server-sent events.

use std::time::Duration;

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use revo_actors::workflows::Command;
use revo_events::family::workflow::{RunEvent, RUN_STREAM};
use revo_events::{EventFamily, RunState, RunStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::Json;
use super::openapi::CallerErrors;
use super::workflows::{engine_error, may_see};
use super::AppState;
use crate::identity::rbac::Permission;

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Kept with the decision.
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ApprovalView {
    /// `step` (an approval step) or `cost_limit` (the next step could exceed the run's limit).
    pub reason: String,
    /// What the run has cost so far, dollars.
    pub cost_so_far_usd: String,
    /// The most the steps not yet done can cost (their prompts as far as known), dollars.
    pub estimated_remaining_usd: String,
    pub requested_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Unset while waiting.
    pub approved: Option<bool>,
    pub by: Option<Uuid>,
    pub comment: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StepView {
    /// pending, running, waiting, completed, failed or skipped.
    pub status: String,
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    pub attempts: u32,
    pub cost_usd: String,
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// A `sleep` step's timer.
    pub fire_at: Option<DateTime<Utc>>,
    pub approval: Option<ApprovalView>,
    /// A `workflow` step's child run.
    pub child_run: Option<Uuid>,
    /// A `generate` step's router request (`generation/<id>` in the log, in the ledger).
    pub generation: Option<String>,
    /// A `map` step's items completed.
    pub items_completed: u32,
}

#[derive(Serialize, ToSchema)]
pub struct RunView {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub version: u32,
    /// queued, running, waiting, completed, failed or cancelled.
    pub status: String,
    pub steps: std::collections::BTreeMap<String, StepView>,
    /// What the run has cost, dollars (the sum of its generate steps' ledger entries).
    pub cost_usd: String,
    pub cost_limit: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    pub parent_run: Option<Uuid>,
    /// The node executing it.
    pub node: Option<String>,
    /// The last event's offset (`GET /runs/{id}/events?after=`).
    pub offset: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

fn parse_json(s: &str) -> Option<Value> {
    serde_json::from_str(s).ok()
}

impl RunView {
    pub fn of(s: &RunState) -> RunView {
        RunView {
            id: s.run_id,
            workflow_id: s.workflow_id,
            version: s.workflow_version,
            status: s.status.as_str().into(),
            steps: s
                .steps
                .iter()
                .map(|(id, st)| {
                    (
                        id.clone(),
                        StepView {
                            status: st.status.as_str().into(),
                            output: st.output.as_deref().and_then(parse_json),
                            attempts: st.attempts,
                            cost_usd: st.cost_usd.to_string(),
                            error: st
                                .error
                                .as_ref()
                                .map(|e| json!({"code": e.code, "message": e.message})),
                            started_at: st.started_at,
                            finished_at: st.finished_at,
                            fire_at: st.fire_at,
                            approval: st.approval.as_ref().map(|a| ApprovalView {
                                reason: a.reason.clone(),
                                cost_so_far_usd: a.cost_so_far.to_string(),
                                estimated_remaining_usd: a.estimated_remaining.to_string(),
                                requested_at: a.requested_at,
                                expires_at: a.expires_at,
                                approved: a.approved,
                                by: a.by,
                                comment: a.comment.clone(),
                            }),
                            child_run: st.child_run,
                            generation: st.generation.clone(),
                            items_completed: st.items_done,
                        },
                    )
                })
                .collect(),
            cost_usd: s.cost_usd.to_string(),
            cost_limit: s.cost_limit.map(|c| c.to_string()),
            error: s
                .error
                .as_ref()
                .map(|e| json!({"code": e.code, "message": e.message, "step": e.step})),
            output: s.output.as_deref().and_then(parse_json),
            input: (!s.input.is_empty())
                .then(|| parse_json(&s.input))
                .flatten(),
            parent_run: s.parent.as_ref().map(|p| p.run_id),
            node: s.owner.clone(),
            offset: s.version,
            created_at: s.created_at,
            updated_at: s.updated_at,
            finished_at: s.finished_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<RunView>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// Only runs in this state.
    pub status: Option<String>,
    /// Only runs of this workflow.
    pub workflow_id: Option<Uuid>,
    /// At most this many, newest first (1-1000, default 100).
    pub limit: Option<usize>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// The last offset seen (0: from the start). `Last-Event-ID` works too.
    #[serde(default)]
    pub after: Option<i64>,
}

/// The caller's runs (administrators: everyone's), newest first, without outputs.
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:read"])),
    params(RunsQuery),
    responses(
        (status = 200, description = "OK", body = RunList),
        (status = 422, description = "A query parameter that does not parse or is out of range", body = ErrorBody),
        CallerErrors,
    )
)]
#[get("/runs")]
pub async fn list_runs(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<RunsQuery>,
) -> Result<HttpResponse, ApiError> {
    let status = match q.status.as_deref() {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_parameter",
                "status is queued, running, waiting, completed, failed or cancelled",
            )
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::unprocessable(
            "invalid_parameter",
            "limit is 1 to 1000",
        ));
    }
    let view = state.workflows.runs_view().read();
    let mut runs: Vec<&RunState> = view
        .all()
        .filter(|r| may_see(&caller, r.user_id))
        .filter(|r| status.is_none_or(|s| r.status == s))
        .filter(|r| q.workflow_id.is_none_or(|w| r.workflow_id == w))
        .collect();
    runs.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    let runs = runs.into_iter().take(limit).map(RunView::of).collect();
    Ok(HttpResponse::Ok().json(RunList { runs }))
}

async fn visible_run(state: &AppState, caller: &Caller, id: Uuid) -> Result<RunState, ApiError> {
    state
        .workflows
        .load(id)
        .await
        .map_err(engine_error)?
        .filter(|r| may_see(caller, r.user_id))
        .ok_or_else(|| ApiError::not_found("no such run"))
}

/// A run: its status, each step's state, output, attempts and cost, and the run's cost.
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:read"])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "OK", body = RunView),
        (status = 404, description = "No such run, or not the caller's", body = ErrorBody),
        CallerErrors,
    )
)]
#[get("/runs/{id}")]
pub async fn get_run(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let r = visible_run(&state, &caller, *id).await?;
    Ok(HttpResponse::Ok().json(RunView::of(&r)))
}

async fn decide(
    state: &AppState,
    req: &HttpRequest,
    caller: &Caller,
    id: Uuid,
    cmd: Command,
) -> Result<HttpResponse, ApiError> {
    let r = visible_run(state, caller, id).await?;
    if r.user_id != caller.0.user_id && !caller.0.can(Permission::UsersWrite) {
        return Err(ApiError::forbidden(
            "not_owner",
            "only the run's owner or an administrator decides",
        ));
    }
    let action = match &cmd {
        Command::Approve { .. } => Some("run.approved"),
        Command::Reject { .. } => Some("run.rejected"),
        Command::Cancel => Some("run.cancelled"),
        Command::Retry => None,
    };
    let s = state
        .workflows
        .command(id, caller.0.user_id, caller.meta(req), cmd)
        .await
        .map_err(engine_error)?;
    if let Some(action) = action {
        super::audit::done(state, req, &caller.0, action, format!("run:{id}"));
    }
    Ok(HttpResponse::Ok().json(RunView::of(&s)))
}

fn comment(d: Option<Json<Decision>>) -> Result<Option<String>, ApiError> {
    let c = d.and_then(|d| d.0.comment);
    if c.as_ref().is_some_and(|c| c.chars().count() > 2000) {
        return Err(ApiError::unprocessable(
            "invalid_parameter",
            "comment is at most 2000 characters",
        ));
    }
    Ok(c)
}

/// Cancels a run: running steps stop, nothing more runs.
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:write"])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "Cancelled", body = RunView),
        (status = 404, description = "No such run, or not the caller's", body = ErrorBody),
        (status = 409, description = "The run has already ended", body = ErrorBody),
        CallerErrors,
    )
)]
#[post("/runs/{id}/cancel")]
pub async fn cancel(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    decide(&state, &req, &caller, *id, Command::Cancel).await
}

/// Approves the step waiting for approval (an approval step, or a step over the run's cost
/// limit).
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:write"])),
    params(("id" = Uuid, Path)),
    request_body(content = Option<Decision>),
    responses(
        (status = 200, description = "Approved", body = RunView),
        (status = 404, description = "No such run, or not the caller's", body = ErrorBody),
        (status = 409, description = "Nothing is waiting for approval", body = ErrorBody),
        CallerErrors,
    )
)]
#[post("/runs/{id}/approve")]
pub async fn approve(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    id: web::Path<Uuid>,
    body: Option<Json<Decision>>,
) -> Result<HttpResponse, ApiError> {
    let comment = comment(body)?;
    decide(&state, &req, &caller, *id, Command::Approve { comment }).await
}

/// Rejects the step waiting for approval: the run fails (`rejected`).
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:write"])),
    params(("id" = Uuid, Path)),
    request_body(content = Option<Decision>),
    responses(
        (status = 200, description = "Rejected", body = RunView),
        (status = 404, description = "No such run, or not the caller's", body = ErrorBody),
        (status = 409, description = "Nothing is waiting for approval", body = ErrorBody),
        CallerErrors,
    )
)]
#[post("/runs/{id}/reject")]
pub async fn reject(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    id: web::Path<Uuid>,
    body: Option<Json<Decision>>,
) -> Result<HttpResponse, ApiError> {
    let comment = comment(body)?;
    decide(&state, &req, &caller, *id, Command::Reject { comment }).await
}

/// Runs a failed run again from its failed step (completed steps keep their outputs).
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:write"])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "Running again", body = RunView),
        (status = 404, description = "No such run, or not the caller's", body = ErrorBody),
        (status = 409, description = "The run has not failed", body = ErrorBody),
        CallerErrors,
    )
)]
#[post("/runs/{id}/retry")]
pub async fn retry(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    decide(&state, &req, &caller, *id, Command::Retry).await
}

fn sse(frame: &Value) -> Bytes {
    let kind = frame["type"].as_str().unwrap_or("message");
    let id = frame
        .get("offset")
        .and_then(Value::as_i64)
        .map(|o| format!("id: {o}\n"))
        .unwrap_or_default();
    Bytes::from(format!("{id}event: {kind}\ndata: {frame}\n\n"))
}

/// The run's `workflow.*` frames as server-sent events: its stored events after `after` (or
/// `Last-Event-ID`), then live ones with generated text, until the run ends.
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:read"])),
    params(("id" = Uuid, Path), EventsQuery),
    responses(
        (status = 200, description = "text/event-stream of workflow.* frames"),
        (status = 404, description = "No such run, or not the caller's", body = ErrorBody),
        (status = 422, description = "A query parameter that does not parse or is out of range", body = ErrorBody),
        (status = 429, description = "The user follows too many runs on this server (`too_many_followers`)", body = ErrorBody),
        CallerErrors,
    )
)]
#[get("/runs/{id}/events")]
pub async fn run_events(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    id: web::Path<Uuid>,
    q: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let run = visible_run(&state, &caller, *id).await?;
    let slot = state.followers.take(caller.0.user_id).ok_or_else(|| {
        ApiError::new(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_followers",
            format!(
                "at most {} run followers per user on this server at once ([workflows] max_followers_per_user)",
                state.followers.max()
            ),
        )
    })?;
    let last_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<i64>().ok());
    let after = q.after.or(last_id).unwrap_or(0).max(0);
    let store = state.store.clone();
    let progress = state.workflows.follow_progress(run.run_id).await;
    let run_id = run.run_id;
    struct S {
        store: std::sync::Arc<dyn revo_events::EventStore>,
        /// Bumped when this edge hears of the run's events (not on every append anywhere).
        signal: tokio::sync::watch::Receiver<i64>,
        progress: Option<revo_nats::MessageStream>,
        after: i64,
        buf: std::collections::VecDeque<Bytes>,
        ended: bool,
        /// The user's follower slot, given back when the client goes.
        _slot: crate::http::quota::Slot,
    }
    let st = S {
        _slot: slot,
        signal: state.workflows.watch(run_id),
        store,
        progress,
        after,
        buf: Default::default(),
        ended: false,
    };
    let stream = futures::stream::unfold(st, move |mut s| async move {
        loop {
            if let Some(b) = s.buf.pop_front() {
                return Some((Ok::<Bytes, actix_web::Error>(b), s));
            }
            if s.ended {
                return None;
            }
            s.signal.borrow_and_update();
            let page = match s
                .store
                .read_stream(RUN_STREAM, &run_id.to_string(), s.after + 1, 500)
                .await
            {
                Ok(p) => p,
                Err(_) => return None,
            };
            if !page.is_empty() {
                for ev in page {
                    s.after = ev.envelope.version;
                    if let Ok(e) = RunEvent::decode(&ev.envelope) {
                        s.ended |= matches!(
                            e,
                            RunEvent::Completed { .. }
                                | RunEvent::Failed { .. }
                                | RunEvent::Cancelled { .. }
                        );
                        let f =
                            revo_actors::workflows::frame_of_event(run_id, ev.envelope.version, &e);
                        s.buf.push_back(sse(&f));
                    }
                }
                continue;
            }
            // The bus wakes it; the poll covers a lost message, the comment keeps proxies open.
            let wait = tokio::time::sleep(Duration::from_secs(3));
            tokio::select! {
                r = s.signal.changed() => {
                    if r.is_err() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                m = async {
                    match s.progress.as_mut() {
                        Some(p) => p.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match m {
                        Some(Ok(msg)) => {
                            if let Ok(v) = serde_json::from_slice::<Value>(&msg.payload) {
                                s.buf.push_back(sse(&v));
                            }
                        }
                        _ => s.progress = None,
                    }
                }
                _ = wait => {
                    // Also how a gone client is noticed (a write fails), so its follower slot
                    // comes back within one wait.
                    s.buf.push_back(Bytes::from_static(b": keep-alive\n\n"));
                }
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(stream))
}
