//! `GET /ai/models`: the router's catalogue, in the order it prefers models, with whether each
//! can serve now and, if not, why.

use actix_web::{get, web, HttpResponse};
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
    match e.provider {
        Provider::Local => {
            if state.models.read().get(&e.model).is_none() {
                let why = format!(
                    "`{}` is not in the model registry: import it with `revo models import FILE.gguf --name {}`",
                    e.model, e.model
                );
                return (Some(0), Some(why));
            }
            let workers = state.inference.live_workers(&e.model);
            let why = (workers == 0).then(|| "no worker has the model loaded".to_owned());
            (Some(workers), why)
        }
        Provider::Openai | Provider::Anthropic | Provider::OpenaiCompatible => {
            let keyless = e
                .api_key_env
                .as_deref()
                .filter(|var| !state.keys_present.contains(*var));
            let why = match keyless {
                Some(var) => format!("no API key: set {var}"),
                None => format!(
                    "this build does not route to `{}` providers yet",
                    e.provider.as_str()
                ),
            };
            (None, Some(why))
        }
    }
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
        .catalog
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
                reason,
                workers,
            }
        })
        .collect();
    HttpResponse::Ok().json(CatalogList { models })
}
