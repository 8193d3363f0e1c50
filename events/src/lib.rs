//! `revo-events`: the vocabulary of Revo's event-sourced core.
//!
//! Owns the event envelope, the MessagePack codec (named fields), typed event families with their
//! schema versions and upcasters, pure projections (folds over envelopes), and the store's seams
//! (event log, checkpoints, leases, read models) that the Postgres and SQLite adapters implement.
//!
//! Must not do I/O: no database, network or file access lives here. The store traits are only
//! the contract; the durable implementations live in the `revo` crate (`src/db/`), beside
//! which `memory.rs` keeps one in memory for tests.

pub mod codec;
pub mod directory;
pub mod envelope;
pub mod family;
pub mod memory;
pub mod money;
pub mod projection;
pub mod store;

pub use codec::{CodecError, DecodeError};
pub use directory::Directory;
pub use envelope::{Envelope, EventMeta, NewEvent, RecordedEvent};
pub use family::budget::{BudgetEvent, BudgetsProjection, Hold};
pub use family::generation::{GenerationEvent, LedgerProjection, PriceSheet, TokenUsage};
pub use family::identity::{IdentityEvent, Role};
pub use family::models::{ModelEvent, ModelsProjection};
pub use family::presence::{PresenceEvent, PresenceProjection};
pub use family::room::{RoomEvent, RoomRole, RoomsProjection};
pub use family::system::SystemEvent;
pub use family::workflow::{
    RunEvent, RunState, RunStatus, RunsProjection, StepStatus, WorkflowEvent, WorkflowsProjection,
};
pub use family::EventFamily;
pub use money::{MoneyError, Usd, UsdPerMtok};
pub use projection::{Projection, ProjectionError, Rows};
pub use store::{
    AppendRequest, Appended, Checkpoints, EventLog, EventStore, ExpectedVersion, Leases,
    ReadModels, StoreError,
};
