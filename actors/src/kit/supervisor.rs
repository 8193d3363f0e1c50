//! The supervisor: runs every actor loop of a node on one task tracker under one cancellation
//! token, restarts a loop that returns an error or panics (after the shared back-off), reports
//! each actor's health, and drains them all on shutdown.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Backoff, Health, HealthBoard, Status};

/// What a supervised loop gets: its stop signal and its health reporter.
#[derive(Clone)]
pub struct Context {
    pub cancel: CancellationToken,
    pub health: Health,
}

/// A run that lasted this long was healthy: the next failure backs off from the start again.
const STABLE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Supervisor {
    tracker: TaskTracker,
    cancel: CancellationToken,
    board: HealthBoard,
    restarts: Option<prometheus::IntCounterVec>,
}

impl Supervisor {
    pub fn new(tracker: TaskTracker, cancel: CancellationToken, board: HealthBoard) -> Self {
        Supervisor {
            tracker,
            cancel,
            board,
            restarts: None,
        }
    }

    /// Counts restarts in `counter` (labelled by actor name).
    pub fn with_restart_counter(mut self, counter: prometheus::IntCounterVec) -> Self {
        self.restarts = Some(counter);
        self
    }

    pub fn board(&self) -> &HealthBoard {
        &self.board
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Runs `run` as the actor `name` until shutdown: a loop that fails (or panics) is
    /// restarted after the back-off; one that returns `Ok` has finished and is not.
    pub fn spawn<F, Fut>(&self, name: &str, mut run: F)
    where
        F: FnMut(Context) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let health = self.board.register(name);
        let cancel = self.cancel.clone();
        let tracker = self.tracker.clone();
        let restarts = self.restarts.clone();
        let name = name.to_owned();
        self.tracker.spawn(async move {
            let mut backoff = Backoff::default();
            loop {
                let ctx = Context {
                    cancel: cancel.clone(),
                    health: health.clone(),
                };
                let started = Instant::now();
                // Its own task, so a panic ends that run only.
                let outcome = tracker.spawn(run(ctx)).await;
                if cancel.is_cancelled() {
                    break;
                }
                let why = match outcome {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => e,
                    Err(join) => format!("panicked: {join}"),
                };
                tracing::error!(actor = %name, error = %why, "actor failed; restarting");
                health.failed(format!("restarting after: {why}"));
                if let Some(c) = &restarts {
                    c.with_label_values(&[name.as_str()]).inc();
                }
                if started.elapsed() >= STABLE {
                    backoff.reset();
                }
                if !backoff.wait(&cancel).await {
                    break;
                }
            }
            health.set(Status::Stopped);
        });
    }

    /// Stops every actor and waits for them to finish.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failing_and_panicking_loops_restart_then_drain_on_shutdown() {
        let sup = Supervisor::new(
            TaskTracker::new(),
            CancellationToken::new(),
            HealthBoard::default(),
        );
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        sup.spawn("flaky", move |ctx| {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Err("first run fails".to_owned()),
                    #[allow(clippy::panic)]
                    1 => panic!("second run panics"),
                    _ => {
                        ctx.health.ready();
                        ctx.cancel.cancelled().await;
                        Ok(())
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(sup.board().snapshot()[0].1, Status::Ready);
        sup.shutdown().await;
        assert_eq!(sup.board().snapshot()[0].1, Status::Stopped);
    }
}
