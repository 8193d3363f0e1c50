//! A live in-memory view: a projection this node keeps folded in memory for fast reads (the user
//! directory behind every authenticated request), following the store's commits.
//!
//! It starts from the persisted read model (so a restart does not refold history), catches up
//! to the head before it is handed out, then follows appends from this node and, through the
//! store's change signal, from every other node. Writers wait for `wait_for(position)` to read
//! their own writes.
//!
//! An event the fold cannot take (a corrupt payload, or a schema newer than this build during a
//! rolling upgrade) halts the view where it is: it never skips, since a skipped revocation
//! would let a revoked credential in. A halted view says so ([`LiveView::halted`]), and its
//! users refuse to serve from it (readiness fails; authentication answers `503`) until the
//! process is upgraded or restarted.

use crate::kit::Backoff;
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};
use std::time::Duration;

use revo_events::store::wait_for_change;
use revo_events::{EventLog, Projection, ReadModels};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::projector::ReplayError;

pub struct LiveView<P> {
    state: Arc<RwLock<P>>,
    position: watch::Receiver<i64>,
    /// Why the view stopped following, once it has.
    halted: Arc<OnceLock<String>>,
}

impl<P> Clone for LiveView<P> {
    fn clone(&self) -> Self {
        LiveView {
            state: self.state.clone(),
            position: self.position.clone(),
            halted: self.halted.clone(),
        }
    }
}

const BATCH: usize = 1000;

impl<P: Projection + Default + Sync> LiveView<P> {
    /// Loads and catches up, then follows on `tracker` until `cancel`.
    pub async fn start(
        log: Arc<dyn EventLog>,
        read_models: &dyn ReadModels,
        poll: Duration,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Self, ReplayError> {
        let mut projection = P::default();
        let stored = read_models.load_read_model(projection.name()).await?;
        projection.load(stored.rows)?;
        let mut position = stored.position;
        let mut dirty = BTreeSet::new();
        loop {
            let page = log.read_all(position, BATCH).await?;
            let Some(last) = page.last() else { break };
            position = last.position;
            for ev in &page {
                projection.apply(ev, &mut dirty)?;
            }
            dirty.clear();
        }
        let state = Arc::new(RwLock::new(projection));
        let (tx, rx) = watch::channel(position);
        let halted = Arc::new(OnceLock::new());
        tracker.spawn(follow(log, state.clone(), tx, halted.clone(), poll, cancel));
        Ok(LiveView {
            state,
            position: rx,
            halted,
        })
    }
}

impl<P> LiveView<P> {
    /// The current state. Hold the guard briefly, never across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, P> {
        // A panic while folding would poison the lock; the state is still the last good fold.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Position of the last event folded in.
    pub fn position(&self) -> i64 {
        *self.position.borrow()
    }

    /// Why the view stopped following the log, if it has (it then keeps its last good state).
    pub fn halted(&self) -> Option<String> {
        self.halted.get().cloned()
    }

    /// Waits until the view has folded `position`; false on timeout.
    pub async fn wait_for(&self, position: i64, timeout: Duration) -> bool {
        let mut rx = self.position.clone();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

async fn follow<P: Projection + Sync>(
    log: Arc<dyn EventLog>,
    state: Arc<RwLock<P>>,
    position: watch::Sender<i64>,
    halted: Arc<OnceLock<String>>,
    poll: Duration,
    cancel: CancellationToken,
) {
    let mut signal = log.append_signal();
    let mut at = *position.borrow();
    let mut dirty = BTreeSet::new();
    let mut backoff = Backoff::default();
    while !cancel.is_cancelled() {
        signal.borrow_and_update();
        let page = match log.read_all(at, BATCH).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "live view: store error, retrying");
                if !backoff.wait(&cancel).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        let Some(last) = page.last() else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wait_for_change(&mut signal, poll) => {}
            }
            continue;
        };
        let last = last.position;
        {
            let mut p = state.write().unwrap_or_else(|p| p.into_inner());
            for ev in &page {
                if let Err(e) = p.apply(ev, &mut dirty) {
                    // Never skip: the view stays at the last event it could fold, and says so.
                    tracing::error!(projection = p.name(), error = %e, "live view halted");
                    let _ = halted.set(format!(
                        "the {} view stopped at position {}: {e}",
                        p.name(),
                        ev.position
                    ));
                    return;
                }
            }
        }
        dirty.clear();
        at = last;
        let _ = position.send(at);
    }
}
