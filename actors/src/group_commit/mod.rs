//! The group committer: appends from many concurrent callers are batched into few transactions.
//!
//! Each caller still gets exactly its own outcome: version conflicts detected inside a batch fail
//! only their request; if the batch's transaction fails on a race with another process, every
//! request of it is retried alone, so one bad append never fails its neighbours.
//!
//! It belongs to its store, not to the node's supervisor: the store adapter starts it when it
//! opens (it is how the adapter provides `append`) and drains it when it closes, after every
//! supervised actor has stopped, so their last appends still land. Its mailbox is bounded
//! (`queue` appends); a full one answers `Unavailable` at once instead of growing or waiting.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus::Histogram;
use revo_events::{AppendRequest, Appended, ExpectedVersion, StoreError};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kit::{mailbox, Handle, Inbox, SendError};

/// Why a whole batch transaction failed (nothing of it was written).
#[derive(Debug)]
pub enum BatchFailure {
    /// Another writer raced us (unique violation): retrying each request alone sorts it out.
    Race(StoreError),
    /// The database failed: every request gets this error.
    Fatal(StoreError),
}

/// A database that can append several requests in one transaction (the store adapter's seam).
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
    /// Appends waiting for a transaction; past that, appends are refused (`Unavailable`).
    pub queue: usize,
}

/// What the committer records.
#[derive(Clone)]
pub struct CommitMetrics {
    /// Seconds from an append call to its outcome.
    pub append_seconds: Histogram,
    /// Events per committed transaction.
    pub batch_events: Histogram,
}

/// Tries for an `ExpectedVersion::Any` append that keeps racing writers in other processes.
const ANY_ATTEMPTS: u32 = 5;

/// One append waiting for its batch.
pub struct Job {
    req: AppendRequest,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
    enqueued: Instant,
}

/// The handle to a store's committer.
pub struct GroupCommitter {
    handle: Handle<Job>,
    closing: CancellationToken,
    done: TaskTracker,
}

impl GroupCommitter {
    /// Starts the committer. Every signal in `signals` is bumped after each commit.
    pub fn start(
        backend: Arc<dyn BatchBackend>,
        config: GroupCommitConfig,
        metrics: CommitMetrics,
        signals: Vec<Arc<watch::Sender<u64>>>,
    ) -> Self {
        let (handle, inbox) = mailbox("group_commit", config.queue);
        let closing = CancellationToken::new();
        let done = TaskTracker::new();
        done.spawn(run(
            backend,
            inbox,
            config,
            metrics,
            signals.into(),
            closing.clone(),
        ));
        done.close();
        GroupCommitter {
            handle,
            closing,
            done,
        }
    }

    /// Appends `req` with the next batch and waits for its own outcome.
    pub async fn append(&self, req: AppendRequest) -> Result<Appended, StoreError> {
        let enqueued = Instant::now();
        let answer = self
            .handle
            .ask(|reply| Job {
                req,
                reply,
                enqueued,
            })
            .await;
        match answer {
            Ok(outcome) => outcome,
            Err(SendError::Full(_)) => Err(StoreError::Unavailable(
                "the event store is busy: too many appends waiting; retry shortly".into(),
            )),
            Err(SendError::Gone(_)) => Err(StoreError::ShuttingDown),
        }
    }

    /// Stops taking appends and waits until every queued one has its outcome.
    pub async fn close(&self) {
        self.closing.cancel();
        self.done.wait().await;
    }
}

async fn run(
    backend: Arc<dyn BatchBackend>,
    mut inbox: Inbox<Job>,
    config: GroupCommitConfig,
    metrics: CommitMetrics,
    signals: Arc<[Arc<watch::Sender<u64>>]>,
    closing: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let batches = TaskTracker::new();
    loop {
        // Wait for a free transaction slot before collecting: while all are busy, appends pile
        // up in the mailbox and the next batch grows.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let first = tokio::select! {
            job = inbox.recv() => job,
            _ = closing.cancelled() => {
                // Refuse new appends, still commit the ones already queued.
                inbox.close();
                inbox.recv().await
            }
        };
        let Some(first) = first else { break };
        let mut events = first.req.events.len();
        let mut jobs = vec![first];
        while events < config.max_batch_events {
            match inbox.try_recv() {
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
    metrics: &CommitMetrics,
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
                let outcome = alone(backend, req).await;
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

/// One request of a batch that raced another process, retried in a transaction of its own.
async fn alone(backend: &dyn BatchBackend, req: &AppendRequest) -> Result<Appended, StoreError> {
    let one = std::slice::from_ref(req);
    let mut attempt = 1;
    loop {
        match backend.append_batch(one).await {
            Ok(mut o) => {
                return o
                    .pop()
                    .unwrap_or(Err(StoreError::Backend("empty batch outcome".into())))
            }
            // `Any` promises no conflict: lost races are retried, a few times.
            Err(BatchFailure::Race(_))
                if req.expected == ExpectedVersion::Any && attempt < ANY_ATTEMPTS =>
            {
                attempt += 1;
            }
            Err(BatchFailure::Race(cause)) => return Err(backend.race_error(req, cause).await),
            Err(BatchFailure::Fatal(e)) => return Err(e),
        }
    }
}

fn committed_events(reqs: &[AppendRequest], outcomes: &[Result<Appended, StoreError>]) -> usize {
    reqs.iter()
        .zip(outcomes)
        .filter(|(_, o)| o.is_ok())
        .map(|(r, _)| r.events.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use revo_events::{EventMeta, NewEvent};

    use super::*;

    /// Appends after a gate opens; every request gets the next versions of its stream.
    struct Gated {
        gate: Semaphore,
        batches: Mutex<Vec<usize>>,
        /// The first batch fails as a race (a writer in another process won).
        race_first: bool,
    }

    #[async_trait]
    impl BatchBackend for Gated {
        async fn append_batch(
            &self,
            reqs: &[AppendRequest],
        ) -> Result<Vec<Result<Appended, StoreError>>, BatchFailure> {
            let _ = self
                .gate
                .acquire()
                .await
                .map_err(|_| BatchFailure::Fatal(StoreError::ShuttingDown))?
                .forget();
            let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
            batches.push(reqs.len());
            if self.race_first && batches.len() == 1 {
                return Err(BatchFailure::Race(StoreError::Backend("lost".into())));
            }
            Ok(reqs
                .iter()
                .map(|r| {
                    Ok(Appended {
                        stream_version: r.events.len() as i64,
                        first_position: 1,
                        last_position: r.events.len() as i64,
                    })
                })
                .collect())
        }

        async fn race_error(&self, _: &AppendRequest, cause: StoreError) -> StoreError {
            cause
        }
    }

    fn request(n: usize) -> AppendRequest {
        let events = (0..n)
            .map(|_| NewEvent {
                event_id: uuid::Uuid::now_v7(),
                event_type: "test.happened".into(),
                schema: 1,
                occurred_at: chrono::Utc::now(),
                meta: EventMeta::default(),
                payload: vec![0x80],
            })
            .collect();
        AppendRequest::new("test", "s", ExpectedVersion::Any, events)
    }

    fn metrics() -> CommitMetrics {
        let h = || Histogram::with_opts(prometheus::HistogramOpts::new("h", "h"));
        CommitMetrics {
            append_seconds: h().unwrap_or_else(|_| unreachable!()),
            batch_events: h().unwrap_or_else(|_| unreachable!()),
        }
    }

    /// A backend whose transactions wait until the test opens the gate.
    fn gated(race_first: bool) -> Arc<Gated> {
        Arc::new(Gated {
            gate: Semaphore::new(0),
            batches: Mutex::new(Vec::new()),
            race_first,
        })
    }

    /// Appends `events` events from a task of its own.
    fn append(
        tasks: &TaskTracker,
        c: &Arc<GroupCommitter>,
        events: usize,
    ) -> tokio::task::JoinHandle<Result<Appended, StoreError>> {
        let c = c.clone();
        tasks.spawn(async move { c.append(request(events)).await })
    }

    fn start(backend: Arc<Gated>, queue: usize) -> (Arc<GroupCommitter>, watch::Receiver<u64>) {
        let (signal, rx) = watch::channel(0);
        let config = GroupCommitConfig {
            max_batch_events: 100,
            max_in_flight: 1,
            queue,
        };
        let c = GroupCommitter::start(backend, config, metrics(), vec![Arc::new(signal)]);
        (Arc::new(c), rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_mailbox_refuses_at_once_and_queued_appends_commit_in_one_batch() {
        let backend = gated(false);
        let (c, signal) = start(backend.clone(), 2);
        let tasks = TaskTracker::new();
        // The first append is taken into a batch and waits at the gate.
        let first = append(&tasks, &c, 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Two more fill the mailbox while that transaction is in flight.
        let queued: Vec<_> = (0..2).map(|_| append(&tasks, &c, 2)).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The next one is refused now, not parked.
        let refused = tokio::time::timeout(Duration::from_secs(1), c.append(request(1))).await;
        assert!(
            matches!(refused, Ok(Err(StoreError::Unavailable(_)))),
            "{refused:?}"
        );
        backend.gate.add_permits(10);
        assert!(first.await.unwrap().is_ok());
        for q in queued {
            assert_eq!(q.await.unwrap().unwrap().stream_version, 2);
        }
        // One transaction for the first, one for the two that waited together.
        assert_eq!(*backend.batches.lock().unwrap(), vec![1, 2]);
        assert_eq!(*signal.borrow(), 2);
        c.close().await;
        assert!(matches!(
            c.append(request(1)).await,
            Err(StoreError::ShuttingDown)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_raced_batch_is_retried_request_by_request() {
        let backend = gated(true);
        let (c, _) = start(backend.clone(), 8);
        let tasks = TaskTracker::new();
        let first = append(&tasks, &c, 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (x, y) = (append(&tasks, &c, 1), append(&tasks, &c, 3));
        tokio::time::sleep(Duration::from_millis(50)).await;
        backend.gate.add_permits(10);
        // The lone first request raced and is retried alone; the next batch commits whole.
        assert!(first.await.unwrap().is_ok());
        assert_eq!(
            (
                x.await.unwrap().unwrap().stream_version,
                y.await.unwrap().unwrap().stream_version
            ),
            (1, 3)
        );
        assert_eq!(*backend.batches.lock().unwrap(), vec![1, 1, 2]);
        c.close().await;
    }
}
