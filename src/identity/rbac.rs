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
}

impl Permission {
    pub const ALL: [Permission; 6] = [
        Permission::SelfRead,
        Permission::UsersRead,
        Permission::UsersWrite,
        Permission::KeysRead,
        Permission::KeysWrite,
        Permission::KeysAll,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::SelfRead => "self:read",
            Permission::UsersRead => "users:read",
            Permission::UsersWrite => "users:write",
            Permission::KeysRead => "keys:read",
            Permission::KeysWrite => "keys:write",
            Permission::KeysAll => "keys:all",
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
        Role::Developer => matches!(perm, SelfRead | KeysRead | KeysWrite),
        Role::Viewer => matches!(perm, SelfRead | KeysRead),
    }
}

pub fn allows(roles: &[Role], perm: Permission) -> bool {
    roles.iter().any(|r| role_allows(*r, perm))
}

/// The roles a key may carry: those of `requested` the owner holds, or `None` if any is missing.
pub fn narrow(owner: &[Role], requested: &[Role]) -> Option<Vec<Role>> {
    requested
        .iter()
        .all(|r| owner.contains(r))
        .then(|| requested.to_vec())
}

/// Effective roles of a key: its own set, cut down to what the owner holds now.
pub fn effective(owner: &[Role], key: Option<&[Role]>) -> Vec<Role> {
    match key {
        None => owner.to_vec(),
        Some(k) => k.iter().copied().filter(|r| owner.contains(r)).collect(),
    }
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
        assert_eq!(
            narrow(&[Role::Admin, Role::Viewer], &[Role::Viewer]),
            Some(vec![Role::Viewer])
        );
        assert_eq!(
            effective(&[Role::Viewer], Some(&[Role::Developer, Role::Viewer])),
            vec![Role::Viewer]
        );
        assert!(!allows(
            &effective(&[Role::Viewer], Some(&[Role::Admin])),
            Permission::SelfRead
        ));
    }
}
