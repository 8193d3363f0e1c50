//! Identity: users, passwords, tokens, API keys, roles and rate limits.
//!
//! Every change is an `identity` event appended to the store; the user directory is the `users`
//! projection, which each edge keeps folded in memory ([`LiveView`]) so that authenticating a
//! request touches no database. A write waits until this edge's view has folded it, so the next
//! request sees it; other edges see it as soon as their view follows the store (milliseconds).

pub mod apikey;
pub mod gossip;
pub mod password;
pub mod ratelimit;
pub mod rbac;
pub mod throttle;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use revo_actors::LiveView;
use revo_events::directory::{KeyRow, UserRow};
use revo_events::identity::{valid_username, KEY_STREAM, USER_STREAM};
use revo_events::{
    AppendRequest, Directory, EventFamily, EventMeta, EventStore, ExpectedVersion, IdentityEvent,
    Role, StoreError,
};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use self::ratelimit::{Decision, RateLimiter};
use self::rbac::Permission;
use self::throttle::LoginThrottle;
use self::token::TokenKeys;

/// Why a credential was refused: each a `401` with this code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("this endpoint needs `Authorization: Bearer <token or API key>`")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    TokenMalformed,
    #[error("token algorithm `{0}` is not accepted (HS256 only)")]
    TokenAlgorithm(String),
    #[error("the token's signing key (kid) is unknown")]
    TokenUnknownKid,
    #[error("the token's signature does not verify")]
    TokenBadSignature,
    #[error("the token has expired")]
    TokenExpired,
    #[error("the token is not valid yet")]
    TokenNotYetValid,
    #[error("the token was revoked (logged out)")]
    TokenRevoked,
    #[error("the user no longer exists")]
    UserUnknown,
    #[error("the user is disabled")]
    UserDisabled,
    #[error("unknown API key")]
    KeyUnknown,
    #[error("the API key was revoked")]
    KeyRevoked,
    #[error("the API key has expired")]
    KeyExpired,
    #[error("{0}")]
    Internal(String),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_credentials",
            AuthError::TokenMalformed => "token_malformed",
            AuthError::TokenAlgorithm(_) => "token_algorithm",
            AuthError::TokenUnknownKid => "token_unknown_kid",
            AuthError::TokenBadSignature => "token_bad_signature",
            AuthError::TokenExpired => "token_expired",
            AuthError::TokenNotYetValid => "token_not_yet_valid",
            AuthError::TokenRevoked => "token_revoked",
            AuthError::UserUnknown => "user_unknown",
            AuthError::UserDisabled => "user_disabled",
            AuthError::KeyUnknown => "key_unknown",
            AuthError::KeyRevoked => "key_revoked",
            AuthError::KeyExpired => "key_expired",
            AuthError::Internal(_) => "internal",
        }
    }
}

/// Errors of identity operations (mapped to HTTP in `http/error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("too many failed logins; try again in {0} s")]
    LoginThrottled(u64),
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

fn invalid(code: &'static str, message: impl Into<String>) -> IdentityError {
    IdentityError::Invalid {
        code,
        message: message.into(),
    }
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Via {
    Token { jti: Uuid, expires_at: i64 },
    Key { key_id: Uuid },
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: Uuid,
    pub username: String,
    /// The user's roles, or a key's own set.
    pub roles: Vec<Role>,
    /// For a key with its own roles: the owner's current roles, which cap what the key may do
    /// (a demoted owner's keys lose the difference at once).
    pub ceiling: Option<Vec<Role>>,
    pub via: Via,
    /// Requests per minute (0: unlimited).
    pub rate_limit: u32,
}

impl Principal {
    pub fn can(&self, perm: Permission) -> bool {
        rbac::allows(&self.roles, perm)
            && self.ceiling.as_ref().is_none_or(|c| rbac::allows(c, perm))
    }

    /// The `actor` of the events this caller causes.
    pub fn actor(&self) -> String {
        match &self.via {
            Via::Token { .. } => format!("user:{}", self.user_id),
            Via::Key { key_id } => format!("key:{key_id}"),
        }
    }

    /// The rate-limit bucket: per user for tokens, per key for keys.
    pub fn rate_key(&self) -> String {
        match &self.via {
            Via::Token { .. } => format!("user:{}", self.user_id),
            Via::Key { key_id } => format!("key:{key_id}"),
        }
    }
}

/// Requests per minute by role (0: unlimited). A user gets the highest of their roles'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleLimits {
    pub admin: u32,
    pub developer: u32,
    pub viewer: u32,
}

impl RoleLimits {
    pub fn for_roles(&self, roles: &[Role]) -> u32 {
        let of = |r: &Role| match r {
            Role::Admin => self.admin,
            Role::Developer => self.developer,
            Role::Viewer => self.viewer,
        };
        if roles.iter().any(|r| of(r) == 0) {
            return 0;
        }
        roles.iter().map(of).max().unwrap_or(1)
    }
}

pub struct IdentitySettings {
    pub tokens: TokenKeys,
    pub limits: RoleLimits,
    pub throttle: LoginThrottle,
    /// How long a write waits for this edge's view to fold it.
    pub read_your_writes: Duration,
}

pub struct Identity {
    store: Arc<dyn EventStore>,
    view: LiveView<Directory>,
    tokens: TokenKeys,
    limits: RoleLimits,
    throttle: LoginThrottle,
    read_your_writes: Duration,
    tasks: TaskTracker,
    pub limiter: Arc<RateLimiter>,
}

/// A successful login.
pub struct Login {
    pub token: String,
    pub expires_in: u64,
}

/// What `PATCH /users/{id}` may change.
#[derive(Debug, Default)]
pub struct UserPatch {
    pub roles: Option<Vec<Role>>,
    pub disabled: Option<bool>,
    pub password: Option<String>,
}

pub struct NewKeyRequest {
    pub name: String,
    pub roles: Option<Vec<Role>>,
    pub rate_limit_per_minute: Option<u32>,
    pub expires_in_secs: Option<u64>,
}

pub const MAX_KEY_NAME: usize = 64;
/// Longest key lifetime accepted: ten years.
pub const MAX_KEY_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

/// Validates a new user and hashes the password: the `user.created` event to append.
pub async fn new_user(
    username: &str,
    password: String,
    roles: &[Role],
) -> Result<IdentityEvent, IdentityError> {
    if !valid_username(username) {
        return Err(invalid(
            "invalid_username",
            "usernames are 1-64 characters: a-z, 0-9, `_` and `-`, starting with a letter or digit",
        ));
    }
    let roles = check_roles(roles)?;
    Ok(IdentityEvent::UserCreated {
        user_id: Uuid::now_v7(),
        username: username.to_owned(),
        roles,
        password_hash: hash_password(password).await?,
    })
}

/// Appends a `user.created` to a stream that must not exist yet: a taken name is a conflict.
pub async fn append_new_user(
    store: &dyn EventStore,
    ev: IdentityEvent,
    meta: &EventMeta,
) -> Result<i64, IdentityError> {
    let IdentityEvent::UserCreated { username, .. } = &ev else {
        return Err(IdentityError::Internal("not a user.created event".into()));
    };
    let username = username.clone();
    let new = ev
        .to_new_event(meta.clone())
        .map_err(|e| IdentityError::Internal(e.to_string()))?;
    match store
        .append(AppendRequest::new(
            USER_STREAM,
            &username,
            ExpectedVersion::NoStream,
            vec![new],
        ))
        .await
    {
        Ok(a) => Ok(a.last_position),
        Err(StoreError::Conflict { .. }) => Err(IdentityError::Conflict {
            code: "username_taken",
            message: format!("a user named `{username}` already exists"),
        }),
        Err(e) => Err(e.into()),
    }
}

fn check_roles(roles: &[Role]) -> Result<Vec<Role>, IdentityError> {
    if roles.is_empty() {
        return Err(invalid("invalid_roles", "at least one role is required"));
    }
    let mut r = roles.to_vec();
    r.sort();
    r.dedup();
    Ok(r)
}

async fn hash_password(password: String) -> Result<String, IdentityError> {
    password::check_policy(&password).map_err(|e| invalid("weak_password", e.to_string()))?;
    tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(|e| IdentityError::Internal(e.to_string()))?
        .map_err(|e| IdentityError::Internal(e.to_string()))
}

impl Identity {
    pub fn new(
        store: Arc<dyn EventStore>,
        view: LiveView<Directory>,
        settings: IdentitySettings,
        node_id: &str,
        tasks: TaskTracker,
    ) -> Self {
        Identity {
            store,
            view,
            tokens: settings.tokens,
            limits: settings.limits,
            throttle: settings.throttle,
            read_your_writes: settings.read_your_writes,
            tasks,
            limiter: Arc::new(RateLimiter::new(node_id)),
        }
    }

    pub fn directory(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        self.view.read()
    }

    /// Authenticates the value of an `Authorization` header.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let credential = header
            .and_then(|h| {
                let (scheme, rest) = h.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|c| !c.is_empty())
            .ok_or(AuthError::Missing)?;
        if apikey::looks_like_key(credential) {
            return self.authenticate_key(credential);
        }
        let claims = self.tokens.verify(credential)?;
        let dir = self.view.read();
        if dir.is_revoked(&claims.jti) {
            return Err(AuthError::TokenRevoked);
        }
        let user = dir.user(&claims.sub).ok_or(AuthError::UserUnknown)?;
        if user.disabled {
            return Err(AuthError::UserDisabled);
        }
        Ok(Principal {
            user_id: user.user_id,
            username: user.username.clone(),
            roles: user.roles.clone(),
            ceiling: None,
            via: Via::Token {
                jti: claims.jti,
                expires_at: claims.exp,
            },
            rate_limit: self.limits.for_roles(&user.roles),
        })
    }

    fn authenticate_key(&self, credential: &str) -> Result<Principal, AuthError> {
        let (key_id, secret) = apikey::parse(credential).ok_or(AuthError::KeyUnknown)?;
        let dir = self.view.read();
        let key = dir.key(&key_id).ok_or(AuthError::KeyUnknown)?;
        if !apikey::matches(secret, &key.secret_hash) {
            return Err(AuthError::KeyUnknown);
        }
        if key.revoked_at.is_some() {
            return Err(AuthError::KeyRevoked);
        }
        if key.expires_at.is_some_and(|e| e <= Utc::now()) {
            return Err(AuthError::KeyExpired);
        }
        let user = dir.user(&key.user_id).ok_or(AuthError::UserUnknown)?;
        if user.disabled {
            return Err(AuthError::UserDisabled);
        }
        let (roles, ceiling) = match &key.roles {
            Some(own) => (own.clone(), Some(user.roles.clone())),
            None => (user.roles.clone(), None),
        };
        let rate_limit = key
            .rate_limit_per_minute
            .unwrap_or_else(|| self.limits.for_roles(&roles));
        Ok(Principal {
            user_id: user.user_id,
            username: user.username.clone(),
            roles,
            ceiling,
            via: Via::Key { key_id },
            rate_limit,
        })
    }

    pub fn rate_limit(&self, p: &Principal) -> Decision {
        self.limiter.check(&p.rate_key(), p.rate_limit)
    }

    async fn record(
        &self,
        stream: (&str, &str),
        expected: ExpectedVersion,
        events: &[IdentityEvent],
        meta: &EventMeta,
    ) -> Result<i64, IdentityError> {
        let new = events
            .iter()
            .map(|e| e.to_new_event(meta.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::Internal(e.to_string()))?;
        let appended = self
            .store
            .append(AppendRequest::new(stream.0, stream.1, expected, new))
            .await?;
        // Read-your-writes on this edge; the write is durable either way.
        if !self
            .view
            .wait_for(appended.last_position, self.read_your_writes)
            .await
        {
            tracing::warn!(
                position = appended.last_position,
                "identity view is behind the store; the change will show shortly"
            );
        }
        Ok(appended.last_position)
    }

    /// Appends without waiting (audit records whose timing must not show).
    fn record_later(&self, stream: (&str, &str), ev: IdentityEvent, meta: &EventMeta) {
        let new = match ev.to_new_event(meta.clone()) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode an identity event");
                return;
            }
        };
        let req = AppendRequest::new(stream.0, stream.1, ExpectedVersion::Any, vec![new]);
        let store = self.store.clone();
        self.tasks.spawn(async move {
            if let Err(e) = store.append(req).await {
                tracing::warn!(error = %e, "could not record a failed login");
            }
        });
    }

    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: Option<String>,
        meta: EventMeta,
    ) -> Result<Login, IdentityError> {
        let now = Instant::now();
        let addr = client.as_deref();
        self.throttle
            .check(username, addr, now)
            .map_err(IdentityError::LoginThrottled)?;
        let user = self.view.read().user_by_name(username).cloned();
        // Unknown names cost the same argon2 work as known ones.
        let hash = user.as_ref().map_or_else(
            || password::dummy_hash().to_owned(),
            |u| u.password_hash.clone(),
        );
        let pw = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || password::verify(&hash, &pw))
            .await
            .map_err(|e| IdentityError::Internal(e.to_string()))?;
        let Some(user) = user.filter(|_| ok) else {
            self.throttle.failed(username, addr, now);
            let known = self.view.read().user_by_name(username).map(|u| u.user_id);
            if let Some(user_id) = known {
                // Recorded in the background: waiting for it would make known names slower
                // to fail than unknown ones.
                let ev = IdentityEvent::LoginFailed {
                    user_id,
                    reason: "bad_password".into(),
                    client: client.clone(),
                };
                self.record_later((USER_STREAM, username), ev, &meta);
            }
            return Err(IdentityError::InvalidCredentials);
        };
        if user.disabled {
            let ev = IdentityEvent::LoginFailed {
                user_id: user.user_id,
                reason: "disabled".into(),
                client,
            };
            self.record((USER_STREAM, username), ExpectedVersion::Any, &[ev], &meta)
                .await?;
            return Err(AuthError::UserDisabled.into());
        }
        self.throttle.succeeded(username);
        let (token, claims) = self.tokens.issue(user.user_id, &user.roles)?;
        let ev = IdentityEvent::LoginSucceeded {
            user_id: user.user_id,
            jti: claims.jti,
            client,
        };
        let meta = EventMeta {
            actor: Some(format!("user:{}", user.user_id)),
            ..meta
        };
        self.record((USER_STREAM, username), ExpectedVersion::Any, &[ev], &meta)
            .await?;
        Ok(Login {
            token,
            expires_in: self.tokens.ttl.as_secs(),
        })
    }

    /// Revokes the caller's token until it would have expired. A key cannot log out.
    pub async fn logout(&self, p: &Principal, meta: EventMeta) -> Result<(), IdentityError> {
        let Via::Token { jti, expires_at } = p.via else {
            return Err(invalid(
                "not_a_token",
                "API keys are revoked with DELETE /keys/{id}, not logged out",
            ));
        };
        let expires_at = DateTime::from_timestamp(expires_at, 0).unwrap_or_else(Utc::now);
        let ev = IdentityEvent::TokenRevoked {
            user_id: p.user_id,
            jti,
            expires_at,
        };
        self.record(
            (USER_STREAM, &p.username),
            ExpectedVersion::Any,
            &[ev],
            &meta,
        )
        .await?;
        Ok(())
    }

    pub async fn create_user(
        &self,
        username: &str,
        password: String,
        roles: &[Role],
        meta: EventMeta,
    ) -> Result<UserRow, IdentityError> {
        let ev = new_user(username, password, roles).await?;
        let IdentityEvent::UserCreated {
            user_id,
            username,
            roles,
            ..
        } = ev.clone()
        else {
            return Err(IdentityError::Internal("not a user.created event".into()));
        };
        let position = append_new_user(self.store.as_ref(), ev, &meta).await?;
        self.view.wait_for(position, self.read_your_writes).await;
        let now = Utc::now();
        // The view lagging (a long transaction elsewhere on Postgres) does not undo the write.
        Ok(self.view.read().user(&user_id).cloned().unwrap_or(UserRow {
            user_id,
            username,
            roles,
            password_hash: String::new(),
            disabled: false,
            created_at: now,
            updated_at: now,
            last_login_at: None,
            failed_logins: 0,
            version: 1,
        }))
    }

    fn enabled_admins_other_than(&self, user_id: Uuid) -> usize {
        self.view
            .read()
            .users()
            .filter(|u| u.user_id != user_id && !u.disabled && u.roles.contains(&Role::Admin))
            .count()
    }

    /// Applies `patch` to `user_id` on behalf of `by` (the caller's user id).
    pub async fn update_user(
        &self,
        by: Uuid,
        user_id: Uuid,
        patch: UserPatch,
        meta: EventMeta,
    ) -> Result<UserRow, IdentityError> {
        let user = self
            .view
            .read()
            .user(&user_id)
            .cloned()
            .ok_or(IdentityError::NotFound("user"))?;
        let mut events = Vec::new();
        if let Some(roles) = patch.roles {
            events.push(IdentityEvent::RolesChanged {
                user_id,
                roles: check_roles(&roles)?,
            });
        }
        if let Some(disabled) = patch.disabled {
            events.push(IdentityEvent::DisabledChanged { user_id, disabled });
        }
        if let Some(pw) = patch.password {
            events.push(IdentityEvent::PasswordChanged {
                user_id,
                password_hash: hash_password(pw).await?,
            });
        }
        if events.is_empty() {
            return Err(invalid(
                "empty_patch",
                "give at least one of `roles`, `disabled`, `password`",
            ));
        }
        let loses_admin = events.iter().any(|e| match e {
            IdentityEvent::RolesChanged { roles, .. } => !roles.contains(&Role::Admin),
            IdentityEvent::DisabledChanged { disabled, .. } => *disabled,
            _ => false,
        });
        let is_admin = user.roles.contains(&Role::Admin) && !user.disabled;
        if loses_admin && is_admin && by == user_id {
            return Err(IdentityError::Conflict {
                code: "self_lockout",
                message: "admins cannot disable or demote themselves; ask another admin".into(),
            });
        }
        if loses_admin && is_admin && self.enabled_admins_other_than(user_id) == 0 {
            return Err(IdentityError::Conflict {
                code: "last_admin",
                message: "this is the last enabled admin; create another admin first".into(),
            });
        }
        self.record(
            (USER_STREAM, &user.username),
            ExpectedVersion::Any,
            &events,
            &meta,
        )
        .await?;
        self.view
            .read()
            .user(&user_id)
            .cloned()
            .ok_or(IdentityError::NotFound("user"))
    }

    pub async fn issue_key(
        &self,
        owner: &Principal,
        req: NewKeyRequest,
        meta: EventMeta,
    ) -> Result<(KeyRow, String), IdentityError> {
        let name = req.name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_KEY_NAME
            || name.chars().any(char::is_control)
        {
            return Err(invalid(
                "invalid_name",
                format!("key names are 1-{MAX_KEY_NAME} printable characters"),
            ));
        }
        let roles = match req.roles {
            None => None,
            Some(r) => {
                let r = check_roles(&r)?;
                // A key made with a key stays within that key's own ceiling too.
                let cap = owner.ceiling.as_deref().unwrap_or(&owner.roles);
                Some(
                    rbac::narrow(cap, &r)
                        .filter(|r| rbac::narrow(&owner.roles, r).is_some())
                        .ok_or_else(|| {
                            IdentityError::Forbidden(
                                "a key cannot have a role its owner lacks".into(),
                            )
                        })?,
                )
            }
        };
        if req.rate_limit_per_minute == Some(0) {
            return Err(invalid(
                "invalid_rate_limit",
                "rate_limit_per_minute must be at least 1 (omit it for the owner's limit)",
            ));
        }
        let expires_at = match req.expires_in_secs {
            None => None,
            Some(s) if (1..=MAX_KEY_LIFETIME_SECS).contains(&s) => {
                Some(Utc::now() + chrono::Duration::seconds(s as i64))
            }
            Some(_) => {
                return Err(invalid(
                    "invalid_expiry",
                    format!("expires_in_secs is 1 to {MAX_KEY_LIFETIME_SECS}"),
                ))
            }
        };
        let key = apikey::generate();
        let row = KeyRow {
            key_id: key.key_id,
            user_id: owner.user_id,
            name: name.to_owned(),
            roles,
            secret_hash: key.secret_hash,
            rate_limit_per_minute: req.rate_limit_per_minute,
            expires_at,
            created_at: Utc::now(),
            revoked_at: None,
        };
        let ev = IdentityEvent::KeyIssued {
            key_id: row.key_id,
            user_id: row.user_id,
            name: row.name.clone(),
            roles: row.roles.clone(),
            secret_hash: row.secret_hash.clone(),
            rate_limit_per_minute: row.rate_limit_per_minute,
            expires_at: row.expires_at,
        };
        let stream_id = key.key_id.to_string();
        self.record(
            (KEY_STREAM, &stream_id),
            ExpectedVersion::NoStream,
            &[ev],
            &meta,
        )
        .await?;
        let row = self.view.read().key(&key.key_id).cloned().unwrap_or(row);
        Ok((row, key.token))
    }

    /// Keys the caller may see: their own, or every key with `keys:all`.
    pub fn list_keys(&self, p: &Principal) -> Vec<KeyRow> {
        let all = p.can(Permission::KeysAll);
        let mut keys: Vec<KeyRow> = self
            .view
            .read()
            .keys()
            .filter(|k| all || k.user_id == p.user_id)
            .cloned()
            .collect();
        keys.sort_by_key(|k| k.key_id);
        keys
    }

    pub async fn revoke_key(
        &self,
        p: &Principal,
        key_id: Uuid,
        meta: EventMeta,
    ) -> Result<(), IdentityError> {
        let key = self
            .view
            .read()
            .key(&key_id)
            .cloned()
            // Someone else's key is "not found", so ids cannot be probed.
            .filter(|k| k.user_id == p.user_id || p.can(Permission::KeysAll))
            .ok_or(IdentityError::NotFound("key"))?;
        if key.revoked_at.is_some() {
            return Ok(());
        }
        let ev = IdentityEvent::KeyRevoked {
            key_id,
            user_id: key.user_id,
        };
        let stream_id = key_id.to_string();
        self.record((KEY_STREAM, &stream_id), ExpectedVersion::Any, &[ev], &meta)
            .await?;
        Ok(())
    }

    /// On a fresh installation, creates `admin`. Returns the password when it generated one.
    pub async fn bootstrap_admin(
        &self,
        password: Option<String>,
    ) -> Result<Option<String>, IdentityError> {
        if !self.view.read().is_empty() {
            return Ok(None);
        }
        let generated = password.is_none();
        let pw = password.unwrap_or_else(password::generate);
        let meta = EventMeta {
            actor: Some("system".into()),
            ..Default::default()
        };
        match self
            .create_user("admin", pw.clone(), &[Role::Admin], meta)
            .await
        {
            Ok(_) => Ok(generated.then_some(pw)),
            // Another edge created it first.
            Err(IdentityError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
