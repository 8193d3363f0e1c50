//! The actix-web edge: routes and shared state. One file per handler family.

pub mod error;
pub mod health;

use std::sync::Arc;
use std::time::Instant;

use actix_web::web;
use revo_actors::ProjectorHandle;
use revo_events::EventStore;
use revo_nats::Bus;

use crate::metrics::Metrics;

/// What handlers share (cheap handles only).
pub struct AppState {
    pub store: Arc<dyn EventStore>,
    pub bus: Arc<dyn Bus>,
    pub metrics: Arc<Metrics>,
    pub node_id: String,
    pub mode: &'static str,
    pub started: Instant,
    pub projectors: Vec<ProjectorHandle>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health/live", web::get().to(health::live))
        .route("/health/ready", web::get().to(health::ready))
        .route("/health", web::get().to(health::summary))
        .route("/metrics", web::get().to(health::metrics))
        .default_service(web::to(error::not_found));
}
