//! `revo-actors`: the long-lived workers of a Revo node.
//!
//! Today: the relay (transactional outbox from the event store to the bus) and the projection
//! runner (folds committed events into read models), and live in-memory views of projections.
//! Later: sessions, rooms, presence, workflows,
//! the model router, model workers and budgets.
//!
//! Actors own their state and talk to the outside only through the `EventStore` and `Bus` seams;
//! they never open database or NATS connections themselves. Every actor runs until its
//! `CancellationToken` fires and then drains.

pub mod projector;
pub mod relay;
pub mod view;

pub use projector::{
    fold_from_zero, FoldStats, FoldUntil, ProjectorHandle, ProjectorMetrics, ProjectorState,
    ReplayError,
};
pub use relay::{Relay, RelayConfig, RelayMetrics};
pub use view::LiveView;
