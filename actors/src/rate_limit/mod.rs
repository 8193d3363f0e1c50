//! Requests-per-minute limits per user and per key, shared by every edge of a cluster.
//!
//! Sliding-window counter: time is cut into 60-second windows and the estimate for "the last
//! minute" is `previous × (1 − elapsed/60) + current`, which smooths the burst a fixed window
//! allows at its edges. Each edge counts its own admissions and, every `gossip_every`, publishes
//! the absolute counts of the principals it saw on the signal subject `revo.sig.ratelimit.counts`;
//! every edge adds what its peers report. Counts are absolute, so a lost or repeated gossip
//! message never inflates a count. A cluster can overshoot a limit by at most what the other
//! edges admit within one gossip interval (documented in docs/api.md).

pub mod gossip;

use std::collections::{HashMap, HashSet};

// Admission hashes these on every request: foldhash, randomly seeded, is several times faster
// than SipHash for these short keys (ids Revo minted, not attacker-chosen).
type Fast = foldhash::fast::RandomState;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const WINDOW_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the current window ends.
    pub reset_secs: u64,
    /// When refused: seconds until a request would be admitted (if no one else asks).
    pub retry_after_secs: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Pair {
    prev: u64,
    cur: u64,
}

#[derive(Debug, Default)]
struct Entry {
    window: u64,
    local: Pair,
    remote: HashMap<Arc<str>, Pair, Fast>,
}

impl Entry {
    /// Moves the entry to `window`, shifting or clearing its counts.
    fn roll(&mut self, window: u64) {
        if window == self.window {
            return;
        }
        let shift = |p: &mut Pair| {
            *p = if window == self.window + 1 {
                Pair {
                    prev: p.cur,
                    cur: 0,
                }
            } else {
                Pair::default()
            }
        };
        if window > self.window {
            shift(&mut self.local);
            self.remote.values_mut().for_each(shift);
            self.window = window;
        }
    }

    fn totals(&self) -> Pair {
        self.remote.values().fold(self.local, |a, p| Pair {
            prev: a.prev + p.prev,
            cur: a.cur + p.cur,
        })
    }
}

/// Gossip between edges: one node's absolute counts in one window.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Gossip {
    pub node: String,
    pub window: u64,
    pub counts: Vec<(String, u64)>,
}

pub struct RateLimiter {
    node: String,
    entries: Mutex<HashMap<Arc<str>, Entry, Fast>>,
    dirty: Mutex<HashSet<Arc<str>, Fast>>,
}

fn estimate(t: Pair, elapsed: f64) -> f64 {
    t.prev as f64 * (1.0 - elapsed / WINDOW_SECS as f64) + t.cur as f64
}

pub fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

impl RateLimiter {
    pub fn new(node: impl Into<String>) -> Self {
        RateLimiter {
            node: node.into(),
            entries: Mutex::new(HashMap::default()),
            dirty: Mutex::new(HashSet::default()),
        }
    }

    /// Admits or refuses one request of `principal` under `limit` per minute (0: no limit).
    pub fn check(&self, principal: &str, limit: u32) -> Decision {
        self.check_at(principal, limit, now_secs_f64())
    }

    pub fn check_at(&self, principal: &str, limit: u32, now: f64) -> Decision {
        self.check_all_at(&[(principal, limit)], now)
    }

    /// Admits one request that counts against every bucket in `buckets` (a key's own and its
    /// owner's): refused if any bucket is full, and then counted in none; otherwise counted in
    /// all, with the headers of the tightest one.
    pub fn check_all(&self, buckets: &[(&str, u32)]) -> Decision {
        self.check_all_at(buckets, now_secs_f64())
    }

    pub fn check_all_at(&self, buckets: &[(&str, u32)], now: f64) -> Decision {
        let window = (now as u64) / WINDOW_SECS;
        let elapsed = now - (window * WINDOW_SECS) as f64;
        let reset_secs = WINDOW_SECS - elapsed as u64;
        let unlimited = Decision {
            allowed: true,
            limit: 0,
            remaining: 0,
            reset_secs,
            retry_after_secs: 0,
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut tightest: Option<Decision> = None;
        let mut counted = Vec::with_capacity(buckets.len());
        for &(principal, limit) in buckets.iter().filter(|(_, l)| *l > 0) {
            let key: Arc<str> = match entries.get_key_value(principal) {
                Some((k, _)) => k.clone(),
                None => Arc::from(principal),
            };
            let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
                window,
                ..Entry::default()
            });
            entry.roll(window);
            let totals = entry.totals();
            let used = estimate(totals, elapsed);
            let limit_f = f64::from(limit);
            if used + 1.0 > limit_f {
                return Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset_secs,
                    retry_after_secs: retry_after(totals, elapsed, limit_f),
                };
            }
            let d = Decision {
                allowed: true,
                limit,
                remaining: (limit_f - used - 1.0).max(0.0) as u32,
                reset_secs,
                retry_after_secs: 0,
            };
            if tightest.is_none_or(|t| d.remaining < t.remaining) {
                tightest = Some(d);
            }
            counted.push(key);
        }
        for key in &counted {
            if let Some(e) = entries.get_mut(key) {
                e.local.cur += 1;
            }
        }
        drop(entries);
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(counted);
        tightest.unwrap_or(unlimited)
    }

    /// This node's counts for the principals admitted since the last call.
    pub fn gossip(&self) -> Option<Gossip> {
        self.gossip_at(now_secs_f64())
    }

    pub fn gossip_at(&self, now: f64) -> Option<Gossip> {
        let window = (now as u64) / WINDOW_SECS;
        let dirty: Vec<Arc<str>> = self
            .dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        if dirty.is_empty() {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let counts = dirty
            .into_iter()
            .filter_map(|k| {
                let e = entries.get_mut(&k)?;
                e.roll(window);
                Some((k.to_string(), e.local.cur))
            })
            .collect();
        Some(Gossip {
            node: self.node.clone(),
            window,
            counts,
        })
    }

    /// Folds a peer's counts in. Our own messages (echoes) are ignored.
    pub fn absorb(&self, g: Gossip) {
        if g.node == self.node {
            return;
        }
        let node: Arc<str> = Arc::from(g.node.as_str());
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for (principal, count) in g.counts {
            let e = entries
                .entry(Arc::from(principal.as_str()))
                .or_insert_with(|| Entry {
                    window: g.window,
                    ..Entry::default()
                });
            e.roll(g.window);
            let p = e.remote.entry(node.clone()).or_default();
            if g.window == e.window {
                p.cur = p.cur.max(count);
            } else if g.window + 1 == e.window {
                p.prev = p.prev.max(count);
            }
        }
    }

    /// Drops principals idle for two windows, so memory follows the active set.
    pub fn sweep(&self) {
        let window = (now_secs_f64() as u64) / WINDOW_SECS;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, e| e.window + 1 >= window);
    }
}

/// Seconds until `estimate` would drop below `limit - 1` with no further requests.
fn retry_after(t: Pair, elapsed: f64, limit: f64) -> u64 {
    let window = WINDOW_SECS as f64;
    for s in 1..=(2 * WINDOW_SECS) {
        let at = elapsed + s as f64;
        let est = if at < window {
            estimate(t, at)
        } else if at < 2.0 * window {
            estimate(
                Pair {
                    prev: t.cur,
                    cur: 0,
                },
                at - window,
            )
        } else {
            0.0
        };
        if est + 1.0 <= limit {
            return s;
        }
    }
    2 * WINDOW_SECS
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: f64 = 1_800_000_000.0; // a window boundary (divisible by 60)

    #[test]
    fn admits_up_to_the_limit_then_refuses_with_retry_after() {
        let rl = RateLimiter::new("a");
        for i in 0..5 {
            let d = rl.check_at("user:1", 5, T0 + 1.0);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 4 - i);
        }
        let d = rl.check_at("user:1", 5, T0 + 1.0);
        assert!(!d.allowed);
        assert_eq!(d.reset_secs, 59);
        // Nothing frees up within this window; the next window weighs 5 × (1 - e/60).
        assert!(
            d.retry_after_secs > 59 && d.retry_after_secs <= 120,
            "{d:?}"
        );
        // Other principals are independent.
        assert!(rl.check_at("user:2", 5, T0 + 1.0).allowed);
    }

    #[test]
    fn the_previous_window_fades_out() {
        let rl = RateLimiter::new("a");
        for _ in 0..10 {
            assert!(rl.check_at("k", 10, T0 + 50.0).allowed);
        }
        assert!(!rl.check_at("k", 10, T0 + 61.0).allowed);
        // Half-way through the next window the estimate is 5: five more fit.
        let admitted = (0..10)
            .filter(|_| rl.check_at("k", 10, T0 + 90.0).allowed)
            .count();
        assert_eq!(admitted, 5);
        assert!(rl.check_at("k", 10, T0 + 200.0).allowed);
    }

    #[test]
    fn peers_counts_are_shared_and_idempotent() {
        let a = RateLimiter::new("a");
        let b = RateLimiter::new("b");
        for _ in 0..6 {
            assert!(a.check_at("user:1", 10, T0 + 5.0).allowed);
        }
        let g = a.gossip_at(T0 + 5.0).unwrap();
        assert_eq!(g.counts, vec![("user:1".to_owned(), 6)]);
        // Delivered twice: still six.
        b.absorb(Gossip {
            node: g.node.clone(),
            window: g.window,
            counts: g.counts.clone(),
        });
        b.absorb(g);
        let admitted = (0..10)
            .filter(|_| b.check_at("user:1", 10, T0 + 6.0).allowed)
            .count();
        assert_eq!(admitted, 4);
        assert!(
            a.gossip_at(T0 + 6.0).is_none(),
            "nothing new since the last gossip"
        );
        // Own echoes are ignored.
        let own = b.gossip_at(T0 + 6.0).unwrap();
        b.absorb(own);
        assert!(!b.check_at("user:1", 10, T0 + 6.0).allowed);
    }

    #[test]
    fn a_request_counts_against_every_bucket_or_none() {
        let r = RateLimiter::new("n1");
        let t = 1_000_000.0 * WINDOW_SECS as f64;
        // Two keys of one user: each under its own limit, both under the user's.
        let a = [("key:a", 5), ("user:u", 3)];
        let b = [("key:b", 5), ("user:u", 3)];
        assert!(r.check_all_at(&a, t).allowed);
        assert!(r.check_all_at(&b, t).allowed);
        let third = r.check_all_at(&a, t);
        assert!(third.allowed);
        assert_eq!(
            (third.limit, third.remaining),
            (3, 0),
            "the tightest bucket shows"
        );
        let refused = r.check_all_at(&b, t);
        assert!(!refused.allowed);
        assert_eq!(refused.limit, 3);
        // The refusal was counted in neither bucket: key b has used one of its five.
        let b_alone = r.check_at("key:b", 5, t);
        assert_eq!(b_alone.remaining, 3);
    }

    #[test]
    fn zero_means_unlimited() {
        let rl = RateLimiter::new("a");
        assert!((0..1000).all(|_| rl.check_at("x", 0, T0).allowed));
    }
}
