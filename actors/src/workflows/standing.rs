//! Whose run it is: a run acts for its owner through the key that started it, and stops
//! (`cancelled`, with the reason) once the owner is disabled or the key revoked or expired.

use uuid::Uuid;

use super::{lock, Engine};

impl Engine {
    /// Why a run of `user` through `key` may no longer act (`owner_disabled`, `key_revoked`,
    /// `key_expired`), or `None` while it may. A user or key the directory does not show yet
    /// (created a moment ago elsewhere) is not held against the run.
    pub(crate) fn standing(&self, user: Uuid, key: Option<Uuid>) -> Option<&'static str> {
        let d = self.inner.directory.read();
        if d.user(&user).is_some_and(|u| u.disabled) {
            return Some("owner_disabled");
        }
        let k = key.and_then(|k| d.key(&k))?;
        if k.revoked_at.is_some() {
            return Some("key_revoked");
        }
        if k.expires_at.is_some_and(|e| e <= chrono::Utc::now()) {
            return Some("key_expired");
        }
        None
    }

    /// Wakes this node's runs whose owner was disabled or whose key was revoked or expired:
    /// each checks its standing when it plans, and ends itself (within one scan interval).
    pub(super) fn wake_unstanding(&self) {
        let local: Vec<Uuid> = lock(&self.inner.local)
            .iter()
            .filter(|(_, h)| !h.is_closed())
            .map(|(id, _)| *id)
            .collect();
        let stale: Vec<Uuid> = {
            let view = self.inner.runs.read();
            local
                .into_iter()
                .filter(|id| {
                    view.get(id)
                        .is_some_and(|r| self.standing(r.user_id, r.key_id).is_some())
                })
                .collect()
        };
        for id in stale {
            self.wake(id);
        }
    }
}
