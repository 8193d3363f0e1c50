//! Request and response bodies of the identity API, with their OpenAPI schemas. Requests reject
//! unknown fields; responses never carry a hash or secret (a new key's secret, once, excepted).

use chrono::{DateTime, Utc};
use revo_events::directory::{KeyRow, UserRow};
use revo_events::Role;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A role (the permission matrix is in docs/api.md).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum RoleName {
    Admin,
    Developer,
    Viewer,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub username: String,
    #[schema(value_type = Vec<RoleName>)]
    pub roles: Vec<Role>,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// Failed logins since the last successful one.
    pub failed_logins: u32,
}

impl From<&UserRow> for UserView {
    fn from(u: &UserRow) -> Self {
        UserView {
            id: u.user_id,
            username: u.username.clone(),
            roles: u.roles.clone(),
            disabled: u.disabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
            last_login_at: u.last_login_at,
            failed_logins: u.failed_logins,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
}

/// `GET /users/me`: the account and how this request authenticated.
#[derive(Serialize, ToSchema)]
pub struct Me {
    pub user: UserView,
    /// `token` or `key`.
    pub auth: String,
    /// The API key used, if any.
    pub key_id: Option<Uuid>,
    /// Effective roles of this request (a key may carry fewer than its owner).
    #[schema(value_type = Vec<RoleName>)]
    pub roles: Vec<Role>,
    /// Requests per minute allowed to this caller (0: unlimited).
    pub rate_limit_per_minute: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Lowercase; cannot change later.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub username: String,
    #[schema(min_length = 8, max_length = 256)]
    pub password: String,
    #[schema(value_type = Vec<RoleName>, min_items = 1)]
    pub roles: Vec<Role>,
}

/// At least one field (an empty patch is `422 empty_patch`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    #[schema(value_type = Option<Vec<RoleName>>, min_items = 1)]
    pub roles: Option<Vec<Role>>,
    pub disabled: Option<bool>,
    #[schema(min_length = 8, max_length = 256)]
    pub password: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\s\\x00-\\x1F\\x7F-\\x9F][^\\x00-\\x1F\\x7F-\\x9F]*$"
    )]
    pub name: String,
    /// A subset of the owner's roles; omitted: the owner's roles, as they change.
    #[schema(value_type = Option<Vec<RoleName>>, min_items = 1)]
    pub roles: Option<Vec<Role>>,
    /// Omitted: the limit of the key's roles.
    #[schema(minimum = 1)]
    pub rate_limit_per_minute: Option<u32>,
    /// At most ten years.
    #[schema(minimum = 1, maximum = 315360000)]
    pub expires_in_secs: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyView {
    pub id: Uuid,
    pub name: String,
    pub owner_id: Uuid,
    #[schema(value_type = Option<Vec<RoleName>>)]
    pub roles: Option<Vec<Role>>,
    pub rate_limit_per_minute: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<&KeyRow> for KeyView {
    fn from(k: &KeyRow) -> Self {
        KeyView {
            id: k.key_id,
            name: k.name.clone(),
            owner_id: k.user_id,
            roles: k.roles.clone(),
            rate_limit_per_minute: k.rate_limit_per_minute,
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

/// A new key. `api_key` is shown this once; only its hash is kept.
#[derive(Serialize, ToSchema)]
pub struct NewKey {
    pub key: KeyView,
    pub api_key: String,
}
