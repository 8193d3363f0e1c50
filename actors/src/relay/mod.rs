//! The relay: publishes every committed event to `<prefix>.evt.<stream_type>.<stream_id>` with
//! `Nats-Msg-Id` = event id, in commit order (so per stream in version order).
//!
//! Exactly one relay is active per store: it must hold the store's `relay` lease. Progress is a
//! stored checkpoint advanced only past events the bus acknowledged, so a crash at any point
//! republishes at most one batch, which the bus deduplicates.

use crate::kit::{Backoff, Context, Health};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{Gauge, IntCounter, IntGauge};
use revo_events::codec::encode_wire;
use revo_events::store::{wait_for_change, Lease};
use revo_events::{Checkpoints, EventLog, Leases, RecordedEvent};
use revo_nats::{Bus, OutgoingEvent, Subjects};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Events read and published per round.
    pub batch: usize,
    /// Longest sleep between reads when no append wakes the relay.
    pub poll: Duration,
    /// How often a standby tries to take the lease, and the leader re-checks it.
    pub lease_check: Duration,
    /// Longest back-off after a failed publish.
    pub max_backoff: Duration,
    /// How long shutdown keeps publishing what is already committed.
    pub drain_timeout: Duration,
    /// Least time between checkpoint writes: a crash republishes at most what was published
    /// since (the bus drops the repeats). Idle, progress is saved within `checkpoint_every` +
    /// `poll`; on shutdown, at once.
    pub checkpoint_every: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch: 512,
            poll: Duration::from_millis(200),
            lease_check: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            checkpoint_every: Duration::from_millis(100),
        }
    }
}

#[derive(Clone)]
pub struct RelayMetrics {
    pub lag_events: IntGauge,
    pub lag_seconds: Gauge,
    pub published: IntCounter,
    pub publish_errors: IntCounter,
    pub leader: IntGauge,
}

pub const CHECKPOINT: &str = "relay";
pub const LEASE: &str = "relay";

/// Seams: the log it publishes, its checkpoint, and the lease that makes it the one relay.
#[derive(Clone)]
pub struct Relay {
    pub log: Arc<dyn EventLog>,
    pub checkpoints: Arc<dyn Checkpoints>,
    pub leases: Arc<dyn Leases>,
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
    pub config: RelayConfig,
    pub metrics: RelayMetrics,
}

/// The last checkpoint written, and when.
struct Saved {
    position: Option<i64>,
    at: Instant,
}

impl Default for Saved {
    fn default() -> Self {
        Saved {
            position: None,
            at: Instant::now(),
        }
    }
}

enum Round {
    /// Published at least one event.
    Published,
    Idle,
    Failed,
}

impl Relay {
    /// Runs until `cancel` fires, then drains what is committed (bounded by `drain_timeout`).
    pub async fn run(self, cancel: CancellationToken) {
        self.run_reporting(&cancel, &Health::detached()).await;
    }

    /// As [`Relay::run`], as a supervised actor: `ready` while it publishes or stands by for
    /// the lease, `degraded` while it cannot read, publish or ask for the lease.
    pub async fn supervised(self, ctx: Context) {
        self.run_reporting(&ctx.cancel, &ctx.health).await;
    }

    async fn run_reporting(self, cancel: &CancellationToken, health: &Health) {
        while !cancel.is_cancelled() {
            let Some(lease) = self.acquire(cancel, health).await else {
                return;
            };
            self.metrics.leader.set(1);
            tracing::info!("relay: leader");
            self.lead(lease.as_ref(), cancel, health).await;
            self.metrics.leader.set(0);
        }
    }

    async fn acquire(&self, cancel: &CancellationToken, health: &Health) -> Option<Box<dyn Lease>> {
        loop {
            match self.leases.try_lease(LEASE).await {
                Ok(Some(lease)) => return Some(lease),
                // Another node leads: standing by is this one's job.
                Ok(None) => health.ready(),
                Err(e) => {
                    tracing::warn!(error = %e, "relay: cannot ask for the lease");
                    health.degraded(format!("cannot ask for the lease: {e}"));
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(self.config.lease_check) => {}
            }
        }
    }

    async fn lead(&self, lease: &dyn Lease, cancel: &CancellationToken, health: &Health) {
        let mut backoff = Backoff::new(Duration::from_millis(50), self.config.max_backoff);
        let mut ensured = false;
        let mut checkpoint = None;
        let mut last_lease_check = Instant::now();
        let mut signal = self.log.append_signal();
        let mut saved = Saved::default();
        loop {
            if cancel.is_cancelled() {
                if let Some(cp) = checkpoint {
                    let cp = self.drain(cp).await;
                    self.save(&mut saved, cp, true).await;
                }
                return;
            }
            if last_lease_check.elapsed() >= self.config.lease_check {
                if !lease.still_held().await {
                    tracing::warn!("relay: lease lost, standing by");
                    return;
                }
                last_lease_check = Instant::now();
            }
            if !ensured {
                match self.bus.ensure().await {
                    Ok(()) => ensured = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "relay: bus not ready");
                        health.degraded(format!("bus not ready: {e}"));
                        self.metrics.publish_errors.inc();
                        self.pause(&mut backoff, cancel).await;
                        continue;
                    }
                }
            }
            let cp = match checkpoint {
                Some(cp) => cp,
                None => match self.checkpoints.load_checkpoint(CHECKPOINT).await {
                    Ok(cp) => *checkpoint.insert(cp),
                    Err(e) => {
                        tracing::warn!(error = %e, "relay: cannot load checkpoint");
                        health.degraded(format!("cannot load its checkpoint: {e}"));
                        self.pause(&mut backoff, cancel).await;
                        continue;
                    }
                },
            };
            signal.borrow_and_update();
            match self.round(cp).await {
                (Round::Published, new_cp) => {
                    health.ready();
                    checkpoint = Some(new_cp);
                    self.save(&mut saved, new_cp, false).await;
                    backoff.reset();
                }
                (Round::Idle, _) => {
                    health.ready();
                    // Not forced: a write here would delay the next batch; an idle relay saves
                    // on a later idle round, once `checkpoint_every` has passed.
                    self.save(&mut saved, cp, false).await;
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = wait_for_change(&mut signal, self.config.poll) => {}
                    }
                }
                (Round::Failed, new_cp) => {
                    health.degraded("cannot read or publish events (see the log)");
                    checkpoint = Some(new_cp);
                    self.save(&mut saved, new_cp, true).await;
                    // The stream may have been deleted or NATS restarted without it.
                    ensured = false;
                    self.pause(&mut backoff, cancel).await;
                }
            }
        }
    }

    async fn pause(&self, backoff: &mut Backoff, cancel: &CancellationToken) {
        backoff.wait(cancel).await;
    }

    /// Saves the checkpoint if it moved and `force` or enough time has passed.
    async fn save(&self, saved: &mut Saved, cp: i64, force: bool) {
        if saved.position == Some(cp)
            || !(force || saved.at.elapsed() >= self.config.checkpoint_every)
        {
            return;
        }
        match self.checkpoints.save_checkpoint(CHECKPOINT, cp).await {
            Ok(()) => {
                saved.position = Some(cp);
                saved.at = Instant::now();
            }
            // Harmless for correctness: the next leader republishes and the bus dedupes.
            Err(e) => tracing::warn!(error = %e, "relay: cannot save checkpoint"),
        }
    }

    /// Publishes what is committed at shutdown, so a clean stop leaves nothing for the next
    /// leader. Returns the checkpoint reached.
    async fn drain(&self, mut cp: i64) -> i64 {
        let deadline = Instant::now() + self.config.drain_timeout;
        while Instant::now() < deadline {
            match self.round(cp).await {
                (Round::Published, new_cp) => cp = new_cp,
                _ => return cp,
            }
        }
        tracing::warn!("relay: drain timed out; the next leader publishes the rest");
        cp
    }

    /// One read-publish-checkpoint round from `cp`; returns the new checkpoint.
    async fn round(&self, cp: i64) -> (Round, i64) {
        let events = match self.log.read_all(cp, self.config.batch).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "relay: cannot read events");
                return (Round::Failed, cp);
            }
        };
        if events.is_empty() {
            self.metrics.lag_events.set(0);
            self.metrics.lag_seconds.set(0.0);
            return (Round::Idle, cp);
        }
        let full = events.len() == self.config.batch;
        let outgoing = match self.outgoing(&events) {
            Ok(o) => o,
            Err(e) => {
                // Never skip an event: stay on it, loudly, until an operator fixes it.
                tracing::error!(error = %e, "relay: cannot encode an event; relay halted on it");
                self.metrics.publish_errors.inc();
                return (Round::Failed, cp);
            }
        };
        let outcome = self.bus.publish_events(outgoing).await;
        let mut new_cp = cp;
        if outcome.acked > 0 {
            let last = &events[outcome.acked - 1];
            new_cp = last.position;
            self.metrics.published.inc_by(outcome.acked as u64);
            let age = chrono::Utc::now() - last.envelope.occurred_at;
            self.update_lag(full && outcome.error.is_none(), new_cp, age)
                .await;
        }
        match outcome.error {
            Some(e) => {
                tracing::warn!(error = %e, acked = outcome.acked, "relay: publish failed");
                self.metrics.publish_errors.inc();
                (Round::Failed, new_cp)
            }
            None => (Round::Published, new_cp),
        }
    }

    async fn update_lag(&self, backlog: bool, cp: i64, age: chrono::TimeDelta) {
        if !backlog {
            self.metrics.lag_events.set(0);
            self.metrics.lag_seconds.set(0.0);
            return;
        }
        // Positions are assigned before commit, so this counts in-flight appends too: an
        // estimate, exact once the store is quiet.
        if let Ok(head) = self.log.head_position().await {
            self.metrics.lag_events.set((head - cp).max(0));
        }
        self.metrics
            .lag_seconds
            .set(age.num_microseconds().unwrap_or(0) as f64 / 1e6);
    }

    fn outgoing(&self, events: &[RecordedEvent]) -> Result<Vec<OutgoingEvent>, String> {
        events
            .iter()
            .map(|ev| {
                let env = &ev.envelope;
                let subject = self
                    .subjects
                    .event(&env.stream_type, &env.stream_id)
                    .map_err(|e| format!("event {} at {}: {e}", env.event_id, ev.position))?;
                let payload = encode_wire(env)
                    .map_err(|e| format!("event {} at {}: {e}", env.event_id, ev.position))?;
                Ok(OutgoingEvent {
                    subject,
                    msg_id: env.event_id.to_string(),
                    payload: Bytes::from(payload),
                })
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use futures::StreamExt;
    use revo_events::memory::MemoryStore;
    use revo_events::store::AppendRequest;
    use revo_events::{EventMeta, ExpectedVersion, NewEvent};
    use revo_nats::MemoryBus;

    fn metrics() -> RelayMetrics {
        RelayMetrics {
            lag_events: IntGauge::new("lag_events", "h").unwrap(),
            lag_seconds: Gauge::new("lag_seconds", "h").unwrap(),
            published: IntCounter::new("published", "h").unwrap(),
            publish_errors: IntCounter::new("publish_errors", "h").unwrap(),
            leader: IntGauge::new("leader", "h").unwrap(),
        }
    }

    fn event(n: u8) -> NewEvent {
        NewEvent {
            event_id: uuid::Uuid::now_v7(),
            event_type: "thing.happened".into(),
            schema: 1,
            occurred_at: chrono::Utc::now(),
            meta: EventMeta::default(),
            payload: vec![n],
        }
    }

    /// The relay alone, over the in-memory log and bus: everything committed reaches the bus in
    /// order, the checkpoint follows, and a second relay waits for the lease.
    #[tokio::test]
    async fn publishes_in_order_and_holds_the_lease() {
        let store = MemoryStore::new();
        let bus = Arc::new(MemoryBus::new(Duration::from_secs(60)));
        let subjects = Subjects::new("relaytest").unwrap();
        let mut live = bus.subscribe_events(&subjects.all_events()).await.unwrap();
        let relay = Relay {
            log: store.clone(),
            checkpoints: store.clone(),
            leases: store.clone(),
            bus: bus.clone(),
            subjects: subjects.clone(),
            config: RelayConfig {
                poll: Duration::from_millis(20),
                lease_check: Duration::from_millis(20),
                ..Default::default()
            },
            metrics: metrics(),
        };
        let standby = Relay {
            metrics: metrics(),
            ..relay.clone()
        };
        let cancel = CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let ctx = || Context {
            cancel: cancel.clone(),
            health: Health::detached(),
        };
        let (leader_ctx, standby_ctx) = (ctx(), ctx());
        tasks.spawn(relay.clone().supervised(leader_ctx.clone()));
        tasks.spawn(standby.clone().supervised(standby_ctx.clone()));
        for n in 0..3u8 {
            store
                .append(AppendRequest::new(
                    "thing",
                    "t-1",
                    ExpectedVersion::Any,
                    vec![event(n)],
                ))
                .await
                .unwrap();
        }
        for want in 1..=3i64 {
            let msg = tokio::time::timeout(Duration::from_secs(5), live.next())
                .await
                .expect("the relay publishes")
                .expect("the bus stays open")
                .unwrap();
            let ev = revo_events::codec::decode_wire(&msg.payload).unwrap();
            assert_eq!((ev.stream_id.as_str(), ev.version), ("t-1", want));
        }
        // Publishing and standing by are both a relay doing its job.
        for c in [&leader_ctx, &standby_ctx] {
            assert_eq!(c.health.get(), crate::kit::Status::Ready);
        }
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
        assert_eq!(store.load_checkpoint(CHECKPOINT).await.unwrap(), 3);
        assert_eq!(
            relay.metrics.leader.get() + standby.metrics.leader.get(),
            0,
            "both gave up leadership on shutdown"
        );
        assert_eq!(
            relay.metrics.published.get() + standby.metrics.published.get(),
            3,
            "one relay published, once"
        );
    }
}
