//! The audit log over HTTP: how handlers describe what they did (`entry`), and `GET /audit`
//! for `audit:read` (administrators and auditors). Records live in the `audit/log` stream
//! (`revo_events::family::audit`); `GET /audit` pages through it by version.

use std::collections::BTreeMap;

use actix_web::{get, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use revo_events::family::audit::{AuditActor, AuditEntry, AuditEvent, AUDIT_LOG, AUDIT_STREAM};
use revo_events::EventFamily;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::access::request_id;
use super::error::{ApiError, ErrorBody};
use super::openapi::CallerErrors;
use super::AppState;
use crate::identity::{Principal, Via};

/// Who a principal is, for the record.
pub fn actor_of(p: &Principal) -> AuditActor {
    AuditActor {
        user_id: Some(p.user_id),
        username: Some(p.username.clone()),
        key_id: match p.via {
            Via::Key { key_id } => Some(key_id),
            Via::Token { .. } => None,
        },
        roles: p.roles.iter().map(|r| r.as_str().to_owned()).collect(),
    }
}

/// A record of `action` on `target` by `actor`, from this request (client address as the
/// trusted proxies resolve it, user agent, request id).
pub fn entry(
    state: &AppState,
    req: &HttpRequest,
    actor: AuditActor,
    action: &str,
    target: Option<String>,
    outcome: &str,
) -> AuditEntry {
    let user_agent = req
        .headers()
        .get(actix_web::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect());
    AuditEntry {
        at: Utc::now(),
        actor,
        action: action.to_owned(),
        target,
        outcome: outcome.to_owned(),
        client: state.client_addr(req),
        user_agent,
        request_id: request_id(req),
        count: 1,
        detail: BTreeMap::new(),
    }
}

/// Roles as one comma-separated string.
pub fn roles(r: &[revo_events::Role]) -> String {
    r.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(",")
}

/// Records a successful action of the caller.
pub fn done(state: &AppState, req: &HttpRequest, p: &Principal, action: &str, target: String) {
    state.audit.record(entry(
        state,
        req,
        actor_of(p),
        action,
        Some(target),
        "success",
    ));
}

/// Records a successful action with details.
pub fn done_with(
    state: &AppState,
    req: &HttpRequest,
    p: &Principal,
    action: &str,
    target: String,
    detail: &[(&str, String)],
) {
    let mut e = entry(state, req, actor_of(p), action, Some(target), "success");
    e.detail = detail
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    state.audit.record(e);
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// A user id or username (the actor).
    pub actor: Option<String>,
    /// An action, or a prefix ending in `.` (`auth.`).
    pub action: Option<String>,
    /// A target (`user:<id>`, `room:<id>`, ...).
    pub target: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: Option<String>,
    /// Records at or after this time (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Records before this time (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// The cursor: records after this one (`next` of the previous page).
    pub after: Option<i64>,
    /// Records per page: 1-1000 (100).
    pub limit: Option<usize>,
}

/// One record as `GET /audit` shows it.
#[derive(Serialize, ToSchema)]
pub struct AuditView {
    /// Its place in the log (1 for the first): the cursor.
    pub seq: i64,
    #[schema(value_type = Object)]
    pub record: serde_json::Value,
    pub prev_sha256: String,
    pub sha256: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub records: Vec<AuditView>,
    /// Pass as `after` for the next page; `null` at the end of the log.
    pub next: Option<i64>,
}

/// Most records read to fill one page: a filter that matches rarely returns a short page
/// (with `next`) instead of reading the whole log in one request.
const SCAN: usize = 20_000;

fn matches(q: &AuditQuery, e: &AuditEntry) -> bool {
    let actor_ok = q.actor.as_ref().is_none_or(|a| {
        e.actor.user_id.is_some_and(|u| u.to_string() == *a)
            || e.actor.username.as_deref() == Some(a.as_str())
            || e.actor.key_id.is_some_and(|k| k.to_string() == *a)
    });
    let action_ok = q.action.as_ref().is_none_or(|a| {
        if a.ends_with('.') {
            e.action.starts_with(a.as_str())
        } else {
            e.action == *a
        }
    });
    actor_ok
        && action_ok
        && q.target
            .as_ref()
            .is_none_or(|t| e.target.as_deref() == Some(t.as_str()))
        && q.outcome.as_ref().is_none_or(|o| e.outcome == *o)
        && q.from.is_none_or(|f| e.at >= f)
        && q.to.is_none_or(|t| e.at < t)
}

/// The audit log: who did what, to what, with what outcome, when and from where, oldest
/// first, with each record's place in the hash chain. Filters combine; pages follow `next`.
#[utoipa::path(
    tag = "audit",
    security(("bearer" = ["audit:read"])),
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of records", body = AuditPage),
        (status = 422, description = "A query parameter out of range", body = ErrorBody),
        CallerErrors,
    )
)]
#[get("/audit")]
pub async fn list(
    state: web::Data<AppState>,
    q: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::unprocessable(
            "invalid_parameter",
            "`limit` is 1 to 1000",
        ));
    }
    if let Some(o) = &q.outcome {
        if !matches!(o.as_str(), "success" | "failure" | "denied") {
            return Err(ApiError::unprocessable(
                "invalid_parameter",
                "`outcome` is success, failure or denied",
            ));
        }
    }
    let mut after = q.after.unwrap_or(0).max(0);
    let mut records = Vec::new();
    let mut scanned = 0;
    let mut at_end = false;
    while records.len() < limit && scanned < SCAN {
        let page = state
            .store
            .read_stream(AUDIT_STREAM, AUDIT_LOG, after + 1, 500)
            .await
            .map_err(|_| ApiError::unavailable("the audit log cannot be read now"))?;
        if page.is_empty() {
            at_end = true;
            break;
        }
        for rec in page {
            scanned += 1;
            after = rec.envelope.version;
            let Ok(AuditEvent::Recorded {
                entry,
                prev_sha256,
                sha256,
            }) = AuditEvent::decode(&rec.envelope)
            else {
                continue;
            };
            if matches(&q, &entry) {
                records.push(AuditView {
                    seq: rec.envelope.version,
                    record: serde_json::to_value(&entry).unwrap_or_default(),
                    prev_sha256,
                    sha256,
                });
                if records.len() == limit {
                    break;
                }
            }
        }
    }
    // At the end of the log only when the last read came back empty; otherwise a cursor.
    let next = (!at_end).then_some(after);
    Ok(HttpResponse::Ok().json(AuditPage { records, next }))
}
