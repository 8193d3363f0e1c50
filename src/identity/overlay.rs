//! This edge's own identity writes, in effect the moment they commit.
//!
//! The live view folds the log in commit order, and on Postgres it cannot see past the oldest
//! transaction still open anywhere on the server. One long transaction would otherwise hold
//! back a logout, a revoked key, a disabled user or a new key even on the edge that wrote it.
//! So after each append the edge folds its own events onto copies of the rows they touch and
//! reads those first, until the view has folded past them; then the overlay is dropped. The
//! overlay only ever holds rows this edge changed, so it stays as small as the writes made
//! while the view is behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use revo_events::{Directory, Envelope, IdentityEvent, NewEvent, Projection, RecordedEvent};

#[derive(Default)]
struct Inner {
    dir: Directory,
    /// The overlay is stale once the view has folded this position.
    until: i64,
}

#[derive(Default)]
pub struct Overlay {
    inner: RwLock<Inner>,
    /// Fast path: nothing pending (the common case) costs one atomic load.
    active: AtomicBool,
}

/// Rows an event changes, which must be copied before it is folded.
fn touched(ev: &IdentityEvent, view: &Directory) -> Vec<String> {
    use IdentityEvent::*;
    match ev {
        UserCreated { .. } => Vec::new(),
        RolesChanged { user_id, .. }
        | DisabledChanged { user_id, .. }
        | PasswordChanged { user_id, .. }
        | LoginSucceeded { user_id, .. }
        | LoginFailed { user_id, .. }
        | TokenRevoked { user_id, .. }
        | SessionsEnded { user_id } => vec![format!("user:{user_id}")],
        KeyIssued { parent_key_id, .. } => {
            parent_key_id.iter().map(|p| format!("key:{p}")).collect()
        }
        KeyRevoked { key_id, .. } => std::iter::once(*key_id)
            .chain(view.descendants(key_id))
            .map(|k| format!("key:{k}"))
            .collect(),
    }
}

impl Overlay {
    /// Folds events this edge just appended to `stream` (the last at `position`, leaving the
    /// stream at `stream_version`) over copies of the rows they touch.
    pub fn record(
        &self,
        view: &Directory,
        stream: (&str, &str),
        stream_version: i64,
        position: i64,
        events: &[(IdentityEvent, NewEvent)],
    ) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        // Rows already here are newer than the view's: keep them.
        let missing: Vec<String> = events
            .iter()
            .flat_map(|(ev, _)| touched(ev, view))
            .filter(|k| !inner.dir.has_row(k))
            .collect();
        inner
            .dir
            .copy_rows(view, missing.iter().map(String::as_str));
        let first_version = stream_version - events.len() as i64 + 1;
        let mut dirty = std::collections::BTreeSet::new();
        for (i, (_, new)) in events.iter().enumerate() {
            let recorded = RecordedEvent {
                position,
                envelope: Envelope {
                    event_id: new.event_id,
                    stream_type: stream.0.to_owned(),
                    stream_id: stream.1.to_owned(),
                    version: first_version + i as i64,
                    event_type: new.event_type.clone(),
                    schema: new.schema,
                    occurred_at: new.occurred_at,
                    meta: new.meta.clone(),
                    payload: new.payload.clone(),
                },
            };
            if let Err(e) = inner.dir.apply(&recorded, &mut dirty) {
                // The view will fold it from the log; only the early effect is lost.
                tracing::warn!(error = %e, "identity overlay could not fold an own write");
            }
        }
        inner.until = inner.until.max(position);
        self.active.store(true, Ordering::Release);
    }

    /// The overlay while the view (at `view_position()`) has not folded it yet. The position is
    /// only asked for when something is pending (this is on every request's path).
    pub fn current(&self, view_position: impl FnOnce() -> i64) -> Option<OverlayRead<'_>> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let view_position = view_position();
        {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            if view_position < inner.until {
                return Some(OverlayRead(inner));
            }
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if view_position >= inner.until {
            inner.dir = Directory::default();
            self.active.store(false, Ordering::Release);
        }
        None
    }
}

/// A read of the overlay's rows; hold it briefly, never across an `.await`.
pub struct OverlayRead<'a>(RwLockReadGuard<'a, Inner>);

impl std::ops::Deref for OverlayRead<'_> {
    type Target = Directory;

    fn deref(&self) -> &Directory {
        &self.0.dir
    }
}
