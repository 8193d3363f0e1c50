//! The in-process bus (embedded mode): the same contract as JetStream inside one process.
//! Events are deduplicated by id within the window and delivered in publish order; nothing is
//! persisted here because the SQLite store is the log.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;

use crate::bus::{
    Bus, BusError, BusHealth, BusMessage, MessageStream, OutgoingEvent, PublishOutcome,
};
use crate::subjects;

/// Messages a slow subscriber may fall behind before it is told it lagged.
const CAPACITY: usize = 16_384;

pub struct MemoryBus {
    events: broadcast::Sender<BusMessage>,
    signals: broadcast::Sender<BusMessage>,
    dedup: Mutex<Dedup>,
}

struct Dedup {
    window: Duration,
    seen: HashSet<String>,
    order: VecDeque<(Instant, String)>,
}

impl Dedup {
    /// True if `id` is new within the window (and records it).
    fn admit(&mut self, id: &str, now: Instant) -> bool {
        while let Some((t, _)) = self.order.front() {
            if now.duration_since(*t) < self.window {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains(id) {
            return false;
        }
        self.seen.insert(id.to_owned());
        self.order.push_back((now, id.to_owned()));
        true
    }
}

impl MemoryBus {
    pub fn new(dedup_window: Duration) -> Self {
        MemoryBus {
            events: broadcast::channel(CAPACITY).0,
            signals: broadcast::channel(CAPACITY).0,
            dedup: Mutex::new(Dedup {
                window: dedup_window,
                seen: HashSet::new(),
                order: VecDeque::new(),
            }),
        }
    }
}

fn filtered(rx: broadcast::Receiver<BusMessage>, filter: String) -> MessageStream {
    futures::stream::unfold(rx, move |mut rx| {
        let filter = filter.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(m) if subjects::matches(&filter, &m.subject) => return Some((Ok(m), rx)),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return Some((Err(BusError::Lagged(n)), rx))
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    })
    .boxed()
}

#[async_trait]
impl Bus for MemoryBus {
    async fn ensure(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn publish_events(&self, batch: Vec<OutgoingEvent>) -> PublishOutcome {
        let now = Instant::now();
        let mut dedup = match self.dedup.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        let acked = batch.len();
        for ev in batch {
            if dedup.admit(&ev.msg_id, now) {
                // No receivers is fine: the store is the log, live delivery is best effort.
                let _ = self.events.send(BusMessage {
                    subject: ev.subject,
                    msg_id: Some(ev.msg_id),
                    payload: ev.payload,
                });
            }
        }
        PublishOutcome { acked, error: None }
    }

    async fn subscribe_events(&self, filter: &str) -> Result<MessageStream, BusError> {
        Ok(filtered(self.events.subscribe(), filter.to_owned()))
    }

    async fn publish_signal(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        let _ = self.signals.send(BusMessage {
            subject: subject.to_owned(),
            msg_id: None,
            payload,
        });
        Ok(())
    }

    async fn subscribe_signals(&self, filter: &str) -> Result<MessageStream, BusError> {
        Ok(filtered(self.signals.subscribe(), filter.to_owned()))
    }

    fn health(&self) -> BusHealth {
        BusHealth::Connected
    }

    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_forgets_after_window() {
        let mut d = Dedup {
            window: Duration::from_millis(10),
            seen: HashSet::new(),
            order: VecDeque::new(),
        };
        let t0 = Instant::now();
        assert!(d.admit("a", t0));
        assert!(!d.admit("a", t0 + Duration::from_millis(5)));
        assert!(d.admit("a", t0 + Duration::from_millis(11)));
    }
}
