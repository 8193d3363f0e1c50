//! `GET /ws/{user_id}`: the WebSocket (docs/websocket.md). The edge authenticates, upgrades
//! with actix-ws and hands the socket to a session actor (`revo_actors::rooms::session`).
//!
//! Browsers cannot set headers on a WebSocket, so the credential comes either as
//! `Authorization: Bearer …` (refused before the upgrade if bad) or in a first `auth` frame
//! within 5 seconds (refused with close code 4001).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use revo_actors::rooms::frames::{self, ClientFrame};
use revo_actors::rooms::session::close;
use revo_actors::rooms::{Inbound, Socket, Who};
use serde_json::json;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::identity::rbac::Permission;
use crate::identity::{Identity, Principal};

/// How long a connection without a header credential may take to send its `auth` frame.
const AUTH_WAIT: Duration = Duration::from_secs(5);

struct ActixSocket(Option<actix_ws::Session>);

#[async_trait(?Send)]
impl Socket for ActixSocket {
    async fn text(&mut self, text: &str) -> bool {
        match self.0.as_mut() {
            Some(s) => s.text(text.to_owned()).await.is_ok(),
            None => false,
        }
    }

    async fn binary(&mut self, bytes: Bytes) -> bool {
        match self.0.as_mut() {
            Some(s) => s.binary(bytes).await.is_ok(),
            None => false,
        }
    }

    async fn ping(&mut self, bytes: &[u8]) -> bool {
        match self.0.as_mut() {
            Some(s) => s.ping(bytes).await.is_ok(),
            None => false,
        }
    }

    async fn pong(&mut self, bytes: &[u8]) -> bool {
        match self.0.as_mut() {
            Some(s) => s.pong(bytes).await.is_ok(),
            None => false,
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        if let Some(s) = self.0.take() {
            let _ = s
                .close(Some(CloseReason {
                    code: CloseCode::from(code),
                    description: Some(reason.to_owned()),
                }))
                .await;
        }
    }
}

fn inbound(m: Result<AggregatedMessage, ProtocolError>) -> Inbound {
    match m {
        Ok(AggregatedMessage::Text(t)) => Inbound::Text(t.to_string()),
        Ok(AggregatedMessage::Binary(b)) => Inbound::Binary(b),
        Ok(AggregatedMessage::Ping(b)) => Inbound::Ping(b),
        Ok(AggregatedMessage::Pong(_)) => Inbound::Pong,
        Ok(AggregatedMessage::Close(_)) => Inbound::Close,
        Err(ProtocolError::Overflow) => Inbound::TooBig,
        Err(_) => Inbound::Broken,
    }
}

/// How a socket authenticated, for its periodic re-check.
#[derive(Clone)]
enum Credential {
    /// `Authorization`, an `auth` frame, or y-websocket's `access_token`.
    Header(String),
    /// A ticket: the credential it named, known by its id.
    Ticket(Uuid, crate::identity::Via),
}

/// Why a credential does not admit a WebSocket: (close code, error code, message).
fn admit(
    identity: &Identity,
    header: &str,
    path_user: Uuid,
) -> Result<Principal, (u16, &'static str, String)> {
    let p = identity
        .authenticate(Some(header))
        .map_err(|e| (close::UNAUTHORIZED, e.code(), e.to_string()))?;
    admit_principal(p, path_user)
}

/// A socket opened with `?ticket=` (`POST /ws/tickets`): the ticket is taken, once.
fn admit_ticket(
    identity: &Identity,
    ticket: &str,
    path_user: Uuid,
) -> Result<(Principal, Credential), (u16, &'static str, String)> {
    let p = identity
        .redeem_ticket(ticket)
        .map_err(|e| (close::UNAUTHORIZED, e.code(), e.to_string()))?;
    let cred = Credential::Ticket(p.user_id, p.via.clone());
    Ok((admit_principal(p, path_user)?, cred))
}

fn admit_principal(
    p: Principal,
    path_user: Uuid,
) -> Result<Principal, (u16, &'static str, String)> {
    if p.user_id != path_user {
        return Err((
            close::FORBIDDEN,
            "forbidden",
            "the path's user must be the caller".into(),
        ));
    }
    if !p.can(Permission::Rooms) {
        return Err((
            close::FORBIDDEN,
            "forbidden",
            "this needs the `rooms` permission".into(),
        ));
    }
    Ok(p)
}

fn who(
    identity: Arc<Identity>,
    p: &Principal,
    cred: Credential,
    from: (Option<String>, Option<String>),
) -> Who {
    let user = p.user_id;
    Who {
        user,
        username: p.username.clone(),
        actor: p.actor(),
        admin: p.can(Permission::UsersWrite),
        workflows: p.can(Permission::WorkflowsWrite),
        generate: p.can(Permission::Generate),
        audit: p.can(Permission::AuditRead),
        roles: p.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        client: from.0,
        user_agent: from.1,
        key: match p.via {
            crate::identity::Via::Key { key_id } => Some(key_id),
            crate::identity::Via::Token { .. } => None,
        },
        still_valid: Box::new(move || {
            let now = match &cred {
                Credential::Header(h) => identity.authenticate(Some(h)),
                Credential::Ticket(u, via) => identity.reauthenticate(*u, via),
            };
            now.is_ok_and(|q| q.user_id == user && q.can(Permission::Rooms))
        }),
    }
}

/// Opens the real-time connection (an HTTP upgrade to WebSocket; see docs/websocket.md).
#[utoipa::path(
    tag = "realtime",
    params(("user_id" = Uuid, Path, description = "The caller's own user id"), TicketQuery),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket (docs/websocket.md)"),
        (status = 401, description = "A bad credential in `Authorization`", body = ErrorBody),
        (status = 403, description = "The path's user is not the caller, or no `rooms` permission", body = ErrorBody),
        (status = 404, description = "A malformed id in the path", body = ErrorBody),
        (status = 426, description = "Not a WebSocket upgrade", body = ErrorBody),
    )
)]
#[get("/ws/{user_id}")]
pub async fn connect(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<Uuid>,
    query: web::Query<TicketQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let path_user = path.into_inner();
    require_upgrade(&req)?;
    origin_allowed(&state, &req)?;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let identity = state.identity.clone();
    // A credential in the header (or a ticket in the query) is checked before the upgrade,
    // with the HTTP error.
    let early = match (&header, &query.ticket) {
        (Some(h), _) => Some((
            admit(&identity, h, path_user).map_err(http_refusal)?,
            Credential::Header(h.clone()),
        )),
        (None, Some(t)) => Some(admit_ticket(&identity, t, path_user).map_err(http_refusal)?),
        (None, None) => None,
    };
    let mut slot = None;
    if let Some((p, _)) = &early {
        rate_limited(&identity, p)?;
        slot = Some(connection_slot(&state, p.user_id)?);
    }
    // Without a header the socket waits for its `auth` frame: only so many at once.
    let pending = match early {
        Some(_) => None,
        None => Some(
            state
                .pending_upgrades
                .clone()
                .try_acquire_owned()
                .map_err(|_| {
                    ApiError::unavailable(
                        "too many connections are waiting to authenticate; try again",
                    )
                    .with_retry_after(1)
                })?,
        ),
    };
    let connections = state.connections.clone();
    let from = from_where(&state, &req);
    let settings = state.realtime_session.clone();
    let (response, session, mut stream) = upgrade(&req, body, &settings)?;
    let hub = state.realtime.clone();
    let tracker = hub.tracker().clone();
    let run = async move {
        let mut socket = ActixSocket(Some(session));
        let (principal, cred) = match early {
            Some(ok) => ok,
            None => match first_frame_auth(&identity, path_user, &mut stream, &mut socket).await {
                Some((p, h)) => (p, Credential::Header(h)),
                None => return,
            },
        };
        drop(pending);
        let _slot = match slot {
            Some(s) => s,
            None => match connections.take(principal.user_id) {
                Some(s) => s,
                None => {
                    let f = frames::error(
                        "too_many_connections",
                        &format!(
                            "at most {} connections per user on this server",
                            connections.max()
                        ),
                        None,
                    );
                    let _ = socket.text(&f).await;
                    socket.close(close::FLOOD, "too many connections").await;
                    return;
                }
            },
        };
        let who = who(identity, &principal, cred, from);
        revo_actors::rooms::session::run(hub, who, settings, stream, socket).await;
    };
    actix_web::rt::spawn(tracker.track_future(run));
    Ok(response)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
pub struct TicketQuery {
    /// A one-use ticket from `POST /ws/tickets` (30 s), for clients that cannot set headers:
    /// no long-lived credential in the URL.
    #[serde(default)]
    pub ticket: Option<String>,
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
pub struct YjsQuery {
    /// A one-use ticket from `POST /ws/tickets` (30 s): the way for browsers and y-websocket
    /// clients, which cannot set headers.
    #[serde(default)]
    pub ticket: Option<String>,
    /// The credential itself, for clients that cannot set headers (y-websocket's `params`).
    /// Prefer a `ticket`, or `Authorization` where possible: URLs end up in proxies' logs.
    #[serde(default)]
    pub access_token: Option<String>,
}

/// A one-use ticket for opening a WebSocket without a long-lived credential in the URL:
/// `?ticket=` on `/ws/{user_id}` or `/ws/{user_id}/yjs/{room}/{doc}`, within 30 s, once. The
/// socket then lives as long as the credential that asked for the ticket stays valid.
#[utoipa::path(
    tag = "realtime",
    security(("bearer" = ["rooms"])),
    responses(
        (status = 201, description = "The ticket", body = TicketView),
        super::openapi::CallerErrors,
    )
)]
#[post("/ws/tickets")]
pub async fn create_ticket(
    state: web::Data<AppState>,
    caller: super::access::Caller,
) -> HttpResponse {
    let ticket = state.identity.issue_ticket(&caller.0);
    HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(TicketView {
            ticket,
            expires_in: crate::identity::ticket::TICKET_TTL_SECS as u64,
        })
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TicketView {
    /// Pass as `?ticket=` when opening the socket.
    pub ticket: String,
    /// Seconds it may wait to be used.
    pub expires_in: u64,
}

/// A y-websocket connection to one document of a room: binary y-protocols (sync and
/// awareness, v1 encoding), so a stock Yjs client edits a Revo document. With y-websocket,
/// `new WebsocketProvider("ws://HOST/ws/USER_ID/yjs", "ROOM_ID/DOC", ydoc, {params:
/// {access_token}})`.
#[utoipa::path(
    tag = "realtime",
    params(
        ("user_id" = Uuid, Path, description = "The caller's own user id"),
        ("room" = Uuid, Path),
        ("doc" = String, Path, description = "The document's name (1-128 bytes)"),
        YjsQuery,
    ),
    responses(
        (status = 101, description = "Switching Protocols: y-protocols over WebSocket"),
        (status = 401, description = "No credential, or a bad one", body = ErrorBody),
        (status = 403, description = "The path's user is not the caller, or no `rooms` permission", body = ErrorBody),
        (status = 404, description = "A malformed id in the path", body = ErrorBody),
        (status = 426, description = "Not a WebSocket upgrade", body = ErrorBody),
    )
)]
#[get("/ws/{user_id}/yjs/{room}/{doc}")]
pub async fn connect_yjs(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(Uuid, Uuid, String)>,
    query: web::Query<YjsQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (path_user, room, doc) = path.into_inner();
    require_upgrade(&req)?;
    origin_allowed(&state, &req)?;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.access_token.as_ref().map(|t| format!("Bearer {t}")));
    let identity = state.identity.clone();
    let (principal, cred) = match (header, &query.ticket) {
        (Some(h), _) => (
            admit(&identity, &h, path_user).map_err(http_refusal)?,
            Credential::Header(h),
        ),
        (None, Some(t)) => admit_ticket(&identity, t, path_user).map_err(http_refusal)?,
        (None, None) => return Err(ApiError::from(crate::identity::AuthError::Missing)),
    };
    rate_limited(&identity, &principal)?;
    let slot = connection_slot(&state, principal.user_id)?;
    let settings = state.realtime_session.clone();
    let (response, session, stream) = upgrade(&req, body, &settings)?;
    let hub = state.realtime.clone();
    let tracker = hub.tracker().clone();
    let who = who(identity, &principal, cred, from_where(&state, &req));
    let run = revo_actors::rooms::session::run_yjs(
        hub,
        who,
        settings,
        room,
        doc,
        stream,
        ActixSocket(Some(session)),
    );
    actix_web::rt::spawn(tracker.track_future(async move {
        let _slot = slot;
        run.await
    }));
    Ok(response)
}

/// Upgrades the connection: the response, the socket's writing half and its frames.
fn upgrade(
    req: &HttpRequest,
    body: web::Payload,
    settings: &revo_actors::rooms::SessionSettings,
) -> Result<
    (
        HttpResponse,
        actix_ws::Session,
        impl futures::Stream<Item = Inbound> + Unpin,
    ),
    ApiError,
> {
    let (response, session, stream) = actix_ws::handle(req, body)
        .map_err(|e| ApiError::bad_request("bad_upgrade", e.to_string()))?;
    // Frames up to 4× the protocol's limit still get an `error` frame; beyond, the transport
    // closes (1009).
    let transport_max = settings.max_frame * 4;
    let stream = stream
        .max_frame_size(transport_max)
        .aggregate_continuations()
        .max_continuation_size(transport_max)
        .map(inbound);
    Ok((response, session, stream))
}

/// The client's address (as the trusted proxies resolve it) and user agent, for the audit log.
fn from_where(state: &AppState, req: &HttpRequest) -> (Option<String>, Option<String>) {
    let agent = req
        .headers()
        .get(actix_web::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect());
    (state.client_addr(req), agent)
}

/// A browser's page from an origin `[http] allowed_origins` does not list may not open a
/// socket (its `Origin` is set by the browser; programs send none).
fn origin_allowed(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    let (Some(allowed), Some(origin)) = (
        state.allowed_origins.as_ref(),
        req.headers().get(actix_web::http::header::ORIGIN),
    ) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
    if allowed.contains(&origin) {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "origin_not_allowed",
        "this page's origin may not open a connection here ([http] allowed_origins)",
    ))
}

/// One of the user's connections on this edge, or `429 too_many_connections`.
fn connection_slot(state: &AppState, user: Uuid) -> Result<super::quota::Slot, ApiError> {
    state.connections.take(user).ok_or_else(|| {
        ApiError::new(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            format!(
                "at most {} WebSocket connections per user on this server ([rooms] max_connections_per_user)",
                state.connections.max()
            ),
        )
    })
}

fn require_upgrade(req: &HttpRequest) -> Result<(), ApiError> {
    let upgrade = req
        .headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade {
        Ok(())
    } else {
        Err(ApiError::new(
            actix_web::http::StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            "this is a WebSocket endpoint: connect with a WebSocket client",
        ))
    }
}

fn http_refusal((code, e, m): (u16, &'static str, String)) -> ApiError {
    if code == close::FORBIDDEN {
        ApiError::forbidden(e, m)
    } else {
        ApiError::new(actix_web::http::StatusCode::UNAUTHORIZED, e, m)
    }
}

fn rate_limited(identity: &Identity, p: &Principal) -> Result<(), ApiError> {
    let d = identity.rate_limit(p);
    if d.allowed {
        return Ok(());
    }
    Err(ApiError::new(
        actix_web::http::StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("over {} requests per minute", d.limit),
    )
    .with_retry_after(d.retry_after_secs))
}

/// Waits for the `auth` frame of a connection that came without a header credential.
async fn first_frame_auth(
    identity: &Identity,
    path_user: Uuid,
    stream: &mut (impl futures::Stream<Item = Inbound> + Unpin),
    socket: &mut ActixSocket,
) -> Option<(Principal, String)> {
    let refuse = |code: &str, m: &str| frames::error(code, m, None);
    let first = tokio::time::timeout(AUTH_WAIT, async {
        loop {
            match stream.next().await {
                Some(Inbound::Text(t)) => return Some(t),
                Some(Inbound::Ping(b)) => {
                    let _ = socket.pong(&b).await;
                }
                Some(Inbound::Pong) => {}
                _ => return None,
            }
        }
    })
    .await;
    let text = match first {
        Ok(Some(t)) => t,
        Ok(None) => return None,
        Err(_) => {
            let _ = socket
                .text(&refuse("unauthorized", "send an `auth` frame first"))
                .await;
            socket.close(close::UNAUTHORIZED, "no auth frame").await;
            return None;
        }
    };
    let (_, frame) = frames::parse(&text);
    let Ok(ClientFrame::Auth { token }) = frame else {
        let _ = socket
            .text(&refuse(
                "unauthorized",
                "the first frame must be {\"type\": \"auth\", \"token\": \"...\"}",
            ))
            .await;
        socket.close(close::UNAUTHORIZED, "no auth frame").await;
        return None;
    };
    let header = format!("Bearer {token}");
    match admit(identity, &header, path_user) {
        Ok(p) => {
            if !identity.rate_limit(&p).allowed {
                let _ = socket
                    .text(&refuse("rate_limited", "over the request limit"))
                    .await;
                socket.close(close::FLOOD, "rate limited").await;
                return None;
            }
            Some((p, header))
        }
        Err((code, e, m)) => {
            let _ = socket
                .text(&json!({"type": "error", "code": e, "message": m}).to_string())
                .await;
            socket.close(code, "not admitted").await;
            None
        }
    }
}
