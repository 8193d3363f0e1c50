//! The `users` projection: the user directory, the key store and the revoked tokens, folded from
//! `identity` events. The edge keeps one in memory for authentication; the runner persists it for
//! `revo replay verify users`.
//!
//! Rows: `user:<user_id>`, `key:<key_id>`, `revoked:<jti>`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::RecordedEvent;
use crate::family::identity::{IdentityEvent, Role, KEY_STREAM, USER_STREAM};
use crate::family::EventFamily;
use crate::projection::{Projection, ProjectionError, Rows};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRow {
    pub user_id: Uuid,
    pub username: String,
    pub roles: Vec<Role>,
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// Failed logins since the last success.
    pub failed_logins: u32,
    /// The stream version this row reflects (for expected-version writes).
    pub version: i64,
    /// Tokens issued before this instant are no longer accepted (set by a password change or
    /// "log out everywhere").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_valid_after: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRow {
    pub key_id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub roles: Option<Vec<Role>>,
    pub secret_hash: String,
    pub rate_limit_per_minute: Option<u32>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key that created this one (revoking it revokes this key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_key_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedRow {
    pub jti: Uuid,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// Looked up on every authenticated request: foldhash rather than SipHash.
type Fast = foldhash::fast::RandomState;

#[derive(Debug, Default, Clone)]
pub struct Directory {
    users: HashMap<Uuid, UserRow, Fast>,
    by_name: HashMap<String, Uuid, Fast>,
    keys: HashMap<Uuid, KeyRow, Fast>,
    /// Keys created by each key, for cascading revocations.
    children: HashMap<Uuid, Vec<Uuid>, Fast>,
    revoked: HashMap<Uuid, RevokedRow, Fast>,
    /// Revocations by expiry, so expired ones are dropped in order.
    expiry: BTreeSet<(DateTime<Utc>, Uuid)>,
}

impl Directory {
    pub fn user(&self, id: &Uuid) -> Option<&UserRow> {
        self.users.get(id)
    }

    pub fn user_by_name(&self, name: &str) -> Option<&UserRow> {
        self.by_name.get(name).and_then(|id| self.users.get(id))
    }

    pub fn users(&self) -> impl Iterator<Item = &UserRow> {
        self.users.values()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn key(&self, id: &Uuid) -> Option<&KeyRow> {
        self.keys.get(id)
    }

    pub fn keys(&self) -> impl Iterator<Item = &KeyRow> {
        self.keys.values()
    }

    /// A key and the keys it was minted by, nearest first: a request through the key is held
    /// to every one of their budgets. Keys this directory does not know end the walk.
    pub fn key_lineage(&self, key: Uuid) -> Vec<Uuid> {
        let mut out = vec![key];
        let mut at = key;
        // Bounded whatever the log holds (a parent is issued before its child, so no cycle
        // can be folded; the bound is for safety only).
        while let Some(p) = self.keys.get(&at).and_then(|k| k.parent_key_id) {
            if out.contains(&p) || out.len() >= 64 {
                break;
            }
            out.push(p);
            at = p;
        }
        out
    }

    pub fn is_revoked(&self, jti: &Uuid) -> bool {
        self.revoked.contains_key(jti)
    }

    /// Active (unrevoked, unexpired at `now`) keys of a user.
    pub fn active_keys_of(&self, user_id: &Uuid, now: DateTime<Utc>) -> usize {
        self.keys
            .values()
            .filter(|k| {
                k.user_id == *user_id
                    && k.revoked_at.is_none()
                    && k.expires_at.is_none_or(|e| e > now)
            })
            .count()
    }

    /// Whether the directory holds the row `user:<id>` or `key:<id>`.
    pub fn has_row(&self, key: &str) -> bool {
        let Some((kind, id)) = key.split_once(':') else {
            return false;
        };
        let Ok(id) = id.parse::<Uuid>() else {
            return false;
        };
        match kind {
            "user" => self.users.contains_key(&id),
            "key" => self.keys.contains_key(&id),
            _ => false,
        }
    }

    /// Keys created from `key_id`, transitively.
    pub fn descendants(&self, key_id: &Uuid) -> Vec<Uuid> {
        let mut out = Vec::new();
        let mut todo = vec![*key_id];
        while let Some(id) = todo.pop() {
            if let Some(kids) = self.children.get(&id) {
                out.extend(kids.iter().copied());
                todo.extend(kids.iter().copied());
            }
        }
        out
    }

    /// Copies the rows named by `keys` (`user:<id>`, `key:<id>`) from `from` into this
    /// directory, replacing what it had for them. Rows `from` lacks are left alone.
    pub fn copy_rows<'a>(&mut self, from: &Directory, keys: impl IntoIterator<Item = &'a str>) {
        for key in keys {
            let Some((kind, id)) = key.split_once(':') else {
                continue;
            };
            let Ok(id) = id.parse::<Uuid>() else { continue };
            match kind {
                "user" => {
                    if let Some(r) = from.users.get(&id) {
                        self.by_name.insert(r.username.clone(), id);
                        self.users.insert(id, r.clone());
                    }
                }
                "key" => {
                    if let Some(r) = from.keys.get(&id) {
                        if let Some(p) = r.parent_key_id {
                            let kids = self.children.entry(p).or_default();
                            if !kids.contains(&id) {
                                kids.push(id);
                            }
                        }
                        self.keys.insert(id, r.clone());
                    }
                }
                _ => {}
            }
        }
    }

    /// Marks `key_id` and every key created from it (transitively) revoked at `at`.
    fn revoke_tree(&mut self, key_id: Uuid, at: DateTime<Utc>, dirty: &mut BTreeSet<String>) {
        let mut todo = vec![key_id];
        while let Some(id) = todo.pop() {
            if let Some(k) = self.keys.get_mut(&id) {
                if k.revoked_at.is_none() {
                    k.revoked_at = Some(at);
                    dirty.insert(format!("key:{id}"));
                }
            }
            if let Some(kids) = self.children.get(&id) {
                todo.extend(kids.iter().copied());
            }
        }
    }

    fn user_mut(
        &mut self,
        event: &RecordedEvent,
        id: &Uuid,
    ) -> Result<&mut UserRow, ProjectionError> {
        let row = self
            .users
            .get_mut(id)
            .ok_or_else(|| ProjectionError::Decode {
                event_id: event.envelope.event_id,
                position: event.position,
                source: crate::DecodeError::Corrupt {
                    event_type: event.envelope.event_type.clone(),
                    schema: event.envelope.schema,
                    reason: format!("user {id} does not exist"),
                },
            })?;
        row.updated_at = event.envelope.occurred_at;
        row.version = event.envelope.version;
        Ok(row)
    }

    /// Drops revocations of tokens that expired before `now` (event time, so every fold agrees).
    fn prune(&mut self, now: DateTime<Utc>, dirty: &mut BTreeSet<String>) {
        while let Some(&(exp, jti)) = self.expiry.first() {
            if exp >= now {
                break;
            }
            self.expiry.pop_first();
            self.revoked.remove(&jti);
            dirty.insert(format!("revoked:{jti}"));
        }
    }
}

fn bad_row(key: &str, e: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::BadRow {
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

impl Projection for Directory {
    fn name(&self) -> &'static str {
        "users"
    }

    fn apply(
        &mut self,
        event: &RecordedEvent,
        dirty: &mut BTreeSet<String>,
    ) -> Result<(), ProjectionError> {
        let st = event.envelope.stream_type.as_str();
        if st != USER_STREAM && st != KEY_STREAM {
            return Ok(());
        }
        let at = event.envelope.occurred_at;
        let decoded = IdentityEvent::decode(&event.envelope)
            .map_err(|e| ProjectionError::decode(event, e))?;
        match decoded {
            IdentityEvent::UserCreated {
                user_id,
                username,
                roles,
                password_hash,
            } => {
                self.by_name.insert(username.clone(), user_id);
                self.users.insert(
                    user_id,
                    UserRow {
                        user_id,
                        username,
                        roles,
                        password_hash,
                        disabled: false,
                        created_at: at,
                        updated_at: at,
                        last_login_at: None,
                        failed_logins: 0,
                        version: event.envelope.version,
                        tokens_valid_after: None,
                    },
                );
                dirty.insert(format!("user:{user_id}"));
            }
            IdentityEvent::RolesChanged { user_id, roles } => {
                self.user_mut(event, &user_id)?.roles = roles;
                dirty.insert(format!("user:{user_id}"));
            }
            IdentityEvent::DisabledChanged { user_id, disabled } => {
                self.user_mut(event, &user_id)?.disabled = disabled;
                dirty.insert(format!("user:{user_id}"));
            }
            IdentityEvent::PasswordChanged {
                user_id,
                password_hash,
            } => {
                let row = self.user_mut(event, &user_id)?;
                row.password_hash = password_hash;
                // A new password ends every session opened with the old one.
                row.tokens_valid_after = Some(at);
                dirty.insert(format!("user:{user_id}"));
            }
            IdentityEvent::SessionsEnded { user_id } => {
                self.user_mut(event, &user_id)?.tokens_valid_after = Some(at);
                dirty.insert(format!("user:{user_id}"));
            }
            IdentityEvent::LoginSucceeded { user_id, .. } => {
                let row = self.user_mut(event, &user_id)?;
                row.last_login_at = Some(at);
                row.failed_logins = 0;
                dirty.insert(format!("user:{user_id}"));
            }
            IdentityEvent::LoginFailed { user_id, .. } => {
                let row = self.user_mut(event, &user_id)?;
                row.failed_logins = row.failed_logins.saturating_add(1);
                dirty.insert(format!("user:{user_id}"));
            }
            IdentityEvent::TokenRevoked {
                user_id,
                jti,
                expires_at,
            } => {
                self.user_mut(event, &user_id)?;
                dirty.insert(format!("user:{user_id}"));
                self.prune(at, dirty);
                if expires_at >= at {
                    self.expiry.insert((expires_at, jti));
                    self.revoked.insert(
                        jti,
                        RevokedRow {
                            jti,
                            user_id,
                            expires_at,
                        },
                    );
                    dirty.insert(format!("revoked:{jti}"));
                }
            }
            IdentityEvent::KeyIssued {
                key_id,
                user_id,
                name,
                roles,
                secret_hash,
                rate_limit_per_minute,
                expires_at,
                parent_key_id,
            } => {
                // A key created by a key revoked meanwhile (another edge) is born revoked.
                let parent_revoked = parent_key_id
                    .and_then(|p| self.keys.get(&p))
                    .is_some_and(|p| p.revoked_at.is_some());
                if let Some(p) = parent_key_id {
                    self.children.entry(p).or_default().push(key_id);
                }
                self.keys.insert(
                    key_id,
                    KeyRow {
                        key_id,
                        user_id,
                        name,
                        roles,
                        secret_hash,
                        rate_limit_per_minute,
                        expires_at,
                        created_at: at,
                        revoked_at: parent_revoked.then_some(at),
                        parent_key_id,
                    },
                );
                dirty.insert(format!("key:{key_id}"));
            }
            IdentityEvent::KeyRevoked { key_id, .. } => {
                self.revoke_tree(key_id, at, dirty);
            }
        }
        Ok(())
    }

    fn row(&self, key: &str) -> Option<serde_json::Value> {
        let (kind, id) = key.split_once(':')?;
        let id: Uuid = id.parse().ok()?;
        match kind {
            "user" => self
                .users
                .get(&id)
                .and_then(|r| serde_json::to_value(r).ok()),
            "key" => self
                .keys
                .get(&id)
                .and_then(|r| serde_json::to_value(r).ok()),
            "revoked" => self
                .revoked
                .get(&id)
                .and_then(|r| serde_json::to_value(r).ok()),
            _ => None,
        }
    }

    fn rows(&self) -> Rows {
        let mut rows = BTreeMap::new();
        let users = self
            .users
            .iter()
            .map(|(id, r)| (format!("user:{id}"), serde_json::to_value(r)));
        let keys = self
            .keys
            .iter()
            .map(|(id, r)| (format!("key:{id}"), serde_json::to_value(r)));
        let revoked = self
            .revoked
            .iter()
            .map(|(id, r)| (format!("revoked:{id}"), serde_json::to_value(r)));
        for (k, v) in users.chain(keys).chain(revoked) {
            if let Ok(v) = v {
                rows.insert(k, v);
            }
        }
        rows
    }

    fn load(&mut self, rows: Rows) -> Result<(), ProjectionError> {
        let mut fresh = Directory::default();
        for (key, doc) in rows {
            let kind = key.split_once(':').map_or("", |(k, _)| k);
            match kind {
                "user" => {
                    let r: UserRow = serde_json::from_value(doc).map_err(|e| bad_row(&key, e))?;
                    fresh.by_name.insert(r.username.clone(), r.user_id);
                    fresh.users.insert(r.user_id, r);
                }
                "key" => {
                    let r: KeyRow = serde_json::from_value(doc).map_err(|e| bad_row(&key, e))?;
                    if let Some(p) = r.parent_key_id {
                        fresh.children.entry(p).or_default().push(r.key_id);
                    }
                    fresh.keys.insert(r.key_id, r);
                }
                "revoked" => {
                    let r: RevokedRow =
                        serde_json::from_value(doc).map_err(|e| bad_row(&key, e))?;
                    fresh.expiry.insert((r.expires_at, r.jti));
                    fresh.revoked.insert(r.jti, r);
                }
                _ => return Err(bad_row(&key, "unknown row kind")),
            }
        }
        *self = fresh;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, EventMeta};

    fn recorded(
        position: i64,
        stream: (&str, &str),
        version: i64,
        ev: IdentityEvent,
    ) -> RecordedEvent {
        let new = ev.to_new_event(EventMeta::default()).unwrap();
        RecordedEvent {
            position,
            envelope: Envelope {
                event_id: new.event_id,
                stream_type: stream.0.into(),
                stream_id: stream.1.into(),
                version,
                event_type: new.event_type,
                schema: new.schema,
                occurred_at: new.occurred_at,
                meta: new.meta,
                payload: new.payload,
            },
        }
    }

    #[test]
    fn folds_users_keys_and_revocations_and_reloads_the_same() {
        let uid = Uuid::now_v7();
        let kid = Uuid::now_v7();
        let jti = Uuid::now_v7();
        let evs = vec![
            recorded(
                1,
                ("user", "ann"),
                1,
                IdentityEvent::UserCreated {
                    user_id: uid,
                    username: "ann".into(),
                    roles: vec![Role::Developer],
                    password_hash: "h1".into(),
                },
            ),
            recorded(
                2,
                ("user", "ann"),
                2,
                IdentityEvent::LoginFailed {
                    user_id: uid,
                    reason: "bad_password".into(),
                    client: None,
                },
            ),
            recorded(
                3,
                ("apikey", &kid.to_string()),
                1,
                IdentityEvent::KeyIssued {
                    key_id: kid,
                    user_id: uid,
                    name: "ci".into(),
                    roles: Some(vec![Role::Viewer]),
                    secret_hash: "s".into(),
                    rate_limit_per_minute: Some(10),
                    expires_at: None,
                    parent_key_id: None,
                },
            ),
            recorded(
                4,
                ("user", "ann"),
                3,
                IdentityEvent::TokenRevoked {
                    user_id: uid,
                    jti,
                    expires_at: Utc::now() + chrono::Duration::hours(1),
                },
            ),
            recorded(
                5,
                ("user", "ann"),
                4,
                IdentityEvent::DisabledChanged {
                    user_id: uid,
                    disabled: true,
                },
            ),
        ];
        let mut d = Directory::default();
        let mut dirty = BTreeSet::new();
        for e in &evs {
            d.apply(e, &mut dirty).unwrap();
        }
        let ann = d.user_by_name("ann").unwrap();
        assert!(ann.disabled);
        assert_eq!(ann.failed_logins, 1);
        assert_eq!(ann.version, 4);
        assert!(d.is_revoked(&jti));
        assert_eq!(d.key(&kid).unwrap().roles, Some(vec![Role::Viewer]));
        assert_eq!(dirty.len(), 3);

        let mut reloaded = Directory::default();
        reloaded.load(d.rows()).unwrap();
        assert_eq!(reloaded.rows(), d.rows());
        assert!(reloaded.is_revoked(&jti));
        assert_eq!(reloaded.user_by_name("ann").unwrap().user_id, uid);
    }

    #[test]
    fn expired_revocations_are_pruned_by_event_time() {
        let uid = Uuid::now_v7();
        let old = Uuid::now_v7();
        let new = Uuid::now_v7();
        let mut d = Directory::default();
        let mut dirty = BTreeSet::new();
        let create = recorded(
            1,
            ("user", "bo"),
            1,
            IdentityEvent::UserCreated {
                user_id: uid,
                username: "bo".into(),
                roles: vec![Role::Viewer],
                password_hash: "h".into(),
            },
        );
        d.apply(&create, &mut dirty).unwrap();
        let t0 = Utc::now();
        let mut first = recorded(
            2,
            ("user", "bo"),
            2,
            IdentityEvent::TokenRevoked {
                user_id: uid,
                jti: old,
                expires_at: t0 + chrono::Duration::seconds(1),
            },
        );
        first.envelope.occurred_at = t0;
        d.apply(&first, &mut dirty).unwrap();
        assert!(d.is_revoked(&old));
        let mut second = recorded(
            3,
            ("user", "bo"),
            3,
            IdentityEvent::TokenRevoked {
                user_id: uid,
                jti: new,
                expires_at: t0 + chrono::Duration::hours(1),
            },
        );
        second.envelope.occurred_at = t0 + chrono::Duration::seconds(10);
        d.apply(&second, &mut dirty).unwrap();
        assert!(!d.is_revoked(&old), "expired revocation kept");
        assert!(d.is_revoked(&new));
        assert!(dirty.contains(&format!("revoked:{old}")));
        assert!(d.row(&format!("revoked:{old}")).is_none());
    }

    fn key_issued(key_id: Uuid, user_id: Uuid, parent: Option<Uuid>) -> IdentityEvent {
        IdentityEvent::KeyIssued {
            key_id,
            user_id,
            name: "k".into(),
            roles: None,
            secret_hash: "s".into(),
            rate_limit_per_minute: None,
            expires_at: None,
            parent_key_id: parent,
        }
    }

    #[test]
    fn revoking_a_key_revokes_the_keys_it_created_before_and_after() {
        let uid = Uuid::now_v7();
        let (root, child, grandchild, late, other) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let mut d = Directory::default();
        let mut dirty = BTreeSet::new();
        let issue = |pos, id: Uuid, parent| {
            recorded(
                pos,
                ("apikey", &id.to_string()),
                1,
                key_issued(id, uid, parent),
            )
        };
        for e in [
            issue(1, root, None),
            issue(2, child, Some(root)),
            issue(3, grandchild, Some(child)),
            issue(4, other, None),
        ] {
            d.apply(&e, &mut dirty).unwrap();
        }
        let revoke = recorded(
            5,
            ("apikey", &root.to_string()),
            2,
            IdentityEvent::KeyRevoked {
                key_id: root,
                user_id: uid,
            },
        );
        d.apply(&revoke, &mut dirty).unwrap();
        for k in [root, child, grandchild] {
            assert!(d.key(&k).unwrap().revoked_at.is_some(), "{k} not revoked");
        }
        assert!(d.key(&other).unwrap().revoked_at.is_none());
        // Issued by the revoked key on an edge that had not heard yet: born revoked.
        d.apply(&issue(6, late, Some(child)), &mut dirty).unwrap();
        assert!(d.key(&late).unwrap().revoked_at.is_some());
        // A reload keeps the tree, so a later revocation still cascades.
        let mut reloaded = Directory::default();
        reloaded.load(d.rows()).unwrap();
        assert_eq!(reloaded.rows(), d.rows());
        assert_eq!(reloaded.children.get(&root), Some(&vec![child]));
        assert_eq!(d.active_keys_of(&uid, Utc::now()), 1);
    }

    #[test]
    fn a_password_change_or_sessions_ended_sets_the_token_cutoff() {
        let uid = Uuid::now_v7();
        let mut d = Directory::default();
        let mut dirty = BTreeSet::new();
        let create = recorded(
            1,
            ("user", "cy"),
            1,
            IdentityEvent::UserCreated {
                user_id: uid,
                username: "cy".into(),
                roles: vec![Role::Viewer],
                password_hash: "h".into(),
            },
        );
        d.apply(&create, &mut dirty).unwrap();
        assert_eq!(d.user(&uid).unwrap().tokens_valid_after, None);
        let mut change = recorded(
            2,
            ("user", "cy"),
            2,
            IdentityEvent::PasswordChanged {
                user_id: uid,
                password_hash: "h2".into(),
            },
        );
        let t = Utc::now();
        change.envelope.occurred_at = t;
        d.apply(&change, &mut dirty).unwrap();
        assert_eq!(d.user(&uid).unwrap().tokens_valid_after, Some(t));
        let mut ended = recorded(
            3,
            ("user", "cy"),
            3,
            IdentityEvent::SessionsEnded { user_id: uid },
        );
        let t2 = t + chrono::Duration::seconds(5);
        ended.envelope.occurred_at = t2;
        d.apply(&ended, &mut dirty).unwrap();
        assert_eq!(d.user(&uid).unwrap().tokens_valid_after, Some(t2));
    }
}
