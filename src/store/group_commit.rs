//! Group commit: appends from many concurrent callers are batched into few transactions.
//!
//! Each caller still gets exactly its own outcome: version conflicts detected inside a batch fail
//! only their request; if the batch's transaction fails on a race with another process, every
//! request of it is retried alone, so one bad append never fails its neighbours.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus::Histogram;
use revo_events::{AppendRequest, Appended, ExpectedVersion, StoreError};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a whole batch transaction failed (nothing of it was written).
#[derive(Debug)]
pub enum BatchFailure {
    /// Another writer raced us (unique violation): retrying each request alone sorts it out.
    Race(StoreError),
    /// The database failed: every request gets this error.
    Fatal(StoreError),
}

/// A database that can append several requests in one transaction.
#[async_trait]
pub trait BatchBackend: Send + Sync + 'static {
    /// Appends `reqs` in one transaction. Requests whose expected version does not match are
    /// reported per request and written nowhere; the others commit together.
    async fn append_batch(
        &self,
        reqs: &[AppendRequest],
    ) -> Result<Vec<Result<Appended, StoreError>>, BatchFailure>;

    /// The error to report when a request raced alone (reads the stream's current version).
    async fn race_error(&self, req: &AppendRequest, cause: StoreError) -> StoreError;
}

#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    /// Most events in one transaction.
    pub max_batch_events: usize,
    /// Transactions in flight at once.
    pub max_in_flight: usize,
    /// Appends waiting for a transaction before callers are pushed back.
    pub queue: usize,
}

#[derive(Clone)]
pub struct StoreMetrics {
    /// Seconds from an append call to its outcome.
    pub append_seconds: Histogram,
    /// Events per committed transaction.
    pub batch_events: Histogram,
    /// How long committed events have been held back behind an open transaction (Postgres).
    pub held_back_seconds: prometheus::Gauge,
}

impl StoreMetrics {
    /// Metrics that are recorded but not exported (tests, tools, benchmarks).
    pub fn unregistered() -> prometheus::Result<Self> {
        Ok(crate::metrics::Metrics::new()?.store)
    }
}

/// Tries for an `ExpectedVersion::Any` append that keeps racing writers in other processes.
const ANY_ATTEMPTS: u32 = 5;

struct Job {
    req: AppendRequest,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
    enqueued: Instant,
}

pub struct GroupCommitter {
    tx: mpsc::Sender<Job>,
    closing: CancellationToken,
    done: TaskTracker,
}

impl GroupCommitter {
    /// Starts the committer. Every signal in `signals` is bumped after each commit.
    pub fn start(
        backend: Arc<dyn BatchBackend>,
        config: GroupCommitConfig,
        metrics: StoreMetrics,
        signals: Vec<Arc<watch::Sender<u64>>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let closing = CancellationToken::new();
        let done = TaskTracker::new();
        done.spawn(run(
            backend,
            rx,
            config,
            metrics,
            signals.into(),
            closing.clone(),
        ));
        done.close();
        GroupCommitter { tx, closing, done }
    }

    pub async fn append(&self, req: AppendRequest) -> Result<Appended, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            req,
            reply,
            enqueued: Instant::now(),
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Stops taking appends and waits until every queued one has its outcome.
    pub async fn close(&self) {
        self.closing.cancel();
        self.done.wait().await;
    }
}

async fn run(
    backend: Arc<dyn BatchBackend>,
    mut rx: mpsc::Receiver<Job>,
    config: GroupCommitConfig,
    metrics: StoreMetrics,
    signals: Arc<[Arc<watch::Sender<u64>>]>,
    closing: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let batches = TaskTracker::new();
    loop {
        // Wait for a free transaction slot before collecting: while all are busy, appends pile
        // up in the queue and the next batch grows.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let first = tokio::select! {
            job = rx.recv() => job,
            _ = closing.cancelled() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        let mut events = first.req.events.len();
        let mut jobs = vec![first];
        while events < config.max_batch_events {
            match rx.try_recv() {
                Ok(job) => {
                    events += job.req.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let (backend, metrics, signals) = (backend.clone(), metrics.clone(), signals.clone());
        batches.spawn(async move {
            commit(backend.as_ref(), jobs, &metrics, &signals).await;
            drop(permit);
        });
    }
    batches.close();
    batches.wait().await;
}

async fn commit(
    backend: &dyn BatchBackend,
    jobs: Vec<Job>,
    metrics: &StoreMetrics,
    signals: &[Arc<watch::Sender<u64>>],
) {
    let (reqs, waiters): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .map(|j| (j.req, (j.reply, j.enqueued)))
        .unzip();
    let outcomes = match backend.append_batch(&reqs).await {
        Ok(outcomes) => {
            metrics
                .batch_events
                .observe(committed_events(&reqs, &outcomes) as f64);
            outcomes
        }
        Err(BatchFailure::Fatal(e)) => vec![Err(e); reqs.len()],
        Err(BatchFailure::Race(_)) => {
            let mut outcomes = Vec::with_capacity(reqs.len());
            for req in &reqs {
                let one = std::slice::from_ref(req);
                let mut attempt = 1;
                let outcome = loop {
                    match backend.append_batch(one).await {
                        Ok(mut o) => {
                            break o
                                .pop()
                                .unwrap_or(Err(StoreError::Backend("empty batch outcome".into())))
                        }
                        // `Any` promises no conflict: lost races are retried, a few times.
                        Err(BatchFailure::Race(_))
                            if req.expected == ExpectedVersion::Any && attempt < ANY_ATTEMPTS =>
                        {
                            attempt += 1;
                        }
                        Err(BatchFailure::Race(cause)) => {
                            break Err(backend.race_error(req, cause).await)
                        }
                        Err(BatchFailure::Fatal(e)) => break Err(e),
                    }
                };
                if outcome.is_ok() {
                    metrics.batch_events.observe(req.events.len() as f64);
                }
                outcomes.push(outcome);
            }
            outcomes
        }
    };
    if outcomes.iter().any(Result::is_ok) {
        for s in signals {
            s.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
    for ((reply, enqueued), outcome) in waiters.into_iter().zip(outcomes) {
        metrics
            .append_seconds
            .observe(enqueued.elapsed().as_secs_f64());
        // The caller may have gone away (timeout, disconnect); its outcome stands anyway.
        let _ = reply.send(outcome);
    }
}

fn committed_events(reqs: &[AppendRequest], outcomes: &[Result<Appended, StoreError>]) -> usize {
    reqs.iter()
        .zip(outcomes)
        .filter(|(_, o)| o.is_ok())
        .map(|(r, _)| r.events.len())
        .sum()
}
