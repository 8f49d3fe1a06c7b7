//! Wiring: store → actor system → HTTP servers. Used by `main` and by the integration tests, which start the
//! real application on port 0 (zero2prod style).

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use actors::clock::SystemClock;
use actors::store::TicketStore;
use actors::Router;
use anyhow::Context as _;

use crate::auth::token::TokenIssuer;
use crate::config::{Settings, StoreSettings};
use crate::metrics::Metrics;
use crate::store::postgres::PgTicketStore;
use crate::store::sqlite::SqliteTicketStore;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub router: Router,
    pub issuer: TokenIssuer,
    pub metrics: Metrics,
}

/// A built, not yet running, service.
pub struct Application {
    http_port: u16,
    metrics_port: u16,
    http: Server,
    metrics_server: Server,
}

fn listen(host: &str, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port))
        .with_context(|| format!("binding the {what} port {host}:{port}"))
}

impl Application {
    /// Open the store (migrating it), start the actor system and bind the ports. Must run inside an actix
    /// `System`. Port 0 picks a free port; the chosen ones are logged and returned by the accessors.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let mut actor_config = settings.actors.clone();
        let store: Arc<dyn TicketStore> = match &settings.store {
            StoreSettings::Postgres {
                options,
                pool_size,
                connect_timeout,
            } => Arc::new(
                PgTicketStore::connect((**options).clone(), *pool_size, *connect_timeout).await?,
            ),
            StoreSettings::Embedded { data_dir } => {
                // SQLite has one writer: more than one transaction in flight would only contend for its lock.
                actor_config.persist_in_flight = 1;
                tracing::info!(data_dir = %data_dir.display(), "using the embedded store");
                Arc::new(SqliteTicketStore::open(data_dir).await?)
            }
        };
        if settings.jwt.generated {
            tracing::warn!("JWT_SECRET_KEY is not set: using a random secret; tokens will not survive a restart");
        }
        let metrics = Metrics::new().context("registering metrics")?;
        let router = Router::start(
            &actor_config,
            store,
            Arc::new(SystemClock),
            metrics.actors.clone(),
        );
        let state = AppState {
            router: router.clone(),
            issuer: TokenIssuer::new(&settings.jwt),
            metrics,
        };

        let http_listener = listen(&settings.bind_host, settings.http_port, "HTTP")?;
        let http_port = http_listener.local_addr()?.port();
        let app_state = state.clone();
        let http = HttpServer::new(move || crate::http::app(app_state.clone()))
            .listen(http_listener)?
            .run();

        let metrics_listener = listen(&settings.bind_host, settings.prometheus_port, "metrics")?;
        let metrics_port = metrics_listener.local_addr()?.port();
        let metrics_server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.metrics.clone()))
                .app_data(web::Data::new(state.router.clone()))
                .route("/metrics", web::get().to(crate::metrics::metrics_endpoint))
        })
        .workers(1)
        .listen(metrics_listener)?
        .run();

        tracing::info!(
            http_port,
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
        })
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// Serve until a shutdown signal (SIGINT/SIGTERM: in-flight requests finish first).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let (http, metrics) = futures::join!(self.http, self.metrics_server);
        http.context("HTTP server")?;
        metrics.context("metrics server")?;
        Ok(())
    }
}
