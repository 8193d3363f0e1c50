//! Identity: users, passwords, tokens, API keys, roles and rate limits.
//!
//! Every change is an `identity` event appended to the store; the user directory is the `users`
//! projection, which each edge keeps folded in memory ([`LiveView`]) so that authenticating a
//! request touches no database. A write waits until this edge's view has folded it, so the next
//! request sees it; other edges see it as soon as their view follows the store (milliseconds).

mod accounts;
pub mod apikey;
mod errors;
mod overlay;
pub mod password;
mod principal;
pub mod rbac;
pub mod throttle;
pub mod ticket;
pub mod token;

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use revo_actors::LiveView;
use revo_events::directory::{KeyRow, UserRow};
use revo_events::family::identity::USER_STREAM;
use revo_events::{
    AppendRequest, Directory, EventFamily, EventMeta, EventStore, ExpectedVersion, IdentityEvent,
};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use self::accounts::{
    append_new_user, new_user, NewKeyRequest, UserPatch, MAX_KEY_LIFETIME_SECS, MAX_KEY_NAME,
};
use self::errors::invalid;
pub use self::errors::{AuthError, IdentityError};
use self::overlay::Overlay;
use self::password::Hasher;
pub use self::principal::{tighter, Principal, RoleLimits, Via};
use self::throttle::LoginThrottle;
use self::token::TokenKeys;
use revo_actors::rate_limit::{Decision, RateLimiter};

pub struct IdentitySettings {
    pub tokens: TokenKeys,
    /// One-use WebSocket tickets, keyed from the JWT signing secret.
    pub tickets: ticket::Tickets,
    pub limits: RoleLimits,
    pub throttle: LoginThrottle,
    pub hasher: Arc<Hasher>,
    /// Unrevoked, unexpired keys one user may hold.
    pub max_keys_per_user: usize,
}

pub struct Identity {
    store: Arc<dyn EventStore>,
    view: LiveView<Directory>,
    /// This edge's own writes until the view has folded them.
    overlay: Overlay,
    tokens: TokenKeys,
    tickets: ticket::Tickets,
    limits: RoleLimits,
    throttle: LoginThrottle,
    pub hasher: Arc<Hasher>,
    max_keys_per_user: usize,
    /// Serialises key issuing on this edge, so the per-user cap holds under parallel requests.
    key_issue: tokio::sync::Mutex<()>,
    /// Background appends run here, on the node's runtime: a request is served on one of the
    /// HTTP server's runtimes, which stop before the node drains its tasks.
    tasks: TaskTracker,
    runtime: tokio::runtime::Handle,
    pub limiter: Arc<RateLimiter>,
}

/// A successful login.
pub struct Login {
    pub token: String,
    pub expires_in: u64,
}

/// What authentication needs of a user row.
struct Caller {
    username: String,
    roles: Vec<revo_events::Role>,
    disabled: bool,
    tokens_valid_after: Option<DateTime<Utc>>,
}

impl Caller {
    fn of(u: &UserRow) -> Caller {
        Caller {
            username: u.username.clone(),
            roles: u.roles.clone(),
            disabled: u.disabled,
            tokens_valid_after: u.tokens_valid_after,
        }
    }
}

/// What authentication needs of a key row.
struct KeyCheck {
    matches: bool,
    user_id: Uuid,
    roles: Option<Vec<revo_events::Role>>,
    revoked: bool,
    expires_at: Option<DateTime<Utc>>,
    rate_limit: Option<u32>,
}

/// When a token was issued, to the millisecond: its `jti` is a UUID v7 minted at issue
/// (`iat` has only seconds).
fn issued_at(jti: &Uuid, iat: i64) -> DateTime<Utc> {
    jti.get_timestamp()
        .and_then(|t| {
            let (secs, nanos) = t.to_unix();
            DateTime::from_timestamp(secs as i64, nanos)
        })
        .or_else(|| DateTime::from_timestamp(iat, 0))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl Identity {
    /// Call on the node's runtime: background appends are spawned there.
    pub fn new(
        store: Arc<dyn EventStore>,
        view: LiveView<Directory>,
        settings: IdentitySettings,
        node_id: &str,
        tasks: TaskTracker,
    ) -> Self {
        Identity {
            runtime: tokio::runtime::Handle::current(),
            store,
            view,
            overlay: Overlay::default(),
            tokens: settings.tokens,
            tickets: settings.tickets,
            limits: settings.limits,
            throttle: settings.throttle,
            hasher: settings.hasher,
            max_keys_per_user: settings.max_keys_per_user,
            key_issue: tokio::sync::Mutex::new(()),
            tasks,
            limiter: Arc::new(RateLimiter::new(node_id)),
        }
    }

    /// The user directory as this edge's view folds it (for actors that judge credentials
    /// later: budgets, workflow runs).
    pub fn directory(&self) -> &LiveView<Directory> {
        &self.view
    }

    /// A key and the keys above it, with this edge's own recent writes.
    pub fn key_lineage(&self, key: Uuid) -> Vec<Uuid> {
        self.find(|d| d.key(&key).map(|_| d.key_lineage(key)))
            .unwrap_or_else(|| vec![key])
    }

    /// Why the user directory cannot be trusted now (its view halted), if it cannot.
    pub fn problem(&self) -> Option<String> {
        self.view.halted()
    }

    /// Looks something up in this edge's own recent writes, then in the view.
    fn find<T>(&self, f: impl Fn(&Directory) -> Option<T>) -> Option<T> {
        if let Some(o) = self.overlay.current(|| self.view.position()) {
            if let Some(v) = f(&o) {
                return Some(v);
            }
        }
        f(&self.view.read())
    }

    pub fn user(&self, id: &Uuid) -> Option<UserRow> {
        self.find(|d| d.user(id).cloned())
    }

    pub fn user_by_name(&self, name: &str) -> Option<UserRow> {
        self.find(|d| d.user_by_name(name).cloned())
    }

    /// Every user, with this edge's own changes.
    pub fn users(&self) -> Vec<UserRow> {
        self.merged(|d| d.users().map(|u| (u.user_id, u.clone())).collect())
    }

    /// Every key, with this edge's own changes.
    pub fn keys(&self) -> Vec<KeyRow> {
        self.merged(|d| d.keys().map(|k| (k.key_id, k.clone())).collect())
    }

    fn merged<T>(&self, rows: impl Fn(&Directory) -> Vec<(Uuid, T)>) -> Vec<T> {
        let mut all: std::collections::HashMap<Uuid, T> =
            rows(&self.view.read()).into_iter().collect();
        if let Some(o) = self.overlay.current(|| self.view.position()) {
            all.extend(rows(&o));
        }
        all.into_values().collect()
    }

    fn is_revoked(&self, jti: &Uuid) -> bool {
        self.find(|d| d.is_revoked(jti).then_some(())).is_some()
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
        // A directory that stopped following the log may be missing revocations: refuse
        // rather than trust it.
        if self.view.halted().is_some() {
            return Err(AuthError::Unavailable);
        }
        if apikey::looks_like_key(credential) {
            return self.authenticate_key(credential);
        }
        let claims = self.tokens.verify(credential)?;
        if self.is_revoked(&claims.jti) {
            return Err(AuthError::TokenRevoked);
        }
        // Only what the principal needs is copied out of the directory (this runs for every
        // request).
        let user = self.enabled_user(&claims.sub)?;
        // A password change or "log out everywhere" ends the tokens issued before it.
        if user
            .tokens_valid_after
            .is_some_and(|t| issued_at(&claims.jti, claims.iat) < t)
        {
            return Err(AuthError::TokenRevoked);
        }
        let limit = self.limits.for_roles(&user.roles);
        Ok(Principal {
            user_id: claims.sub,
            username: user.username,
            roles: user.roles,
            ceiling: None,
            via: Via::Token {
                jti: claims.jti,
                expires_at: claims.exp,
            },
            rate_limit: limit,
            user_rate_limit: limit,
        })
    }

    /// What authentication needs of a credential's user, who must exist and be enabled.
    fn enabled_user(&self, id: &Uuid) -> Result<Caller, AuthError> {
        let user = self
            .find(|d| d.user(id).map(Caller::of))
            .ok_or(AuthError::UserUnknown)?;
        if user.disabled {
            return Err(AuthError::UserDisabled);
        }
        Ok(user)
    }

    fn authenticate_key(&self, credential: &str) -> Result<Principal, AuthError> {
        let (key_id, secret) = apikey::parse(credential).ok_or(AuthError::KeyUnknown)?;
        // The secret is compared inside the lookup, so its hash is never copied.
        let key = self
            .find(|d| {
                d.key(&key_id).map(|k| KeyCheck {
                    matches: apikey::matches(secret, &k.secret_hash),
                    user_id: k.user_id,
                    roles: k.roles.clone(),
                    revoked: k.revoked_at.is_some(),
                    expires_at: k.expires_at,
                    rate_limit: k.rate_limit_per_minute,
                })
            })
            .ok_or(AuthError::KeyUnknown)?;
        if !key.matches {
            return Err(AuthError::KeyUnknown);
        }
        if key.revoked {
            return Err(AuthError::KeyRevoked);
        }
        if key.expires_at.is_some_and(|e| e <= Utc::now()) {
            return Err(AuthError::KeyExpired);
        }
        let user = self.enabled_user(&key.user_id)?;
        let owner_limit = self.limits.for_roles(&user.roles);
        let (roles, ceiling) = match key.roles {
            Some(own) => (own, Some(user.roles)),
            None => (user.roles, None),
        };
        // A key's own limit never exceeds its owner's (checked at issue, and again here in
        // case the owner's roles changed since).
        let rate_limit = key
            .rate_limit
            .map_or(owner_limit, |own| tighter(own, owner_limit));
        Ok(Principal {
            user_id: key.user_id,
            username: user.username,
            roles,
            ceiling,
            via: Via::Key { key_id },
            rate_limit,
            user_rate_limit: owner_limit,
        })
    }

    /// Counts the request against the credential's bucket and, for keys, the owner's.
    pub fn rate_limit(&self, p: &Principal) -> Decision {
        let user = format!("user:{}", p.user_id);
        match &p.via {
            Via::Token { .. } => self.limiter.check_all(&[(&user, p.rate_limit)]),
            Via::Key { key_id } => {
                let key = format!("key:{key_id}");
                self.limiter
                    .check_all(&[(&key, p.rate_limit), (&user, p.user_rate_limit)])
            }
        }
    }

    /// Appends identity events and makes them visible on this edge at once (the overlay),
    /// whatever the view's lag.
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
            .append(AppendRequest::new(
                stream.0,
                stream.1,
                expected,
                new.clone(),
            ))
            .await?;
        let pairs: Vec<_> = events.iter().cloned().zip(new).collect();
        self.overlay.record(
            &self.view.read(),
            stream,
            appended.stream_version,
            appended.last_position,
            &pairs,
        );
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
        let append = async move {
            if let Err(e) = store.append(req).await {
                tracing::warn!(error = %e, "could not record a failed login");
            }
        };
        self.tasks.spawn_on(append, &self.runtime);
    }

    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: Option<String>,
        meta: EventMeta,
    ) -> Result<Login, IdentityError> {
        let began = Instant::now();
        let addr = client.as_deref();
        // A name no user can have shares one throttle entry with every other such name, so
        // invented names cannot fill the throttle's map (they still cost the same hashing).
        let throttled = if revo_events::family::identity::valid_username(username) {
            username
        } else {
            throttle::INVALID_NAME
        };
        // Counted before the password is checked, so a parallel burst cannot slip past.
        self.throttle
            .begin(throttled, addr, began)
            .map_err(IdentityError::LoginThrottled)?;
        let user = self.user_by_name(username);
        // Unknown names cost the same argon2 work as known ones.
        let hash = user.as_ref().map_or_else(
            || self.hasher.dummy_hash().to_owned(),
            |u| u.password_hash.clone(),
        );
        let ok = match self.hasher.verify(hash, password.to_owned()).await {
            Ok(ok) => ok,
            Err(e) => {
                self.throttle.forget(throttled, addr, began);
                return Err(e.into());
            }
        };
        let Some(user) = user.filter(|_| ok) else {
            if let Some(user_id) = self.user_by_name(username).map(|u| u.user_id) {
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
        self.throttle.succeeded(throttled, addr, began);
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

    /// Ends every token of the caller's user ("log out everywhere"). API keys stay.
    pub async fn logout_all(&self, p: &Principal, meta: EventMeta) -> Result<(), IdentityError> {
        let ev = IdentityEvent::SessionsEnded { user_id: p.user_id };
        self.record(
            (USER_STREAM, &p.username),
            ExpectedVersion::Any,
            &[ev],
            &meta,
        )
        .await?;
        Ok(())
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
}
