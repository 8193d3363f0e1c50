//! The model client: the edge's side of the worker protocol (`model_worker/wire.rs`). It follows
//! the workers' heartbeats, sends a request to a model's queue group, relays the worker's
//! replies to the job, tells the worker to stop when the client leaves, and gives up when the
//! worker falls silent. The same in both modes: over NATS to `revo worker` processes, or over
//! the in-process transport to the workers of embedded `revo serve`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use revo_nats::{Subjects, WorkStream, WorkTransport};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kit::{Context, Supervisor};

use crate::model_thread::{Event, Failure, Job, SubmitError};
use crate::model_worker::wire::{Heartbeat, Reply, Request};

/// Live workers by model, from their heartbeats.
type Seen = Arc<Mutex<HashMap<String, HashMap<String, (Instant, Heartbeat)>>>>;

pub struct ModelClient {
    client: Arc<dyn WorkTransport>,
    subjects: Subjects,
    timeout: Duration,
    seen: Seen,
    tasks: TaskTracker,
    /// The node is stopping: requests in flight end (their workers are told to stop).
    shutdown: CancellationToken,
    runtime: tokio::runtime::Handle,
}

impl ModelClient {
    /// Connects and starts following the workers' heartbeats, as the supervised actor
    /// `model_client.heartbeats` (a subscription that ends is subscribed again: without
    /// heartbeats every model would look workerless). Requests run as tasks of the
    /// supervisor's tracker and end at its shutdown.
    pub async fn start(
        client: Arc<dyn WorkTransport>,
        subjects: Subjects,
        timeout: Duration,
        sup: &Supervisor,
    ) -> Result<ModelClient, revo_nats::BusError> {
        let subject = format!("{}.sig.worker.*", subjects.prefix());
        // The first subscription is made here, so a transport that cannot subscribe fails the
        // start; restarts subscribe again.
        let first = Arc::new(Mutex::new(Some(client.subscribe(&subject).await?)));
        let seen: Seen = Arc::default();
        let (c, s) = (client.clone(), seen.clone());
        sup.spawn("model_client.heartbeats", move |ctx| {
            let taken = first.lock().ok().and_then(|mut f| f.take());
            follow_heartbeats(c.clone(), subject.clone(), taken, s.clone(), ctx)
        });
        Ok(ModelClient {
            client,
            subjects,
            timeout,
            seen,
            tasks: sup.tracker().clone(),
            shutdown: sup.cancel_token().clone(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Workers of `model` heard from within the worker timeout, with the model loaded.
    pub fn live_workers(&self, model: &str) -> Vec<Heartbeat> {
        let Ok(seen) = self.seen.lock() else {
            return Vec::new();
        };
        seen.get(model)
            .map(|w| {
                w.values()
                    .filter(|(at, hb)| hb.loaded && at.elapsed() < self.timeout)
                    .map(|(_, hb)| hb.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every model's live workers with their summed queue depth and running sequences, as
    /// `(model, workers, queued, active)` (for the metrics and the workers' autoscaler).
    pub fn census(&self) -> Vec<(String, usize, usize, usize)> {
        let Ok(seen) = self.seen.lock() else {
            return Vec::new();
        };
        let mut out: Vec<_> = seen
            .iter()
            .map(|(model, workers)| {
                let live = workers
                    .values()
                    .filter(|(at, hb)| hb.loaded && at.elapsed() < self.timeout);
                let (n, q, a) = live.fold((0, 0, 0), |(n, q, a), (_, hb)| {
                    (n + 1, q + hb.queued, a + hb.active)
                });
                (model.clone(), n, q, a)
            })
            .collect();
        out.sort();
        out
    }

    /// Sends `job` to a worker of `model`; its replies go to the job's events.
    pub fn submit(&self, model: &str, job: Job) -> Result<(), SubmitError> {
        if self.live_workers(model).is_empty() {
            return Err(SubmitError::NoWorker(model.to_owned()));
        }
        let subject = self
            .subjects
            .model_requests(model)
            .map_err(|_| SubmitError::Unknown(model.to_owned()))?;
        let request = Request {
            prompt: job.prompt.clone(),
            messages: job.messages.clone(),
            sampling: job.sampling.clone(),
            stop: job.stop.clone(),
        };
        let payload = serde_json::to_vec(&request).map_err(|_| SubmitError::Down(model.into()))?;
        let (client, subjects, timeout) =
            (self.client.clone(), self.subjects.clone(), self.timeout);
        let shutdown = self.shutdown.clone();
        // On the node's runtime, not the HTTP worker's: the request outlives the handler when
        // it streams.
        let relayed = async move {
            let sent = relay(
                &client, &subjects, &subject, payload, timeout, &job, &shutdown,
            );
            if let Err(f) = sent.await {
                let _ = job.events.send(Event::Done(Err(f)));
            }
        };
        self.tasks.spawn_on(relayed, &self.runtime);
        Ok(())
    }
}

/// Tells the worker holding `inbox`'s request to drop it.
async fn cancel_at(
    client: &Arc<dyn WorkTransport>,
    subjects: &Subjects,
    worker: Option<&str>,
    inbox: &str,
) {
    if let Some(s) = worker.and_then(|w| subjects.worker_cancel(w).ok()) {
        let _ = client.publish(&s, inbox.to_owned().into()).await;
    }
}

fn lost(message: String) -> Failure {
    Failure {
        code: "worker_lost",
        message,
    }
}

/// Publishes the request and relays replies until the outcome, the client leaving (the worker
/// is told to cancel), or `timeout` of silence.
async fn relay(
    client: &Arc<dyn WorkTransport>,
    subjects: &Subjects,
    subject: &str,
    payload: Vec<u8>,
    timeout: Duration,
    job: &Job,
    shutdown: &CancellationToken,
) -> Result<(), Failure> {
    let (inbox, mut replies) =
        client
            .request(subject, payload.into())
            .await
            .map_err(|e| Failure {
                code: "model_unavailable",
                message: format!("the request could not be sent to the workers: {e}"),
            })?;
    let mut worker: Option<String> = None;
    loop {
        let next = tokio::select! {
            r = tokio::time::timeout(timeout, replies.next()) => r,
            _ = job.events.closed() => {
                cancel_at(client, subjects, worker.as_deref(), &inbox).await;
                return Ok(());
            }
            _ = shutdown.cancelled() => {
                cancel_at(client, subjects, worker.as_deref(), &inbox).await;
                return Err(Failure {
                    code: "model_unavailable",
                    message: "the server is shutting down; retry on another".into(),
                });
            }
        };
        let msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => return Err(lost("the reply subscription ended".into())),
            Err(_) => {
                return Err(match &worker {
                    Some(w) => lost(format!(
                        "worker {w} stopped answering (nothing for {} ms)",
                        timeout.as_millis()
                    )),
                    None => Failure {
                        code: "model_unavailable",
                        message: format!(
                            "no worker took the request within {} ms",
                            timeout.as_millis()
                        ),
                    },
                })
            }
        };
        let reply: Reply = serde_json::from_slice(&msg.payload)
            .map_err(|e| lost(format!("a worker sent an unreadable reply: {e}")))?;
        match reply {
            Reply::Accepted { worker: w, .. } => worker = Some(w),
            Reply::Alive => {}
            Reply::Text { text } => {
                // A closed channel is seen by `closed()` on the next turn.
                let _ = job.events.send(Event::Text(text));
            }
            Reply::Logprobs { logprobs } => {
                let _ = job.events.send(Event::Logprobs(logprobs));
            }
            done => {
                if let Some(outcome) = done.outcome() {
                    let _ = job.events.send(Event::Done(outcome));
                }
                return Ok(());
            }
        }
    }
}

/// Records every worker heartbeat until shutdown; an ended subscription is an error (restart).
async fn follow_heartbeats(
    client: Arc<dyn WorkTransport>,
    subject: String,
    subscribed: Option<WorkStream>,
    seen: Seen,
    ctx: Context,
) -> Result<(), String> {
    let mut beats = match subscribed {
        Some(b) => b,
        None => client
            .subscribe(&subject)
            .await
            .map_err(|e| format!("cannot subscribe to heartbeats: {e}"))?,
    };
    ctx.health.ready();
    loop {
        let msg = tokio::select! {
            m = beats.next() => m,
            _ = ctx.cancel.cancelled() => return Ok(()),
        };
        let Some(msg) = msg else {
            return Err("the heartbeat subscription ended".to_owned());
        };
        let Ok(hb) = serde_json::from_slice::<Heartbeat>(&msg.payload) else {
            continue;
        };
        if let Ok(mut seen) = seen.lock() {
            seen.entry(hb.model.clone())
                .or_default()
                .insert(hb.worker.clone(), (Instant::now(), hb));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;
    use revo_nats::{BusError, MemoryWork};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::kit::{HealthBoard, Status};

    /// The in-process transport, except that the first subscription ends after one message
    /// (as a subscription does when its connection is replaced).
    struct FirstEnds {
        inner: MemoryWork,
        subscriptions: AtomicU32,
    }

    #[async_trait]
    impl WorkTransport for FirstEnds {
        async fn subscribe(&self, subject: &str) -> Result<WorkStream, BusError> {
            let s = self.inner.subscribe(subject).await?;
            Ok(match self.subscriptions.fetch_add(1, Ordering::SeqCst) {
                0 => s.take(1).boxed(),
                _ => s,
            })
        }
        async fn queue_subscribe(
            &self,
            subject: &str,
            group: &str,
        ) -> Result<WorkStream, BusError> {
            self.inner.queue_subscribe(subject, group).await
        }
        async fn request(
            &self,
            subject: &str,
            payload: Bytes,
        ) -> Result<(String, WorkStream), BusError> {
            self.inner.request(subject, payload).await
        }
        async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
            self.inner.publish(subject, payload).await
        }
        async fn flush(&self) -> Result<(), BusError> {
            self.inner.flush().await
        }
    }

    fn beat(worker: &str) -> Bytes {
        let hb = Heartbeat {
            worker: worker.into(),
            model: "m".into(),
            device: "cpu".into(),
            loaded: true,
            queued: 0,
            active: 0,
            max_batch: 1,
            tokens_per_s: 0.0,
            every_ms: 100,
        };
        Bytes::from(serde_json::to_vec(&hb).unwrap_or_default())
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_are_followed_again_after_the_subscription_ends() {
        let board = HealthBoard::default();
        let sup = Supervisor::new(TaskTracker::new(), CancellationToken::new(), board.clone());
        let transport = Arc::new(FirstEnds {
            inner: MemoryWork::new(),
            subscriptions: AtomicU32::new(0),
        });
        let subjects = Subjects::new("mc").unwrap_or_else(|_| unreachable!());
        let client = ModelClient::start(transport.clone(), subjects, Duration::from_secs(5), &sup)
            .await
            .unwrap_or_else(|_| unreachable!());
        let subject = "mc.sig.worker.m";
        // The first heartbeat arrives, then that subscription ends.
        transport.publish(subject, beat("w1")).await.ok();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(client.live_workers("m").len(), 1);
        // The supervisor subscribes again after its back-off; later heartbeats are seen.
        tokio::time::sleep(Duration::from_secs(1)).await;
        transport.publish(subject, beat("w2")).await.ok();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut workers: Vec<_> = client
            .live_workers("m")
            .into_iter()
            .map(|h| h.worker)
            .collect();
        workers.sort();
        assert_eq!(workers, ["w1", "w2"]);
        assert_eq!(transport.subscriptions.load(Ordering::SeqCst), 2);
        assert_eq!(
            board.snapshot()[0],
            ("model_client.heartbeats".into(), Status::Ready)
        );
        sup.shutdown().await;
    }
}
