//! Passwords: argon2id in PHC strings, with configurable cost, and a bound on how many hashes
//! run at once.
//!
//! Each hash holds `memory_kib` of memory for its whole run (19 MiB by default, RFC 9106's
//! second recommended parameters), so unbounded parallel logins would grow the process by that
//! much per request. [`Hasher`] runs at most `concurrency` of them at a time, lets `queue` more
//! wait, and refuses the rest at once ([`HashError::Busy`], a `503` with `Retry-After`). The
//! hashes run on `concurrency` threads of their own, each reusing one hash's memory, and the
//! permits travel with the job, so a client that hangs up does not free its slot before the
//! memory is.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, SaltString};
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

/// Hashes and verifies passwords with a bounded number running at once, on a fixed set of
/// threads that keep their argon2 memory: `concurrency` threads each hold one hash's blocks
/// (`memory_kib`), allocated once and reused, so the memory logins take is `concurrency ×
/// memory_kib` whatever the traffic. (Hashing on a pool that grows, as `spawn_blocking` does,
/// left each thread's allocator holding its own copy: 300 parallel failed logins once raised
/// the peak RSS by about 600 MB with 2 slots of 19 MiB.)
pub struct Hasher {
    params: Params,
    /// Running plus waiting.
    admit: Arc<Semaphore>,
    /// `admit`'s size.
    capacity: usize,
    jobs: std::sync::mpsc::SyncSender<Job>,
    /// What unknown usernames are checked against, so both answers cost the same.
    dummy: String,
}

enum Work {
    Hash(String),
    Verify { phc: String, password: String },
}

enum Done {
    Hashed(Result<String, PasswordError>),
    Verified(bool),
}

struct Job {
    work: Work,
    reply: tokio::sync::oneshot::Sender<Done>,
    /// Held until the job is done, so a caller that gives up does not free the slot before
    /// the memory is.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// One hashing thread: takes jobs until the hasher is dropped, hashing into its own blocks.
fn hashing_thread(params: Params, jobs: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<Job>>>) {
    let mut blocks = vec![argon2::Block::default(); params.block_count()];
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        let Job {
            work,
            reply,
            _permit,
        } = job;
        let done = match work {
            Work::Hash(password) => Done::Hashed(hash_with(&params, &password, &mut blocks)),
            Work::Verify { phc, password } => {
                Done::Verified(verify_with(&phc, &password, &mut blocks))
            }
        };
        // The slot is free before the caller hears back, so its next call finds it free.
        drop(_permit);
        let _ = reply.send(done);
    }
}

fn argon2_with(params: Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes into `blocks` (grown if the cost asks for more) and writes the PHC string.
fn hash_with(
    params: &Params,
    password: &str,
    blocks: &mut Vec<argon2::Block>,
) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let mut out = vec![0u8; len];
    if blocks.len() < params.block_count() {
        blocks.resize(params.block_count(), argon2::Block::default());
    }
    argon2_with(params.clone())
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt_raw,
            &mut out,
            &mut blocks[..params.block_count()],
        )
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    let output =
        argon2::password_hash::Output::new(&out).map_err(|e| PasswordError::Hash(e.to_string()))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: params
            .try_into()
            .map_err(|e: argon2::password_hash::Error| PasswordError::Hash(e.to_string()))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Checks `password` against a PHC string with the string's own parameters, in `blocks`
/// (grown when a stored hash asks for more memory than the current cost). Unparsable: false.
fn verify_with(phc: &str, password: &str, blocks: &mut Vec<argon2::Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let Ok(alg) = Algorithm::try_from(hash.algorithm) else {
        return false;
    };
    let version = hash
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or(Version::V0x13);
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_raw) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    // A stored hash may not ask for unbounded memory (the policy's own cost is far below).
    if params.block_count() > 4 * 1024 * 1024 {
        return false;
    }
    if blocks.len() < params.block_count() {
        blocks.resize(params.block_count(), argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let n = params.block_count();
    if Argon2::new(alg, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt_raw, &mut out, &mut blocks[..n])
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    argon2::password_hash::Output::new(&out).is_ok_and(|o| o == expected)
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
        let capacity = concurrency + queue;
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..concurrency {
            let (params, rx) = (params.clone(), rx.clone());
            // Detached: each ends when the hasher (the jobs' sender) is dropped.
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || hashing_thread(params, rx))
                .map_err(|e| PasswordError::Hash(format!("starting a hashing thread: {e}")))?;
        }
        let mut h = Hasher {
            params,
            admit: Arc::new(Semaphore::new(capacity)),
            capacity,
            jobs: tx,
            dummy: String::new(),
        };
        h.dummy = h.hash_now("not-a-real-password")?;
        Ok(h)
    }

    /// Default cost; as many at once as there are CPUs, 32 waiting.
    pub fn with_defaults() -> Result<Hasher, PasswordError> {
        Self::new(Argon2Cost::default(), default_concurrency(), 32)
    }

    /// Hashes on the calling thread (CLI, start-up).
    pub fn hash_now(&self, password: &str) -> Result<String, PasswordError> {
        check_policy(password)?;
        let mut blocks = Vec::new();
        hash_with(&self.params, password, &mut blocks)
    }

    pub fn dummy_hash(&self) -> &str {
        &self.dummy
    }

    /// Runs `work` on a hashing thread within the bound, or refuses at once when it is full.
    async fn bounded(&self, work: Work) -> Result<Done, HashError> {
        let permit = self
            .admit
            .clone()
            .try_acquire_owned()
            .map_err(|_| HashError::Busy)?;
        let (reply, done) = tokio::sync::oneshot::channel();
        let job = Job {
            work,
            reply,
            _permit: permit,
        };
        // Admission bounds the jobs in the system to the channel's capacity.
        self.jobs.try_send(job).map_err(|_| HashError::Busy)?;
        done.await
            .map_err(|_| PasswordError::Hash("the hashing thread stopped".into()).into())
    }

    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        check_policy(&password)?;
        match self.bounded(Work::Hash(password)).await? {
            Done::Hashed(r) => r.map_err(HashError::from),
            Done::Verified(_) => Err(PasswordError::Hash("unexpected answer".into()).into()),
        }
    }

    /// Whether `password` matches `phc` (whose own parameters are used). An unparsable hash
    /// never matches.
    pub async fn verify(&self, phc: String, password: String) -> Result<bool, HashError> {
        if password.len() > MAX_LEN * 4 {
            return Ok(false);
        }
        match self.bounded(Work::Verify { phc, password }).await? {
            Done::Verified(ok) => Ok(ok),
            Done::Hashed(_) => Err(PasswordError::Hash("unexpected answer".into()).into()),
        }
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
