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
    /// The node's main runtime. Database and NATS connections must be opened there, not on
    /// actix's worker runtimes, which stop before the node does.
    pub runtime: tokio::runtime::Handle,
}

impl AppState {
    /// Runs `fut` on the node's main runtime and waits for it.
    pub async fn on_node<F, T>(&self, fut: F) -> Result<T, error::ApiError>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.runtime
            .spawn(fut)
            .await
            .map_err(|e| error::ApiError::Unavailable(format!("node task failed: {e}")))
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health/live", web::get().to(health::live))
        .route("/health/ready", web::get().to(health::ready))
        .route("/health", web::get().to(health::summary))
        .route("/metrics", web::get().to(health::metrics))
        .default_service(web::to(error::not_found));
}
