//! Failed-login throttling, per attempted username and per client address.
//!
//! After `max_failures` failures within `window`, further attempts for that name (or from that
//! address) are refused until the oldest failure ages out. Names are throttled whether or not
//! they exist, so the answer never tells which names are real. State is per edge (an attacker
//! spreading attempts over N edges gets N times the budget; docs/api.md says so).
//!
//! An attempt counts as a failure from the moment it is admitted ([`LoginThrottle::begin`]),
//! before the password is checked, so a burst of parallel attempts cannot all pass the check
//! while the first ones are still hashing; a success takes its own attempt back.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most names and addresses tracked at once; beyond it the quietest are forgotten first.
const MAX_TRACKED: usize = 100_000;

/// The one name every attempt with a name no user can have is throttled under.
pub const INVALID_NAME: &str = "\u{0}invalid";

pub struct LoginThrottle {
    pub max_failures_per_name: usize,
    pub max_failures_per_addr: usize,
    pub window: Duration,
    max_tracked: usize,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginThrottle {
    pub fn new(per_name: usize, per_addr: usize, window: Duration) -> Self {
        LoginThrottle {
            max_failures_per_name: per_name,
            max_failures_per_addr: per_addr,
            window,
            max_tracked: MAX_TRACKED,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` if `name` or `addr` is locked out now.
    pub fn check(&self, name: &str, addr: Option<&str>, now: Instant) -> Result<(), u64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        self.locked(&mut map, name, addr, now)
    }

    fn locked(
        &self,
        map: &mut HashMap<String, VecDeque<Instant>>,
        name: &str,
        addr: Option<&str>,
        now: Instant,
    ) -> Result<(), u64> {
        let mut wait = 0;
        let mut consider = |key: String, max: usize| {
            if let Some(q) = map.get_mut(&key) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    q.pop_front();
                }
                if q.len() >= max {
                    if let Some(oldest) = q.front() {
                        let left = self.window.saturating_sub(now.duration_since(*oldest));
                        wait = wait.max(left.as_secs().max(1));
                    }
                }
            }
        };
        consider(format!("n:{name}"), self.max_failures_per_name);
        if let Some(a) = addr {
            consider(format!("a:{a}"), self.max_failures_per_addr);
        }
        if wait > 0 {
            Err(wait)
        } else {
            Ok(())
        }
    }

    /// Admits an attempt and counts it as a failure until [`succeeded`](Self::succeeded) or
    /// [`forget`](Self::forget) says otherwise. `Err(seconds to wait)` when locked out.
    pub fn begin(&self, name: &str, addr: Option<&str>, now: Instant) -> Result<(), u64> {
        // One lock for the check and the count, so parallel attempts see each other.
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        self.locked(&mut map, name, addr, now)?;
        self.count(&mut map, name, addr, now);
        Ok(())
    }

    /// Records a failure of an attempt that was not begun (tests, and callers without `begin`).
    pub fn failed(&self, name: &str, addr: Option<&str>, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        self.count(&mut map, name, addr, now);
    }

    fn count(
        &self,
        map: &mut HashMap<String, VecDeque<Instant>>,
        name: &str,
        addr: Option<&str>,
        now: Instant,
    ) {
        if map.len() >= self.max_tracked {
            self.evict(map, now);
        }
        let keys = std::iter::once(format!("n:{name}")).chain(addr.map(|a| format!("a:{a}")));
        for k in keys {
            let q = map.entry(k).or_default();
            q.push_back(now);
            // Only the newest `max` failures matter.
            while q.len() > self.max_failures_per_addr.max(self.max_failures_per_name) {
                q.pop_front();
            }
        }
    }

    /// Makes room: drops entries whose failures all aged out, then, if the map is still
    /// full, the quietest tenth (fewest recent failures, the longest ago first), so a flood of
    /// fresh names or addresses cannot push out the entries closest to a lockout.
    fn evict(&self, map: &mut HashMap<String, VecDeque<Instant>>, now: Instant) {
        let window = self.window;
        map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        if map.len() < self.max_tracked {
            return;
        }
        let mut by_noise: Vec<(usize, Instant, String)> = map
            .iter()
            .map(|(k, q)| (q.len(), q.back().copied().unwrap_or(now), k.clone()))
            .collect();
        by_noise.sort_unstable();
        let drop = (self.max_tracked / 10).max(1);
        for (_, _, k) in by_noise.into_iter().take(drop) {
            map.remove(&k);
        }
    }

    /// A success clears the name's failures and takes back its own attempt from the address
    /// (only that one: one good password does not excuse a spray from the same place).
    pub fn succeeded(&self, name: &str, addr: Option<&str>, began: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&format!("n:{name}"));
        if let Some(a) = addr {
            Self::take_back(&mut map, &format!("a:{a}"), began);
        }
    }

    /// Takes back an attempt that was never decided (the server was too busy to check it).
    pub fn forget(&self, name: &str, addr: Option<&str>, began: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        Self::take_back(&mut map, &format!("n:{name}"), began);
        if let Some(a) = addr {
            Self::take_back(&mut map, &format!("a:{a}"), began);
        }
    }

    fn take_back(map: &mut HashMap<String, VecDeque<Instant>>, key: &str, at: Instant) {
        if let Some(q) = map.get_mut(key) {
            if let Some(i) = q.iter().rposition(|t| *t == at) {
                q.remove(i);
            }
            if q.is_empty() {
                map.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_a_name_after_max_failures_until_the_window_passes() {
        let t = LoginThrottle::new(3, 10, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..3 {
            assert!(t.check("ann", Some("1.2.3.4"), now).is_ok());
            t.failed("ann", Some("1.2.3.4"), now);
        }
        let wait = t.check("ann", Some("5.6.7.8"), now).unwrap_err();
        assert_eq!(wait, 60);
        // Unknown or other names are not affected by ann's lock.
        assert!(t.check("bob", Some("5.6.7.8"), now).is_ok());
        assert!(t.check("ann", None, now + Duration::from_secs(61)).is_ok());
        t.succeeded("ann", None, now);
        assert!(t.check("ann", None, now).is_ok());
    }

    #[test]
    fn attempts_count_before_they_are_decided() {
        let t = LoginThrottle::new(3, 10, Duration::from_secs(60));
        let now = Instant::now();
        // A parallel burst: every attempt is admitted before any password check finishes.
        let admitted = (0..50)
            .filter(|i| {
                t.begin("ann", Some("1.2.3.4"), now + Duration::from_millis(*i))
                    .is_ok()
            })
            .count();
        assert_eq!(admitted, 3);
        // A success takes its own attempt back from the address, not the others.
        let t = LoginThrottle::new(3, 2, Duration::from_secs(60));
        let a = now;
        let b = now + Duration::from_millis(1);
        t.begin("bo", Some("5.5.5.5"), a).unwrap();
        t.begin("cy", Some("5.5.5.5"), b).unwrap();
        assert!(t.check("dee", Some("5.5.5.5"), b).is_err());
        t.succeeded("cy", Some("5.5.5.5"), b);
        assert!(t.check("dee", Some("5.5.5.5"), b).is_ok());
        // An attempt never decided (busy) is forgotten entirely.
        t.begin("dee", Some("6.6.6.6"), b).unwrap();
        t.forget("dee", Some("6.6.6.6"), b);
        let map = t.failures.lock().unwrap();
        assert!(!map.contains_key("n:dee") && !map.contains_key("a:6.6.6.6"));
    }

    #[test]
    fn a_full_map_forgets_the_quietest_entries_first() {
        let mut t = LoginThrottle::new(3, 100, Duration::from_secs(60));
        t.max_tracked = 50;
        let now = Instant::now();
        // Two failures for `target`, then a flood of one-off names from one address.
        t.failed("target", None, now);
        t.failed("target", None, now);
        for i in 0..500 {
            t.failed(&format!("noise{i}"), None, now + Duration::from_millis(i));
            assert!(t.failures.lock().unwrap().len() <= 50);
        }
        // `target` survived the flood: one more failure locks it.
        t.failed("target", None, now + Duration::from_secs(1));
        assert!(t
            .check("target", None, now + Duration::from_secs(1))
            .is_err());
    }

    #[test]
    fn locks_an_address_spraying_many_names() {
        let t = LoginThrottle::new(3, 5, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..5 {
            t.failed(&format!("user{i}"), Some("9.9.9.9"), now);
        }
        assert!(t.check("fresh", Some("9.9.9.9"), now).is_err());
        assert!(t.check("fresh", Some("1.1.1.1"), now).is_ok());
    }
}
