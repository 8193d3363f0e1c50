//! Accounts: creating and changing users, issuing and revoking API keys, the first admin.

use chrono::Utc;
use revo_events::directory::{KeyRow, UserRow};
use revo_events::identity::{valid_username, KEY_STREAM, USER_STREAM};
use revo_events::{
    AppendRequest, EventFamily, EventMeta, EventStore, ExpectedVersion, IdentityEvent, Role,
    StoreError,
};
use uuid::Uuid;

use super::errors::{invalid, IdentityError};
use super::principal::Principal;
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
