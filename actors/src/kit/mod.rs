//! The actor kit: how every long-lived component of a node is built.
//!
//! - A **handle** ([`Handle`]) is cheap to clone and is the only way in: typed commands over a
//!   bounded mailbox, replies on oneshots. A full mailbox is an answer (`Full`), not a wait, so
//!   a flood meets back-pressure at the edge instead of growing memory.
//! - A **run loop** owns the actor's state; nothing else touches it.
//! - The **supervisor** ([`Supervisor`]) runs each loop on one task tracker with one
//!   cancellation token, restarts a loop that fails or panics after the shared [`Backoff`], and
//!   drains them all on shutdown.
//! - Each actor reports its **health** ([`Health`]) on the node's [`HealthBoard`], which
//!   `/health/ready`, `/health/details` and the `revo_actor_*` metrics read.
//!
//! Actors never open connections: the event log, the bus and the work transport are handed in
//! (each has an in-memory implementation), so embedded mode runs the same actors as cluster
//! mode and each actor can be tested alone.

mod backoff;
mod health;
mod mailbox;
mod supervisor;

pub use backoff::Backoff;
pub use health::{Health, HealthBoard, Status};
pub use mailbox::{mailbox, Handle, Inbox, SendError};
pub use supervisor::{Context, Supervisor};

/// Locks a mutex whose holder may have panicked: the data is still the last thing written
/// under it, which every user of these locks can carry on from.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
