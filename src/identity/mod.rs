//! Identity: users, passwords, tokens, API keys, roles and rate limits.
//!
//! Every change is an `identity` event appended to the store; the user directory is the `users`
//! projection, which each edge keeps folded in memory ([`LiveView`]) so that authenticating a
//! request touches no database. A write waits until this edge's view has folded it, so the next
//! request sees it; other edges see it as soon as their view follows the store (milliseconds).

mod accounts;
pub mod apikey;
mod errors;
pub mod gossip;
pub mod password;
mod principal;
pub mod ratelimit;
pub mod rbac;
pub mod throttle;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use revo_actors::LiveView;
use revo_events::identity::USER_STREAM;
use revo_events::{
    AppendRequest, Directory, EventFamily, EventMeta, EventStore, ExpectedVersion, IdentityEvent,
};
use tokio_util::task::TaskTracker;

pub use self::accounts::{
    append_new_user, new_user, NewKeyRequest, UserPatch, MAX_KEY_LIFETIME_SECS, MAX_KEY_NAME,
};
use self::errors::invalid;
pub use self::errors::{AuthError, IdentityError};
pub use self::principal::{Principal, RoleLimits, Via};
use self::ratelimit::{Decision, RateLimiter};
use self::throttle::LoginThrottle;
use self::token::TokenKeys;

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
}
