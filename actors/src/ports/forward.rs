//! The forwarding port: how a replica hands a ticket's request to the replica that owns the ticket's shard
//! (cluster mode). The service implements it with an internal gRPC call (`src/cluster/forward.rs`); the
//! request and its answer travel as opaque bytes the router encodes and decodes, so this port knows nothing of
//! tickets.

use async_trait::async_trait;

/// One request for the owner of a ticket's shard.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub ticket_id: String,
    /// Who asks, as the receiving replica authenticated them (a token subject, `kafka`, `system`).
    pub requested_by: String,
    /// Whether the sender bounds its own requests in flight (never refused as overloaded).
    pub paced: bool,
    /// The request, encoded by the router.
    pub call: Vec<u8>,
    /// The W3C `traceparent` of the caller's span, so the owner's work joins the caller's trace.
    pub traceparent: Option<String>,
}

/// Why a forward got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The owner could not be reached (it may have just died): ask again once the leases say who owns it.
    #[error("replica at {address} unreachable: {reason}")]
    Unreachable { address: String, reason: String },
    /// The owner answered something other than an answer (a bug, or replicas of incompatible versions).
    #[error("replica at {address} failed the forwarded request: {reason}")]
    Failed { address: String, reason: String },
}

/// See the module docs.
#[async_trait]
pub trait Forwarder: Send + Sync {
    /// Send `request` to the replica at `address`; its answer as the router encoded it.
    async fn forward(&self, address: &str, request: Forwarded) -> Result<Vec<u8>, ForwardError>;
}

/// The forwarder of a process that is alone (the embedded store): there is nobody to forward to.
pub struct Alone;

#[async_trait]
impl Forwarder for Alone {
    async fn forward(&self, address: &str, _: Forwarded) -> Result<Vec<u8>, ForwardError> {
        Err(ForwardError::Unreachable { address: address.to_owned(), reason: "no cluster configured".into() })
    }
}
