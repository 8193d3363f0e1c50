//! Health: each actor reports its status on the node's board; readiness and metrics read it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Starting,
    Ready,
    /// Working, but not as it should (retrying a dependency, lagging): still ready.
    Degraded(String),
    /// Not doing its job (halted, restarting after a failure): the node is not ready.
    Failed(String),
    /// Finished or shut down.
    Stopped,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Ready => "ready",
            Status::Degraded(_) => "degraded",
            Status::Failed(_) => "failed",
            Status::Stopped => "stopped",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Status::Degraded(r) | Status::Failed(r) => Some(r),
            _ => None,
        }
    }
}

/// One actor's reporter. Cloning shares it.
#[derive(Clone)]
pub struct Health {
    tx: Arc<watch::Sender<Status>>,
}

impl Health {
    /// A reporter that is on no board (tests, tools).
    pub fn detached() -> Health {
        Health {
            tx: Arc::new(watch::channel(Status::Starting).0),
        }
    }

    pub fn set(&self, status: Status) {
        self.tx.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    pub fn ready(&self) {
        self.set(Status::Ready);
    }

    pub fn degraded(&self, why: impl Into<String>) {
        self.set(Status::Degraded(why.into()));
    }

    pub fn failed(&self, why: impl Into<String>) {
        self.set(Status::Failed(why.into()));
    }

    pub fn get(&self) -> Status {
        self.tx.borrow().clone()
    }
}

/// The node's actors by name, with how each is doing.
#[derive(Clone, Default)]
pub struct HealthBoard {
    actors: Arc<Mutex<BTreeMap<String, Health>>>,
}

impl HealthBoard {
    /// Registers `name` (replacing an earlier one of that name) and returns its reporter.
    pub fn register(&self, name: &str) -> Health {
        let h = Health::detached();
        self.actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), h.clone());
        h
    }

    /// Every actor with its status, by name.
    pub fn snapshot(&self) -> Vec<(String, Status)> {
        self.actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, h)| (n.clone(), h.get()))
            .collect()
    }

    /// Actors that keep the node from being ready (failed), with why.
    pub fn failing(&self) -> Vec<(String, String)> {
        self.snapshot()
            .into_iter()
            .filter_map(|(n, s)| match s {
                Status::Failed(r) => Some((n, r)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_reports_what_actors_say() {
        let board = HealthBoard::default();
        let a = board.register("relay");
        let b = board.register("view.users");
        a.ready();
        b.failed("halted at 7");
        assert_eq!(
            board.failing(),
            vec![("view.users".into(), "halted at 7".into())]
        );
        b.ready();
        assert!(board.failing().is_empty());
        assert_eq!(board.snapshot()[0], ("relay".into(), Status::Ready));
    }
}
