//! The errors of identity: why a credential was refused, and why an operation failed.

use revo_events::StoreError;

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
    /// A WebSocket ticket that is malformed, forged, expired or used already.
    #[error("{0}")]
    Ticket(String),
    /// The user directory stopped following the log (see `/health`): `503`.
    #[error("authentication is unavailable on this server; try another or retry shortly")]
    Unavailable,
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
            AuthError::Ticket(_) => "ticket_invalid",
            AuthError::Unavailable => "auth_unavailable",
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
    /// Password hashing is at its bound: `503` with `Retry-After`.
    #[error("the server is checking too many passwords at once; try again shortly")]
    Busy,
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

pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> IdentityError {
    IdentityError::Invalid {
        code,
        message: message.into(),
    }
}

impl From<super::password::HashError> for IdentityError {
    fn from(e: super::password::HashError) -> Self {
        use super::password::{HashError, PasswordError};
        match e {
            HashError::Busy => IdentityError::Busy,
            HashError::Password(PasswordError::Length) => invalid("weak_password", e.to_string()),
            HashError::Password(PasswordError::Hash(m)) => IdentityError::Internal(m),
        }
    }
}
