//! `revo-nats`: how Revo talks over NATS.
//!
//! Owns every subject (`subjects`), the JetStream stream definitions, and the `Bus` seam with its
//! two implementations: JetStream for cluster mode and an in-process bus for embedded mode; and
//! the work transport (`work`) that model workers use.
//! Nothing outside this crate publishes with raw `async_nats`.
//!
//! Must not know about the event store or event types: it moves bytes with ids.

pub mod bus;
pub mod jetstream;
pub mod memory;
pub mod subjects;
pub mod work;
pub mod work_memory;

pub use bus::{Bus, BusError, BusHealth, BusMessage, MessageStream, OutgoingEvent, PublishOutcome};
pub use jetstream::{JetStreamBus, JetStreamConfig, StreamLimits};
pub use memory::MemoryBus;
pub use subjects::Subjects;
pub use work::{NatsWork, WorkMessage, WorkStream, WorkTransport};
pub use work_memory::MemoryWork;
