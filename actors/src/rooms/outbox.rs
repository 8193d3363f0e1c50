//! A session's outbound queue: bounded in frames and in bytes, filled by rooms and the hub
//! without waiting. A client too slow to drain it is cut off (close code 4008) instead of
//! stalling anyone; it resumes by offset.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One frame for the socket. Text frames are rendered once and shared by every subscriber.
#[derive(Debug, Clone)]
pub enum Out {
    Text(Arc<str>),
    Binary(Bytes),
    /// The session's subscription to a room ended (removed, archived): it forgets the room,
    /// then sends the frame.
    Left(uuid::Uuid, Arc<str>),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Text(t) | Out::Left(_, t) => t.len(),
            Out::Binary(b) => b.len(),
        }
    }
}

/// The producers' end. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Out>,
    bytes: Arc<AtomicUsize>,
    limit: usize,
    overflow: CancellationToken,
}

/// The session's end.
pub struct OutboxRx {
    rx: mpsc::Receiver<Out>,
    bytes: Arc<AtomicUsize>,
    /// Fires once the queue has overflowed.
    pub overflow: CancellationToken,
}

/// A queue of at most `frames` frames and `bytes` bytes.
pub fn outbox(frames: usize, bytes: usize) -> (Outbox, OutboxRx) {
    let (tx, rx) = mpsc::channel(frames.max(1));
    let counter = Arc::new(AtomicUsize::new(0));
    let overflow = CancellationToken::new();
    (
        Outbox {
            tx,
            bytes: counter.clone(),
            limit: bytes,
            overflow: overflow.clone(),
        },
        OutboxRx {
            rx,
            bytes: counter,
            overflow,
        },
    )
}

impl Outbox {
    /// Queues a frame; false if the queue overflowed (now or before) or the session is gone.
    /// An overflow is final: the session closes.
    pub fn push(&self, out: Out) -> bool {
        if self.overflow.is_cancelled() {
            return false;
        }
        let n = out.len();
        if self.bytes.fetch_add(n, Ordering::AcqRel) + n > self.limit {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            self.overflow.cancel();
            return false;
        }
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.bytes.fetch_sub(n, Ordering::AcqRel);
                self.overflow.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.bytes.fetch_sub(n, Ordering::AcqRel);
                false
            }
        }
    }

    pub fn text(&self, frame: impl Into<Arc<str>>) -> bool {
        self.push(Out::Text(frame.into()))
    }

    /// Whether the session has ended or overflowed.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.overflow.is_cancelled()
    }
}

impl OutboxRx {
    pub async fn recv(&mut self) -> Option<Out> {
        let out = self.rx.recv().await?;
        self.bytes.fetch_sub(out.len(), Ordering::AcqRel);
        Some(out)
    }

    /// Bytes waiting.
    #[cfg(test)]
    fn queued_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_by_bytes_is_final_and_frees_nothing_twice() {
        let (tx, mut rx) = outbox(100, 10);
        assert!(tx.text("12345"));
        assert!(tx.text("12345"));
        assert!(!tx.text("1"), "over the byte limit");
        assert!(rx.overflow.is_cancelled());
        assert!(!tx.text(""), "an overflow is final");
        assert!(rx.recv().await.is_some());
        assert_eq!(rx.queued_bytes(), 5);
    }

    #[tokio::test]
    async fn overflow_by_frames() {
        let (tx, rx) = outbox(1, 1000);
        assert!(tx.text("a"));
        assert!(!tx.text("b"));
        assert!(rx.overflow.is_cancelled());
    }
}
