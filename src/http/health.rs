//! Liveness and readiness.

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use actors::Router;
use serde_json::json;

use crate::startup::Components;

/// Liveness: 200 while the process runs.
#[utoipa::path(security(()), responses((status = 200, description = "The process is alive")))]
#[get("/health")]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .json(json!({"status": "healthy", "service": "execution-ticket-service", "version": env!("CARGO_PKG_VERSION")}))
}

/// Readiness: 200 when every dependency answers, else 503 with each check's result.
#[utoipa::path(security(()), responses(
    (status = 200, description = "Ready to serve"),
    (status = 503, description = "A dependency is unavailable")
))]
#[get("/ready")]
pub async fn ready(router: web::Data<Router>, components: web::Data<Components>) -> HttpResponse {
    let (ok, body) = readiness(&router, &components).await;
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Whether the service is ready, and each check's result (`/ready`'s body; also part of `/api/v1/system`).
pub async fn readiness(router: &Router, components: &Components) -> (bool, serde_json::Value) {
    let store = match tokio::time::timeout(Duration::from_secs(2), router.ping_store()).await {
        Ok(Ok(())) => json!({"status": "ok", "backend": router.store_backend()}),
        Ok(Err(e)) => {
            // The driver's text (hosts, versions) goes to the log, not to an unauthenticated caller.
            tracing::warn!(error = %e, "readiness: the ticket store did not answer");
            json!({"status": "error", "backend": router.store_backend(), "error": "unavailable (details in the service log)"})
        }
        Err(_) => {
            json!({"status": "error", "backend": router.store_backend(), "error": "timed out after 2 s"})
        }
    };
    let sla = if router.sla_loaded() {
        json!({"status": "ok"})
    } else {
        json!({"status": "loading", "error": "SLA timers are still being loaded from the store"})
    };
    let mut checks = json!({"store": store, "sla_timers": sla});
    // Audit shipping that fails leaves records waiting in the outbox (nothing is lost): degraded, still ready.
    if let Some(audit) = &components.audit {
        checks["audit"] = match audit.status() {
            Ok(()) => json!({"status": "ok", "backlog": audit.backlog()}),
            Err(e) => json!({"status": "degraded", "backlog": audit.backlog(), "error": e}),
        };
    }
    // The same for the event publication: events wait in the outbox while Kafka fails.
    if let Some(events) = &components.kafka_events {
        checks["kafka_events"] = match events.status() {
            Ok(()) => json!({"status": "ok", "backlog": events.backlog()}),
            Err(e) => json!({"status": "degraded", "backlog": events.backlog(), "error": e}),
        };
    }
    // A consumer that cannot reach its brokers is degraded (it reconnects by itself); one that stopped is not
    // ready.
    if let Some(kafka) = &components.kafka {
        let (status, detail) = kafka.status();
        checks["kafka"] = json!({"status": status, "detail": detail});
    }
    // A graceful shutdown began: no new traffic here (the shards are being handed to the other replicas).
    let draining = components.draining.load(std::sync::atomic::Ordering::SeqCst);
    if draining {
        checks["shutdown"] = json!({"status": "draining", "error": "shutting down: the shards are handed off"});
    }
    let ok = !draining
        && checks["store"]["status"] == "ok"
        && checks["sla_timers"]["status"] == "ok"
        && checks.get("kafka").is_none_or(|k| k["status"] != "failed");
    (ok, json!({"status": if ok { "ready" } else { "not_ready" }, "checks": checks}))
}
