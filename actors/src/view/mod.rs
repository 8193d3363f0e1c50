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
//!
//! The follower runs under the node's supervisor as `view.<projection>`: `ready` while it
//! follows, `degraded` while the store fails (it retries with the shared back-off), `failed`
//! once halted, which fails readiness.

use crate::kit::{Backoff, Context, Supervisor};
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};
use std::time::Duration;

use revo_events::store::wait_for_change;
use revo_events::{EventLog, Projection, ReadModels};
use tokio::sync::watch;

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
    /// Loads and catches up, then follows as a supervised actor until shutdown.
    pub async fn start(
        log: Arc<dyn EventLog>,
        read_models: &dyn ReadModels,
        poll: Duration,
        sup: &Supervisor,
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
        let name = format!("view.{}", projection.name());
        let state = Arc::new(RwLock::new(projection));
        let (tx, rx) = watch::channel(position);
        let view = LiveView {
            state,
            position: rx,
            halted: Arc::new(OnceLock::new()),
        };
        let (follower, tx) = (view.clone(), Arc::new(tx));
        sup.spawn(&name, move |ctx| {
            follow(
                log.clone(),
                follower.state.clone(),
                tx.clone(),
                follower.halted.clone(),
                poll,
                ctx,
            )
        });
        Ok(view)
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
    /// Read-your-writes: waits (up to `timeout`) until `found` finds what it looks for in
    /// the view, checking again after each fold.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        found: impl Fn(&P) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.position.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(t) = found(&self.read()) {
                return Some(t);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // The view stopped following, or time is up: one last look.
                _ => return found(&self.read()),
            }
        }
    }

    pub async fn wait_for(&self, position: i64, timeout: Duration) -> bool {
        let mut rx = self.position.clone();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Stays halted (health `failed`) until shutdown: a halted view is never restarted, since it
/// would only stop at the same event again.
async fn stay_halted(ctx: &Context, halted: &OnceLock<String>, why: String) -> Result<(), String> {
    let why = halted.get_or_init(|| why).clone();
    ctx.health.failed(why);
    ctx.cancel.cancelled().await;
    Ok(())
}

async fn follow<P: Projection + Sync>(
    log: Arc<dyn EventLog>,
    state: Arc<RwLock<P>>,
    position: Arc<watch::Sender<i64>>,
    halted: Arc<OnceLock<String>>,
    poll: Duration,
    ctx: Context,
) -> Result<(), String> {
    let cancel = &ctx.cancel;
    if let Some(why) = halted.get() {
        return stay_halted(&ctx, &halted, why.clone()).await;
    }
    if state.is_poisoned() {
        // A fold panicked part-way through a page: the state may hold half of it, and folding
        // the page again could apply events twice.
        let why = "a fold panicked part-way through a page".to_owned();
        return stay_halted(&ctx, &halted, why).await;
    }
    let mut signal = log.append_signal();
    let mut at = *position.borrow();
    let mut dirty = BTreeSet::new();
    let mut backoff = Backoff::default();
    ctx.health.ready();
    while !cancel.is_cancelled() {
        signal.borrow_and_update();
        let page = match log.read_all(at, BATCH).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "live view: store error, retrying");
                ctx.health.degraded(format!("store error: {e}"));
                if !backoff.wait(cancel).await {
                    return Ok(());
                }
                continue;
            }
        };
        backoff.reset();
        ctx.health.ready();
        let Some(last) = page.last() else {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = wait_for_change(&mut signal, poll) => {}
            }
            continue;
        };
        let last = last.position;
        let stopped = {
            let mut p = state.write().unwrap_or_else(|p| p.into_inner());
            let mut stopped = None;
            for ev in &page {
                if let Err(e) = p.apply(ev, &mut dirty) {
                    // Never skip: the view stays at the last event it could fold, and says so.
                    tracing::error!(projection = p.name(), error = %e, "live view halted");
                    stopped = Some(format!(
                        "the {} view stopped at position {}: {e}",
                        p.name(),
                        ev.position
                    ));
                    break;
                }
            }
            stopped
        };
        if let Some(why) = stopped {
            return stay_halted(&ctx, &halted, why).await;
        }
        dirty.clear();
        at = last;
        let _ = position.send(at);
    }
    Ok(())
}
