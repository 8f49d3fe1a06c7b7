//! The execution-ticket domain and the actor system that owns every live ticket.
//!
//! - Domain: [`model`] (the ticket), [`enums`], [`validation`] (create requests), [`status`] (the status
//!   machine, a pure function), [`sla`] (SLA rules, pure functions), [`compensation`].
//! - Actors: [`router::Router`] → [`shard::Shard`] → [`ticket_actor::TicketActor`] →
//!   [`persistence::PersistenceActor`] (group commit).
//! - Ports to the outside world: [`store::TicketStore`], [`audit::AuditSink`], [`clock::Clock`].
//! - The audit trail: [`audit`] (outbox records written with each change, shipped by the `AuditActor`).
//! - Webhooks: [`webhooks`] (deliveries written with each change, sent by the `WebhookActor`).
//!
//! This crate knows nothing of HTTP, gRPC, SQL drivers or Kafka; the service crate plugs adapters into the ports.

pub mod audit;
pub mod clock;
pub mod compensation;
pub mod enums;
pub mod error;
pub mod events;
pub mod metrics;
pub mod model;
pub mod persistence;
pub mod router;
pub mod shard;
pub mod sla;
pub mod status;
pub mod store;
pub mod subscription_input;
pub mod ticket_actor;
pub mod trace;
pub mod validation;
pub mod webhooks;

pub use error::TicketError;
pub use model::{Millis, Ticket};
pub use router::{Router, StatusUpdate, SystemConfig};
