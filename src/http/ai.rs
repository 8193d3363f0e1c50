//! `GET /ai/models`: the router's catalogue, in the order it prefers models, with whether each
//! can serve now and, if not, why. `GET /ai/metrics`: the cost ledger. `POST /ai/optimize`:
//! recommendations and budget forecasts computed from it (`crate::optimize`).

use actix_web::{get, post, web, HttpResponse};
use serde::Deserialize;

use super::access::Caller;
use super::error::ApiError;
use crate::identity::rbac::Permission;
use crate::ledger;
use revo_actors::router::catalog::{Entry, Provider};
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::CallerErrors;
use super::AppState;

/// One model of the catalogue. Prices are exact decimal strings of dollars per million tokens.
#[derive(Serialize, ToSchema)]
pub struct CatalogModel {
    pub name: String,
    /// `local`, `openai-compatible`, `openai` or `anthropic`.
    pub provider: String,
    /// The upstream model id (for `local`, the registry name).
    pub model: String,
    /// Lower is tried first.
    pub priority: i32,
    pub context_window: u32,
    pub max_output_tokens: u32,
    #[schema(value_type = String, example = "2.5")]
    pub input_usd_per_mtok: String,
    #[schema(value_type = String, example = "1.25")]
    pub cached_input_usd_per_mtok: String,
    #[schema(value_type = String, example = "0")]
    pub cache_write_usd_per_mtok: String,
    #[schema(value_type = String, example = "10")]
    pub output_usd_per_mtok: String,
    pub capabilities: Vec<String>,
    pub tags: Vec<String>,
    /// Served on this machine or network, free per token.
    pub served_locally: bool,
    /// `available` or `unavailable`.
    pub status: &'static str,
    /// Why it cannot serve now (absent when available).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The circuit breaker: `closed`, `open` (failing; skipped until its cool-down ends) or
    /// `half_open` (one probe request allowed).
    pub breaker: &'static str,
    /// Workers serving it now (local models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct CatalogList {
    pub models: Vec<CatalogModel>,
}

/// Whether `e` can serve now: (workers, why not).
fn availability(state: &AppState, e: &Entry) -> (Option<usize>, Option<String>) {
    let workers = (e.provider == Provider::Local).then(|| state.inference.live_workers(&e.model));
    if e.provider == Provider::Local && state.models.read().get(&e.model).is_none() {
        let why = format!(
            "`{}` is not in the model registry: import it with `revo models import FILE.gguf --name {}`",
            e.model, e.model
        );
        return (workers, Some(why));
    }
    (workers, state.router.why_unavailable(e))
}

/// The catalogue, in the order the router prefers models, with live availability.
#[utoipa::path(
    tag = "ai",
    security(("bearer" = ["generate"])),
    responses((status = 200, description = "The catalogue", body = CatalogList), CallerErrors)
)]
#[get("/ai/models")]
pub async fn models(state: web::Data<AppState>) -> HttpResponse {
    let models = state
        .router
        .catalog()
        .entries
        .iter()
        .map(|e| {
            let (workers, reason) = availability(&state, e);
            CatalogModel {
                name: e.name.clone(),
                provider: e.provider.as_str().to_owned(),
                model: e.model.clone(),
                priority: e.priority,
                context_window: e.context_window,
                max_output_tokens: e.max_output_tokens,
                input_usd_per_mtok: e.prices.input_usd_per_mtok.to_string(),
                cached_input_usd_per_mtok: e.prices.cached_input_usd_per_mtok.to_string(),
                cache_write_usd_per_mtok: e.prices.cache_write_usd_per_mtok.to_string(),
                output_usd_per_mtok: e.prices.output_usd_per_mtok.to_string(),
                capabilities: e.capabilities.clone(),
                tags: e.tags.clone(),
                served_locally: e.provider.is_local(),
                status: if reason.is_none() {
                    "available"
                } else {
                    "unavailable"
                },
                breaker: state.router.breaker_state(&e.name),
                reason,
                workers,
            }
        })
        .collect();
    HttpResponse::Ok().json(CatalogList { models })
}

/// Whose part of the ledger the caller reads: a token, all of its user's requests; an API
/// key, its own only (it may be one program's of several); admins (users:read), everyone's or
/// `user_id`'s.
fn scope(caller: &Caller, user_id: Option<uuid::Uuid>) -> Result<ledger::Filter, ApiError> {
    let p = &caller.0;
    let everyone = p.can(Permission::UsersRead);
    let user = match user_id {
        Some(u) if u != p.user_id && !everyone => {
            return Err(ApiError::forbidden(
                "forbidden",
                "only admins read another user's ledger",
            ))
        }
        Some(u) => Some(u),
        None if everyone => None,
        None => Some(p.user_id),
    };
    let key = match p.via {
        crate::identity::Via::Key { key_id } if !everyone => Some(key_id),
        _ => None,
    };
    Ok(ledger::Filter {
        user,
        key,
        ..ledger::Filter::default()
    })
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct OptimizeRequest {
    /// Days looked at, ending today (UTC): 1 to 90, default 7.
    #[schema(minimum = 1, maximum = 90)]
    pub window_days: Option<u32>,
    /// Admins: one user's ledger and budgets.
    pub user_id: Option<uuid::Uuid>,
}

/// Recommendations from the caller's ledger (as `GET /ai/metrics` scopes it): cloud requests
/// that fit a local model, local models the cascade escalates too often, and a forecast for
/// each budget in scope. The body may be empty.
#[utoipa::path(
    tag = "ai",
    security(("bearer" = ["generate"])),
    request_body(content = Option<OptimizeRequest>, description = "Optional; `{}` or nothing for the defaults"),
    responses(
        (status = 200, description = "Recommendations and forecasts", body = crate::optimize::Optimization),
        (status = 403, description = "`user_id` of another user without the users:read permission", body = super::error::ErrorBody),
        (status = 422, description = "A bad window or body", body = super::error::ErrorBody),
        CallerErrors
    )
)]
#[post("/ai/optimize")]
pub async fn optimize(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let bad = |m: String| ApiError::unprocessable("invalid_parameter", m);
    let r: OptimizeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        OptimizeRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::unprocessable("invalid_body", format!("the body: {e}")))?
    };
    let days = r.window_days.unwrap_or(7);
    if !(1..=crate::optimize::MAX_WINDOW_DAYS).contains(&days) {
        return Err(bad(format!(
            "window_days is 1 to {}",
            crate::optimize::MAX_WINDOW_DAYS
        )));
    }
    let filter = scope(&caller, r.user_id)?;
    let now = chrono::Utc::now();
    let budgets = state.budgets.view();
    let budgets = budgets.read();
    let in_scope: Vec<_> = match (filter.user, filter.key) {
        (None, _) => budgets.all().collect(),
        (Some(u), key) => {
            let keys = key
                .map(|k| state.identity.key_lineage(k))
                .unwrap_or_default();
            budgets.applying(u, &keys)
        }
    };
    let l = state.ledger.read();
    let o = crate::optimize::optimize(
        l.rows_iter(),
        &filter,
        state.router.catalog(),
        &in_scope,
        now,
        days,
    );
    Ok(HttpResponse::Ok().json(o))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    /// First day counted, `YYYY-MM-DD` (UTC).
    pub from: Option<String>,
    /// Last day counted, `YYYY-MM-DD` (UTC).
    pub to: Option<String>,
    /// Group by `model` (default), `provider`, `day`, `user` or `key`.
    pub by: Option<String>,
    /// Admins: one user's ledger.
    pub user_id: Option<uuid::Uuid>,
}

/// The cost ledger: the caller's own (a token: every request of its user; an API key: the
/// key's own requests), or everyone's for admins; spend,
/// tokens by kind, the share served locally and savings against the reference cloud model.
#[utoipa::path(
    tag = "ai",
    security(("bearer" = ["generate"])),
    params(MetricsQuery),
    responses(
        (status = 200, description = "The ledger over the window", body = ledger::Report),
        (status = 403, description = "`user_id` of another user without the users:read permission", body = super::error::ErrorBody),
        (status = 422, description = "A bad day or grouping", body = super::error::ErrorBody),
        CallerErrors
    )
)]
#[get("/ai/metrics")]
pub async fn metrics(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<MetricsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let bad = |m: String| ApiError::unprocessable("invalid_parameter", m);
    for d in [&q.from, &q.to].into_iter().flatten() {
        if !ledger::valid_day(d) {
            return Err(bad(format!("`{d}` is not a day (YYYY-MM-DD)")));
        }
    }
    let by_name = q.by.as_deref().unwrap_or("model");
    let by = ledger::By::parse(by_name).ok_or_else(|| {
        bad(format!(
            "by `{by_name}`: one of model, provider, day, user, key"
        ))
    })?;
    let filter = ledger::Filter {
        from: q.from,
        to: q.to,
        ..scope(&caller, q.user_id)?
    };
    let reference = state.reference_model.as_deref().and_then(|name| {
        let e = state
            .router
            .catalog()
            .entries
            .iter()
            .find(|e| e.name == name)?;
        Some((name, e.prices_sheet()))
    });
    let report = {
        let l = state.ledger.read();
        ledger::report(l.rows_iter(), &filter, by, reference)
    };
    Ok(HttpResponse::Ok().json(report))
}
