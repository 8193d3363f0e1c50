//! The actix-web edge: routes and shared state. One file per handler family; `access.rs` admits
//! every request (identity, RBAC, rate limits, metrics) in one place.

pub mod access;
pub mod ai;
pub mod audit;
pub mod auth;
pub mod budgets;
pub mod chat;
pub mod client_addr;
pub mod completions;
pub mod error;
pub mod generate;
pub mod health;
pub mod json;
pub mod keys;
pub mod openapi;
pub mod quota;
pub mod rooms;
pub mod routed;
pub mod runs;
pub mod users;
pub mod views;
pub mod workflows;
pub mod ws;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpRequest, ResponseError};
use revo_actors::ProjectorHandle;
use revo_events::EventStore;
use revo_nats::Bus;
use utoipa::OpenApi;
use utoipa_actix_web::service_config::ServiceConfig;
use utoipa_actix_web::AppExt;

use crate::config::HttpLimits;
use crate::identity::Identity;
use crate::metrics::Metrics;

/// What handlers share (cheap handles only).
pub struct AppState {
    pub store: Arc<dyn EventStore>,
    pub bus: Arc<dyn Bus>,
    pub metrics: Arc<Metrics>,
    pub identity: Arc<Identity>,
    pub inference: Arc<crate::inference::Inference>,
    /// How the node's supervised actors are doing.
    pub health: revo_actors::kit::HealthBoard,
    /// The model registry, folded in memory and following the log.
    pub models: revo_actors::LiveView<revo_events::ModelsProjection>,
    pub access: Arc<access::AccessTable>,
    pub docs: Arc<openapi::Docs>,
    pub node_id: String,
    pub mode: &'static str,
    pub started: Instant,
    pub projectors: Vec<ProjectorHandle>,
    /// How the client address is found behind proxies (`client_addr.rs`).
    pub forwarding: client_addr::Forwarding,
    /// The latest check of the database, for the health endpoints.
    pub store_probe: revo_actors::store_probe::StoreProbe,
    /// The router and its catalogue (`/ai/*`, `/v1/chat/completions`, `/v1/messages`).
    pub router: revo_actors::router::Router,
    /// The catalogue entry savings are priced against.
    pub reference_model: Option<String>,
    /// Budgets and this edge's leases on them.
    pub budgets: revo_actors::router::budget::Budgets,
    /// The cost ledger, folded in memory and following the log (`GET /ai/metrics`).
    pub ledger: revo_actors::LiveView<revo_events::LedgerProjection>,
    /// Real-time rooms, sessions and presence on this edge (`/rooms`, `/ws/{user_id}`).
    pub realtime: revo_actors::rooms::Hub,
    pub realtime_session: revo_actors::rooms::SessionSettings,
    /// Durable workflows: definitions, runs and their executors on this node.
    pub workflows: revo_actors::workflows::Engine,
    /// `[rooms]`: documents, rooms and connections per user.
    pub rooms_config: crate::config::rooms::RoomsConfig,
    /// Run followers (`GET /runs/{id}/events`) each user holds on this edge.
    pub followers: quota::PerUser,
    /// WebSocket connections each user holds on this edge.
    pub connections: quota::PerUser,
    /// WebSocket upgrades still waiting for their `auth` frame on this edge.
    pub pending_upgrades: Arc<tokio::sync::Semaphore>,
    /// `[http] allowed_origins` (`None`: any).
    pub allowed_origins: Option<Vec<String>>,
    /// The audit log's writer (`audit.rs`).
    pub audit: revo_actors::audit::Audit,
}

impl AppState {
    /// The client's address, for login throttling.
    pub fn client_addr(&self, req: &HttpRequest) -> Option<String> {
        self.forwarding
            .client(req.peer_addr().map(|a| a.ip()), req.headers())
    }
}

/// Every route. Only `service(...)` registrations appear in the OpenAPI document, and the
/// access middleware refuses routes missing from it, so every route goes here.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(health::live)
        .service(health::ready)
        .service(health::summary)
        .service(health::details)
        .service(health::metrics)
        .service(openapi::spec)
        .service(openapi::docs)
        .service(auth::login)
        .service(auth::logout)
        .service(auth::logout_all)
        .service(auth::me)
        .service(users::create)
        .service(users::list)
        .service(users::get)
        .service(users::update)
        .service(keys::create)
        .service(keys::list)
        .service(keys::revoke)
        .service(completions::create)
        .service(ai::models)
        .service(ai::metrics)
        .service(ai::optimize)
        .service(generate::generate)
        .service(chat::chat_completions)
        .service(chat::list_models)
        .service(chat::messages)
        .service(budgets::set)
        .service(budgets::list)
        .service(budgets::mine)
        .service(budgets::remove)
        .service(rooms::create)
        .service(rooms::list)
        .service(rooms::get)
        .service(rooms::add_member)
        .service(rooms::set_role)
        .service(rooms::remove_member)
        .service(rooms::archive)
        .service(rooms::history)
        .service(rooms::doc)
        .service(rooms::presence)
        .service(ws::create_ticket)
        .service(ws::connect)
        .service(ws::connect_yjs)
        .service(workflows::create)
        .service(workflows::list)
        .service(workflows::get)
        .service(workflows::update)
        .service(workflows::archive)
        .service(workflows::execute)
        .service(runs::list_runs)
        .service(runs::get_run)
        .service(runs::cancel)
        .service(runs::approve)
        .service(runs::reject)
        .service(runs::retry)
        .service(runs::run_events)
        .service(audit::list);
}

/// The generated OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, doc) = App::new()
        .into_utoipa_app()
        .openapi(openapi::ApiDoc::openapi())
        .configure(routes)
        .split_for_parts();
    doc
}

/// Renders the documents and the access table once, at start.
pub fn prepare() -> anyhow::Result<(access::AccessTable, openapi::Docs)> {
    let doc = serde_json::to_value(openapi())?;
    let table = access::AccessTable::from_openapi(&doc)?;
    let docs = openapi::Docs {
        json: serde_json::to_string_pretty(&doc)?,
        html: openapi::render_html(&doc),
    };
    Ok((table, docs))
}

/// Path segments that do not parse (a malformed id) are "not found", as JSON.
fn path_error(err: actix_web::error::PathError, _: &HttpRequest) -> actix_web::Error {
    let e = error::ApiError::not_found(format!("no such resource ({err})"));
    actix_web::error::InternalError::from_response(err, e.error_response()).into()
}

/// A query string that does not parse is a `422 invalid_parameter`, as JSON.
fn query_error(err: actix_web::error::QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    let e = error::ApiError::unprocessable("invalid_parameter", format!("the query: {err}"));
    actix_web::error::InternalError::from_response(err, e.error_response()).into()
}

pub fn app(
    state: web::Data<AppState>,
    limits: HttpLimits,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let (app, _) = App::new()
        .into_utoipa_app()
        .app_data(state)
        .app_data(web::Data::new(limits))
        .app_data(web::PathConfig::default().error_handler(path_error))
        .app_data(web::QueryConfig::default().error_handler(query_error))
        .configure(routes)
        .split_for_parts();
    app.default_service(web::to(error::not_found))
        .wrap(from_fn(access::admit))
}
