//! API keys: `revo_sk_<key id, 32 hex>_<secret, 43 base64url>`. The id finds the key; only the
//! SHA-256 of the 256-bit random secret is stored (a fast hash is right for a secret that cannot
//! be guessed, and keeps a key check to microseconds).

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

pub const PREFIX: &str = "revo_sk_";

/// A freshly issued key: shown to its owner once.
pub struct NewKey {
    pub key_id: Uuid,
    pub token: String,
    pub secret_hash: String,
}

pub fn generate() -> NewKey {
    let key_id = Uuid::now_v7();
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    NewKey {
        key_id,
        token: format!("{PREFIX}{}_{secret}", key_id.simple()),
        secret_hash: hash_secret(&secret),
    }
}

pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    out
}

pub fn looks_like_key(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// Splits a presented key into its id and secret.
pub fn parse(token: &str) -> Option<(Uuid, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = (rest.get(..32)?, rest.get(33..)?);
    if rest.as_bytes().get(32) != Some(&b'_') || secret.is_empty() || secret.len() > 64 {
        return None;
    }
    Some((Uuid::try_parse(id).ok()?, secret))
}

/// Constant-time comparison of a presented secret with the stored hash.
pub fn matches(secret: &str, stored_hash: &str) -> bool {
    hash_secret(secret)
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_match() {
        let k = generate();
        let (id, secret) = parse(&k.token).unwrap();
        assert_eq!(id, k.key_id);
        assert!(matches(secret, &k.secret_hash));
        assert!(!matches("x", &k.secret_hash));
        assert!(!k.token.contains(&k.secret_hash));
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        for bad in [
            "",
            "revo_sk_",
            "revo_sk_zz",
            "revo_sk_0123456789abcdef0123456789abcdefXsecret",
            "revo_sk_0123456789abcdef0123456789abcdef_",
            "revo_sk_g123456789abcdef0123456789abcdef_s",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
