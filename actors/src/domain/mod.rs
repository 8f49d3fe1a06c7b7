//! The domain: tickets, their legal changes, SLA rules, events and webhook subscriptions, as data and pure
//! functions. It imports nothing from [`crate::ports`] or [`crate::system`].

pub mod compensation;
pub mod delivery_attempt;
pub mod enums;
pub mod events;
pub mod history;
pub mod model;
pub mod sla;
pub mod status;
pub mod subscription;
pub mod subscription_input;
pub mod validation;
