//! The execution-ticket domain and the actor system that owns every live ticket, in three layers; a layer
//! only imports from the layers above it (`scripts/check-layers.sh` checks it):
//!
//! - [`domain`]: what a ticket is and which changes are legal, as data and pure functions: [`model`] (the
//!   ticket), [`enums`], [`validation`] (create requests), [`status`] (the status machine), [`sla`] (SLA
//!   rules), [`events`], [`history`] (audit records), [`compensation`], [`subscription`] (webhook
//!   subscriptions and deliveries), [`subscription_input`].
//! - [`ports`]: how the system reaches the outside world, as small traits the service implements:
//!   [`store::TicketStore`], [`outbox_sink::OutboxSink`], [`webhook_transport::WebhookTransport`],
//!   [`clock::Clock`], [`trace::TraceHook`].
//! - [`system`]: the actors. [`router::Router`] → [`shard::Shard`] → [`ticket_actor::TicketActor`] →
//!   [`persistence::PersistenceActor`] (group commit); [`shipper::OutboxShipper`] ships the outbox (audit trail and event stream),
//!   [`webhooks::WebhookActor`] delivers webhooks.
//!
//! Every module is also re-exported at the crate root (`actors::store`, `actors::router`, …), the paths the
//! service uses. This crate knows nothing of HTTP, gRPC, SQL drivers or Kafka.

pub mod domain;
pub mod ports;
pub mod system;

pub use domain::{
    compensation, delivery_attempt, enums, events, history, model, sla, status, subscription, subscription_input,
    validation,
};
pub use ports::{clock, forward, outbox_sink, store, trace, webhook_transport};
pub use system::{
    error, forwarding, metrics, ownership, persistence, pruner, router, routing, shard, shipper, ticket_actor, webhooks,
};

pub use error::TicketError;
pub use model::{Millis, Ticket};
pub use router::{Router, StatusUpdate, SystemConfig};
