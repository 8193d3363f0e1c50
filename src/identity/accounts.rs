//! Accounts: creating and changing users, issuing and revoking API keys, the first admin.

use chrono::Utc;
use revo_events::directory::{KeyRow, UserRow};
use revo_events::family::identity::{valid_username, KEY_STREAM, USER_STREAM};
use revo_events::{
    AppendRequest, EventFamily, EventMeta, EventStore, ExpectedVersion, IdentityEvent, Role,
    StoreError,
};
use uuid::Uuid;

use super::errors::{invalid, AuthError, IdentityError};
use super::password::Hasher;
use super::principal::{Principal, Via};
use super::rbac::{self, Permission};
use super::{apikey, password, Identity};

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
    hasher: &Hasher,
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
        password_hash: hasher.hash(password).await?,
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

impl Identity {
    pub async fn create_user(
        &self,
        username: &str,
        password: String,
        roles: &[Role],
        meta: EventMeta,
    ) -> Result<UserRow, IdentityError> {
        let ev = new_user(&self.hasher, username, password, roles).await?;
        let IdentityEvent::UserCreated { user_id, .. } = &ev else {
            return Err(IdentityError::Internal("not a user.created event".into()));
        };
        let user_id = *user_id;
        match self
            .record(
                (USER_STREAM, username),
                ExpectedVersion::NoStream,
                &[ev],
                &meta,
            )
            .await
        {
            Ok(_) => {}
            Err(IdentityError::Store(StoreError::Conflict { .. })) => {
                return Err(IdentityError::Conflict {
                    code: "username_taken",
                    message: format!("a user named `{username}` already exists"),
                })
            }
            Err(e) => return Err(e),
        }
        self.user(&user_id)
            .ok_or_else(|| IdentityError::Internal("a created user is not visible".into()))
    }

    fn enabled_admins_other_than(&self, user_id: Uuid) -> usize {
        self.users()
            .iter()
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
        let user = self.user(&user_id).ok_or(IdentityError::NotFound("user"))?;
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
                password_hash: self.hasher.hash(pw).await?,
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
        self.user(&user_id).ok_or(IdentityError::NotFound("user"))
    }

    /// Issues a key for `owner`. A key made with a key is that key's child: it never gets
    /// more roles, a higher rate limit or a later expiry than its parent, and revoking the
    /// parent revokes it.
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
        let parent = match owner.via {
            Via::Key { key_id } => Some(
                self.find(|d| d.key(&key_id).cloned())
                    .ok_or(IdentityError::Auth(AuthError::KeyUnknown))?,
            ),
            Via::Token { .. } => None,
        };
        let roles = match req.roles {
            // Without `roles`, a child inherits its parent's set (never the owner's full
            // roles); a key made with a token follows the owner's roles as they change.
            None => parent.as_ref().and_then(|p| p.roles.clone()),
            Some(r) => {
                let r = check_roles(&r)?;
                // Within the owner's current roles and, for a child, its parent's too.
                let cap = owner.ceiling.as_deref().unwrap_or(&owner.roles);
                Some(
                    rbac::narrow(cap, &r)
                        .filter(|r| rbac::narrow(&owner.roles, r).is_some())
                        .ok_or_else(|| {
                            IdentityError::Forbidden(
                                "a key cannot have a role its owner (or parent key) lacks".into(),
                            )
                        })?,
                )
            }
        };
        let rate_limit_per_minute = match req.rate_limit_per_minute {
            Some(0) => {
                return Err(invalid(
                    "invalid_rate_limit",
                    "rate_limit_per_minute must be at least 1 (omit it for the owner's limit)",
                ))
            }
            // The caller's own limit (a user's, or the parent key's) is the most a key gets.
            Some(n) if owner.rate_limit > 0 && n > owner.rate_limit => {
                return Err(invalid(
                    "invalid_rate_limit",
                    format!(
                        "rate_limit_per_minute is at most {} (your own limit)",
                        owner.rate_limit
                    ),
                ))
            }
            Some(n) => Some(n),
            None => parent.as_ref().and_then(|p| p.rate_limit_per_minute),
        };
        let now = Utc::now();
        let requested = match req.expires_in_secs {
            None => None,
            Some(s) if (1..=MAX_KEY_LIFETIME_SECS).contains(&s) => {
                Some(now + chrono::Duration::seconds(s as i64))
            }
            Some(_) => {
                return Err(invalid(
                    "invalid_expiry",
                    format!("expires_in_secs is 1 to {MAX_KEY_LIFETIME_SECS}"),
                ))
            }
        };
        let expires_at = match (parent.as_ref().and_then(|p| p.expires_at), requested) {
            (Some(cap), Some(e)) if e > cap => {
                return Err(IdentityError::Forbidden(format!(
                    "a key cannot outlive the key that creates it (which expires at {cap})"
                )))
            }
            (Some(cap), None) => Some(cap),
            (_, e) => e,
        };
        // One issue at a time on this edge, so the count below cannot be raced here; edges
        // racing each other can overshoot by one key each (docs/api.md).
        let _one = self.key_issue.lock().await;
        let active = self
            .keys()
            .iter()
            .filter(|k| {
                k.user_id == owner.user_id
                    && k.revoked_at.is_none()
                    && k.expires_at.is_none_or(|e| e > now)
            })
            .count();
        if active >= self.max_keys_per_user {
            return Err(IdentityError::Conflict {
                code: "too_many_keys",
                message: format!(
                    "a user holds at most {} active keys; revoke one first",
                    self.max_keys_per_user
                ),
            });
        }
        let key = apikey::generate();
        let ev = IdentityEvent::KeyIssued {
            key_id: key.key_id,
            user_id: owner.user_id,
            name: name.to_owned(),
            roles,
            secret_hash: key.secret_hash,
            rate_limit_per_minute,
            expires_at,
            parent_key_id: parent.map(|p| p.key_id),
        };
        let stream_id = key.key_id.to_string();
        self.record(
            (KEY_STREAM, &stream_id),
            ExpectedVersion::NoStream,
            &[ev],
            &meta,
        )
        .await?;
        let row = self
            .find(|d| d.key(&key.key_id).cloned())
            .ok_or_else(|| IdentityError::Internal("an issued key is not visible".into()))?;
        Ok((row, key.token))
    }

    /// Keys the caller may see: their own, or every key with `keys:all`.
    pub fn list_keys(&self, p: &Principal) -> Vec<KeyRow> {
        let all = p.can(Permission::KeysAll);
        let mut keys: Vec<KeyRow> = self
            .keys()
            .into_iter()
            .filter(|k| all || k.user_id == p.user_id)
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
            .find(|d| d.key(&key_id).cloned())
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

    /// On a fresh installation, creates `admin`: `None` when users exist already (or another
    /// edge created it first), else the new admin's id and the password if it generated one.
    pub async fn bootstrap_admin(
        &self,
        password: Option<String>,
    ) -> Result<Option<(uuid::Uuid, Option<String>)>, IdentityError> {
        if !self.users().is_empty() {
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
            Ok(u) => Ok(Some((u.user_id, generated.then_some(pw)))),
            // Another edge created it first.
            Err(IdentityError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
