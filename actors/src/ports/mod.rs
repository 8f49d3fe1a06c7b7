//! The ports: the traits through which the actor system reaches the outside world (the store, the outbox
//! sinks, the webhook transport, the clock, trace context). The service crate implements them. They import
//! from [`crate::domain`] only.

pub mod clock;
pub mod forward;
pub mod outbox_sink;
pub mod store;
pub mod trace;
pub mod webhook_transport;
