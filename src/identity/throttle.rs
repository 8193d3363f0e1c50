//! Failed-login throttling, per attempted username and per client address.
//!
//! After `max_failures` failures within `window`, further attempts for that name (or from that
//! address) are refused until the oldest failure ages out. Names are throttled whether or not
//! they exist, so the answer never tells which names are real. State is per edge (an attacker
//! spreading attempts over N edges gets N times the budget; docs/api.md says so).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most names and addresses tracked at once; beyond it the quietest are forgotten first.
const MAX_TRACKED: usize = 100_000;

pub struct LoginThrottle {
    pub max_failures_per_name: usize,
    pub max_failures_per_addr: usize,
    pub window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginThrottle {
    pub fn new(per_name: usize, per_addr: usize, window: Duration) -> Self {
        LoginThrottle {
            max_failures_per_name: per_name,
            max_failures_per_addr: per_addr,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` if `name` or `addr` is locked out now.
    pub fn check(&self, name: &str, addr: Option<&str>, now: Instant) -> Result<(), u64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
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

    pub fn failed(&self, name: &str, addr: Option<&str>, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
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

    /// A success clears the name's failures (not the address's: one good password does not
    /// excuse a spray from the same place).
    pub fn succeeded(&self, name: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&format!("n:{name}"));
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
        t.succeeded("ann");
        assert!(t.check("ann", None, now).is_ok());
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
