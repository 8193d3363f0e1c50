//! Per-user slots for resources a user holds open on this edge (run followers, WebSocket
//! connections): taking one past the limit fails; a slot gives itself back when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

#[derive(Clone)]
pub struct PerUser {
    max: usize,
    held: Arc<Mutex<HashMap<Uuid, usize>>>,
}

/// One held slot; dropping it frees it.
pub struct Slot {
    user: Uuid,
    held: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl PerUser {
    pub fn new(max: usize) -> PerUser {
        PerUser {
            max,
            held: Arc::default(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for `user`, or `None` when the user holds `max` already.
    pub fn take(&self, user: Uuid) -> Option<Slot> {
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = h.entry(user).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            user,
            held: self.held.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = h.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                h.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_user_and_freed_on_drop() {
        let q = PerUser::new(2);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let s1 = q.take(a).unwrap();
        let _s2 = q.take(a).unwrap();
        assert!(q.take(a).is_none());
        let _b = q.take(b).unwrap();
        drop(s1);
        assert!(q.take(a).is_some());
        assert_eq!(q.held.lock().unwrap().get(&a), Some(&1));
    }
}
