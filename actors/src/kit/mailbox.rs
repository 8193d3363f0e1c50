//! Handles and mailboxes: typed commands over a bounded channel, replies on oneshots.

use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The mailbox is full: the actor is behind; try again later.
    #[error("the {0} actor is busy")]
    Full(&'static str),
    /// The actor has stopped (shutdown) or dropped the reply.
    #[error("the {0} actor is not running")]
    Gone(&'static str),
}

/// The only way into an actor. Cheap to clone.
pub struct Handle<C> {
    name: &'static str,
    tx: mpsc::Sender<C>,
}

impl<C> Clone for Handle<C> {
    fn clone(&self) -> Self {
        Handle {
            name: self.name,
            tx: self.tx.clone(),
        }
    }
}

/// The actor's end: its run loop receives from it.
pub type Inbox<C> = mpsc::Receiver<C>;

/// A mailbox of `capacity` commands for the actor `name`.
pub fn mailbox<C>(name: &'static str, capacity: usize) -> (Handle<C>, Inbox<C>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (Handle { name, tx }, rx)
}

impl<C> Handle<C> {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Sends a command without waiting for room.
    pub fn tell(&self, command: C) -> Result<(), SendError> {
        self.tx.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full(self.name),
            mpsc::error::TrySendError::Closed(_) => SendError::Gone(self.name),
        })
    }

    /// Sends a command carrying a reply slot and waits for the reply. Refuses at once when the
    /// mailbox is full.
    pub async fn ask<R>(&self, make: impl FnOnce(oneshot::Sender<R>) -> C) -> Result<R, SendError> {
        let (reply, answer) = oneshot::channel();
        self.tell(make(reply))?;
        answer.await.map_err(|_| SendError::Gone(self.name))
    }

    /// Whether the actor's loop has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Cmd {
        Add(u32, oneshot::Sender<u32>),
    }

    #[tokio::test]
    async fn asks_are_answered_floods_are_refused_and_a_stopped_actor_says_so() {
        let (h, mut inbox) = mailbox::<Cmd>("adder", 1);
        let h2 = h.clone();
        let asked = tokio::join!(h.ask(|r| Cmd::Add(2, r)), async {
            let Some(Cmd::Add(n, r)) = inbox.recv().await else {
                panic!("no command")
            };
            let _ = r.send(n + 1);
        });
        assert_eq!(asked.0, Ok(3));
        // One slot: the second queued command is refused, not awaited.
        let (r1, _a1) = oneshot::channel();
        let (r2, _a2) = oneshot::channel();
        assert!(h2.tell(Cmd::Add(1, r1)).is_ok());
        assert_eq!(
            h2.tell(Cmd::Add(1, r2)).err(),
            Some(SendError::Full("adder"))
        );
        drop(inbox);
        assert!(h2.is_closed());
        assert_eq!(
            h2.ask(|r| Cmd::Add(1, r)).await,
            Err(SendError::Gone("adder"))
        );
    }
}
