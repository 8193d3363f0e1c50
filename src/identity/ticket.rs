//! One-use WebSocket tickets (`POST /ws/tickets`): a browser or y-websocket client that cannot
//! set headers opens its socket with `?ticket=` instead of a long-lived credential in the URL.
//!
//! A ticket names the credential it was made with (the token's id, or the key's id), never
//! the credential itself, lives 30 seconds, and is signed with a key derived from the JWT
//! signing secret, so any edge of a cluster (which share that secret) takes it. It is taken
//! once per edge: its nonce is remembered until it expires (a ticket replayed on another edge
//! within its 30 seconds would be taken there too; each use still needs the credential to be
//! valid). The socket then re-checks that credential as it does a header's.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::principal::{Principal, Via};
use super::{issued_at, tighter, AuthError};

/// How long a ticket may wait to be used.
pub const TICKET_TTL_SECS: i64 = 30;
/// Nonces remembered at once on one edge (tickets issued in the last 30 s); past it new
/// tickets are refused until old ones expire.
const MAX_REMEMBERED: usize = 100_000;
const PREFIX: &str = "rwt_";

#[derive(Serialize, Deserialize)]
struct Payload {
    /// The user.
    u: Uuid,
    /// The token's id and expiry, or the key's id.
    t: Option<(Uuid, i64)>,
    k: Option<Uuid>,
    /// When the ticket expires (Unix seconds).
    e: i64,
    n: Uuid,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TicketError {
    #[error("not a ticket")]
    Invalid,
    #[error("the ticket has expired")]
    Expired,
    #[error("the ticket was used already")]
    Used,
    #[error("too many tickets outstanding; try again shortly")]
    Busy,
}

pub struct Tickets {
    key: [u8; 32],
    /// Nonce → expiry of tickets taken on this edge.
    used: Mutex<HashMap<Uuid, i64>>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

impl Tickets {
    /// Keyed from the JWT signing secret (a different purpose, so a different key).
    pub fn new(signing_secret: &[u8]) -> Tickets {
        let mut h = Sha256::new();
        h.update(b"revo websocket tickets\0");
        h.update(signing_secret);
        Tickets {
            key: h.finalize().into(),
            used: Mutex::new(HashMap::new()),
        }
    }

    fn sign(&self, body: &str) -> Vec<u8> {
        // HMAC takes a key of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        m.update(body.as_bytes());
        m.finalize().into_bytes().to_vec()
    }

    /// A ticket for `user`'s credential `via`.
    pub fn issue(&self, user: Uuid, via: &Via) -> String {
        let (t, k) = match via {
            Via::Token { jti, expires_at } => (Some((*jti, *expires_at)), None),
            Via::Key { key_id } => (None, Some(*key_id)),
        };
        let p = Payload {
            u: user,
            t,
            k,
            e: Utc::now().timestamp() + TICKET_TTL_SECS,
            n: Uuid::now_v7(),
        };
        let body = b64().encode(serde_json::to_vec(&p).unwrap_or_default());
        let sig = b64().encode(self.sign(&body));
        format!("{PREFIX}{body}.{sig}")
    }

    /// Takes a ticket: its user and credential, once.
    pub fn redeem(&self, ticket: &str) -> Result<(Uuid, Via), TicketError> {
        let rest = ticket.strip_prefix(PREFIX).ok_or(TicketError::Invalid)?;
        let (body, sig) = rest.split_once('.').ok_or(TicketError::Invalid)?;
        let sig = b64().decode(sig).map_err(|_| TicketError::Invalid)?;
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).map_err(|_| TicketError::Invalid)?;
        m.update(body.as_bytes());
        // Constant-time comparison.
        m.verify_slice(&sig).map_err(|_| TicketError::Invalid)?;
        let raw = b64().decode(body).map_err(|_| TicketError::Invalid)?;
        let p: Payload = serde_json::from_slice(&raw).map_err(|_| TicketError::Invalid)?;
        let now = Utc::now().timestamp();
        if p.e <= now {
            return Err(TicketError::Expired);
        }
        {
            let mut used = self.used.lock().unwrap_or_else(|x| x.into_inner());
            if used.len() >= MAX_REMEMBERED {
                used.retain(|_, e| *e > now);
                if used.len() >= MAX_REMEMBERED {
                    return Err(TicketError::Busy);
                }
            }
            if used.insert(p.n, p.e).is_some() {
                return Err(TicketError::Used);
            }
        }
        let via = match (p.t, p.k) {
            (Some((jti, expires_at)), None) => Via::Token { jti, expires_at },
            (None, Some(key_id)) => Via::Key { key_id },
            _ => return Err(TicketError::Invalid),
        };
        Ok((p.u, via))
    }
}

impl super::Identity {
    /// A one-use WebSocket ticket for the credential `p` authenticated with (30 s).
    pub fn issue_ticket(&self, p: &Principal) -> String {
        self.tickets.issue(p.user_id, &p.via)
    }

    /// Takes a ticket once and checks the credential it names as it stands now.
    pub fn redeem_ticket(&self, ticket: &str) -> Result<Principal, AuthError> {
        if self.view.halted().is_some() {
            return Err(AuthError::Unavailable);
        }
        let (user, via) = self
            .tickets
            .redeem(ticket)
            .map_err(|e| AuthError::Ticket(e.to_string()))?;
        self.reauthenticate(user, &via)
    }

    /// The principal of a credential known by its id (a token's `jti`, a key's id) rather
    /// than its secret, checked as `authenticate` checks it: not expired, revoked or
    /// disabled, with the roles in force now. WebSockets opened with a ticket re-check
    /// their credential with this.
    pub fn reauthenticate(&self, user_id: Uuid, via: &Via) -> Result<Principal, AuthError> {
        match via {
            Via::Token { jti, expires_at } => {
                if *expires_at <= Utc::now().timestamp() {
                    return Err(AuthError::TokenExpired);
                }
                if self.is_revoked(jti) {
                    return Err(AuthError::TokenRevoked);
                }
                let user = self.enabled_user(&user_id)?;
                if user
                    .tokens_valid_after
                    .is_some_and(|t| issued_at(jti, 0) < t)
                {
                    return Err(AuthError::TokenRevoked);
                }
                let limit = self.limits.for_roles(&user.roles);
                Ok(Principal {
                    user_id,
                    username: user.username,
                    roles: user.roles,
                    ceiling: None,
                    via: via.clone(),
                    rate_limit: limit,
                    user_rate_limit: limit,
                })
            }
            Via::Key { key_id } => {
                let key = self
                    .find(|d| {
                        d.key(key_id).map(|k| {
                            (
                                k.user_id,
                                k.roles.clone(),
                                k.revoked_at.is_some(),
                                k.expires_at,
                                k.rate_limit_per_minute,
                            )
                        })
                    })
                    .ok_or(AuthError::KeyUnknown)?;
                let (owner, roles, revoked, expires_at, rate) = key;
                if owner != user_id {
                    return Err(AuthError::KeyUnknown);
                }
                if revoked {
                    return Err(AuthError::KeyRevoked);
                }
                if expires_at.is_some_and(|e| e <= Utc::now()) {
                    return Err(AuthError::KeyExpired);
                }
                let user = self.enabled_user(&user_id)?;
                let owner_limit = self.limits.for_roles(&user.roles);
                let (roles, ceiling) = match roles {
                    Some(own) => (own, Some(user.roles)),
                    None => (user.roles, None),
                };
                Ok(Principal {
                    user_id,
                    username: user.username,
                    roles,
                    ceiling,
                    via: via.clone(),
                    rate_limit: rate.map_or(owner_limit, |own| tighter(own, owner_limit)),
                    user_rate_limit: owner_limit,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_taken_once_and_only_as_signed() {
        let t = Tickets::new(b"0123456789abcdef0123456789abcdef");
        let user = Uuid::now_v7();
        let key_id = Uuid::now_v7();
        let ticket = t.issue(user, &Via::Key { key_id });
        let (u, via) = t.redeem(&ticket).unwrap();
        assert_eq!(u, user);
        assert!(matches!(via, Via::Key { key_id: k } if k == key_id));
        assert_eq!(t.redeem(&ticket).unwrap_err(), TicketError::Used);
        // Another edge with the same secret takes it (once there too).
        let other = Tickets::new(b"0123456789abcdef0123456789abcdef");
        assert!(other.redeem(&ticket).is_ok());
        // Another secret, or a changed body, does not.
        let wrong = Tickets::new(b"another secret, another cluster!");
        let fresh = t.issue(user, &Via::Key { key_id });
        assert_eq!(wrong.redeem(&fresh).unwrap_err(), TicketError::Invalid);
        let (body, sig) = fresh.split_once('.').unwrap();
        let forged = format!("{}A.{sig}", body);
        assert_eq!(t.redeem(&forged).unwrap_err(), TicketError::Invalid);
        assert_eq!(
            t.redeem("revo_sk_whatever").unwrap_err(),
            TicketError::Invalid
        );
    }
}
