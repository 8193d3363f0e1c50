//! The `identity` family: users, their credentials, API keys and revoked tokens.
//!
//! Streams: `user/<username>` for a user's life (created, roles, disabled, password, logins,
//! revoked tokens). The stream is named by the username, which never changes, so creating a user
//! is one append expecting no stream: two edges can never create the same name. The user's
//! stable id (a UUID, the JWT `sub`) is in the payload. `apikey/<key_id>` holds a key's issue and
//! revocation.
//!
//! Events carry credential *hashes* (argon2id PHC strings, SHA-256 of key secrets), never a
//! password or a key secret. Hashes are still sensitive: operators restrict who may subscribe to
//! `revo.evt.user.>` and `revo.evt.apikey.>` (docs/events.md).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::family::EventFamily;

pub const USER_STREAM: &str = "user";
pub const KEY_STREAM: &str = "apikey";

/// A role. The permission matrix lives with the edge (`src/identity/rbac.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Developer,
    Viewer,
    /// Reads the audit log and nothing else.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Developer, Role::Viewer, Role::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Longest username; names are also stream ids, so they keep to subject-token characters.
pub const MAX_USERNAME: usize = 64;

/// `[a-z0-9][a-z0-9_-]{0,63}`: lowercase so that `Admin` and `admin` cannot both exist.
pub fn valid_username(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_USERNAME
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum IdentityEvent {
    #[serde(rename = "user.created")]
    UserCreated {
        user_id: Uuid,
        username: String,
        roles: Vec<Role>,
        /// argon2id PHC string.
        password_hash: String,
    },
    #[serde(rename = "user.roles_changed")]
    RolesChanged { user_id: Uuid, roles: Vec<Role> },
    /// `disabled: true` blocks logins, tokens and keys of the user; `false` lifts it.
    #[serde(rename = "user.disabled_changed")]
    DisabledChanged { user_id: Uuid, disabled: bool },
    #[serde(rename = "user.password_changed")]
    PasswordChanged {
        user_id: Uuid,
        password_hash: String,
    },
    #[serde(rename = "login.succeeded")]
    LoginSucceeded {
        user_id: Uuid,
        /// The token issued (its `jti`), so a later revocation can be traced to its login.
        jti: Uuid,
        client: Option<String>,
    },
    /// A failed login of an existing user (`bad_password`, `disabled`, `locked`). Failures for
    /// names that do not exist are not events: anyone could fill the store with them.
    #[serde(rename = "login.failed")]
    LoginFailed {
        user_id: Uuid,
        reason: String,
        client: Option<String>,
    },
    /// A token revoked before its expiry (logout). Kept until `expires_at`.
    #[serde(rename = "token.revoked")]
    TokenRevoked {
        user_id: Uuid,
        jti: Uuid,
        expires_at: DateTime<Utc>,
    },
    #[serde(rename = "key.issued")]
    KeyIssued {
        key_id: Uuid,
        user_id: Uuid,
        name: String,
        /// A narrower set than the owner's roles; `None`: the owner's roles, as they change.
        roles: Option<Vec<Role>>,
        /// Hex SHA-256 of the key's secret part.
        secret_hash: String,
        rate_limit_per_minute: Option<u32>,
        expires_at: Option<DateTime<Utc>>,
        /// The key that created this one, when a key did: revoking it revokes this key too.
        /// Added in schema 1 without a bump (older events lack it: `None`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent_key_id: Option<Uuid>,
    },
    #[serde(rename = "key.revoked")]
    KeyRevoked { key_id: Uuid, user_id: Uuid },
    /// "Log out everywhere": every token of the user issued before this event stops working.
    /// A password change does the same by itself.
    #[serde(rename = "user.sessions_ended")]
    SessionsEnded { user_id: Uuid },
}

impl EventFamily for IdentityEvent {
    fn event_type(&self) -> &'static str {
        match self {
            IdentityEvent::UserCreated { .. } => "user.created",
            IdentityEvent::RolesChanged { .. } => "user.roles_changed",
            IdentityEvent::DisabledChanged { .. } => "user.disabled_changed",
            IdentityEvent::PasswordChanged { .. } => "user.password_changed",
            IdentityEvent::LoginSucceeded { .. } => "login.succeeded",
            IdentityEvent::LoginFailed { .. } => "login.failed",
            IdentityEvent::TokenRevoked { .. } => "token.revoked",
            IdentityEvent::KeyIssued { .. } => "key.issued",
            IdentityEvent::KeyRevoked { .. } => "key.revoked",
            IdentityEvent::SessionsEnded { .. } => "user.sessions_ended",
        }
    }

    fn current_schema(event_type: &str) -> Option<u32> {
        match event_type {
            "user.created"
            | "user.roles_changed"
            | "user.disabled_changed"
            | "user.password_changed"
            | "login.succeeded"
            | "login.failed"
            | "token.revoked"
            | "key.issued"
            | "key.revoked"
            | "user.sessions_ended" => Some(1),
            _ => None,
        }
    }
}
