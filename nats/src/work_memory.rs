//! The in-process work transport of embedded mode: the same subjects, queue groups and reply
//! inboxes as core NATS, without a server. Like core NATS it never blocks a publisher: a
//! subscriber whose queue is full loses the message (its bound is far above what one
//! generation sends).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::work::{WorkMessage, WorkStream, WorkTransport};
use crate::BusError;

/// Messages a subscription may hold before new ones are dropped.
const PENDING: usize = 65_536;

struct Sub {
    pattern: Vec<String>,
    group: Option<String>,
    tx: mpsc::Sender<WorkMessage>,
}

#[derive(Default)]
pub struct MemoryWork {
    subs: Mutex<Vec<Sub>>,
    inboxes: AtomicU64,
    /// Round-robin position for queue groups.
    turn: AtomicUsize,
}

/// NATS subject matching: `*` is one token, a final `>` one or more.
fn matches(pattern: &[String], subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for (i, p) in pattern.iter().enumerate() {
        if p == ">" {
            return i == pattern.len() - 1 && tokens.next().is_some();
        }
        match tokens.next() {
            Some(t) if p == "*" || p == t => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

impl MemoryWork {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, subject: &str, group: Option<&str>) -> WorkStream {
        let (tx, rx) = mpsc::channel(PENDING);
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Sub {
                pattern: subject.split('.').map(str::to_owned).collect(),
                group: group.map(str::to_owned),
                tx,
            });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
            .boxed()
    }

    fn deliver(&self, subject: &str, reply: Option<String>, payload: Bytes) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|s| !s.tx.is_closed());
        let msg = WorkMessage {
            subject: subject.to_owned(),
            reply,
            payload,
        };
        let mut groups: Vec<(&str, Vec<&Sub>)> = Vec::new();
        for s in subs.iter().filter(|s| matches(&s.pattern, subject)) {
            match &s.group {
                None => send(s, &msg),
                Some(g) => match groups.iter_mut().find(|(name, _)| name == g) {
                    Some((_, members)) => members.push(s),
                    None => groups.push((g, vec![s])),
                },
            }
        }
        for (_, members) in groups {
            let i = self.turn.fetch_add(1, Ordering::Relaxed) % members.len();
            send(members[i], &msg);
        }
    }
}

fn send(s: &Sub, msg: &WorkMessage) {
    if s.tx.try_send(msg.clone()).is_err() {
        tracing::warn!(subject = %msg.subject, "work message dropped: subscriber too slow");
    }
}

#[async_trait]
impl WorkTransport for MemoryWork {
    async fn subscribe(&self, subject: &str) -> Result<WorkStream, BusError> {
        Ok(self.add(subject, None))
    }

    async fn queue_subscribe(&self, subject: &str, group: &str) -> Result<WorkStream, BusError> {
        Ok(self.add(subject, Some(group)))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
    ) -> Result<(String, WorkStream), BusError> {
        let inbox = format!("_INBOX.{}", self.inboxes.fetch_add(1, Ordering::Relaxed));
        let replies = self.add(&inbox, None);
        self.deliver(subject, Some(inbox.clone()), payload);
        Ok((inbox, replies))
    }

    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        self.deliver(subject, None, payload);
        Ok(())
    }

    async fn flush(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn subjects_match_like_nats() {
        assert!(matches(&p("revo.sig.worker.*"), "revo.sig.worker.m1"));
        assert!(!matches(&p("revo.sig.worker.*"), "revo.sig.worker.m1.x"));
        assert!(matches(&p("revo.>"), "revo.a.b"));
        assert!(!matches(&p("revo.>"), "revo"));
        assert!(!matches(&p("a.b"), "a"));
    }

    #[tokio::test]
    async fn queue_groups_share_requests_and_replies_reach_the_inbox() {
        let w = MemoryWork::new();
        let mut a = w.queue_subscribe("cmd.m", "workers").await.unwrap();
        let mut b = w.queue_subscribe("cmd.m", "workers").await.unwrap();
        let mut watcher = w.subscribe("cmd.*").await.unwrap();
        let (inbox, mut replies) = w.request("cmd.m", Bytes::from("1")).await.unwrap();
        let (_, _r2) = w.request("cmd.m", Bytes::from("2")).await.unwrap();
        let first = a.next().await.unwrap();
        let second = b.next().await.unwrap();
        assert_ne!(
            first.payload, second.payload,
            "each request went to one member"
        );
        assert_eq!(watcher.next().await.unwrap().payload, Bytes::from("1"));
        let to = if first.payload == "1" { first } else { second };
        assert_eq!(to.reply.as_deref(), Some(inbox.as_str()));
        w.publish(&inbox, Bytes::from("done")).await.unwrap();
        assert_eq!(replies.next().await.unwrap().payload, Bytes::from("done"));
        // A dropped subscription stops receiving; the other member takes everything.
        drop(a);
        for _ in 0..3 {
            w.publish("cmd.m", Bytes::from("x")).await.unwrap();
        }
        for _ in 0..3 {
            assert_eq!(b.next().await.unwrap().payload, Bytes::from("x"));
        }
    }
}
