//! The gRPC front end (tonic) on GRPC_PORT: `ticket_service.TicketService`, the standard health service and
//! server reflection. It runs on its own multi-threaded tokio runtime (its own thread) next to the actix
//! system and talks to the actors through the same [`actors::Router`] as REST.

mod client_errors;
pub mod convert;
pub mod decode;
mod expiry;
mod incoming;
pub mod metrics_layer;
mod service;
pub mod watch;
mod worker;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::oneshot;
use tonic_health::ServingStatus;

use crate::config::LimitSettings;

pub use incoming::ConnInfo;
pub use service::GrpcTickets;
pub use watch::Watchers;

/// The generated protobuf types, client and server.
pub mod pb {
    tonic::include_proto!("ticket_service");
}

/// Encoded descriptors of `proto/ticket_service.proto`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ticket_service_descriptor.bin"));

const SERVICE_NAME: &str = "ticket_service.TicketService";

/// A running gRPC server. Dropping it (or calling [`GrpcServer::shutdown`]) marks the health service
/// NOT_SERVING and drains in-flight calls.
pub struct GrpcServer {
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl GrpcServer {
    /// Bind `host:port` and serve `service` on a runtime of its own with `threads` threads, within `limits`
    /// (connections, handshakes); over TLS with `tls` (see `crate::tls`).
    pub fn start(
        host: &str,
        port: u16,
        threads: usize,
        service: GrpcTickets,
        cluster: Option<crate::cluster::service::ClusterService>,
        limits: &LimitSettings,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<Self> {
        let limits = incoming::ConnectionLimits {
            max_connections: limits.grpc_max_connections,
            handshake_timeout: limits.grpc_handshake_timeout,
        };
        let listener =
            TcpListener::bind((host, port)).with_context(|| format!("binding the gRPC port {host}:{port}"))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        // With one thread (one CPU) the calls run on the server's own thread, on a single-threaded runtime,
        // without a multi-threaded scheduler's hand-offs between workers: on one core a read cost a third less CPU
        // than with two workers (`ticket-bench crud`, BENCHMARKS.md, the twenty-second session).
        let mut builder = match threads {
            0 | 1 => {
                let mut b = tokio::runtime::Builder::new_current_thread();
                // Answers come from the arbiters as wake-ups from other threads (the runtime's global queue), and
                // each one wakes its connection's task (the local queue). Taken local first, as by default, each
                // connection task ran, and wrote, after every single answer; taken global first, the answers that
                // are ready go first and one write carries them all (with `Connection::is_write_vectored`,
                // BENCHMARKS.md, the twenty-fifth session). The global queue holds what other threads woke: calls
                // whose answers came, watch streams with news. A connection reads new calls once those are taken,
                // so a thread that cannot keep up finishes the calls it holds before it takes more.
                b.global_queue_interval(1);
                b
            }
            n => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
        };
        let runtime = builder.thread_name("grpc").enable_all().build().context("starting the gRPC runtime")?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let router = service.router.clone();
        std::thread::Builder::new().name("grpc-server".into()).spawn(move || {
            runtime.block_on(async move {
                if let Err(e) = serve(listener, limits, tls, service, cluster, router, stop_rx).await {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            });
            let _ = done_tx.send(());
        })?;
        Ok(GrpcServer { port, stop: Some(stop_tx), done: Some(done_rx) })
    }

    /// Stop accepting calls, let in-flight ones finish, and wait for the server to end.
    pub async fn shutdown(mut self) {
        self.stop.take();
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.stop.take();
    }
}

async fn serve(
    listener: TcpListener,
    limits: incoming::ConnectionLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    service: GrpcTickets,
    cluster: Option<crate::cluster::service::ClusterService>,
    router: actors::Router,
    stop: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // Health follows the store: NOT_SERVING while it does not answer, and during shutdown. The first check is
    // made before the port serves, so no client ever sees an unregistered service.
    let check = {
        let health = health.clone();
        move || {
            let (health, router) = (health.clone(), router.clone());
            async move {
                let ok = matches!(tokio::time::timeout(Duration::from_secs(2), router.ping_store()).await, Ok(Ok(())));
                let status = if ok { ServingStatus::Serving } else { ServingStatus::NotServing };
                health.set_service_status("", status).await;
                health.set_service_status(SERVICE_NAME, status).await;
            }
        }
    };
    check().await;
    let watcher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            check().await;
        }
    });
    let shutdown = {
        let health = health.clone();
        async move {
            let _ = stop.await;
            watcher.abort();
            health.set_service_status("", ServingStatus::NotServing).await;
            health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
            tracing::info!("gRPC server draining");
        }
    };
    let incoming = incoming::incoming_tls(listener, limits, tls)?;
    tonic::transport::Server::builder()
        // Once the handshake is done, idle connections are pinged: one whose peer is gone (no answer within the
        // timeout) is closed. (These hyper settings do apply with `serve_with_incoming`.)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .trace_fn(crate::tracecontext::spans::grpc_request_span)
        // Outermost first: the metrics layer sees the codes `ClientErrorsLayer` rewrote.
        .layer(service.metrics.observability.grpc.layer())
        .layer(client_errors::ClientErrorsLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::ticket_service_server::TicketServiceServer::new(service))
        .add_optional_service(cluster.map(crate::cluster::pb::cluster_server::ClusterServer::new))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
