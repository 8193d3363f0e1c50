//! Access tokens: HS256 JWTs signed with the configured key, verified against every configured
//! key by `kid` (rotation: add the new key, make it the signer, drop the old one once its tokens
//! have expired).
//!
//! Only HS256 is accepted. The header is checked before any signature work so that `alg: none`,
//! an asymmetric algorithm (key confusion) or an unknown `kid` each get their own error.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use revo_events::Role;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AuthError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub sub: Uuid,
    pub roles: Vec<Role>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: Uuid,
}

/// One configured key.
#[derive(Clone)]
pub struct JwtKey {
    pub kid: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(f, "JwtKey({})", self.kid)
    }
}

/// Shortest secret accepted: HS256 wants at least the hash size.
pub const MIN_SECRET: usize = 32;

pub struct TokenKeys {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    validation: Validation,
    pub ttl: Duration,
    /// Tokens whose signature already verified, by their exact text: a hit skips the header,
    /// base64, HMAC and JSON work; time claims are still checked on every use.
    /// Keyed by the token text (only tokens that verified get in); foldhash, since this is
    /// hashed on every request.
    verified: Mutex<HashMap<String, Claims, foldhash::fast::RandomState>>,
}

/// Most verified tokens remembered; past it the cache starts over (a miss only costs a verify).
const VERIFIED_CACHE: usize = 10_000;
/// Leeway for `exp` and `nbf`, seconds (clock skew between edges).
const LEEWAY: i64 = 5;

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

impl TokenKeys {
    pub fn new(keys: &[JwtKey], signing_kid: &str, ttl: Duration) -> anyhow::Result<Self> {
        let signer = keys
            .iter()
            .find(|k| k.kid == signing_kid)
            .ok_or_else(|| anyhow::anyhow!("signing key `{signing_kid}` is not configured"))?;
        for k in keys {
            if k.secret.len() < MIN_SECRET {
                anyhow::bail!("JWT key `{}` is shorter than {MIN_SECRET} bytes", k.kid);
            }
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY as u64;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "sub"]);
        Ok(TokenKeys {
            signing_kid: signer.kid.clone(),
            signing: EncodingKey::from_secret(&signer.secret),
            verifying: keys
                .iter()
                .map(|k| (k.kid.clone(), DecodingKey::from_secret(&k.secret)))
                .collect(),
            validation,
            ttl,
            verified: Mutex::new(HashMap::default()),
        })
    }

    pub fn issue(&self, user_id: Uuid, roles: &[Role]) -> Result<(String, Claims), AuthError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            roles: roles.to_vec(),
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs() as i64,
            jti: Uuid::now_v7(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.signing)
            .map_err(|e| AuthError::Internal(format!("signing failed: {e}")))?;
        Ok((token, claims))
    }

    /// Checks the header, signature and time claims. Revocation and the user are checked by the
    /// caller against the directory.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned();
        if let Some(claims) = cached {
            let now = Utc::now().timestamp();
            if claims.exp <= now - LEEWAY {
                return Err(AuthError::TokenExpired);
            }
            if claims.nbf > now + LEEWAY {
                return Err(AuthError::TokenNotYetValid);
            }
            return Ok(claims);
        }
        let claims = self.verify_uncached(token)?;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_CACHE {
            cache.clear();
        }
        cache.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    fn verify_uncached(&self, token: &str) -> Result<Claims, AuthError> {
        let header = token.split('.').next().unwrap_or_default();
        let header: RawHeader = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::TokenMalformed)?;
        if header.alg != "HS256" {
            return Err(AuthError::TokenAlgorithm(header.alg));
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(AuthError::TokenUnknownKid)?;
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                ErrorKind::ImmatureSignature => AuthError::TokenNotYetValid,
                ErrorKind::InvalidSignature => AuthError::TokenBadSignature,
                ErrorKind::InvalidAlgorithm => AuthError::TokenAlgorithm("HS256".into()),
                _ => AuthError::TokenMalformed,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(signer: &str) -> TokenKeys {
        TokenKeys::new(
            &[
                JwtKey {
                    kid: "old".into(),
                    secret: vec![1; 32],
                },
                JwtKey {
                    kid: "new".into(),
                    secret: vec![2; 32],
                },
            ],
            signer,
            Duration::from_secs(60),
        )
        .unwrap()
    }

    fn forge(header: &str, claims: &serde_json::Value, secret: &[u8]) -> String {
        use hmac::Mac;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signing_input = format!("{}.{}", b64.encode(header), b64.encode(claims.to_string()));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            b64.encode(mac.finalize().into_bytes())
        )
    }

    fn claims(exp_in: i64, nbf_in: i64) -> serde_json::Value {
        let now = Utc::now().timestamp();
        serde_json::json!({"sub": Uuid::now_v7(), "roles": ["viewer"], "exp": now + exp_in,
            "iat": now, "nbf": now + nbf_in, "jti": Uuid::now_v7()})
    }

    #[test]
    fn rotation_verifies_old_and_new_keys() {
        let old = keys("old");
        let new = keys("new");
        let (t_old, c) = old.issue(Uuid::now_v7(), &[Role::Viewer]).unwrap();
        let (t_new, _) = new.issue(Uuid::now_v7(), &[Role::Viewer]).unwrap();
        assert_eq!(new.verify(&t_old).unwrap(), c);
        assert!(old.verify(&t_new).is_ok());
    }

    #[test]
    fn each_bad_token_has_its_own_error() {
        let k = keys("new");
        let hs = r#"{"alg":"HS256","kid":"new","typ":"JWT"}"#;
        let cases = [
            (
                forge(r#"{"alg":"none","kid":"new"}"#, &claims(60, 0), b""),
                "token_algorithm",
            ),
            (
                forge(r#"{"alg":"RS256","kid":"new"}"#, &claims(60, 0), &[2; 32]),
                "token_algorithm",
            ),
            (
                forge(r#"{"alg":"HS256","kid":"zzz"}"#, &claims(60, 0), &[2; 32]),
                "token_unknown_kid",
            ),
            (
                forge(r#"{"alg":"HS256"}"#, &claims(60, 0), &[2; 32]),
                "token_unknown_kid",
            ),
            (forge(hs, &claims(60, 0), &[3; 32]), "token_bad_signature"),
            (forge(hs, &claims(-60, -120), &[2; 32]), "token_expired"),
            (
                forge(hs, &claims(600, 300), &[2; 32]),
                "token_not_yet_valid",
            ),
            (
                forge(hs, &serde_json::json!({"sub": "x"}), &[2; 32]),
                "token_malformed",
            ),
            ("not a token".to_owned(), "token_malformed"),
        ];
        for (token, code) in cases {
            let err = k.verify(&token).unwrap_err();
            assert_eq!(err.code(), code, "{token}");
        }
        assert!(k.verify(&forge(hs, &claims(60, 0), &[2; 32])).is_ok());
    }

    #[test]
    fn a_cached_token_still_expires() {
        let k = keys("new");
        let hs = r#"{"alg":"HS256","kid":"new","typ":"JWT"}"#;
        // Valid for 6 s (5 s leeway + 1): verified and cached now, expired in 7 s.
        let token = forge(hs, &claims(1, 0), &[2; 32]);
        assert!(k.verify(&token).is_ok());
        assert!(k.verify(&token).is_ok(), "cache hit");
        let mut cache = k.verified.lock().unwrap();
        cache.get_mut(&token).unwrap().exp -= 10;
        drop(cache);
        assert_eq!(k.verify(&token).unwrap_err().code(), "token_expired");
    }

    #[test]
    fn short_secrets_are_refused() {
        let short = [JwtKey {
            kid: "k".into(),
            secret: vec![0; 8],
        }];
        assert!(TokenKeys::new(&short, "k", Duration::from_secs(1)).is_err());
    }
}
