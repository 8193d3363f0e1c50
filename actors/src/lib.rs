//! `revo-actors`: the long-lived workers of a Revo node.
//!
//! One folder per actor, all built with the kit (`kit/`: handles, supervisor, shared back-off,
//! health board):
//!
//! | folder | actor |
//! |---|---|
//! | `group_commit/` | batches concurrent appends into few transactions, each caller its own outcome |
//! | `router/` | the cost-optimising router: catalogue, attempts, breakers, providers, budgets |
//! | `relay/` | transactional outbox: committed events to the bus, in order, once |
//! | `projector/` | folds committed events into persisted read models |
//! | `view/` | a projection kept folded in memory (the user directory, the model registry) |
//! | `store_probe/` | checks the database and its schema on a timer for the health endpoints |
//! | `rate_limit/` | the per-user and per-key limiter, and its gossip between edges |
//! | `model_thread/` | a local model on its own OS thread, batching its sequences |
//! | `model_worker/` | a model thread serving its model's queue group (the worker protocol) |
//! | `model_client/` | the edge's side of the worker protocol |
//! | `rooms/` | real-time collaboration: the hub, room and session actors, the WebSocket frames |
//! | `workflows/` | durable workflows: definitions, the run actors, takeover of dead nodes' runs |
//!
//! Actors own their state and talk to the outside only through seams handed to them: the
//! `EventStore`, the `Bus` and the `WorkTransport`, each with an in-memory implementation. They
//! never open database or NATS connections themselves. Every actor runs until its
//! cancellation token fires and then drains.

pub mod audit;
pub mod group_commit;
pub mod kit;
pub mod model_client;
pub mod model_thread;
pub mod model_worker;
pub mod projector;
pub mod rate_limit;
pub mod relay;
pub mod rooms;
pub mod router;
pub mod store_probe;
pub mod view;
pub mod workflows;

pub use projector::{
    fold_from_zero, FoldStats, FoldUntil, ProjectorHandle, ProjectorMetrics, ProjectorState,
    ReplayError,
};
pub use relay::{Relay, RelayConfig, RelayMetrics};
pub use view::LiveView;
