//! The forwarding port over the replicas' internal gRPC service (`proto/cluster.proto`): one lazily connected
//! HTTP/2 channel per owner, the shared secret and the caller's `traceparent` in the metadata.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use actors::forward::{ForwardError, Forwarded, Forwarder};
use async_trait::async_trait;
use tonic::transport::{Channel, Endpoint};

use super::pb::cluster_client::ClusterClient;
use super::pb::ForwardRequest;
use super::SECRET_HEADER;

/// See the module docs.
pub struct GrpcForwarder {
    secret: Option<String>,
    timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
}

impl GrpcForwarder {
    pub fn new(secret: Option<String>, timeout: Duration) -> Self {
        GrpcForwarder { secret, timeout, channels: Mutex::new(HashMap::new()) }
    }

    fn channel(&self, address: &str) -> Result<Channel, ForwardError> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|e| ForwardError::Failed { address: address.to_owned(), reason: e.to_string() })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20));
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

#[async_trait]
impl Forwarder for GrpcForwarder {
    async fn forward(&self, address: &str, request: Forwarded) -> Result<Vec<u8>, ForwardError> {
        let Some(secret) = &self.secret else {
            return Err(ForwardError::Failed {
                address: address.to_owned(),
                reason: "no cluster secret: set CLUSTER_SECRET or JWT_SECRET_KEY alike on every replica".into(),
            });
        };
        let mut client = ClusterClient::new(self.channel(address)?);
        let Forwarded { ticket_id, requested_by, paced, call, traceparent } = request;
        let mut req = tonic::Request::new(ForwardRequest { ticket_id, requested_by, paced, call });
        req.set_timeout(self.timeout);
        if let Ok(v) = secret.parse() {
            req.metadata_mut().insert(SECRET_HEADER, v);
        }
        if let Some(v) = traceparent.and_then(|t| t.parse().ok()) {
            req.metadata_mut().insert("traceparent", v);
        }
        match client.forward(req).await {
            Ok(reply) => Ok(reply.into_inner().answer),
            // Not connected, or the connection broke: the owner is gone or going; the leases will say who next.
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled) => {
                Err(ForwardError::Unreachable { address: address.to_owned(), reason: s.message().to_owned() })
            }
            Err(s) => Err(ForwardError::Failed {
                address: address.to_owned(),
                reason: format!("{:?}: {}", s.code(), s.message()),
            }),
        }
    }
}
