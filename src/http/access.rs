//! The one place requests are admitted: request id, authentication, RBAC, rate limits, metrics
//! and the access log, as a single middleware around every route.
//!
//! Which permission a route needs is read from the OpenAPI document generated from the handlers
//! (`security(("bearer" = ["<permission>"]))`), so the published spec, `/docs` and enforcement
//! cannot disagree. A matched route without an entry is refused: forgetting to declare access
//! fails closed.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, ResponseError};
use revo_events::EventMeta;
use tracing::Instrument;
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::identity::rbac::Permission;
use crate::identity::{Principal, Via};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Needs(Permission),
}

/// `(method, route template)` to what the route needs.
#[derive(Debug, Default)]
pub struct AccessTable {
    rules: HashMap<(String, String), Access>,
    /// The methods each route template serves (for `405` and `Allow`).
    methods: HashMap<String, Vec<String>>,
}

impl AccessTable {
    /// Reads every operation's security requirement from the generated OpenAPI document.
    pub fn from_openapi(doc: &serde_json::Value) -> anyhow::Result<Self> {
        let mut rules = HashMap::new();
        let mut methods = HashMap::new();
        let paths = doc
            .get("paths")
            .and_then(|p| p.as_object())
            .ok_or_else(|| anyhow::anyhow!("the OpenAPI document has no paths"))?;
        for (path, item) in paths {
            let Some(ops) = item.as_object() else {
                continue;
            };
            for (method, op) in ops {
                let scopes: Vec<&str> = op
                    .get("security")
                    .and_then(|s| s.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|req| req.get("bearer"))
                    .filter_map(|s| s.as_array())
                    .flatten()
                    .filter_map(|s| s.as_str())
                    .collect();
                let access = match scopes.as_slice() {
                    [] => Access::Public,
                    [one] => Access::Needs(Permission::parse(one).ok_or_else(|| {
                        anyhow::anyhow!("{method} {path}: unknown permission `{one}`")
                    })?),
                    _ => anyhow::bail!("{method} {path}: name exactly one permission"),
                };
                let method = method.to_ascii_uppercase();
                methods
                    .entry(path.clone())
                    .or_insert_with(Vec::new)
                    .push(method.clone());
                rules.insert((method, path.clone()), access);
            }
        }
        Ok(AccessTable { rules, methods })
    }

    pub fn get(&self, method: &str, route: &str) -> Option<Access> {
        self.rules
            .get(&(method.to_owned(), route.to_owned()))
            .copied()
    }

    /// The methods `route` serves, if it is a documented route at all.
    pub fn methods(&self, route: &str) -> Option<&[String]> {
        self.methods.get(route).map(Vec::as_slice)
    }
}

/// The request's id: the client's `X-Request-Id` if it is a UUID, else a new UUID v7. It is
/// the correlation id of every event the request causes.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub Uuid);

/// The authenticated caller of a protected route.
pub struct Caller(pub Principal);

impl Caller {
    /// Metadata for the events this request causes.
    pub fn meta(&self, req: &HttpRequest) -> EventMeta {
        EventMeta {
            actor: Some(self.0.actor()),
            correlation_id: request_id(req),
            causation_id: None,
        }
    }
}

pub fn request_id(req: &HttpRequest) -> Option<Uuid> {
    req.extensions().get::<RequestId>().map(|r| r.0)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Principal>()
                .cloned()
                .map(Caller)
                .ok_or_else(|| crate::identity::AuthError::Missing.into()),
        )
    }
}

fn client_request_id(req: &ServiceRequest) -> Option<Uuid> {
    let v = req.headers().get(&REQUEST_ID)?.to_str().ok()?;
    Uuid::try_parse(v.trim()).ok()
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn set_header(res: &mut actix_web::HttpResponse<impl MessageBody>, name: HeaderName, v: u64) {
    if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
        res.headers_mut().insert(name, v);
    }
}

pub async fn admit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = client_request_id(&req).unwrap_or_else(Uuid::now_v7);
    req.extensions_mut().insert(RequestId(id));
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Err(actix_web::error::ErrorInternalServerError("no state"));
    };
    let http = &state.metrics.http;
    http.in_flight.inc();
    let _in_flight = InFlight(http.in_flight.clone());
    let method = req.method().as_str().to_owned();
    let method_label = crate::metrics::method_label(req.method());
    let route = req.match_pattern();
    let access = match &route {
        Some(r) => state.access.get(&method, r),
        // Unrouted: the 404 handler answers.
        None => Some(Access::Public),
    };
    let mut limit = None;
    let mut who = None;
    let refused = match access {
        // A documented route asked with a method it does not serve.
        None if route
            .as_deref()
            .and_then(|r| state.access.methods(r))
            .is_some() =>
        {
            let allowed = route
                .as_deref()
                .and_then(|r| state.access.methods(r))
                .map(|m| m.join(", "))
                .unwrap_or_default();
            Some(
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{method} is not served here; try {allowed}"),
                )
                .with_allow(allowed),
            )
        }
        // A route missing from the spec: fail closed.
        None => Some(ApiError::forbidden(
            "no_access_rule",
            "this route declares no access rule",
        )),
        Some(Access::Public) => None,
        Some(Access::Needs(perm)) => {
            let headers = req.headers();
            // Anthropic's clients send their key as `x-api-key`; it is read as a bearer
            // credential when there is no `Authorization`.
            let api_key = headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(|k| format!("Bearer {k}"));
            let header = headers
                .get(actix_web::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .or(api_key.as_deref());
            match state.identity.authenticate(header) {
                Err(e) => {
                    http.auth_failures.with_label_values(&[e.code()]).inc();
                    Some(e.into())
                }
                Ok(p) if !p.can(perm) => {
                    http.auth_failures.with_label_values(&["forbidden"]).inc();
                    let op = format!("{method} {}", route.as_deref().unwrap_or(""));
                    let mut e = super::audit::entry(
                        &state,
                        req.request(),
                        super::audit::actor_of(&p),
                        "access.denied",
                        Some(op),
                        "denied",
                    );
                    e.detail.insert("permission".into(), perm.as_str().into());
                    state.audit.record_repeatable(e);
                    Some(ApiError::forbidden(
                        "forbidden",
                        format!("this needs the `{}` permission", perm.as_str()),
                    ))
                }
                Ok(p) => {
                    let d = state.identity.rate_limit(&p);
                    who = Some(p.actor());
                    limit = Some(d).filter(|d| d.limit > 0);
                    if d.allowed {
                        req.extensions_mut().insert(p);
                        None
                    } else {
                        let kind = match p.via {
                            Via::Token { .. } => "user",
                            Via::Key { .. } => "key",
                        };
                        http.rate_limited.with_label_values(&[kind]).inc();
                        Some(
                            ApiError::new(
                                StatusCode::TOO_MANY_REQUESTS,
                                "rate_limited",
                                format!("over {} requests per minute", d.limit),
                            )
                            .with_retry_after(d.retry_after_secs),
                        )
                    }
                }
            }
        }
    };
    let mut res = match refused {
        Some(err) => req
            .into_response(err.error_response())
            .map_into_right_body(),
        None => {
            // Everything logged while handling the request carries its id.
            let span = tracing::info_span!("request", request_id = %id);
            next.call(req).instrument(span).await?.map_into_left_body()
        }
    };
    let status = res.status();
    {
        let r = res.response_mut();
        if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
            r.headers_mut().insert(REQUEST_ID, v);
        }
        if let Some(d) = limit {
            set_header(r, LIMIT, u64::from(d.limit));
            set_header(r, REMAINING, u64::from(d.remaining));
            set_header(r, RESET, d.reset_secs);
        }
    }
    let route = route.as_deref().unwrap_or("unmatched");
    let elapsed = started.elapsed();
    http.requests
        .with_label_values(&[method_label, route, status.as_str()])
        .inc();
    http.duration
        .with_label_values(&[method_label, route])
        .observe(elapsed.as_secs_f64());
    let us = elapsed.as_micros() as u64;
    let who = who.as_deref().unwrap_or("-");
    if status.is_server_error() {
        tracing::error!(target: "revo::access", request_id = %id, method, route, status = status.as_u16(), us, who, "request");
    } else if status.is_client_error() {
        tracing::info!(target: "revo::access", request_id = %id, method, route, status = status.as_u16(), us, who, "request");
    } else {
        tracing::debug!(target: "revo::access", request_id = %id, method, route, status = status.as_u16(), us, who, "request");
    }
    Ok(res)
}
