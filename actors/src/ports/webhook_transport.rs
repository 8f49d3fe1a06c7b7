//! The webhook transport port: sends one delivery. HTTP, signing and the address policy are the service's.

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::subscription::{Delivery, Subscription};

/// What one attempt gave.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// The HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// Why it failed (transport error, refused address, non-2xx).
    pub error: Option<String>,
    /// The receiver's `Retry-After` (429 and 503 answers), as a wait from now.
    pub retry_after: Option<Duration>,
}

impl SendOutcome {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// 429 Too Many Requests: the receiver is up and asks for fewer requests.
    pub fn throttled(&self) -> bool {
        self.status == Some(429)
    }
}

/// Sends one delivery (builds the exact bytes, signs them, checks the address, posts).
/// Used on one thread (the webhook actor's), so it need not be `Send`: awc's client is not.
#[async_trait(?Send)]
pub trait WebhookTransport: 'static {
    async fn send(&self, delivery: &Delivery, subscription: Option<&Subscription>) -> SendOutcome;
}
