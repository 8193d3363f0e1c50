//! `/workflows`: durable workflow definitions (docs/workflows.md), checked whole (`422` with
//! every problem's path) and stored as `workflow/<id>` events, and executing one: a run
//! (`workflow_run/<id>`) that this node's engine (`revo_actors::workflows`) runs and any node
//! takes over if this one dies. The runs themselves are `runs.rs`.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use revo_actors::workflows::definition::Problem as DefProblem;
use revo_actors::workflows::{EngineError, NewRun};
use revo_events::family::workflow::{WorkflowRow, WORKFLOW_STREAM};
use revo_events::{AppendRequest, EventFamily, ExpectedVersion, StoreError, WorkflowEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::access::Caller;
use super::error::{ApiError, ErrorBody, Problem};
use super::json::Json;
use super::openapi::{BodyErrors, CallerErrors};
use super::runs::RunView;
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

pub(super) fn engine_error(e: EngineError) -> ApiError {
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
pub(super) fn may_see(caller: &Caller, owner: Uuid) -> bool {
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

/// A workflow the caller may change (or run): its own. An administrator reads others'
/// (`403 not_owner`) but never changes them: the owner's next run would execute the
/// administrator's definition on the owner's budgets.
fn owned_workflow(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    what: &str,
) -> Result<WorkflowRow, ApiError> {
    let row = visible_workflow(state, caller, id)?;
    if row.owner != caller.0.user_id {
        return Err(ApiError::forbidden(
            "not_owner",
            format!("only the workflow's owner {what} it"),
        ));
    }
    Ok(row)
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
    let view = state.workflows.workflows_view();
    view.wait_until(Duration::from_secs(5), |v| {
        v.get(&id)
            .filter(|r| r.stream_version >= stream_version)
            .cloned()
    })
    .await
}

/// Creates a workflow (version 1); the caller owns it.
#[utoipa::path(
    tag = "workflows",
    security(("bearer" = ["workflows:write"])),
    request_body = WorkflowDefinition,
    responses(
        (status = 201, description = "Created", body = WorkflowView),
        (status = 429, description = "The user has too many workflows (`too_many_workflows`)", body = ErrorBody),
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
    let max = state.workflows.settings().max_workflows_per_user;
    let mine = state
        .workflows
        .workflows_view()
        .read()
        .all()
        .filter(|w| w.owner == caller.0.user_id && !w.archived)
        .count();
    if mine >= max {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_workflows",
            format!("at most {max} workflows per user; archive some first ([workflows] max_workflows_per_user)"),
        ));
    }
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
    super::audit::done(
        &state,
        &req,
        &caller.0,
        "workflow.created",
        format!("workflow:{id}"),
    );
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
        (status = 403, description = "Another user's workflow (`not_owner`)", body = ErrorBody),
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
    let row = owned_workflow(&state, &caller, *id, "changes")?;
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
    super::audit::done_with(
        &state,
        &req,
        &caller.0,
        "workflow.changed",
        format!("workflow:{}", *id),
        &[("version", (row.version + 1).to_string())],
    );
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
        (status = 403, description = "Another user's workflow (`not_owner`)", body = ErrorBody),
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
    let row = owned_workflow(&state, &caller, *id, "archives")?;
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
    super::audit::done(
        &state,
        &req,
        &caller.0,
        "workflow.deleted",
        format!("workflow:{}", *id),
    );
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
    let row = owned_workflow(&state, &caller, *id, "runs")?;
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
            replaces: None,
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
