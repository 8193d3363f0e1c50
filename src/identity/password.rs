//! Passwords: argon2id in PHC strings, with configurable cost, and a bound on how many hashes
//! run at once.
//!
//! Each hash holds `memory_kib` of memory for its whole run (19 MiB by default, RFC 9106's
//! second recommended parameters), so unbounded parallel logins would grow the process by that
//! much per request. [`Hasher`] runs at most `concurrency` of them at a time, lets `queue` more
//! wait, and refuses the rest at once ([`HashError::Busy`], a `503` with `Retry-After`). The
//! permits travel with the blocking job, so a client that hangs up does not free its slot
//! before the memory is.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;
use tokio::sync::Semaphore;

pub const MIN_LEN: usize = 8;
/// Bounds the work an attacker can ask of argon2 per request.
pub const MAX_LEN: usize = 256;

/// argon2id cost, `[auth] argon2_*` in revo.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Cost {
    /// Memory per hash, KiB (also the memory each concurrent login holds).
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Cost {
    fn default() -> Self {
        Argon2Cost {
            memory_kib: Params::DEFAULT_M_COST,
            iterations: Params::DEFAULT_T_COST,
            parallelism: Params::DEFAULT_P_COST,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("passwords are {MIN_LEN} to {MAX_LEN} characters")]
    Length,
    #[error("hashing failed: {0}")]
    Hash(String),
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("too many password checks in progress; try again shortly")]
    Busy,
    #[error(transparent)]
    Password(#[from] PasswordError),
}

pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    let n = password.chars().count();
    if (MIN_LEN..=MAX_LEN).contains(&n) {
        Ok(())
    } else {
        Err(PasswordError::Length)
    }
}

/// Hashes and verifies passwords with a bounded number running at once.
pub struct Hasher {
    params: Params,
    /// Running plus waiting.
    admit: Arc<Semaphore>,
    /// Running.
    run: Arc<Semaphore>,
    /// `admit`'s size.
    capacity: usize,
    /// What unknown usernames are checked against, so both answers cost the same.
    dummy: String,
}

impl Hasher {
    pub fn new(
        cost: Argon2Cost,
        concurrency: usize,
        queue: usize,
    ) -> Result<Hasher, PasswordError> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| PasswordError::Hash(format!("argon2 parameters: {e}")))?;
        let concurrency = concurrency.max(1);
        let mut h = Hasher {
            params,
            admit: Arc::new(Semaphore::new(concurrency + queue)),
            run: Arc::new(Semaphore::new(concurrency)),
            capacity: concurrency + queue,
            dummy: String::new(),
        };
        h.dummy = h.hash_now("not-a-real-password")?;
        Ok(h)
    }

    /// Default cost; as many at once as there are CPUs, 32 waiting.
    pub fn with_defaults() -> Result<Hasher, PasswordError> {
        Self::new(Argon2Cost::default(), default_concurrency(), 32)
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Hashes on the calling thread (CLI, start-up).
    pub fn hash_now(&self, password: &str) -> Result<String, PasswordError> {
        check_policy(password)?;
        let salt = SaltString::generate(&mut OsRng);
        self.argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    }

    pub fn dummy_hash(&self) -> &str {
        &self.dummy
    }

    /// Runs `f` on a blocking thread within the bound, or refuses at once when it is full.
    async fn bounded<T: Send + 'static>(
        &self,
        f: impl FnOnce(Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let waiting = self
            .admit
            .clone()
            .try_acquire_owned()
            .map_err(|_| HashError::Busy)?;
        let running = self
            .run
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Busy)?;
        let argon = self.argon2();
        tokio::task::spawn_blocking(move || {
            let _permits = (waiting, running);
            f(argon)
        })
        .await
        .map_err(|e| PasswordError::Hash(e.to_string()).into())
    }

    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        check_policy(&password)?;
        self.bounded(move |argon| {
            let salt = SaltString::generate(&mut OsRng);
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| PasswordError::Hash(e.to_string()))
        })
        .await?
        .map_err(HashError::from)
    }

    /// Whether `password` matches `phc` (whose own parameters are used). An unparsable hash
    /// never matches.
    pub async fn verify(&self, phc: String, password: String) -> Result<bool, HashError> {
        if password.len() > MAX_LEN * 4 {
            return Ok(false);
        }
        self.bounded(move |argon| {
            PasswordHash::new(&phc)
                .map(|h| argon.verify_password(password.as_bytes(), &h).is_ok())
                .unwrap_or(false)
        })
        .await
    }

    /// Hashes running or waiting now.
    pub fn in_use(&self) -> usize {
        self.capacity - self.admit.available_permits()
    }
}

pub fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// A random password for the first admin: 20 characters from an unambiguous alphabet.
pub fn generate() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = OsRng;
    (0..20)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap(concurrency: usize, queue: usize) -> Hasher {
        let cost = Argon2Cost {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        };
        Hasher::new(cost, concurrency, queue).unwrap()
    }

    #[tokio::test]
    async fn hashes_verify_and_differ_by_salt() {
        let h = Hasher::with_defaults().unwrap();
        let a = h.hash("correct horse".into()).await.unwrap();
        let b = h.hash("correct horse".into()).await.unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert!(h.verify(a.clone(), "correct horse".into()).await.unwrap());
        assert!(!h.verify(a, "correct horsf".into()).await.unwrap());
        assert!(!h
            .verify("garbage".into(), "correct horse".into())
            .await
            .unwrap());
        assert!(matches!(
            h.hash("short".into()).await,
            Err(HashError::Password(PasswordError::Length))
        ));
        assert_eq!(generate().len(), 20);
    }

    #[tokio::test]
    async fn the_cost_is_configurable_and_old_hashes_still_verify() {
        let old = Hasher::with_defaults().unwrap();
        let stored = old.hash_now("a long password").unwrap();
        let h = cheap(1, 0);
        let fresh = h.hash("a long password".into()).await.unwrap();
        assert!(
            fresh.starts_with("$argon2id$v=19$m=256,t=1,p=1$"),
            "{fresh}"
        );
        // Verification follows the parameters in the stored hash.
        assert!(h.verify(stored, "a long password".into()).await.unwrap());
        assert!(Hasher::new(
            Argon2Cost {
                memory_kib: 1,
                iterations: 1,
                parallelism: 1
            },
            1,
            0
        )
        .is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_concurrency_and_queue_it_refuses_at_once() {
        let h = Arc::new(cheap(1, 1));
        let phc = h.hash_now("a long password").unwrap();
        let tracker = tokio_util::task::TaskTracker::new();
        let tries: Vec<_> = (0..40)
            .map(|_| {
                let (h, phc) = (h.clone(), phc.clone());
                tracker.spawn(async move { h.verify(phc, "a long password".into()).await })
            })
            .collect();
        let mut ok = 0;
        let mut busy = 0;
        for t in tries {
            match t.await.unwrap() {
                Ok(true) => ok += 1,
                Err(HashError::Busy) => busy += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ok + busy, 40);
        assert!(
            ok >= 2,
            "at least the running and the queued one finish: {ok}"
        );
        assert!(busy > 0, "nothing was refused");
        // Once the burst is over, the bound is free again.
        assert!(h.verify(phc, "a long password".into()).await.unwrap());
    }
}
