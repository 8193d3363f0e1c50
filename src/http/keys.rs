//! `POST /keys`, `GET /keys`, `DELETE /keys/{id}`.

use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use uuid::Uuid;

use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::Json;
use super::openapi::{BodyErrors, CallerErrors};
use super::views::{CreateKey, KeyList, KeyView, NewKey};
use super::AppState;
use crate::identity::NewKeyRequest;

/// Issues an API key for the caller. The secret is in this response only.
#[utoipa::path(
    tag = "keys",
    security(("bearer" = ["keys:write"])),
    request_body = CreateKey,
    responses(
        (status = 201, description = "Issued", body = NewKey),
        BodyErrors,
        CallerErrors,
    )
)]
#[post("/keys")]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: Json<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let CreateKey {
        name,
        roles,
        rate_limit_per_minute,
        expires_in_secs,
    } = body.0;
    let request = NewKeyRequest {
        name,
        roles,
        rate_limit_per_minute,
        expires_in_secs,
    };
    let meta = caller.meta(&req);
    let (row, secret) = state.identity.issue_key(&caller.0, request, meta).await?;
    super::audit::done_with(
        &state,
        &req,
        &caller.0,
        "key.created",
        format!("key:{}", row.key_id),
        &[
            ("owner", row.user_id.to_string()),
            (
                "roles",
                row.roles
                    .as_ref()
                    .map_or_else(|| "inherited".to_owned(), |r| super::audit::roles(r)),
            ),
            (
                "rate_limit_per_minute",
                row.rate_limit_per_minute
                    .map_or_else(|| "inherited".to_owned(), |n| n.to_string()),
            ),
            (
                "expires_at",
                row.expires_at
                    .map_or_else(|| "never".to_owned(), |t| t.to_rfc3339()),
            ),
            (
                "parent_key_id",
                row.parent_key_id.map(|k| k.to_string()).unwrap_or_default(),
            ),
        ],
    );
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(NewKey {
            key: KeyView::from(&row),
            api_key: secret,
        }))
}

/// The caller's keys (every key for holders of `keys:all`).
#[utoipa::path(
    tag = "keys",
    security(("bearer" = ["keys:read"])),
    responses((status = 200, description = "Keys", body = KeyList), CallerErrors)
)]
#[get("/keys")]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> HttpResponse {
    let keys = state
        .identity
        .list_keys(&caller.0)
        .iter()
        .map(KeyView::from)
        .collect();
    HttpResponse::Ok().json(KeyList { keys })
}

/// Revokes a key on every edge. Idempotent; someone else's key is "not found".
#[utoipa::path(
    tag = "keys",
    security(("bearer" = ["keys:write"])),
    params(("id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key of yours", body = ErrorBody),
        CallerErrors,
    )
)]
#[delete("/keys/{id}")]
pub async fn revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let meta = caller.meta(&req);
    let id = id.into_inner();
    state.identity.revoke_key(&caller.0, id, meta).await?;
    super::audit::done(&state, &req, &caller.0, "key.revoked", format!("key:{id}"));
    Ok(HttpResponse::NoContent().finish())
}
