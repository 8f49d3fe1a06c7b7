//! The webhook transport port: sends one delivery. HTTP, signing and the address policy are the service's.

use async_trait::async_trait;

// What an attempt gave is domain data (the attempt rules read it); the port answers it.
pub use crate::domain::delivery_attempt::SendOutcome;
use crate::domain::subscription::{Delivery, Subscription};

/// Sends one delivery (builds the exact bytes, signs them, checks the address, posts).
/// Used on one thread (the webhook actor's), so it need not be `Send`: awc's client is not.
#[async_trait(?Send)]
pub trait WebhookTransport: 'static {
    async fn send(&self, delivery: &Delivery, subscription: Option<&Subscription>) -> SendOutcome;
}
