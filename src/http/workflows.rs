//! `/workflows` and `/runs`: durable workflows (docs/workflows.md). Definitions are checked
//! whole (`422` with every problem's path) and stored as `workflow/<id>` events; executing one
//! starts a run (`workflow_run/<id>`) that this node's engine (`revo_actors::workflows`) runs
//! and any node takes over if this one dies. Decisions on a run (cancel, approve, reject,
//! retry) are appended at the exact version of the run's stream.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use revo_actors::workflows::definition::Problem as DefProblem;
use revo_actors::workflows::{Command, EngineError, NewRun};
use revo_events::family::workflow::{RunEvent, WorkflowRow, RUN_STREAM, WORKFLOW_STREAM};
use revo_events::{
    AppendRequest, EventFamily, ExpectedVersion, RunState, RunStatus, StoreError, WorkflowEvent,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::access::Caller;
use super::error::{ApiError, ErrorBody, Problem};
use super::json::Json;
use super::openapi::{BodyErrors, CallerErrors};
use super::AppState;
use crate::identity::rbac::Permission;

/// Longest `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A workflow definition: the documented shape (docs/workflows.md). Steps form a DAG: a step
/// depends on the steps its templates read (`{{ steps.<id>.output }}`) and those in `after`.
#[derive(Deserialize, Serialize, ToSchema)]
pub struct WorkflowDefinition {
    /// 1-100 characters.
    pub name: String,
    /// JSON Schema of the run's input (a subset: docs/workflows.md).
    #[schema(value_type = Option<Object>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// The steps, each `{"id", "type", ...}`; `type` is generate, template, extract,
    /// condition, map, http, sleep, approval or workflow.
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<Value>,
    /// The run's output (templates); default: every step nothing depends on, by id.
    #[schema(value_type = Option<Object>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Most a run may cost, dollars as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_limit: Option<String>,
    /// `fail` (default) or `approval`: what a step that could exceed `cost_limit` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_cost_limit: Option<String>,
    /// Longest a run may take, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct WorkflowView {
    pub id: Uuid,
    pub name: String,
    pub owner: Uuid,
    /// Each `PUT` makes the next version; runs keep the version they started on.
    pub version: u32,
    pub archived: bool,
    #[schema(value_type = Object)]
    pub definition: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl WorkflowView {
    fn of(r: &WorkflowRow) -> WorkflowView {
        WorkflowView {
            id: r.workflow_id,
            name: r.name.clone(),
            owner: r.owner,
            version: r.version,
            archived: r.archived,
            definition: serde_json::from_str(&r.definition).unwrap_or(Value::Null),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowView>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    /// An earlier version (default: the latest).
    pub version: Option<u32>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// The run's input, checked against the definition's `input` schema.
    #[schema(value_type = Option<Object>)]
    #[serde(default)]
    pub input: Option<Value>,
}

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

fn problems(p: Vec<DefProblem>) -> ApiError {
    let n = p.len();
    let first = p
        .first()
        .map(|x| format!("{}: {}", x.path, x.message))
        .unwrap_or_default();
    let mut e = ApiError::unprocessable(
        "invalid_definition",
        format!("{n} problem(s); the first: {first}"),
    );
    e.problems = Some(Box::new(
        p.into_iter()
            .map(|x| Problem {
                path: x.path,
                code: x.code.into(),
                message: x.message,
            })
            .collect(),
    ));
    e
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::NotFound => ApiError::not_found("no such run"),
        EngineError::Conflict(code, m) => ApiError::new(StatusCode::CONFLICT, code, m),
        EngineError::Limited(code, m) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, m),
        EngineError::Invalid(p) => {
            let mut e = problems(p);
            e.code = "invalid_input";
            e
        }
        EngineError::Unavailable(m) => {
            tracing::warn!(error = %m, "workflow engine unavailable");
            ApiError::unavailable("the workflow store is unavailable; try again shortly")
                .with_retry_after(1)
        }
    }
}

/// Administrators (`users:read`) see everyone's; others their own. Others' are "not found".
fn may_see(caller: &Caller, owner: Uuid) -> bool {
    caller.0.user_id == owner || caller.0.can(Permission::UsersRead)
}

fn visible_workflow(state: &AppState, caller: &Caller, id: Uuid) -> Result<WorkflowRow, ApiError> {
    state
        .workflows
        .workflows_view()
        .read()
        .get(&id)
        .filter(|w| may_see(caller, w.owner))
        .cloned()
        .ok_or_else(|| ApiError::not_found("no such workflow"))
}

/// Parses a body as a definition, checked whole; the canonical JSON text to store.
fn checked(state: &AppState, body: &WorkflowDefinition) -> Result<(String, String), ApiError> {
    let v = serde_json::to_value(body)
        .map_err(|e| ApiError::unprocessable("invalid_definition", e.to_string()))?;
    let def = state.workflows.parse(&v).map_err(problems)?;
    let text = v.to_string();
    if text.len() > revo_actors::workflows::definition::MAX_DEFINITION_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the definition is over 256 KiB",
        ));
    }
    Ok((def.name, text))
}

/// Waits (up to 5 s) for this node's view to show the workflow at `stream_version`.
async fn shown(state: &AppState, id: Uuid, stream_version: i64) -> Option<WorkflowRow> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = state
            .workflows
            .workflows_view()
            .read()
            .get(&id)
            .filter(|r| r.stream_version >= stream_version)
        {
            return Some(r.clone());
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Creates a workflow (version 1); the caller owns it.
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:write"])),
    request_body = WorkflowDefinition,
    responses(
        (status = 201, description = "Created", body = WorkflowView),
        BodyErrors,
        CallerErrors,
    )
)]
#[post("/workflows")]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: Json<WorkflowDefinition>,
) -> Result<HttpResponse, ApiError> {
    let (name, text) = checked(&state, &body.0)?;
    let id = Uuid::now_v7();
    let e = WorkflowEvent::Created {
        workflow_id: id,
        name,
        owner: caller.0.user_id,
        definition: text,
    };
    let ev = e
        .to_new_event(caller.meta(&req))
        .map_err(|e| ApiError::unprocessable("invalid_definition", e.to_string()))?;
    let a = state
        .store
        .append(AppendRequest::new(
            WORKFLOW_STREAM,
            id.to_string(),
            ExpectedVersion::NoStream,
            vec![ev],
        ))
        .await
        .map_err(store_error)?;
    let row = shown(&state, id, a.stream_version).await.ok_or_else(|| {
        ApiError::unavailable("the workflow was stored but is not shown yet").with_retry_after(1)
    })?;
    Ok(HttpResponse::Created().json(WorkflowView::of(&row)))
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::PayloadTooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "over the event size limit",
        ),
        StoreError::Conflict { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the workflow changed meanwhile; read it and try again",
        ),
        e => e.into(),
    }
}

/// The caller's workflows (administrators: everyone's), newest first.
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:read"])),
    responses((status = 200, description = "OK", body = WorkflowList), CallerErrors)
)]
#[get("/workflows")]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let view = state.workflows.workflows_view().read();
    let mut workflows: Vec<WorkflowView> = view
        .all()
        .filter(|w| may_see(&caller, w.owner))
        .map(WorkflowView::of)
        .collect();
    workflows.sort_by_key(|w| std::cmp::Reverse(w.created_at));
    Ok(HttpResponse::Ok().json(WorkflowList { workflows }))
}

/// One workflow: its latest version, or `?version=N`.
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:read"])),
    params(("id" = Uuid, Path), VersionQuery),
    responses(
        (status = 200, description = "OK", body = WorkflowView),
        (status = 404, description = "No such workflow (or version), or not the caller's", body = ErrorBody),
        (status = 422, description = "A query parameter that does not parse or is out of range", body = ErrorBody),
        CallerErrors,
    )
)]
#[get("/workflows/{id}")]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<Uuid>,
    q: web::Query<VersionQuery>,
) -> Result<HttpResponse, ApiError> {
    let row = visible_workflow(&state, &caller, *id)?;
    let Some(version) = q.version.filter(|v| *v != row.version) else {
        return Ok(HttpResponse::Ok().json(WorkflowView::of(&row)));
    };
    // An earlier version: from the stream.
    let events = state
        .store
        .read_stream(WORKFLOW_STREAM, &id.to_string(), 1, 10_000)
        .await?;
    let mut n = 0u32;
    for ev in &events {
        let (name, def, at) = match WorkflowEvent::decode(&ev.envelope) {
            Ok(WorkflowEvent::Created {
                name, definition, ..
            }) => (name, definition, ev.envelope.occurred_at),
            Ok(WorkflowEvent::Updated {
                name, definition, ..
            }) => (name, definition, ev.envelope.occurred_at),
            _ => continue,
        };
        n += 1;
        if n == version {
            let mut r = row.clone();
            r.version = version;
            r.name = name;
            r.definition = def;
            r.updated_at = at;
            return Ok(HttpResponse::Ok().json(WorkflowView::of(&r)));
        }
    }
    Err(ApiError::not_found(format!("no version {version}")))
}

/// A new version (the definition is checked whole); running runs keep theirs.
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:write"])),
    params(("id" = Uuid, Path)),
    request_body = WorkflowDefinition,
    responses(
        (status = 200, description = "The new version", body = WorkflowView),
        (status = 404, description = "No such workflow, or not the caller's", body = ErrorBody),
        (status = 409, description = "Archived, or changed meanwhile", body = ErrorBody),
        BodyErrors,
        CallerErrors,
    )
)]
#[put("/workflows/{id}")]
pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    id: web::Path<Uuid>,
    body: Json<WorkflowDefinition>,
) -> Result<HttpResponse, ApiError> {
    let row = visible_workflow(&state, &caller, *id)?;
    if row.archived {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "archived",
            "the workflow is archived",
        ));
    }
    let (name, text) = checked(&state, &body.0)?;
    let e = WorkflowEvent::Updated {
        version: row.version + 1,
        name,
        definition: text,
    };
    let ev = e
        .to_new_event(caller.meta(&req))
        .map_err(|e| ApiError::unprocessable("invalid_definition", e.to_string()))?;
    let a = state
        .store
        .append(AppendRequest::new(
            WORKFLOW_STREAM,
            id.to_string(),
            ExpectedVersion::Exact(row.stream_version),
            vec![ev],
        ))
        .await
        .map_err(store_error)?;
    let row = shown(&state, *id, a.stream_version)
        .await
        .ok_or_else(|| ApiError::unavailable("stored but not shown yet").with_retry_after(1))?;
    Ok(HttpResponse::Ok().json(WorkflowView::of(&row)))
}

/// Archives a workflow: it can no longer be executed or changed; its runs go on.
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:write"])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Archived"),
        (status = 404, description = "No such workflow, or not the caller's", body = ErrorBody),
        CallerErrors,
    )
)]
#[delete("/workflows/{id}")]
pub async fn archive(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let row = visible_workflow(&state, &caller, *id)?;
    if row.archived {
        return Ok(HttpResponse::NoContent().finish());
    }
    let ev = WorkflowEvent::Archived {}
        .to_new_event(caller.meta(&req))
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let a = state
        .store
        .append(AppendRequest::new(
            WORKFLOW_STREAM,
            id.to_string(),
            ExpectedVersion::Exact(row.stream_version),
            vec![ev],
        ))
        .await
        .map_err(store_error)?;
    shown(&state, *id, a.stream_version).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Starts a run of the workflow's latest version. With `Idempotency-Key`, a repeat (same
/// caller, workflow and key) returns the run the first request started (`200`).
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:write"])),
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "Up to 255 characters")),
    request_body = ExecuteRequest,
    responses(
        (status = 201, description = "Started", body = RunView),
        (status = 200, description = "Started earlier with this Idempotency-Key", body = RunView),
        (status = 404, description = "No such workflow, or not the caller's", body = ErrorBody),
        (status = 409, description = "Archived, or the key was used for another workflow", body = ErrorBody),
        BodyErrors,
        CallerErrors,
    )
)]
#[post("/workflows/{id}/execute")]
pub async fn execute(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    id: web::Path<Uuid>,
    body: Json<ExecuteRequest>,
) -> Result<HttpResponse, ApiError> {
    let row = visible_workflow(&state, &caller, *id)?;
    if row.owner != caller.0.user_id {
        // Administrators read others' workflows; running one spends its owner's models.
        return Err(ApiError::forbidden(
            "not_owner",
            "only the workflow's owner runs it",
        ));
    }
    if row.archived {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "archived",
            "the workflow is archived",
        ));
    }
    let key = match req.headers().get("idempotency-key") {
        Some(v) => {
            let k = v.to_str().ok().map(str::trim).filter(|k| {
                !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && !k.chars().any(char::is_control)
            });
            Some(
                k.ok_or_else(|| {
                    ApiError::unprocessable(
                        "invalid_parameter",
                        "Idempotency-Key is 1-255 visible characters",
                    )
                })?
                .to_owned(),
            )
        }
        None => None,
    };
    let key_id = match caller.0.via {
        crate::identity::Via::Key { key_id } => Some(key_id),
        crate::identity::Via::Token { .. } => None,
    };
    let (run, created) = state
        .workflows
        .execute(NewRun {
            workflow: &row,
            input: body.0.input.unwrap_or_else(|| json!({})),
            user_id: caller.0.user_id,
            key_id,
            idempotency_key: key,
            meta: caller.meta(&req),
            parent: None,
        })
        .await
        .map_err(engine_error)?;
    // This edge's lists (and the per-user limit) show the run from now on.
    state
        .workflows
        .view_caught_up(run.run_id, run.version, Duration::from_secs(2))
        .await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(RunView::of(&run)))
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
    let s = state
        .workflows
        .command(id, caller.0.user_id, caller.meta(req), cmd)
        .await
        .map_err(engine_error)?;
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
        idle: u32,
    }
    let st = S {
        signal: state.workflows.watch(run_id),
        store,
        progress,
        after,
        buf: Default::default(),
        ended: false,
        idle: 0,
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
                    s.idle += 1;
                    if s.idle % 5 == 0 {
                        s.buf.push_back(Bytes::from_static(b": keep-alive\n\n"));
                    }
                }
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(stream))
}
