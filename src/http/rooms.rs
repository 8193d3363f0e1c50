//! `/rooms`: real-time rooms over HTTP: create, list, read, members and roles, archive, the
//! history by offset (`GET /rooms/{id}/events?after=`), a document's state and the members'
//! presence. Writes go through the room's actor on this edge (`revo_actors::rooms`), which
//! appends them in offset order; the WebSocket protocol is in `ws.rs`.

use actix_web::http::StatusCode;
use actix_web::{delete, get, patch, post, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use revo_actors::rooms::frames;
use revo_actors::rooms::room::{Command, RoomError, Write};
use revo_events::family::room::{RoomRow, ROOM_STREAM};
use revo_events::{AppendRequest, EventFamily, ExpectedVersion, RoomEvent, RoomRole};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::Json;
use super::openapi::{BodyErrors, CallerErrors};
use super::AppState;
use crate::identity::rbac::Permission;

const MAX_NAME: usize = 100;
const MAX_INVITES: usize = 100;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    /// 1-100 characters.
    pub name: String,
    /// `public` (anyone may join as a member) or `private` (by invitation; the default).
    #[serde(default)]
    pub visibility: Option<String>,
    /// People invited at once (at most 100).
    #[serde(default)]
    pub members: Vec<Invite>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    pub user_id: Uuid,
    /// `owner`, `member` or `viewer`.
    pub role: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    /// `owner`, `member` or `viewer`.
    pub role: String,
}

#[derive(Serialize, ToSchema)]
pub struct MemberView {
    pub user_id: Uuid,
    pub role: String,
}

#[derive(Serialize, ToSchema)]
pub struct RoomView {
    pub id: Uuid,
    pub name: String,
    pub visibility: String,
    pub owner: Uuid,
    /// The caller's role, if a member.
    pub role: Option<String>,
    pub archived: bool,
    /// The room's latest offset.
    pub offset: i64,
    pub created_at: DateTime<Utc>,
    pub members: Vec<MemberView>,
}

impl RoomView {
    fn of(r: &RoomRow, caller: &Uuid) -> RoomView {
        RoomView {
            id: r.room_id,
            name: r.name.clone(),
            visibility: r.visibility.clone(),
            owner: r.owner,
            role: r.role_of(caller).map(|x| x.as_str().to_owned()),
            archived: r.archived,
            offset: r.offset,
            created_at: r.created_at,
            members: r
                .members
                .iter()
                .map(|(u, role)| MemberView {
                    user_id: *u,
                    role: role.as_str().to_owned(),
                })
                .collect(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RoomList {
    pub rooms: Vec<RoomView>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// The last offset seen (0: from the start).
    #[serde(default)]
    pub after: i64,
    /// At most this many (1-1000, default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct EventPage {
    /// The room's events after `after`, as the WebSocket delivers them (each with its
    /// `offset`; document snapshots are not shown).
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Pass as `after` for the next page.
    pub next_after: i64,
    /// Whether more events follow.
    pub more: bool,
}

#[derive(Serialize, ToSchema)]
pub struct DocState {
    /// The whole document as a Yjs update (v1 encoding, base64).
    pub update: String,
    /// Its state vector (v1, base64).
    pub state_vector: String,
    /// The room's offset it reflects.
    pub offset: i64,
}

#[derive(Serialize, ToSchema)]
pub struct PresenceView {
    pub user_id: Uuid,
    pub role: String,
    /// `online`, `away`, `busy` or `offline`.
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct RoomPresence {
    pub members: Vec<PresenceView>,
}

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError::unprocessable("invalid_parameter", m)
}

fn role(s: &str) -> Result<RoomRole, ApiError> {
    RoomRole::parse(s).ok_or_else(|| invalid("`role` is owner, member or viewer"))
}

pub fn room_error(e: RoomError) -> ApiError {
    let m = e.to_string();
    match e {
        RoomError::NotFound => ApiError::not_found("no such room"),
        RoomError::Forbidden(code, _) => ApiError::forbidden(code, m),
        RoomError::Archived => ApiError::new(StatusCode::CONFLICT, "room_archived", m),
        RoomError::Invalid(code @ ("already_member" | "last_owner"), _) => {
            ApiError::new(StatusCode::CONFLICT, code, m)
        }
        RoomError::Invalid(code @ ("not_a_member" | "message_not_found"), _) => {
            ApiError::new(StatusCode::NOT_FOUND, code, m)
        }
        RoomError::Invalid("too_large", _) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m)
        }
        RoomError::Invalid(code, _) => ApiError::unprocessable(code, m),
        RoomError::Unavailable(_) => ApiError::unavailable(m).with_retry_after(1),
    }
}

/// A room the caller may see: a member, a public room, or `users:read`. Others are "not
/// found", so private rooms' existence does not leak.
async fn visible(state: &AppState, caller: &Caller, id: Uuid) -> Result<RoomRow, ApiError> {
    let may_see = |r: &RoomRow| {
        r.role_of(&caller.0.user_id).is_some()
            || r.is_public()
            || caller.0.can(Permission::UsersRead)
    };
    let row = state.realtime.rooms_view().read().get(&id).cloned();
    let row = match row {
        Some(r) => Some(r),
        // Not in this edge's view: created a moment ago on another edge, or not at all. The
        // store says which (one indexed read), so a real room is waited for and an unknown
        // id answers at once.
        None => {
            let exists = !state
                .store
                .read_stream(ROOM_STREAM, &id.to_string(), 1, 1)
                .await?
                .is_empty();
            if exists {
                state
                    .realtime
                    .rooms_view()
                    .wait_until(std::time::Duration::from_secs(2), |v| v.get(&id).cloned())
                    .await
            } else {
                None
            }
        }
    };
    row.filter(|r| may_see(r))
        .ok_or_else(|| ApiError::not_found("no such room"))
}

/// Waits (up to 5 s) until this edge's rooms view has folded `offset` of `room`.
async fn shown(state: &AppState, room: Uuid, offset: i64, caller: &Uuid) -> Option<RoomView> {
    let wait = std::time::Duration::from_secs(5);
    state
        .realtime
        .rooms_view()
        .wait_until(wait, |v| {
            v.get(&room)
                .filter(|r| r.offset >= offset)
                .map(|r| RoomView::of(r, caller))
        })
        .await
}

/// Creates a room; the caller is its owner.
#[utoipa::path(
    tag = "rooms",
    security(("bearer" = ["rooms"])),
    request_body = CreateRoom,
    responses(
        (status = 201, description = "Created", body = RoomView),
        (status = 404, description = "An invited user does not exist", body = ErrorBody),
        (status = 429, description = "The caller owns too many rooms (`too_many_rooms`)", body = ErrorBody),
        BodyErrors,
        CallerErrors,
    )
)]
#[post("/rooms")]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: Json<CreateRoom>,
) -> Result<HttpResponse, ApiError> {
    let b = body.0;
    let name = b.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(invalid("`name` is 1-100 characters, no control characters"));
    }
    let visibility = b.visibility.unwrap_or_else(|| "private".into());
    if !matches!(visibility.as_str(), "public" | "private") {
        return Err(invalid("`visibility` is public or private"));
    }
    if b.members.len() > MAX_INVITES {
        return Err(invalid("at most 100 members at creation"));
    }
    let me = caller.0.user_id;
    let max = state.rooms_config.max_rooms_per_user;
    let owned = state
        .realtime
        .rooms_view()
        .read()
        .of_member(&me)
        .filter(|r| r.owner == me && !r.archived)
        .count();
    if owned >= max {
        return Err(ApiError::new(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_rooms",
            format!(
                "at most {max} rooms per owner; archive some first ([rooms] max_rooms_per_user)"
            ),
        ));
    }
    let id = Uuid::now_v7();
    let meta = caller.meta(&req);
    let mut events = vec![RoomEvent::Created {
        room_id: id,
        name: name.to_owned(),
        visibility,
        owner: me,
    }];
    let mut seen = std::collections::HashSet::from([me]);
    for m in &b.members {
        let r = role(&m.role)?;
        if state.identity.user(&m.user_id).is_none() {
            return Err(ApiError::not_found(format!("no user {}", m.user_id)));
        }
        if seen.insert(m.user_id) {
            events.push(RoomEvent::MemberAdded {
                user_id: m.user_id,
                role: r,
                by: me,
            });
        }
    }
    let events = events
        .iter()
        .map(|e| e.to_new_event(meta.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::unprocessable("invalid_parameter", e.to_string()))?;
    let appended = state
        .store
        .append(AppendRequest::new(
            ROOM_STREAM,
            id.to_string(),
            ExpectedVersion::NoStream,
            events,
        ))
        .await?;
    let view = shown(&state, id, appended.stream_version, &me)
        .await
        .ok_or_else(|| ApiError::unavailable("the room was created but is not visible yet"))?;
    Ok(HttpResponse::Created().json(view))
}

/// The rooms the caller belongs to, and the public ones.
#[utoipa::path(
    tag = "rooms",
    security(("bearer" = ["rooms"])),
    responses((status = 200, description = "Rooms", body = RoomList), CallerErrors)
)]
#[get("/rooms")]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> HttpResponse {
    let me = caller.0.user_id;
    let view = state.realtime.rooms_view().read();
    let rooms = view
        .all()
        .filter(|r| !r.archived && (r.is_public() || r.role_of(&me).is_some()))
        .map(|r| RoomView::of(r, &me))
        .collect();
    HttpResponse::Ok().json(RoomList { rooms })
}

/// One room with its members.
#[utoipa::path(
    tag = "rooms",
    security(("bearer" = ["rooms"])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The room", body = RoomView),
        (status = 404, description = "No such room (or a private one the caller is not in)", body = ErrorBody),
        CallerErrors,
    )
)]
#[get("/rooms/{id}")]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let r = visible(&state, &caller, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(RoomView::of(&r, &caller.0.user_id)))
}

/// Asks the room's actor to make a change as the caller (administrators act as owners).
async fn write(
    state: &AppState,
    req: &HttpRequest,
    caller: &Caller,
    room: Uuid,
    op: Write,
) -> Result<i64, ApiError> {
    visible(state, caller, room).await?;
    let (user, as_owner, meta) = (
        caller.0.user_id,
        caller.0.can(Permission::UsersWrite),
        caller.meta(req),
    );
    state
        .realtime
        .ask(room, |reply| Command::Write {
            user,
            as_owner,
            meta: meta.clone(),
            op: op.clone(),
            reply,
        })
        .await
        .map(|w| w.offset)
        .map_err(room_error)
}

/// Invites a user (owners only).
#[utoipa::path(
    tag = "rooms",
    security(("bearer" = ["rooms"])),
    params(("id" = Uuid, Path)),
    request_body = Invite,
    responses(
        (status = 201, description = "Added", body = RoomView),
        (status = 404, description = "No such room or user", body = ErrorBody),
        (status = 409, description = "Already a member, or the room is archived", body = ErrorBody),
        BodyErrors,
        CallerErrors,
    )
)]
#[post("/rooms/{id}/members")]
pub async fn add_member(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<Uuid>,
    body: Json<Invite>,
) -> Result<HttpResponse, ApiError> {
    let room = path.into_inner();
    let body = body.0;
    let r = role(&body.role)?;
    if state.identity.user(&body.user_id).is_none() {
        return Err(ApiError::not_found(format!("no user {}", body.user_id)));
    }
    let op = Write::AddMember {
        user: body.user_id,
        role: r,
    };
    let offset = write(&state, &req, &caller, room, op).await?;
    super::audit::done_with(
        &state,
        &req,
        &caller.0,
        "room.member_added",
        format!("room:{room}"),
        &[
            ("user_id", body.user_id.to_string()),
            ("role", r.as_str().to_owned()),
        ],
    );
    let view = shown(&state, room, offset, &caller.0.user_id)
        .await
        .ok_or_else(|| ApiError::unavailable("saved but not visible yet"))?;
    Ok(HttpResponse::Created().json(view))
}

/// Changes a member's role (owners only; a room keeps at least one owner).
#[utoipa::path(
    tag = "rooms",
    security(("bearer" = ["rooms"])),
    params(("id" = Uuid, Path), ("user_id" = Uuid, Path)),
    request_body = SetRole,
    responses(
        (status = 200, description = "Changed", body = RoomView),
        (status = 404, description = "No such room or member", body = ErrorBody),
        (status = 409, description = "The last owner, or the room is archived", body = ErrorBody),
        BodyErrors,
        CallerErrors,
    )
)]
#[patch("/rooms/{id}/members/{user_id}")]
pub async fn set_role(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(Uuid, Uuid)>,
    body: Json<SetRole>,
) -> Result<HttpResponse, ApiError> {
    let (room, user) = path.into_inner();
    let new_role = role(&body.0.role)?;
    let before = state
        .realtime
        .rooms_view()
        .read()
        .get(&room)
        .and_then(|r| r.role_of(&user));
    let op = Write::ChangeRole {
        user,
        role: new_role,
    };
    let offset = write(&state, &req, &caller, room, op).await?;
    super::audit::done_with(
        &state,
        &req,
        &caller.0,
        "room.role_changed",
        format!("room:{room}"),
        &[
            ("user_id", user.to_string()),
            (
                "role_before",
                before.map(|r| r.as_str()).unwrap_or("").to_owned(),
            ),
            ("role_after", new_role.as_str().to_owned()),
        ],
    );
    let view = shown(&state, room, offset, &caller.0.user_id)
        .await
        .ok_or_else(|| ApiError::unavailable("saved but not visible yet"))?;
    Ok(HttpResponse::Ok().json(view))
}

/// Removes a member (owners), or leaves (oneself). Their subscriptions end on every edge.
#[utoipa::path(
    tag = "rooms",
    security(("bearer" = ["rooms"])),
    params(("id" = Uuid, Path), ("user_id" = Uuid, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such room or member", body = ErrorBody),
        (status = 409, description = "The last owner, or the room is archived", body = ErrorBody),
        CallerErrors,
    )
)]
#[delete("/rooms/{id}/members/{user_id}")]
pub async fn remove_member(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (room, user) = path.into_inner();
    write(&state, &req, &caller, room, Write::RemoveMember { user }).await?;
    super::audit::done_with(
        &state,
        &req,
        &caller.0,
        "room.member_removed",
        format!("room:{room}"),
        &[("user_id", user.to_string())],
    );
    Ok(HttpResponse::NoContent().finish())
}

/// Archives a room (owners): nobody can join or write any more; its history stays.
#[utoipa::path(
    tag = "rooms",
    security(("bearer" = ["rooms"])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Archived"),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 409, description = "Already archived", body = ErrorBody),
        CallerErrors,
    )
)]
#[delete("/rooms/{id}")]
pub async fn archive(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    write(&state, &req, &caller, path.into_inner(), Write::Archive).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The room's history after an offset, page by page: what a client missed.
#[utoipa::path(
    tag = "rooms",
    security(("bearer" = ["rooms"])),
    params(("id" = Uuid, Path), EventsQuery),
    responses(
        (status = 200, description = "Events after `after`", body = EventPage),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 422, description = "A bad `after` or `limit`", body = ErrorBody),
        CallerErrors,
    )
)]
#[get("/rooms/{id}/events")]
pub async fn history(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
    q: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let room = path.into_inner();
    visible(&state, &caller, room).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid("`limit` is 1-1000"));
    }
    if q.after < 0 {
        return Err(invalid("`after` is an offset, 0 or more"));
    }
    let page = state
        .store
        .read_stream(ROOM_STREAM, &room.to_string(), q.after + 1, limit + 1)
        .await?;
    let mut more = page.len() > limit;
    let page = &page[..page.len().min(limit)];
    // A page also stops at about 1 MiB of frames (at least one event): `more` and
    // `next_after` say where to go on.
    let mut next_after = q.after;
    let mut bytes = 0;
    let mut events = Vec::new();
    for e in page {
        if bytes >= HISTORY_BYTES {
            more = true;
            break;
        }
        next_after = e.envelope.version;
        if let Some(f) = frames::render(room, e) {
            bytes += f.len();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&f) {
                events.push(v);
            }
        }
    }
    Ok(HttpResponse::Ok().json(EventPage {
        events,
        next_after,
        more,
    }))
}

/// Frames one history page holds at most, in bytes (at least one event).
const HISTORY_BYTES: usize = 1024 * 1024;

/// A document's whole state (members only).
#[utoipa::path(
    tag = "rooms",
    security(("bearer" = ["rooms"])),
    params(("id" = Uuid, Path), ("doc" = String, Path)),
    responses(
        (status = 200, description = "The document", body = DocState),
        (status = 403, description = "Not a member", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        CallerErrors,
    )
)]
#[get("/rooms/{id}/docs/{doc}")]
pub async fn doc(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(Uuid, String)>,
) -> Result<HttpResponse, ApiError> {
    let (room, doc) = path.into_inner();
    if doc.is_empty() || doc.len() > frames::MAX_NAME {
        return Err(invalid("a document name is 1-128 bytes"));
    }
    visible(&state, &caller, room).await?;
    let user = caller.0.user_id;
    let sync = state
        .realtime
        .ask(room, |reply| Command::DocOpen {
            user,
            doc: doc.clone(),
            state_vector: None,
            reply,
        })
        .await
        .map_err(room_error)?;
    Ok(HttpResponse::Ok().json(DocState {
        update: frames::b64(&sync.update),
        state_vector: frames::b64(&sync.state_vector),
        offset: sync.offset,
    }))
}

/// Each member's presence, merged across their connections and edges.
#[utoipa::path(
    tag = "rooms",
    security(("bearer" = ["rooms"])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "Members and their presence", body = RoomPresence),
        (status = 404, description = "No such room", body = ErrorBody),
        CallerErrors,
    )
)]
#[get("/rooms/{id}/presence")]
pub async fn presence(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let r = visible(&state, &caller, path.into_inner()).await?;
    let p = state.realtime.presence_view().read();
    let members = r
        .members
        .iter()
        .map(|(u, role)| PresenceView {
            user_id: *u,
            role: role.as_str().to_owned(),
            status: p.status(u).to_owned(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(RoomPresence { members }))
}
