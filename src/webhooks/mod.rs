//! The webhook adapter: HTTP delivery with Standard Webhooks signatures ([`transport`], [`sign`]) and the
//! outbound address policy ([`address`]), enforced at connection time by the client's connector
//! ([`connect`]). What to deliver, when, and how often to retry is decided by `actors::webhooks`.

pub mod address;
pub mod connect;
pub mod sign;
pub mod transport;
