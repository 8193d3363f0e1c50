//! `POST /budgets`, `GET /budgets`, `DELETE /budgets/{id}`: spending limits per user or API
//! key, set by admins. Enforcement is the router's (`actors/src/router/budget.rs`).

use actix_web::http::StatusCode;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use revo_events::family::budget::{period_key, BudgetEvent, BudgetRow};
use revo_events::{BudgetsProjection, Usd};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::Json;
use super::openapi::{BodyErrors, CallerErrors};
use super::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBudget {
    /// `user` or `key`.
    pub scope: String,
    /// The user's or the API key's id.
    pub id: Uuid,
    /// `day` or `month` (UTC), or `total`.
    pub period: String,
    /// Dollars as a decimal string, e.g. `"10.00"`.
    #[schema(example = "10.00")]
    pub limit_usd: String,
}

#[derive(Serialize, ToSchema)]
pub struct BudgetView {
    /// The budget's id (for `DELETE /budgets/{id}`).
    pub id: Uuid,
    pub scope: String,
    /// The user or key it limits.
    pub subject_id: Uuid,
    pub period: String,
    /// The current period: `2026-12-02`, `2026-12` or `total`.
    pub current_period: String,
    #[schema(value_type = String)]
    pub limit_usd: String,
    /// Spent in the current period, exactly (every recorded request).
    #[schema(value_type = String)]
    pub spent_usd: String,
    /// Reserved by edges' leases for requests to come (or in flight).
    #[schema(value_type = String)]
    pub held_usd: String,
    /// What can still be leased: limit − spent − held.
    #[schema(value_type = String)]
    pub remaining_usd: String,
    pub created_at: DateTime<Utc>,
}

impl BudgetView {
    fn of(b: &BudgetRow, now: DateTime<Utc>) -> BudgetView {
        let period = period_key(&b.period, now);
        let committed = b.committed(&period, now);
        BudgetView {
            id: b.budget_id,
            scope: b.scope.clone(),
            subject_id: b.subject_id,
            period: b.period.clone(),
            limit_usd: b.limit_usd.to_string(),
            spent_usd: b.spent(&period).to_string(),
            held_usd: b.held(&period, now).to_string(),
            remaining_usd: b
                .limit_usd
                .checked_sub(committed)
                .unwrap_or(Usd::ZERO)
                .to_string(),
            current_period: period,
            created_at: b.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct BudgetList {
    pub budgets: Vec<BudgetView>,
}

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError::unprocessable("invalid_parameter", m)
}

/// Sets (creates or changes) a budget.
#[utoipa::path(
    tag = "budgets",
    security(("bearer" = ["users:write"])),
    request_body = SetBudget,
    responses(
        (status = 201, description = "Created", body = BudgetView),
        (status = 200, description = "The existing budget's limit changed", body = BudgetView),
        (status = 404, description = "No such user or key", body = ErrorBody),
        BodyErrors,
        CallerErrors,
    )
)]
#[post("/budgets")]
pub async fn set(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: Json<SetBudget>,
) -> Result<HttpResponse, ApiError> {
    let b = body.0;
    let limit = crate::budgets::check(&b.scope, &b.period, &b.limit_usd).map_err(invalid)?;
    let exists = match b.scope.as_str() {
        "user" => state.identity.user(&b.id).is_some(),
        _ => state.identity.keys().iter().any(|k| k.key_id == b.id),
    };
    if !exists {
        return Err(ApiError::not_found(format!(
            "no {} with id {}",
            b.scope, b.id
        )));
    }
    let id = crate::budgets::budget_id(&b.scope, b.id, &b.period);
    let existed = state.budgets.view().read().get(&id).is_some();
    let ev = BudgetEvent::Set {
        budget_id: id,
        scope: b.scope,
        subject_id: b.id,
        period: b.period,
        limit_usd: limit,
    };
    let version = crate::budgets::append(state.store.as_ref(), id, &ev, caller.meta(&req))
        .await
        .map_err(ApiError::from)?;
    let shown = visible(&state, |v| {
        v.get(&id)
            .filter(|r| r.version >= version)
            .map(|r| BudgetView::of(r, Utc::now()))
    })
    .await
    .ok_or_else(|| ApiError::unavailable("the budget was saved but is not visible yet"))?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    super::audit::done_with(
        &state,
        &req,
        &caller.0,
        if existed {
            "budget.changed"
        } else {
            "budget.created"
        },
        format!("budget:{id}"),
        &[
            ("scope", shown.scope.clone()),
            ("subject_id", shown.subject_id.to_string()),
            ("period", shown.period.clone()),
            ("limit_usd", shown.limit_usd.clone()),
        ],
    );
    Ok(HttpResponse::build(status).json(shown))
}

/// Read-your-writes: waits (up to 5 s) until this edge's view of the budgets shows what
/// `shown` looks for.
async fn visible<T>(
    state: &AppState,
    shown: impl Fn(&BudgetsProjection) -> Option<T>,
) -> Option<T> {
    let wait = std::time::Duration::from_secs(5);
    state.budgets.view().wait_until(wait, shown).await
}

/// Every budget, with what it has spent and holds in its current period.
#[utoipa::path(
    tag = "budgets",
    security(("bearer" = ["users:read"])),
    responses((status = 200, description = "The budgets", body = BudgetList), CallerErrors)
)]
#[get("/budgets")]
pub async fn list(state: web::Data<AppState>) -> HttpResponse {
    let now = Utc::now();
    let budgets = state
        .budgets
        .view()
        .read()
        .all()
        .map(|b| BudgetView::of(b, now))
        .collect();
    HttpResponse::Ok().json(BudgetList { budgets })
}

/// The budgets that limit the caller: with a token, the user's own and those of the user's
/// keys; with an API key, those that apply to the key's requests (its user's, its own and
/// those of every key above it).
#[utoipa::path(
    tag = "budgets",
    security(("bearer" = ["self:read"])),
    responses((status = 200, description = "The caller's budgets", body = BudgetList), CallerErrors)
)]
#[get("/users/me/budgets")]
pub async fn mine(state: web::Data<AppState>, caller: Caller) -> HttpResponse {
    let p = &caller.0;
    let keys: Vec<Uuid> = match p.via {
        crate::identity::Via::Key { key_id } => state.identity.key_lineage(key_id),
        crate::identity::Via::Token { .. } => state
            .identity
            .list_keys(p)
            .into_iter()
            .filter(|k| k.user_id == p.user_id && k.revoked_at.is_none())
            .map(|k| k.key_id)
            .collect(),
    };
    let now = Utc::now();
    let view = state.budgets.view().read();
    let mut rows: Vec<&BudgetRow> = view.of("user", p.user_id).collect();
    for k in keys {
        rows.extend(view.of("key", k));
    }
    let budgets = rows.into_iter().map(|b| BudgetView::of(b, now)).collect();
    HttpResponse::Ok().json(BudgetList { budgets })
}

/// Removes a budget: requests are no longer limited by it.
#[utoipa::path(
    tag = "budgets",
    security(("bearer" = ["users:write"])),
    params(("id" = Uuid, Path, description = "The budget's id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such budget", body = ErrorBody),
        CallerErrors,
    )
)]
#[delete("/budgets/{id}")]
pub async fn remove(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    if state.budgets.view().read().get(&id).is_none() {
        return Err(ApiError::not_found(format!("no budget {id}")));
    }
    let gone = BudgetEvent::Deleted { budget_id: id };
    crate::budgets::append(state.store.as_ref(), id, &gone, caller.meta(&req))
        .await
        .map_err(ApiError::from)?;
    visible(&state, |v| v.get(&id).is_none().then_some(()))
        .await
        .ok_or_else(|| ApiError::unavailable("the budget was removed but is still visible"))?;
    super::audit::done(
        &state,
        &req,
        &caller.0,
        "budget.deleted",
        format!("budget:{id}"),
    );
    Ok(HttpResponse::NoContent().finish())
}
