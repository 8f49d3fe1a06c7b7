//! The TCP connector of the webhook client: it resolves the target with the address policy
//! ([`AddressPolicy::resolve`]) and connects only to the addresses that resolution allowed. awc's own
//! connector would resolve again after the policy's check, so a name answering differently between the two
//! lookups (DNS rebinding) could reach a forbidden address; here there is one resolution, checked, per
//! connection. IP literals go through the policy too (awc's resolver would pass them straight through).

use std::rc::Rc;

use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_tls::connect::tcp::TcpConnectorService;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection};
use awc::http::Uri;
use futures::future::LocalBoxFuture;

use super::address::AddressPolicy;

/// See the module docs. Used as `awc::Connector::new().connector(GuardedConnector::new(policy))`.
#[derive(Clone)]
pub struct GuardedConnector {
    policy: Rc<AddressPolicy>,
    tcp: TcpConnectorService,
}

impl GuardedConnector {
    pub fn new(policy: AddressPolicy) -> Self {
        GuardedConnector { policy: Rc::new(policy), tcp: TcpConnectorService::default() }
    }
}

impl Service<ConnectInfo<Uri>> for GuardedConnector {
    type Response = Connection<Uri, TcpStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::always_ready!();

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let (policy, tcp) = (Rc::clone(&self.policy), self.tcp);
        Box::pin(async move {
            let addrs =
                policy.resolve(req.hostname(), req.port()).await.map_err(|e| ConnectError::Resolver(Box::new(e)))?;
            // Replaces any address set before: only these may be connected to.
            tcp.call(req.set_addrs(addrs)).await
        })
    }
}
