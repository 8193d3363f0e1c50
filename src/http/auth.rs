//! `POST /auth/login`, `POST /auth/logout`, `GET /users/me`.

use actix_web::{get, post, web, HttpRequest, HttpResponse};

use super::access::{request_id, Caller};
use super::error::{ApiError, ErrorBody};
use super::json::Json;
use super::openapi::{BodyErrors, CallerErrors};
use super::views::{LoginRequest, LoginResponse, Me, UserView};
use super::AppState;
use crate::identity::{IdentityError, Via};
use revo_events::EventMeta;

/// Exchanges a username and password for a bearer token (JWT). Failures never say whether the
/// user exists; repeated failures per name and per address are throttled.
#[utoipa::path(
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 401, description = "Bad credentials or disabled user", body = ErrorBody),
        (status = 429, description = "Too many failed logins", body = ErrorBody),
        (status = 503, description = "Too many password checks at once (`busy`, with Retry-After)", body = ErrorBody),
        BodyErrors,
    )
)]
#[post("/auth/login")]
pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let LoginRequest { username, password } = body.0;
    let client = state.client_addr(&req);
    let meta = EventMeta {
        actor: None,
        correlation_id: request_id(&req),
        causation_id: None,
    };
    let outcome = state
        .identity
        .login(&username, &password, client, meta)
        .await;
    if let Err(IdentityError::LoginThrottled(_)) = &outcome {
        state
            .metrics
            .http
            .rate_limited
            .with_label_values(&["login"])
            .inc();
    }
    if let Err(IdentityError::InvalidCredentials) = &outcome {
        state
            .metrics
            .http
            .auth_failures
            .with_label_values(&["invalid_credentials"])
            .inc();
    }
    record_login(&state, &req, &username, &outcome);
    let login = outcome?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(LoginResponse {
            access_token: login.token,
            token_type: "bearer".into(),
            expires_in: login.expires_in,
        }))
}

/// A sign-in's audit record: the user on success; on failure the name tried and why (folded
/// per source and name per minute, so a flood stays bounded).
fn record_login(
    state: &AppState,
    req: &HttpRequest,
    username: &str,
    outcome: &Result<crate::identity::Login, IdentityError>,
) {
    use revo_events::family::audit::AuditActor;
    let user = state.identity.user_by_name(username);
    let actor = AuditActor {
        user_id: user.as_ref().map(|u| u.user_id),
        username: Some(username.chars().take(64).collect()),
        key_id: None,
        roles: user
            .as_ref()
            .map(|u| u.roles.iter().map(|r| r.as_str().to_owned()).collect())
            .unwrap_or_default(),
    };
    let target = user.as_ref().map(|u| format!("user:{}", u.user_id));
    let reason = match outcome {
        Ok(_) => {
            let e = super::audit::entry(state, req, actor, "auth.login", target, "success");
            state.audit.record(e);
            return;
        }
        Err(IdentityError::InvalidCredentials) => "invalid_credentials",
        Err(IdentityError::LoginThrottled(_)) => "throttled",
        Err(IdentityError::Auth(crate::identity::AuthError::UserDisabled)) => "disabled",
        Err(_) => "unavailable",
    };
    let mut e = super::audit::entry(state, req, actor, "auth.login", target, "failure");
    e.detail.insert("reason".into(), reason.into());
    state.audit.record_repeatable(e);
}

/// Revokes the presented token on every edge until it would have expired.
#[utoipa::path(
    tag = "auth",
    security(("bearer" = ["self:read"])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 422, description = "An API key cannot log out", body = ErrorBody),
        CallerErrors,
    )
)]
#[post("/auth/logout")]
pub async fn logout(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let meta = caller.meta(&req);
    state.identity.logout(&caller.0, meta).await?;
    let target = format!("user:{}", caller.0.user_id);
    super::audit::done(&state, &req, &caller.0, "auth.logout", target);
    Ok(HttpResponse::NoContent().finish())
}

/// Ends every token of the caller's user, on every edge ("log out everywhere"); the caller's
/// own token included. API keys are not sessions and stay valid (revoke them with
/// `DELETE /keys/{id}`). A password change does the same by itself.
#[utoipa::path(
    tag = "auth",
    security(("bearer" = ["self:read"])),
    responses((status = 204, description = "Every token ended"), CallerErrors)
)]
#[post("/auth/logout-all")]
pub async fn logout_all(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let meta = caller.meta(&req);
    state.identity.logout_all(&caller.0, meta).await?;
    let target = format!("user:{}", caller.0.user_id);
    super::audit::done(&state, &req, &caller.0, "auth.logout_all", target);
    Ok(HttpResponse::NoContent().finish())
}

/// The caller's account, and how this request authenticated.
#[utoipa::path(
    tag = "users",
    security(("bearer" = ["self:read"])),
    responses((status = 200, description = "The caller", body = Me), CallerErrors)
)]
#[get("/users/me")]
pub async fn me(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let p = caller.0;
    let user = state
        .identity
        .user(&p.user_id)
        .as_ref()
        .map(UserView::from)
        .ok_or_else(|| ApiError::not_found("user"))?;
    let (auth, key_id) = match p.via {
        Via::Token { .. } => ("token", None),
        Via::Key { key_id } => ("key", Some(key_id)),
    };
    Ok(HttpResponse::Ok().json(Me {
        user,
        auth: auth.into(),
        key_id,
        roles: p.roles,
        rate_limit_per_minute: p.rate_limit,
    }))
}
