//! The actor system: the router, shards and ticket actors, group commit, the outbox shipper and the webhook
//! deliverer. It uses [`crate::domain`] for every rule and [`crate::ports`] for every effect.

pub(crate) mod change;
pub mod commit_turn;
pub mod env;
pub mod error;
pub mod forwarding;
pub mod fresh;
pub mod loader;
pub mod metrics;
pub mod ownership;
pub mod persistence;
pub mod pruner;
pub mod router;
pub mod routing;
pub mod shard;
pub mod shipper;
pub mod snapshots;
pub mod ticket_actor;
pub mod wake_timer;
pub mod webhooks;
