//! The webhook adapter: HTTP delivery with Standard Webhooks signatures ([`transport`], [`sign`]) and the
//! outbound address policy ([`address`]). What to deliver, when, and how often to retry is decided by
//! `actors::webhooks`.

pub mod address;
pub mod sign;
pub mod transport;
