//! The forwarding port over the replicas' internal gRPC service (`proto/cluster.proto`): one lazily connected
//! HTTP/2 channel per owner, the shared secret and the caller's `traceparent` in the metadata.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use actors::forward::{ForwardError, Forwarded, Forwarder};
use anyhow::Context as _;
use async_trait::async_trait;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::{ClusterSettings, TlsSettings};

use super::pb::cluster_client::ClusterClient;
use super::pb::ForwardRequest;
use super::SECRET_HEADER;

/// See the module docs.
pub struct GrpcForwarder {
    secret: Option<String>,
    timeout: Duration,
    /// With TLS on the gRPC port: how to reach the other replicas over it.
    tls: Option<ClientTlsConfig>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl GrpcForwarder {
    pub fn new(secret: Option<String>, timeout: Duration, tls: Option<ClientTlsConfig>) -> Self {
        GrpcForwarder { secret, timeout, tls, channels: Mutex::new(HashMap::new()) }
    }

    /// The client side of TLS between replicas: trust `CLUSTER_TLS_CA_FILE` (or `TLS_CLIENT_CA_FILE`), present this
    /// replica's own certificate (mutual TLS asks for one), check the name every replica's certificate carries.
    /// Read at startup: a rotated certificate is used by forwards after a restart.
    pub fn tls_config(tls: &TlsSettings, cluster: &ClusterSettings) -> anyhow::Result<Option<ClientTlsConfig>> {
        let Some(ca_file) = cluster.tls_ca_file.as_ref().or(tls.client_ca_file.as_ref()) else {
            tracing::warn!(
                "TLS is on but neither CLUSTER_TLS_CA_FILE nor TLS_CLIENT_CA_FILE is set: replicas cannot verify each \
                 other, so requests for other replicas' tickets will fail (one replica is fine)"
            );
            return Ok(None);
        };
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let cert = read(&tls.cert_file)?;
        let name = match &cluster.tls_server_name {
            Some(n) => n.clone(),
            None => first_dns_name(&cert).unwrap_or_else(|| "localhost".into()),
        };
        Ok(Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(ca_file)?))
                .identity(Identity::from_pem(cert, read(&tls.key_file)?))
                .domain_name(name),
        ))
    }

    fn channel(&self, runtime: &tokio::runtime::Runtime, address: &str) -> Result<Channel, ForwardError> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let failed =
            |e: tonic::transport::Error| ForwardError::Failed { address: address.to_owned(), reason: e.to_string() };
        let mut endpoint = Endpoint::from_shared(address.to_owned()).map_err(failed)?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(failed)?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20));
        // Its connection tasks go to the forwarding runtime, which outlives every caller's (see [`runtime`]).
        let _on_forward_runtime = runtime.enter();
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// The runtime every forward runs on. A tonic channel spawns its connection tasks on the runtime that first uses
/// it; requests arrive on many (each actix-web worker has its own, and stops with its worker during a graceful
/// shutdown), so a channel born on one of those would die with it while the others still send through it. This
/// one lives as long as the process (a static: never dropped inside an async context). None if it could not start.
fn runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let built = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("cluster-forward")
                .enable_all()
                .build();
            built.map_err(|e| tracing::error!(error = %e, "cannot start the runtime of forwarded calls")).ok()
        })
        .as_ref()
}

#[async_trait]
impl Forwarder for GrpcForwarder {
    async fn forward(&self, address: &str, request: Forwarded) -> Result<Vec<u8>, ForwardError> {
        let failed = |reason: String| ForwardError::Failed { address: address.to_owned(), reason };
        let runtime = runtime().ok_or_else(|| failed("no runtime for forwarded calls".into()))?;
        let channel = self.channel(runtime, address)?;
        let (secret, timeout, to) = (self.secret.clone(), self.timeout, address.to_owned());
        let call = runtime.spawn(async move { send(channel, &to, secret, timeout, request).await });
        call.await.unwrap_or_else(|e| Err(failed(e.to_string())))
    }
}

/// Send one forwarded request through `channel` and read the owner's answer.
async fn send(
    channel: Channel,
    address: &str,
    secret: Option<String>,
    timeout: Duration,
    request: Forwarded,
) -> Result<Vec<u8>, ForwardError> {
    let Some(secret) = &secret else {
        return Err(ForwardError::Failed {
            address: address.to_owned(),
            reason: "no cluster secret: set CLUSTER_SECRET or JWT_SECRET_KEY alike on every replica".into(),
        });
    };
    let mut client = ClusterClient::new(channel);
    let Forwarded { ticket_id, requested_by, paced, call, traceparent } = request;
    let mut req = tonic::Request::new(ForwardRequest { ticket_id, requested_by, paced, call });
    req.set_timeout(timeout);
    if let Ok(v) = secret.parse() {
        req.metadata_mut().insert(SECRET_HEADER, v);
    }
    if let Some(v) = traceparent.and_then(|t| t.parse().ok()) {
        req.metadata_mut().insert("traceparent", v);
    }
    match client.forward(req).await {
        Ok(reply) => Ok(reply.into_inner().answer),
        // Not connected, or the connection broke (tonic says `Unknown: transport error` for a connection cut
        // mid-call): the owner is gone or going; the leases will say who next.
        Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown) => {
            Err(ForwardError::Unreachable { address: address.to_owned(), reason: s.message().to_owned() })
        }
        Err(s) => Err(ForwardError::Failed {
            address: address.to_owned(),
            reason: format!("{:?}: {}", s.code(), s.message()),
        }),
    }
}

/// The first DNS name among the subject alternative names of the first certificate of a PEM chain.
fn first_dns_name(pem: &[u8]) -> Option<String> {
    use rustls_pki_types::pem::PemObject as _;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
        _ => None,
    })
}
