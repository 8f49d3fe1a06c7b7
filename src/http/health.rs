//! Liveness and readiness.

use std::time::Duration;

use std::collections::BTreeMap;

use actix_web::{get, web, HttpResponse};
use actors::Router;
use serde::Serialize;
use utoipa::ToSchema;

use crate::startup::Components;

/// The liveness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `healthy`.
    pub status: &'static str,
    pub service: &'static str,
    pub version: &'static str,
}

/// The readiness answer: the overall verdict and each component's check.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// By component: `store`, `sla_timers`, and when configured `audit`, `kafka_events`, `kafka`; `shutdown`
    /// while draining.
    pub checks: BTreeMap<&'static str, Check>,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.status == "ready"
    }
}

/// One component's check.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Check {
    /// `ok`; else `error`, `loading`, `degraded` (still ready), `failed` or `draining`.
    pub status: String,
    /// The store's kind (`embedded`, `postgres`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'static str>,
    /// Records waiting in an outbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The Kafka consumer's state in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Check {
    fn new(status: &str) -> Check {
        Check { status: status.into(), ..Check::default() }
    }

    fn error(mut self, error: impl Into<String>) -> Check {
        self.error = Some(error.into());
        self
    }

    /// An outbox shipper's check: failing leaves records waiting (nothing is lost), so degraded, still ready.
    fn shipper(status: Result<(), String>, backlog: i64) -> Check {
        let check = match status {
            Ok(()) => Check::new("ok"),
            Err(e) => Check::new("degraded").error(e),
        };
        Check { backlog: Some(backlog), ..check }
    }
}

/// Liveness: 200 while the process runs.
#[utoipa::path(security(()), responses((status = 200, description = "The process is alive", body = Health)))]
#[get("/health")]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "healthy",
        service: "execution-ticket-service",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Readiness: 200 when every dependency answers, else 503 with each check's result.
#[utoipa::path(security(()), responses(
    (status = 200, description = "Ready to serve", body = Readiness),
    (status = 503, description = "A dependency is unavailable", body = Readiness)
))]
#[get("/ready")]
pub async fn ready(router: web::Data<Router>, components: web::Data<Components>) -> HttpResponse {
    let body = readiness(&router, &components).await;
    if body.ready() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Each check's result and the verdict (`/ready`'s body; also part of `/api/v1/system`).
pub async fn readiness(router: &Router, components: &Components) -> Readiness {
    let backend = Some(router.store_backend());
    let store = match tokio::time::timeout(Duration::from_secs(2), router.ping_store()).await {
        Ok(Ok(())) => Check::new("ok"),
        Ok(Err(e)) => {
            // The driver's text (hosts, versions) goes to the log, not to an unauthenticated caller.
            tracing::warn!(error = %e, "readiness: the ticket store did not answer");
            Check::new("error").error("unavailable (details in the service log)")
        }
        Err(_) => Check::new("error").error("timed out after 2 s"),
    };
    let sla = if router.sla_loaded() {
        Check::new("ok")
    } else {
        Check::new("loading").error("SLA timers are still being loaded from the store")
    };
    let mut checks = BTreeMap::from([("store", Check { backend, ..store }), ("sla_timers", sla)]);
    if let Some(audit) = &components.audit {
        checks.insert("audit", Check::shipper(audit.status(), audit.backlog()));
    }
    // The same for the event publication: events wait in the outbox while Kafka fails.
    if let Some(events) = &components.kafka_events {
        checks.insert("kafka_events", Check::shipper(events.status(), events.backlog()));
    }
    // A consumer that cannot reach its brokers is degraded (it reconnects by itself); one that stopped is not
    // ready.
    if let Some(kafka) = &components.kafka {
        let (status, detail) = kafka.status();
        checks.insert("kafka", Check { detail: Some(detail), ..Check::new(status) });
    }
    // A graceful shutdown began: no new traffic here (the shards are being handed to the other replicas).
    let draining = components.draining.load(std::sync::atomic::Ordering::SeqCst);
    if draining {
        checks.insert("shutdown", Check::new("draining").error("shutting down: the shards are handed off"));
    }
    let ok = !draining
        && checks["store"].status == "ok"
        && checks["sla_timers"].status == "ok"
        && checks.get("kafka").is_none_or(|k| k.status != "failed");
    Readiness { status: if ok { "ready" } else { "not_ready" }, checks }
}
