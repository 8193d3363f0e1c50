//! Role-based access control: the one permission matrix. Every route names the permission it
//! needs in its OpenAPI `security` requirement; the edge's access middleware checks it here, and
//! `docs/api.md` prints the same matrix (a test compares the two against the running server).

use revo_events::Role;

/// What an operation needs. The string form is the OpenAPI scope of the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read one's own account; log out.
    SelfRead,
    /// List and read every user.
    UsersRead,
    /// Create users; change roles, passwords, disabled.
    UsersWrite,
    /// List one's own API keys.
    KeysRead,
    /// Issue and revoke one's own API keys.
    KeysWrite,
    /// See and revoke every user's keys (a data-level widening of the two above).
    KeysAll,
    /// Generate text with a model.
    Generate,
    /// Operational detail: `/health/details` (internal errors, hosts, paths).
    SystemRead,
    /// Real-time rooms: `/rooms` and the WebSocket (what one may do inside a room is the
    /// room's own owner / member / viewer role).
    Rooms,
    /// Read one's own workflows and runs (administrators, with `users:read`, everyone's).
    WorkflowsRead,
    /// Create, change and run workflows; cancel, approve, reject and retry one's runs.
    WorkflowsWrite,
    /// Read the audit log (`GET /audit`, the `audit` WebSocket topic).
    AuditRead,
}

impl Permission {
    pub const ALL: [Permission; 12] = [
        Permission::SelfRead,
        Permission::UsersRead,
        Permission::UsersWrite,
        Permission::KeysRead,
        Permission::KeysWrite,
        Permission::KeysAll,
        Permission::Generate,
        Permission::SystemRead,
        Permission::Rooms,
        Permission::WorkflowsRead,
        Permission::WorkflowsWrite,
        Permission::AuditRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::SelfRead => "self:read",
            Permission::UsersRead => "users:read",
            Permission::UsersWrite => "users:write",
            Permission::KeysRead => "keys:read",
            Permission::KeysWrite => "keys:write",
            Permission::KeysAll => "keys:all",
            Permission::Generate => "generate",
            Permission::SystemRead => "system:read",
            Permission::Rooms => "rooms",
            Permission::WorkflowsRead => "workflows:read",
            Permission::WorkflowsWrite => "workflows:write",
            Permission::AuditRead => "audit:read",
        }
    }

    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// The matrix.
pub fn role_allows(role: Role, perm: Permission) -> bool {
    use Permission::*;
    match role {
        Role::Admin => true,
        Role::Developer => matches!(
            perm,
            SelfRead | KeysRead | KeysWrite | Generate | Rooms | WorkflowsRead | WorkflowsWrite
        ),
        Role::Viewer => matches!(perm, SelfRead | KeysRead | Rooms | WorkflowsRead),
        // The audit log and one's own account (to sign out), nothing else.
        Role::Auditor => matches!(perm, SelfRead | AuditRead),
    }
}

pub fn allows(roles: &[Role], perm: Permission) -> bool {
    roles.iter().any(|r| role_allows(*r, perm))
}

/// Whether `role` grants nothing beyond what `owner` holds.
pub fn within(owner: &[Role], role: Role) -> bool {
    Permission::ALL
        .into_iter()
        .all(|p| !role_allows(role, p) || allows(owner, p))
}

/// The roles a key may carry: `requested`, if none grants more than the owner holds.
pub fn narrow(owner: &[Role], requested: &[Role]) -> Option<Vec<Role>> {
    requested
        .iter()
        .all(|r| within(owner, *r))
        .then(|| requested.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
    }

    #[test]
    fn keys_never_exceed_their_owner() {
        assert_eq!(narrow(&[Role::Developer], &[Role::Admin]), None);
        assert_eq!(narrow(&[Role::Viewer], &[Role::Developer]), None);
        assert_eq!(
            narrow(&[Role::Developer], &[Role::Viewer]),
            Some(vec![Role::Viewer])
        );
        assert_eq!(
            narrow(&[Role::Admin], &[Role::Developer, Role::Viewer]),
            Some(vec![Role::Developer, Role::Viewer])
        );
    }
}
