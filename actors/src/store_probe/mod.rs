//! The store probe: checks on a timer that the database answers and that its schema is the one
//! this build knows, and keeps the latest result for the health endpoints.
//!
//! Handlers read the result; they never query the database themselves. So a flood of
//! `/health/ready` calls costs no database round trips, and the probe's connections are opened
//! on the node's runtime (a connection opened on one of the HTTP server's runtimes would die with
//! it at shutdown).

use std::sync::Arc;
use std::time::Duration;

use revo_events::EventStore;
use tokio::sync::watch;

use crate::kit::{Context, Supervisor};

/// The latest probe: each field is the problem found, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// Whether a probe has run yet.
    pub done: bool,
    pub store: Option<String>,
    pub migrations: Option<String>,
}

/// The probe's handle: the latest result.
#[derive(Clone)]
pub struct StoreProbe {
    latest: watch::Receiver<Probed>,
}

impl StoreProbe {
    /// Probes every `every`, each query given at most `timeout`, as the supervised actor
    /// `store_probe`.
    pub fn spawn(
        store: Arc<dyn EventStore>,
        every: Duration,
        timeout: Duration,
        sup: &Supervisor,
    ) -> StoreProbe {
        let not_yet = Some("not probed yet".to_owned());
        let (tx, rx) = watch::channel(Probed {
            done: false,
            store: not_yet.clone(),
            migrations: not_yet,
        });
        let tx = Arc::new(tx);
        sup.spawn("store_probe", move |ctx| {
            run(store.clone(), tx.clone(), every, timeout, ctx)
        });
        StoreProbe { latest: rx }
    }

    pub fn latest(&self) -> Probed {
        self.latest.borrow().clone()
    }

    /// Waits for the first probe (at most `timeout`).
    pub async fn first(&self, timeout: Duration) {
        let mut rx = self.latest.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|p| p.done)).await;
    }
}

async fn run(
    store: Arc<dyn EventStore>,
    latest: Arc<watch::Sender<Probed>>,
    every: Duration,
    timeout: Duration,
    ctx: Context,
) -> Result<(), String> {
    ctx.health.ready();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let answer = |r: Result<Result<(), revo_events::StoreError>, _>| match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {timeout:?}")),
        };
        let store_problem = answer(tokio::time::timeout(timeout, store.ping()).await);
        let migrations = if store_problem.is_some() {
            Some("store unreachable".to_owned())
        } else {
            answer(tokio::time::timeout(timeout, store.schema_status()).await)
        };
        latest.send_replace(Probed {
            done: true,
            store: store_problem,
            migrations,
        });
    }
}

#[cfg(test)]
mod tests {
    use revo_events::memory::MemoryStore;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::kit::HealthBoard;

    #[tokio::test(start_paused = true)]
    async fn reports_a_healthy_store_once_probed_and_stops_on_shutdown() {
        let sup = Supervisor::new(
            TaskTracker::new(),
            CancellationToken::new(),
            HealthBoard::default(),
        );
        let store: Arc<dyn EventStore> = Arc::new(MemoryStore::default());
        let probe = StoreProbe::spawn(
            store.clone(),
            Duration::from_secs(1),
            Duration::from_secs(2),
            &sup,
        );
        probe.first(Duration::from_secs(5)).await;
        let p = probe.latest();
        assert_eq!((p.done, p.store, p.migrations), (true, None, None));
        store.close().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(probe.latest().store.is_some(), "a closed store is reported");
        sup.shutdown().await;
    }
}
