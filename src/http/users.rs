//! `POST /users`, `GET /users`, `GET /users/{id}`, `PATCH /users/{id}`.

use actix_web::{get, patch, post, web, HttpRequest, HttpResponse};
use uuid::Uuid;

use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::Json;
use super::openapi::{BodyErrors, CallerErrors};
use super::views::{CreateUser, PatchUser, UserList, UserView};
use super::AppState;
use crate::identity::UserPatch;

/// Creates a user (argon2id-hashed password).
#[utoipa::path(
    tag = "users",
    security(("bearer" = ["users:write"])),
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 409, description = "The username is taken", body = ErrorBody),
        BodyErrors,
        CallerErrors,
    )
)]
#[post("/users")]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: Json<CreateUser>,
) -> Result<HttpResponse, ApiError> {
    let CreateUser {
        username,
        password,
        roles,
    } = body.0;
    let meta = caller.meta(&req);
    let user = state
        .identity
        .create_user(&username, password, &roles, meta)
        .await?;
    super::audit::done_with(
        &state,
        &req,
        &caller.0,
        "user.created",
        format!("user:{}", user.user_id),
        &[
            ("username", user.username.clone()),
            ("roles", super::audit::roles(&user.roles)),
        ],
    );
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/users/{}", user.user_id)))
        .json(UserView::from(&user)))
}

/// Every user, by username.
#[utoipa::path(
    tag = "users",
    security(("bearer" = ["users:read"])),
    responses((status = 200, description = "Users", body = UserList), CallerErrors)
)]
#[get("/users")]
pub async fn list(state: web::Data<AppState>) -> HttpResponse {
    let mut users: Vec<UserView> = state.identity.users().iter().map(UserView::from).collect();
    users.sort_by(|a, b| a.username.cmp(&b.username));
    HttpResponse::Ok().json(UserList { users })
}

/// One user.
#[utoipa::path(
    tag = "users",
    security(("bearer" = ["users:read"])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 404, description = "No such user", body = ErrorBody),
        CallerErrors,
    )
)]
#[get("/users/{id}")]
pub async fn get(
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    state
        .identity
        .user(&id)
        .map(|u| HttpResponse::Ok().json(UserView::from(&u)))
        .ok_or_else(|| ApiError::not_found("no such user"))
}

/// Changes roles, the disabled flag or the password. Admins cannot disable or demote themselves,
/// and the last enabled admin stays.
#[utoipa::path(
    tag = "users",
    security(("bearer" = ["users:write"])),
    params(("id" = Uuid, Path, description = "User id")),
    request_body = PatchUser,
    responses(
        (status = 200, description = "The updated user", body = UserView),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "Self-lockout, or it would leave no enabled admin", body = ErrorBody),
        BodyErrors,
        CallerErrors,
    )
)]
#[patch("/users/{id}")]
pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    id: web::Path<Uuid>,
    body: Json<PatchUser>,
) -> Result<HttpResponse, ApiError> {
    let PatchUser {
        roles,
        disabled,
        password,
    } = body.0;
    let id = id.into_inner();
    let before = state.identity.user(&id);
    let changed_password = password.is_some();
    let patch = UserPatch {
        roles,
        disabled,
        password,
    };
    let meta = caller.meta(&req);
    let user = state
        .identity
        .update_user(caller.0.user_id, id, patch, meta)
        .await?;
    let target = format!("user:{id}");
    if let Some(before) = before {
        use super::audit::{done, done_with, roles};
        if before.roles != user.roles {
            let detail = [
                ("roles_before", roles(&before.roles)),
                ("roles_after", roles(&user.roles)),
            ];
            done_with(
                &state,
                &req,
                &caller.0,
                "user.roles_changed",
                target.clone(),
                &detail,
            );
        }
        if before.disabled != user.disabled {
            let action = if user.disabled {
                "user.disabled"
            } else {
                "user.enabled"
            };
            done(&state, &req, &caller.0, action, target.clone());
        }
    }
    if changed_password {
        super::audit::done(&state, &req, &caller.0, "user.password_changed", target);
    }
    Ok(HttpResponse::Ok().json(UserView::from(&user)))
}
