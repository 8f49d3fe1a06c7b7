//! Wiring: store → actor system → HTTP servers. Used by `main` and by the integration tests, which start the
//! real application on port 0 (zero2prod style).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor as _, Arbiter};
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use actors::clock::SystemClock;
use actors::pruner::Pruner;
use actors::shipper::{OutboxShipper, ShipperConfig, ShipperHealth};
use actors::store::{Outbox, TicketStore};
use actors::webhooks::{WebhookActor, WebhookConfig};
use actors::Router;
use anyhow::Context as _;

use crate::audit::mongo::MongoAuditSink;
use crate::auth::token::TokenIssuer;
use crate::auth::verify::Authenticator;
use crate::config::{AuthMode, Settings, StoreSettings};
use crate::grpc::{GrpcServer, GrpcTickets};
use crate::kafka::publisher::KafkaEventSink;
use crate::kafka::{KafkaHealth, KafkaIngest};
use crate::metrics::Metrics;
use crate::store::postgres::PgTicketStore;
use crate::store::sqlite::SqliteTicketStore;
use crate::webhooks::address::AddressPolicy;
use crate::webhooks::transport::HttpTransport;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub router: Router,
    pub issuer: TokenIssuer,
    pub metrics: Metrics,
    pub auth: Arc<Authenticator>,
    pub components: Components,
    pub webhooks: crate::http::webhooks::WebhookApi,
    /// How long a REST request body may take to arrive (HTTP_BODY_TIMEOUT_MS).
    pub body_timeout: Duration,
    /// Per-caller rate limits (RATE_LIMIT_*), shared by REST and gRPC.
    pub rate_limits: crate::ratelimit::RateLimits,
    /// Open watchers (gRPC WatchTickets and the REST event stream share the bounds and the shutdown).
    pub watchers: crate::grpc::Watchers,
}

/// The optional parts, for `/ready`: absent when not configured.
#[derive(Clone, Default)]
pub struct Components {
    /// The audit shipping to MongoDB (MONGODB_URI).
    pub audit: Option<ShipperHealth>,
    /// The Kafka consumer (KAFKA_BOOTSTRAP_SERVERS).
    pub kafka: Option<KafkaHealth>,
    /// The ticket event publication to Kafka (KAFKA_BOOTSTRAP_SERVERS, unless KAFKA_EVENTS_ENABLED=false).
    pub kafka_events: Option<ShipperHealth>,
    /// Set when a graceful shutdown began: `/ready` answers 503 from then on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// A built, not yet running, service.
pub struct Application {
    http_port: u16,
    metrics_port: u16,
    http: Server,
    metrics_server: Server,
    grpc: GrpcServer,
    kafka: Option<KafkaIngest>,
    /// PostgreSQL: this replica's membership of the cluster (left on a graceful shutdown).
    cluster: Option<crate::cluster::Cluster>,
    /// The embedded store: this process is the only one on its `DATA_DIR` (held until it stops).
    _data_dir_lock: Option<crate::store::data_dir_lock::DataDirLock>,
    watchers: crate::grpc::Watchers,
    draining: Arc<std::sync::atomic::AtomicBool>,
    shutdown_drain: Duration,
}

/// The soft limit on open files of this process (Linux; None elsewhere or when unlimited).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// The connection limits are what keeps clients from taking every file descriptor (issue #17: 1 100 idle
/// connections under a 1 024 limit made both ports unreachable); they only help if they fit under that limit.
/// Returns how many REST connections beyond `HTTP_MAX_CONNECTIONS` may be accepted only to be answered 503
/// (`http::admission`): the room the open-files limit leaves, at most [`MAX_REFUSING`].
fn check_connection_limits(settings: &Settings) -> usize {
    let pool = match &settings.store {
        StoreSettings::Postgres { pool_size, .. } => *pool_size as usize,
        StoreSettings::Embedded { .. } => 1,
    };
    let l = &settings.limits;
    // Listeners, runtimes, the embedded store, Kafka and MongoDB clients, webhook connections: ~50 when idle on
    // the embedded store, so a margin.
    let needed = l.grpc_max_connections + l.http_max_connections + pool + 128;
    let Some(limit) = open_files_limit() else { return MAX_REFUSING };
    if limit < needed {
        tracing::warn!(
            open_files_limit = limit,
            grpc_max_connections = l.grpc_max_connections,
            http_max_connections = l.http_max_connections,
            "GRPC_MAX_CONNECTIONS + HTTP_MAX_CONNECTIONS do not fit under the open-files limit (ulimit -n): \
             raise it or lower them, or clients can still exhaust the file descriptors"
        );
    }
    (limit.saturating_sub(needed)).min(MAX_REFUSING)
}

/// At most this many REST connections beyond `HTTP_MAX_CONNECTIONS` are open only to be refused. Each lives one
/// round trip, so this many keep the accept queue moving at several thousand refusals a second (measured: 10×
/// overload, BENCHMARKS.md); fewer (64) left most of a flood waiting in SYN retransmissions.
const MAX_REFUSING: usize = 1024;

/// actix-web's connection hook: the identity of a TLS client's certificate, for every request of the connection.
fn rest_peer_identity(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(tls) = conn.downcast_ref::<Tls>() {
        if let Some(peer) = crate::tls::PeerIdentity::from_peer_certificates(tls.get_ref().1.peer_certificates()) {
            ext.insert(peer);
        }
    }
}

fn listen(host: &str, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port)).with_context(|| format!("binding the {what} port {host}:{port}"))
}

/// Write a file only its owner may read (0600): it holds a credential.
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // `mode` applies only when the file is created: tighten one left by an older version too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents.as_bytes())
}

/// Development convenience: no service-token verifier is configured, so mint a service token for this run
/// (8 hours), log it, and write it to `DATA_DIR/dev-service-token` when the embedded store is used.
fn announce_dev_token(settings: &Settings) -> anyhow::Result<()> {
    let secret = settings.auth.service_secret.as_deref().unwrap_or_default();
    let token = crate::auth::token::service_token(secret, &settings.auth, "dev-operator", 8 * 3600)?;
    let file = match &settings.store {
        StoreSettings::Embedded { data_dir } => {
            let path = data_dir.join("dev-service-token");
            write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
            Some(path.display().to_string())
        }
        StoreSettings::Postgres { .. } => None,
    };
    tracing::warn!(
        token = %token,
        file = file.as_deref().unwrap_or("-"),
        "no SERVICE_JWT_SECRET or SERVICE_JWKS_FILE: use this development service token (valid 8 h)"
    );
    Ok(())
}

impl Application {
    /// Open the store (migrating it), start the actor system and bind the ports. Must run inside an actix
    /// `System`. Port 0 picks a free port; the chosen ones are logged and returned by the accessors.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let mut actor_config = settings.actors.clone();
        let mut data_dir_lock = None;
        let mut cluster_pool = None;
        let store: Arc<dyn TicketStore> = match &settings.store {
            StoreSettings::Postgres { options, pool_size, connect_timeout } => {
                let outage = &settings.store_outage;
                // A replica paused in the middle of a transaction (SIGSTOP, a long stall) would hold its member
                // row's lock and keep its shards from being taken over: PostgreSQL ends such a session.
                let options = (**options).clone().options([("idle_in_transaction_session_timeout", "5s")]);
                let pg =
                    PgTicketStore::connect_with(options.clone(), *pool_size, *connect_timeout, outage.acquire_timeout)
                        .await?;
                // (After the store's connect, which waits for PostgreSQL to come up.)
                let legacy = crate::cluster::keep_legacy_processes_out(&options).await?;
                // The leases have connections of their own: renewals must not queue behind a burst of commits
                // (a renewal that waits past the lease's end would hand every shard over).
                let small_pool = |n: u32| {
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(n)
                        .acquire_timeout(Duration::from_secs(2))
                        .connect_with(options.clone())
                };
                cluster_pool = Some((
                    small_pool(2).await.context("connecting the cluster's lease pool")?,
                    small_pool(3).await.context("connecting the cluster's event pool")?,
                    legacy,
                ));
                let c = &settings.cluster;
                actor_config.handoff_wait = c.handoff_wait;
                actor_config.cluster = Some(actors::router::ClusterPorts {
                    table: actors::ownership::ShardTable::clustered(&c.member_id),
                    forwarder: Arc::new(crate::cluster::forward::GrpcForwarder::new(
                        c.secret.clone(),
                        Duration::from_secs(15),
                        match &settings.tls {
                            Some(tls) => crate::cluster::forward::GrpcForwarder::tls_config(tls, c)?,
                            None => None,
                        },
                    )),
                });
                crate::store::circuit::CircuitStore::wrap(Arc::new(pg), outage.circuit_open)
            }
            StoreSettings::Embedded { data_dir } => {
                // One process per data directory: SQLite would take a second one's writes, but its actors and
                // timers would not know of the first's.
                data_dir_lock = Some(crate::store::data_dir_lock::DataDirLock::take(data_dir)?);
                // SQLite has one writer: more than one transaction in flight would only contend for its lock.
                actor_config.persist_actors = 1;
                actor_config.persist_in_flight = 1;
                tracing::info!(data_dir = %data_dir.display(), "using the embedded store");
                Arc::new(SqliteTicketStore::open(data_dir).await?)
            }
        };
        if settings.jwt.generated {
            tracing::warn!("JWT_SECRET_KEY is not set: using a random secret; tokens will not survive a restart");
        }
        let metrics = Metrics::new().context("registering metrics")?;
        let store = crate::store::metered::MeteredStore::wrap(store, &metrics.observability.store);
        // The actors' own spans only while spans are exported (see `Env::spans`).
        actor_config.spans = settings.otel_endpoint.is_some();
        let router = Router::start(&actor_config, store, Arc::new(SystemClock), metrics.actors.clone());
        let started = std::time::Instant::now();
        // Loads the webhook subscriptions first, so events of instants that passed while down get deliveries.
        let armed = router.load_due().await.context("loading webhook subscriptions and SLA timers")?;
        tracing::info!(armed, elapsed_ms = started.elapsed().as_millis() as u64, "SLA timers armed");
        let mut components = Components::default();
        // Outbox shipping: one replica ships each outbox (the owner of shard 0), so no record goes out twice.
        let leader = actors::ownership::Leader::of(router.ownership());
        if let Some(mongo) = &settings.mongo {
            let sink =
                MongoAuditSink::connect(&mongo.uri, &mongo.database, &mongo.collection, metrics.mongo_ops.clone())
                    .await?;
            let (store, health, leader) = (router.store(), metrics.audit.clone(), leader.clone());
            OutboxShipper::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                let config = ShipperConfig { leader, ..ShipperConfig::default() };
                OutboxShipper::new(store, Arc::new(sink), Outbox::Audit, health, config)
            });
            tracing::info!(database = %mongo.database, collection = %mongo.collection, "audit trail shipped to MongoDB");
            components.audit = Some(metrics.audit.clone());
        } else {
            tracing::info!("MONGODB_URI not set: the store's outbox table is the audit log");
        }
        // Ticket events to Kafka: the same outbox, its own flag, its own shipper on its own thread.
        if let Some((kafka, topics)) = settings.kafka.as_ref().and_then(|k| Some((k, k.events.as_ref()?))) {
            let sink = KafkaEventSink::new(kafka)?;
            let (store, health, leader) = (router.store(), metrics.kafka_events.clone(), leader.clone());
            OutboxShipper::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                let config = ShipperConfig { leader, ..ShipperConfig::default() };
                OutboxShipper::new(store, Arc::new(sink), Outbox::Events, health, config)
            });
            tracing::info!(topic = %topics.topic, sla_violations = %topics.sla_violations_topic, "ticket events published to Kafka");
            components.kafka_events = Some(metrics.kafka_events.clone());
        }
        // Retention: only the consumers that run here hold outbox rows back (see the README, "Retention").
        let mut retention = settings.retention.clone();
        retention.taken_by =
            [(Outbox::Audit, components.audit.is_some()), (Outbox::Events, components.kafka_events.is_some())]
                .into_iter()
                .filter_map(|(outbox, on)| on.then_some(outbox))
                .collect();
        if retention.enabled() {
            let (store, pruned_metrics) = (router.store(), metrics.actors.clone());
            Pruner::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                Pruner::new(store, Arc::new(SystemClock), retention, pruned_metrics)
            });
        } else {
            tracing::info!("retention off: RETENTION_*_DAYS are all 0, nothing is ever deleted");
        }
        let kafka = match &settings.kafka {
            Some(k) => Some(KafkaIngest::start(k.clone(), router.clone(), metrics.clone())?),
            None => {
                tracing::info!("KAFKA_BOOTSTRAP_SERVERS not set: Kafka ingestion is off");
                None
            }
        };
        components.kafka = kafka.as_ref().map(KafkaIngest::health);
        // Webhooks: the deliverer (`load_due` loaded the subscriptions before arming the timers).
        let w = &settings.webhooks;
        let policy = AddressPolicy::parse(&w.allowed_networks).map_err(anyhow::Error::msg)?;
        let webhook_config = WebhookConfig {
            schedule: w.schedule.clone(),
            per_endpoint: w.per_endpoint.max(1),
            disable_after: w.disable_after.max(1),
            disable_window: w.disable_window,
            breaker_failures: w.breaker_failures.max(1),
            breaker_open: w.breaker_open,
            // Long enough for a claimed delivery to wait its turn behind a slow endpoint and be sent.
            lease: w.timeout * 3 + Duration::from_secs(5),
            ..WebhookConfig::default()
        };
        let (store, registry, issuer) = (router.store(), router.webhooks(), TokenIssuer::new(&settings.jwt));
        let (transport_policy, timeout, legacy) = (policy.clone(), w.timeout, w.legacy_secret.clone());
        let webhook_metrics = metrics.actors.webhooks.clone();
        WebhookActor::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            let transport = HttpTransport::new(timeout, transport_policy, legacy, issuer);
            WebhookActor::new(
                store,
                std::rc::Rc::new(transport),
                registry,
                Arc::new(SystemClock),
                webhook_config,
                webhook_metrics,
            )
        });
        let webhooks = crate::http::webhooks::WebhookApi { policy, secret_overlap: w.secret_overlap };
        let auth = Arc::new(Authenticator::new(&settings.auth, &settings.jwt)?);
        if settings.auth.mode == AuthMode::Disabled {
            tracing::warn!("AUTH_MODE=disabled: every call is allowed without a token");
        }
        if settings.auth.dev_secret {
            announce_dev_token(&settings)?;
        }
        let tls = match &settings.tls {
            Some(t) => {
                let tls = crate::tls::Tls::start(t, metrics.tls_reloads.clone())?;
                tracing::info!(
                    cert_file = %t.cert_file.display(),
                    mutual = tls.mutual(),
                    spiffe_service_ids = settings.auth.spiffe_service_ids.len(),
                    "TLS on the REST and gRPC ports (metrics port plaintext)"
                );
                Some(tls)
            }
            None => None,
        };
        let rate_limits = crate::ratelimit::RateLimits::new(&settings.rate_limits, metrics.rate_limited.clone());
        let watchers = crate::grpc::Watchers::new(
            settings.limits.watchers_per_principal,
            settings.limits.watchers_max,
            metrics.observability.grpc.watchers.clone(),
        );
        let draining = Arc::clone(&components.draining);
        let state = AppState {
            router: router.clone(),
            issuer: TokenIssuer::new(&settings.jwt),
            metrics,
            auth,
            components,
            webhooks,
            body_timeout: settings.limits.http_body_timeout,
            rate_limits,
            watchers: watchers.clone(),
        };
        let refusing = check_connection_limits(&settings);
        let grpc = GrpcServer::start(
            &settings.bind_host,
            settings.grpc_port,
            settings.grpc_threads,
            GrpcTickets {
                router: router.clone(),
                auth: Arc::clone(&state.auth),
                issuer: state.issuer.clone(),
                metrics: state.metrics.clone(),
                watchers: watchers.clone(),
                rate_limits: state.rate_limits.clone(),
            },
            cluster_pool.is_some().then(|| crate::cluster::service::ClusterService {
                router: router.clone(),
                secret: settings.cluster.secret.clone(),
            }),
            &settings.limits,
            tls.as_ref().map(crate::tls::Tls::grpc_config),
        )?;
        // Cluster mode: join once the gRPC port (where the others forward to) is bound, before serving REST.
        let cluster = match cluster_pool {
            Some((leases, events, legacy)) => {
                let address = settings.cluster.address(grpc.port, tls.is_some());
                let c = &settings.cluster;
                Some(crate::cluster::Cluster::join(leases, events, legacy, router.clone(), c, address).await?)
            }
            None => None,
        };

        let http_listener = listen(&settings.bind_host, settings.http_port, "HTTP")?;
        let http_port = http_listener.local_addr()?.port();
        let app_state = state.clone();
        // HTTP_MAX_CONNECTIONS bounds the REST connections served; more are accepted only to be answered 503 at
        // once (`http::admission`). actix counts connections per worker, so its own bound (the two together) is
        // split evenly (the worker count is set to actix's own default, to know it).
        let workers = actors::router::cores().min(512);
        let connections = crate::http::admission::Connections::new(settings.limits.http_max_connections, refusing);
        let hard_limit = connections.hard_limit();
        let secure = tls.is_some();
        let http = HttpServer::new(move || crate::http::app(app_state.clone()))
            // Signals are `run_until_stopped`'s: the shards are handed off before the servers stop.
            .disable_signals()
            .shutdown_timeout(20)
            .workers(workers)
            .max_connections(hard_limit.div_ceil(workers))
            .on_connect(move |conn, ext| {
                connections.open(ext);
                // The client certificate's identity goes with the connection: `http::auth::Caller` reads it.
                if secure {
                    rest_peer_identity(conn, ext);
                }
            });
        let http = match &tls {
            Some(tls) => http
                .tls_handshake_timeout(settings.limits.grpc_handshake_timeout)
                .listen_rustls_0_23(http_listener, tls.rest_config())?,
            None => http.listen(http_listener)?,
        }
        .run();

        let metrics_listener = listen(&settings.bind_host, settings.prometheus_port, "metrics")?;
        let metrics_port = metrics_listener.local_addr()?.port();
        // Plaintext whatever TLS_* say: scrapes and probes (kubelet's gRPC probe speaks no TLS), so `/health` and
        // `/ready` are served here too.
        let metrics_server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.metrics.clone()))
                .app_data(web::Data::new(state.router.clone()))
                .app_data(web::Data::new(state.components.clone()))
                .service(crate::http::health::health)
                .service(crate::http::health::ready)
                .route("/metrics", web::get().to(crate::metrics::metrics_endpoint))
                // Probes and scrapes get an id too, so a failing probe's answer can be found in the logs.
                .wrap(actix_web::middleware::from_fn(crate::http::request_id::request_id))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(5)
        .listen(metrics_listener)?
        .run();

        tracing::info!(
            http_port,
            grpc_port = grpc.port,
            metrics_port,
            store = router.store_backend(),
            environment = %settings.environment,
            "listening"
        );
        Ok(Application {
            http_port,
            metrics_port,
            http,
            metrics_server,
            grpc,
            kafka,
            cluster,
            _data_dir_lock: data_dir_lock,
            watchers,
            draining,
            shutdown_drain: settings.shutdown_drain,
        })
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc.port
    }

    /// Serve until SIGTERM or SIGINT, then shut down gracefully: readiness answers 503, the Kafka consumer
    /// stops (its in-flight tickets committed), the shards are handed to the other replicas (requests that
    /// still arrive here are forwarded to them), watch streams end with UNAVAILABLE, and the servers stop once
    /// their in-flight requests are answered.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let signal = async move {
            tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            }
        };
        self.run_until(signal).await
    }

    /// [`run_until_stopped`](Self::run_until_stopped), shutting down when `stop` resolves (to why).
    pub async fn run_until(self, stop: impl std::future::Future<Output = &'static str>) -> anyhow::Result<()> {
        let (http_handle, metrics_handle) = (self.http.handle(), self.metrics_server.handle());
        let servers = async { futures::join!(self.http, self.metrics_server) };
        tokio::pin!(servers);
        tokio::select! {
            (http, metrics) = &mut servers => {
                http.context("HTTP server")?;
                metrics.context("metrics server")?;
                return Ok(());
            }
            why = stop => tracing::info!(reason = why, "shutting down"),
        }
        let started = std::time::Instant::now();
        self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(kafka) = self.kafka {
            kafka.shutdown().await;
        }
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
        self.watchers.close_all();
        // A moment for clients to finish on their open connections (each answer now closes its connection; the
        // requests are forwarded to the successors) before the listeners stop.
        tokio::time::sleep(self.shutdown_drain).await;
        let stopping = async {
            http_handle.stop(true).await;
            metrics_handle.stop(true).await;
        };
        let ((http, metrics), ()) = futures::join!(servers, stopping);
        // Open streams (a worker's status stream) must not hold the process past its grace period.
        if tokio::time::timeout(Duration::from_secs(5), self.grpc.shutdown()).await.is_err() {
            tracing::warn!("gRPC streams still open 5 s after the drain; closing them");
        }
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
        http.context("HTTP server")?;
        metrics.context("metrics server")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    /// The development service token is a credential: only its owner may read the file, also when an older
    /// version had left it readable by everyone.
    #[test]
    fn the_dev_token_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev-service-token");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::write_private(&path, "token").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "token");
    }
}
