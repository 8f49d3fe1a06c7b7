//! The Prometheus registry: request metrics recorded by a middleware, actor metrics, and gauges sampled at
//! scrape time. Served on `/metrics` of the API port and on PROMETHEUS_PORT (same registry).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use actors::metrics::ActorMetrics;
use actors::Router;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

pub mod observability;
pub mod tickets_by_status;

/// All metrics of one service instance.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub actors: ActorMetrics,
    pub api_requests: IntCounterVec,
    pub api_duration: HistogramVec,
    pub jwt_tokens: IntCounter,
    /// MongoDB calls by operation and outcome (`mongodb_operations_total`).
    pub mongo_ops: IntCounterVec,
    /// Kafka messages taken from the tickets topic (`tickets_consumed_total`).
    pub consumed: IntCounter,
    /// Kafka messages that failed, by reason (`tickets_processing_errors_total{reason}`).
    pub processing_errors: IntCounterVec,
    /// Poison messages sent to the dead-letter topic (`kafka_messages_dlq_total`).
    pub dlq: IntCounter,
    /// High watermark − committed offset per partition (`kafka_consumer_lag{partition}`).
    pub consumer_lag: IntGaugeVec,
    /// The audit trail's shipping to MongoDB (`audit_outbox_backlog`, `audit_events_shipped_total`).
    pub audit: actors::shipper::ShipperHealth,
    /// The ticket event publication to Kafka (`kafka_events_backlog`, `kafka_events_published_total`).
    pub kafka_events: actors::shipper::ShipperHealth,
    mailbox_depth: IntGaugeVec,
    /// Calls refused by a caller's rate limit (`rate_limited_total{principal_kind, route_class}`).
    pub rate_limited: IntCounterVec,
    /// Reloads of the TLS files after they changed (`tls_reloads_total{outcome}`: reloaded, failed).
    pub tls_reloads: IntCounterVec,
    /// REST connections opened beyond HTTP_MAX_CONNECTIONS whose request was answered 503 at once
    /// (`http_connections_refused_total`).
    pub http_connections_refused: IntCounter,
    /// Store, gRPC and ticket-count metrics (`metrics/observability.rs`).
    pub observability: observability::ObservabilityMetrics,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let actors = ActorMetrics::register(&registry)?;
        let api_requests = IntCounterVec::new(
            Opts::new("api_requests_total", "HTTP requests by route pattern and status"),
            &["method", "endpoint", "status_code"],
        )?;
        let api_duration = HistogramVec::new(
            HistogramOpts::new("api_request_duration_seconds", "HTTP request latency")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["method", "endpoint"],
        )?;
        let jwt_tokens = IntCounter::new("jwt_tokens_generated_total", "Ticket-scoped tokens minted")?;
        let mongo_ops = IntCounterVec::new(
            Opts::new("mongodb_operations_total", "MongoDB operations by operation and outcome"),
            &["operation", "outcome"],
        )?;
        let consumed = IntCounter::new("tickets_consumed_total", "Kafka messages taken from the tickets topic")?;
        let processing_errors = IntCounterVec::new(
            Opts::new("tickets_processing_errors_total", "Kafka messages that failed, by reason"),
            &["reason"],
        )?;
        let dlq = IntCounter::new("kafka_messages_dlq_total", "Poison messages sent to the dead-letter topic")?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new("kafka_consumer_lag", "High watermark minus committed offset, per partition"),
            &["partition"],
        )?;
        let audit = actors::shipper::ShipperHealth::register(&registry)?;
        let kafka_events = actors::shipper::ShipperHealth::register_as(
            &registry,
            ("kafka_events_backlog", "Outbox records the Kafka event publisher has not taken yet"),
            ("kafka_events_published_total", "Ticket events published to Kafka (acknowledged by the brokers)"),
        )?;
        let observability = observability::ObservabilityMetrics::register(&registry)?;
        let mailbox_depth =
            IntGaugeVec::new(Opts::new("actor_mailbox_depth", "Requests in flight per shard"), &["shard"])?;
        let rate_limited = IntCounterVec::new(
            Opts::new("rate_limited_total", "Calls refused by their caller's rate limit (429 / RESOURCE_EXHAUSTED)"),
            &["principal_kind", "route_class"],
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new("tls_reloads_total", "Reloads of the TLS certificate files after they changed, by outcome"),
            &["outcome"],
        )?;
        let http_connections_refused = IntCounter::new(
            "http_connections_refused_total",
            "REST connections opened beyond HTTP_MAX_CONNECTIONS, answered 503 at once and closed",
        )?;
        let info = IntGaugeVec::new(Opts::new("service_info", "Build information"), &["version"])?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(api_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(api_duration.clone()),
            Box::new(jwt_tokens.clone()),
            Box::new(mailbox_depth.clone()),
            Box::new(mongo_ops.clone()),
            Box::new(consumed.clone()),
            Box::new(processing_errors.clone()),
            Box::new(dlq.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(rate_limited.clone()),
            Box::new(tls_reloads.clone()),
            Box::new(http_connections_refused.clone()),
            Box::new(info),
        ] {
            registry.register(c)?;
        }
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, process_start_time_seconds …:
        // the families every Prometheus dashboard expects of a process (read from /proc, Linux only).
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Metrics {
            registry,
            actors,
            api_requests,
            api_duration,
            jwt_tokens,
            mongo_ops,
            consumed,
            processing_errors,
            dlq,
            consumer_lag,
            audit,
            kafka_events,
            mailbox_depth,
            rate_limited,
            tls_reloads,
            http_connections_refused,
            observability,
        })
    }

    /// The text exposition, after sampling the gauges that are read rather than updated.
    pub fn render(&self, router: &Router) -> String {
        for (shard, depth) in router.mailbox_depths().into_iter().enumerate() {
            self.mailbox_depth.with_label_values(&[&shard.to_string()]).set(depth as i64);
        }
        let mut buf = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// GET /metrics.
pub async fn metrics_endpoint(metrics: web::Data<Metrics>, router: web::Data<Router>) -> HttpResponse {
    metrics.observability.tickets_by_status.refresh(router.store().as_ref()).await;
    HttpResponse::Ok().content_type(prometheus::TEXT_FORMAT).body(metrics.render(&router))
}

/// The `method` label: a standard method by name, anything else `OTHER`. Any token is a valid HTTP method, so
/// taking it as sent would let an unauthenticated client add a label value (and a time series) per request.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Middleware: count and time every request by its route pattern (not its raw path, which would explode the
/// label set with ticket ids) and its method (`method_label`).
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let method = method_label(req.method());
    let started = std::time::Instant::now();
    let res = next.call(req).await?;
    if let Some(metrics) = metrics {
        let endpoint = res.request().match_pattern().unwrap_or_else(|| "unmatched".into());
        let status = res.status().as_u16().to_string();
        metrics.api_requests.with_label_values(&[method, &endpoint, &status]).inc();
        metrics.api_duration.with_label_values(&[method, &endpoint]).observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
}
