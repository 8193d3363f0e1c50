//! Health and metrics: `/health/live`, `/health/ready`, `/health`, `/health/details`,
//! `/metrics`.
//!
//! The public endpoints say which component is unhealthy, never why: the reasons (driver
//! errors, hosts, file paths) go to the log and to `/health/details`, which needs
//! `system:read` (admins).
//!
//! The store is never queried from here: the store probe actor (`actors/src/store_probe/`)
//! checks it on a timer and these read its latest result.

use actix_web::{get, web, HttpResponse};
use revo_actors::ProjectorState;
use revo_nats::BusHealth;
use serde_json::json;

use super::openapi::CallerErrors;
use super::AppState;

/// Committed events held back this long behind an open transaction mark the horizon degraded.
const HORIZON_WARN_SECS: f64 = 5.0;

/// Liveness: the process answers.
#[utoipa::path(tag = "health", responses((status = 200, description = "Alive", body = serde_json::Value)))]
#[get("/health/live")]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "live"}))
}

struct Check {
    name: &'static str,
    problem: Option<String>,
}

fn checks(state: &AppState) -> Vec<Check> {
    let probed = state.store_probe.latest();
    let (store, migrations) = (probed.store, probed.migrations);
    let bus = match state.bus.health() {
        BusHealth::Connected => None,
        BusHealth::Degraded(why) => Some(why),
    };
    vec![
        Check {
            name: "store",
            problem: store,
        },
        Check {
            name: "migrations",
            problem: migrations,
        },
        Check {
            name: "bus",
            problem: bus,
        },
        Check {
            name: "identity",
            problem: state.identity.problem(),
        },
        Check {
            name: "actors",
            problem: {
                let failing = state.health.failing();
                (!failing.is_empty()).then(|| {
                    failing
                        .iter()
                        .map(|(n, why)| format!("{n}: {why}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            },
        },
    ]
}

/// Readiness: 200 only when the store and bus are reachable, the schema is current and the
/// user directory follows the log.
#[utoipa::path(tag = "health", responses(
    (status = 200, description = "Ready", body = serde_json::Value),
    (status = 503, description = "Not ready, with the components that are not", body = serde_json::Value),
))]
#[get("/health/ready")]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let mut failing = Vec::new();
    for c in checks(&state) {
        if let Some(p) = c.problem {
            tracing::warn!(component = c.name, problem = %p, "not ready");
            failing.push(c.name);
        }
    }
    if failing.is_empty() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        let reasons: Vec<String> = failing
            .iter()
            .map(|n| format!("{n} is not ready"))
            .collect();
        HttpResponse::ServiceUnavailable().json(json!({
            "status": "not_ready",
            "error": {"code": "not_ready", "message": reasons.join("; ")},
            "reasons": reasons,
        }))
    }
}

/// Which components are healthy, without the reasons (those are in `/health/details`).
#[utoipa::path(tag = "health", responses((status = 200, description = "Component summary", body = serde_json::Value)))]
#[get("/health")]
pub async fn summary(state: web::Data<AppState>) -> HttpResponse {
    let mut components = serde_json::Map::new();
    let mut healthy = true;
    for c in checks(&state) {
        healthy &= c.problem.is_none();
        let status = if c.problem.is_none() {
            "ok"
        } else {
            "degraded"
        };
        components.insert(c.name.into(), json!({ "status": status }));
    }
    let failed = state
        .projectors
        .iter()
        .any(|p| matches!(*p.state.borrow(), ProjectorState::Failed { .. }));
    healthy &= !failed;
    components.insert(
        "projections".into(),
        json!({"status": if failed { "degraded" } else { "ok" }}),
    );
    HttpResponse::Ok().json(json!({
        "status": if healthy { "ok" } else { "degraded" },
        "mode": state.mode,
        "version": env!("CARGO_PKG_VERSION"),
        "components": components,
    }))
}

/// Every component with its reasons, the relay, projections, password hashing and the store's
/// horizon (admins).
#[utoipa::path(
    tag = "health",
    security(("bearer" = ["system:read"])),
    responses((status = 200, description = "Component details", body = serde_json::Value), CallerErrors)
)]
#[get("/health/details")]
pub async fn details(state: web::Data<AppState>) -> HttpResponse {
    let mut components = serde_json::Map::new();
    let mut healthy = true;
    for c in checks(&state) {
        healthy &= c.problem.is_none();
        let v = match c.problem {
            None => json!({"status": "ok"}),
            Some(p) => json!({"status": "degraded", "detail": p}),
        };
        components.insert(c.name.into(), v);
    }
    let relay = &state.metrics.relay;
    components.insert(
        "relay".into(),
        json!({
            "leader": relay.leader.get() == 1,
            "published": relay.published.get(),
            "lag_events": relay.lag_events.get(),
            "lag_seconds": relay.lag_seconds.get(),
            "publish_errors": relay.publish_errors.get(),
        }),
    );
    let held = state.metrics.store.held_back_seconds.get();
    components.insert(
        "store_horizon".into(),
        json!({
            // Committed events other nodes cannot see yet, because a transaction older than
            // them is still open somewhere on the Postgres server (docs/operations.md).
            "status": if held >= HORIZON_WARN_SECS { "degraded" } else { "ok" },
            "held_back_seconds": held,
        }),
    );
    let actors: serde_json::Map<String, serde_json::Value> = state
        .health
        .snapshot()
        .into_iter()
        .map(|(name, s)| {
            let v = match s.reason() {
                Some(r) => json!({"status": s.as_str(), "detail": r}),
                None => json!({"status": s.as_str()}),
            };
            (name, v)
        })
        .collect();
    components.insert("actor_status".into(), json!(actors));
    components.insert(
        "password_hashing".into(),
        json!({"in_use": state.identity.hasher.in_use()}),
    );
    let projections: Vec<_> = state
        .projectors
        .iter()
        .map(|p| {
            let s = p.state.borrow().clone();
            match s {
                ProjectorState::Starting => json!({"name": p.name, "status": "starting"}),
                ProjectorState::Running { position } => {
                    json!({"name": p.name, "status": "running", "position": position})
                }
                ProjectorState::Failed { reason } => {
                    healthy = false;
                    json!({"name": p.name, "status": "failed", "detail": reason})
                }
            }
        })
        .collect();
    components.insert("projections".into(), json!(projections));
    HttpResponse::Ok().json(json!({
        "status": if healthy { "ok" } else { "degraded" },
        "node_id": state.node_id,
        "mode": state.mode,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "components": components,
    }))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(tag = "health", responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.metrics.observe_models(&state.inference.census());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
