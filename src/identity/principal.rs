//! Who is calling: an authenticated principal, and the request budgets of roles.

use revo_events::Role;
use uuid::Uuid;

use super::rbac::{self, Permission};

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
    /// Requests per minute of this credential (0: unlimited): the user's, or a key's own
    /// (never above its owner's).
    pub rate_limit: u32,
    /// Requests per minute of the user across every credential (0: unlimited).
    pub user_rate_limit: u32,
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
}

/// The tighter of two limits, where 0 means unlimited.
pub fn tighter(a: u32, b: u32) -> u32 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
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
            // A read-only role: the viewer's limit.
            Role::Viewer | Role::Auditor => self.viewer,
        };
        if roles.iter().any(|r| of(r) == 0) {
            return 0;
        }
        roles.iter().map(of).max().unwrap_or(1)
    }
}
