//! orderflow's contracts: the value types every service agrees on and the event catalog that travels
//! over JetStream. Pure data: no I/O, nothing async, so any service (or a test, or an operator tool) can
//! depend on it without pulling in plumbing.

pub mod compat;
pub mod documents;
pub mod envelope;
pub mod events;
pub mod priority;
pub mod schema;
pub mod text_enum;
pub mod topology;
pub mod trace;
pub mod values;

pub use envelope::{DecodeError, Envelope, EventId, EventMeta};
pub use events::Event;
pub use priority::Priority;
pub use trace::TraceContext;
pub use values::{
    CorrelationId, Currency, CustomerId, Money, OrderId, PaymentMethod, ProductId, Quantity,
    ValueError,
};
