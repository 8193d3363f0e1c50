//! The projection runner: loads a read model with its checkpoint, folds every committed event
//! after it, and saves changed rows and the new checkpoint in one transaction.
//!
//! Several nodes may run the same projection: the checkpoint is compare-and-set, so only one
//! fold of each event lands; a loser reloads. A rebuild (new generation) makes running folds
//! reload the same way.
//!
//! Each runner is a supervised actor, `projector.<name>`: `ready` while it follows,
//! `degraded` while the store fails (it retries with the shared back-off) and once halted on an
//! event it cannot fold. A halted projection does not fail readiness: the edge answers from its
//! in-memory views, not from these read models, and every node would halt on the same event.

use crate::kit::{Backoff, Context, Supervisor};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use revo_events::store::wait_for_change;
use revo_events::{EventLog, Projection, ProjectionError, ReadModels, StoreError};
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq)]
pub enum ProjectorState {
    Starting,
    Running {
        position: i64,
    },
    /// Halted on an event it cannot fold; never skipped. Fix the code and restart.
    Failed {
        reason: String,
    },
}

#[derive(Clone)]
pub struct ProjectorMetrics {
    pub lag_events: IntGauge,
}

#[derive(Clone)]
pub struct ProjectorHandle {
    pub name: &'static str,
    pub state: watch::Receiver<ProjectorState>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldStats {
    pub events: u64,
    /// Position of the last event folded (0 if none): the checkpoint of the result.
    pub position: i64,
}

/// How far `fold_from_zero` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldUntil {
    /// Through the event at this position, in commit order (0: fold nothing). `verify` uses the
    /// live checkpoint so both sides cover exactly the same events.
    Position(i64),
    /// Every event readable now, and at least the newest event committed before the call,
    /// waiting up to `wait` for older open transactions that hold it back. Events that remain
    /// held back are not lost: a projection runner continues from the returned checkpoint.
    Head { wait: Duration },
}

/// Folds into `projection`, from the first event, as far as `until` says.
pub async fn fold_from_zero(
    store: &dyn EventLog,
    projection: &mut dyn Projection,
    until: FoldUntil,
    batch: usize,
) -> Result<FoldStats, ReplayError> {
    let mut stats = FoldStats::default();
    let (stop_at, head, deadline) = match until {
        FoldUntil::Position(0) => return Ok(stats),
        FoldUntil::Position(p) => (Some(p), 0, None),
        FoldUntil::Head { wait } => (
            None,
            store.head_position().await?,
            Some(tokio::time::Instant::now() + wait),
        ),
    };
    let mut seen_head = head == 0;
    let mut dirty = BTreeSet::new();
    let mut signal = store.append_signal();
    signal.borrow_and_update();
    let mut page = store.read_all(0, batch).await?;
    loop {
        if page.is_empty() {
            if let Some(target) = stop_at {
                return Err(StoreError::UnknownPosition(target).into());
            }
            match deadline {
                Some(d) if !seen_head && tokio::time::Instant::now() < d => {
                    wait_for_change(&mut signal, Duration::from_millis(20)).await;
                    signal.borrow_and_update();
                    page = store.read_all(stats.position, batch).await?;
                    continue;
                }
                _ => return Ok(stats),
            }
        }
        let last = page.last().map_or(0, |e| e.position);
        let stops_here = stop_at.is_some_and(|p| page.iter().any(|e| e.position == p));
        // Read the next page while folding this one: the database works meanwhile.
        let next = async {
            if stops_here {
                Ok(Vec::new())
            } else {
                store.read_all(last, batch).await
            }
        };
        let fold = async {
            for chunk in page.chunks(1024) {
                for ev in chunk {
                    projection.apply(ev, &mut dirty)?;
                    dirty.clear();
                    stats.events += 1;
                    stats.position = ev.position;
                    seen_head |= ev.position == head;
                    if Some(ev.position) == stop_at {
                        return Ok::<bool, ReplayError>(true);
                    }
                }
                tokio::task::yield_now().await;
            }
            Ok(false)
        };
        signal.borrow_and_update();
        let (next, done) = futures::join!(next, fold);
        if done? {
            return Ok(stats);
        }
        page = next?;
    }
}

/// Pages a stopping runner still folds, so a clean shutdown leaves its read model current.
const DRAIN_PAGES: u32 = 10;

pub struct Projector {
    pub log: Arc<dyn EventLog>,
    pub read_models: Arc<dyn ReadModels>,
    pub projection: Box<dyn Projection>,
    pub metrics: ProjectorMetrics,
    pub batch: usize,
    pub poll: Duration,
}

impl Projector {
    /// Runs the projection as the supervised actor `projector.<name>`.
    pub fn spawn(self, sup: &Supervisor) -> ProjectorHandle {
        let (tx, rx) = watch::channel(ProjectorState::Starting);
        let name = self.projection.name();
        // A restart (after a panic) takes the runner back; `follow` reloads its state first.
        let runner = Arc::new(tokio::sync::Mutex::new(self));
        let tx = Arc::new(tx);
        sup.spawn(&format!("projector.{name}"), move |ctx| {
            let (runner, tx) = (runner.clone(), tx.clone());
            async move { runner.lock().await.run(&tx, ctx).await }
        });
        ProjectorHandle { name, state: rx }
    }

    async fn run(
        &mut self,
        state: &watch::Sender<ProjectorState>,
        ctx: Context,
    ) -> Result<(), String> {
        let name = self.projection.name();
        let cancel = &ctx.cancel;
        let halted = match &*state.borrow() {
            ProjectorState::Failed { reason } => Some(reason.clone()),
            _ => None,
        };
        if let Some(reason) = halted {
            ctx.health.degraded(format!("halted: {reason}"));
            cancel.cancelled().await;
            return Ok(());
        }
        let mut backoff = Backoff::default();
        while !cancel.is_cancelled() {
            match self.follow(state, &ctx).await {
                Ok(()) => backoff.reset(),
                Err(ReplayError::Projection(e)) => {
                    // Never skipped, never restarted (it would stop at the same event): it
                    // stays halted and says so until the code is fixed and the node restarted.
                    tracing::error!(projection = name, error = %e, "projection halted");
                    ctx.health.degraded(format!("halted: {e}"));
                    let _ = state.send(ProjectorState::Failed {
                        reason: e.to_string(),
                    });
                    cancel.cancelled().await;
                    return Ok(());
                }
                Err(ReplayError::Store(e)) => {
                    tracing::warn!(projection = name, error = %e, "projection: store error, retrying");
                    ctx.health.degraded(format!("store error: {e}"));
                    if !backoff.wait(cancel).await {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Follows the store until cancelled (Ok) or until the stored model moved under us (Ok, the
    /// caller reloads).
    async fn follow(
        &mut self,
        state: &watch::Sender<ProjectorState>,
        ctx: &Context,
    ) -> Result<(), ReplayError> {
        let name = self.projection.name();
        let cancel = &ctx.cancel;
        let stored = self.read_models.load_read_model(name).await?;
        self.projection.load(stored.rows)?;
        let (generation, mut position) = (stored.generation, stored.position);
        let _ = state.send(ProjectorState::Running { position });
        ctx.health.ready();
        let mut dirty = BTreeSet::new();
        let mut signal = self.log.append_signal();
        // Once cancelled, fold what is already committed (a few pages at most), then stop.
        let mut drain_pages = 0;
        loop {
            if cancel.is_cancelled() {
                drain_pages += 1;
                if drain_pages > DRAIN_PAGES {
                    break;
                }
            }
            signal.borrow_and_update();
            let events = self.log.read_all(position, self.batch).await?;
            let Some(last) = events.last() else {
                self.metrics.lag_events.set(0);
                if cancel.is_cancelled() {
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = wait_for_change(&mut signal, self.poll) => {}
                }
                continue;
            };
            let to = last.position;
            for ev in &events {
                self.projection.apply(ev, &mut dirty)?;
            }
            let changes = std::mem::take(&mut dirty)
                .into_iter()
                .map(|k| {
                    let doc = self.projection.row(&k);
                    (k, doc)
                })
                .collect();
            if !self
                .read_models
                .save_read_model(name, generation, position, to, changes)
                .await?
            {
                tracing::info!(
                    projection = name,
                    "read model moved (rebuild or another node); reloading"
                );
                return Ok(());
            }
            position = to;
            let _ = state.send(ProjectorState::Running { position });
            if events.len() == self.batch {
                if let Ok(head) = self.log.head_position().await {
                    self.metrics.lag_events.set((head - position).max(0));
                }
            } else {
                self.metrics.lag_events.set(0);
            }
        }
        Ok(())
    }
}
