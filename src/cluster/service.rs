//! The replicas' internal gRPC service: runs a forwarded request through this replica's router (never forwarded
//! again). Only a caller with the cluster's shared secret is served.

use actors::forward::Forwarded;
use actors::Router;
use tonic::{Request, Response, Status};

use super::pb::cluster_server::Cluster;
use super::pb::{ForwardReply, ForwardRequest};
use super::SECRET_HEADER;

/// See the module docs.
pub struct ClusterService {
    pub router: Router,
    pub secret: Option<String>,
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        let given = request.metadata().get(SECRET_HEADER).map(|v| v.as_bytes().to_vec());
        match (&self.secret, given) {
            (Some(secret), Some(given)) if same(secret.as_bytes(), &given) => {}
            _ => return Err(Status::unauthenticated("not a replica of this cluster")),
        }
        let traceparent = request.metadata().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let ForwardRequest { ticket_id, requested_by, paced, call } = request.into_inner();
        let forwarded = Forwarded { ticket_id, requested_by, paced, call, traceparent };
        Ok(Response::new(ForwardReply { answer: self.router.serve_forwarded(forwarded).await }))
    }
}
