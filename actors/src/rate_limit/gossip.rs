//! Shares rate-limit counts between edges over the bus's signal subjects (core NATS in cluster
//! mode; nothing to share with in embedded mode, where the in-process bus echoes to itself).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use revo_nats::{Bus, Subjects};

use crate::kit::Context;

use super::{Gossip, RateLimiter};

/// How often an edge publishes its counts: the bound on how far a cluster can overshoot.
pub const GOSSIP_EVERY: Duration = Duration::from_millis(100);

/// Runs as the supervised actor `rate_limit.gossip`: `ready` while it shares counts, `degraded`
/// while it cannot subscribe or publish (each edge then limits on its own counts alone). A
/// subscription that ends is an error, so the supervisor starts it again.
pub async fn run(
    limiter: Arc<RateLimiter>,
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    ctx: Context,
) -> Result<(), String> {
    let cancel = &ctx.cancel;
    let subject = subjects
        .signal("ratelimit", "counts")
        .map_err(|e| format!("no gossip subject: {e}"))?;
    let mut backoff = crate::kit::Backoff::default();
    let mut incoming = loop {
        match bus.subscribe_signals(&subject).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "rate-limit gossip: subscribe failed, retrying");
                ctx.health.degraded(format!("cannot subscribe: {e}"));
                if !backoff.wait(cancel).await {
                    return Ok(());
                }
            }
        }
    };
    ctx.health.ready();
    let mut tick = tokio::time::interval(GOSSIP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeps = 0u32;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {
                sweeps += 1;
                if sweeps.is_multiple_of(600) {
                    limiter.sweep();
                }
                let Some(g) = limiter.gossip() else { continue };
                match serde_json::to_vec(&g) {
                    Ok(body) => {
                        match bus.publish_signal(&subject, Bytes::from(body)).await {
                            Ok(()) => ctx.health.ready(),
                            Err(e) => {
                                tracing::debug!(error = %e, "rate-limit gossip not sent");
                                ctx.health.degraded(format!("cannot publish: {e}"));
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "rate-limit gossip not encoded"),
                }
            }
            msg = incoming.next() => match msg {
                Some(Ok(m)) => match serde_json::from_slice::<Gossip>(&m.payload) {
                    Ok(g) => limiter.absorb(g),
                    Err(e) => tracing::debug!(error = %e, "ignoring a malformed rate-limit gossip"),
                },
                Some(Err(e)) => tracing::debug!(error = %e, "rate-limit gossip stream"),
                None => return Err("the gossip subscription ended".to_owned()),
            },
        }
    }
}
