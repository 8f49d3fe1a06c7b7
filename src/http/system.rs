//! `GET /api/v1/system`: what an operator checks first — readiness of each part, Kafka consumer lag and
//! dead-lettered messages, outbox backlogs, live actors, the version, and in cluster mode which replica serves
//! which shards. Read from this replica's memory and metrics (and the readiness checks): cheap to poll.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use actors::ownership::{Owner, VIRTUAL_SHARDS};
use actors::Router;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::errors::ApiError;
use crate::metrics::Metrics;
use crate::startup::Components;

#[derive(Debug, Serialize, ToSchema)]
pub struct SystemInfo {
    /// The service's version.
    pub version: String,
    /// This replica's member id (`single` without cluster mode).
    pub member: String,
    pub clustered: bool,
    /// `/ready`'s answer: whether this replica is ready and each check's result.
    pub ready: bool,
    pub readiness: super::health::Readiness,
    /// Ticket actors alive in this replica.
    pub live_actors: i64,
    /// Tickets in this replica's SLA wake-up indexes.
    pub sla_timers_armed: i64,
    pub kafka: KafkaInfo,
    /// Outbox rows not yet shipped (absent where the shipper does not run here: not configured, or another
    /// replica ships).
    pub audit_backlog: Option<i64>,
    pub events_backlog: Option<i64>,
    /// Who serves the 256 virtual shards, as this replica sees it.
    pub replicas: Vec<Replica>,
    /// Shards nobody serves right now (a hand-off or failover under way).
    pub unowned_shards: Vec<u16>,
    pub sla_policy: SlaPolicyInfo,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KafkaInfo {
    /// Whether this replica consumes from Kafka.
    pub consuming: bool,
    /// High watermark − committed offset, per partition (as last measured).
    pub consumer_lag: BTreeMap<String, i64>,
    /// Messages this replica sent to the dead-letter topic since it started.
    pub dlq_messages: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Replica {
    pub member: String,
    /// Its internal gRPC address (empty for this replica).
    pub address: String,
    /// Whether it is the replica that answered.
    pub local: bool,
    pub shards: Vec<u16>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SlaPolicyInfo {
    /// Warning points, as fractions of created → deadline.
    pub warning_fractions: Vec<f64>,
    /// An attempt may run `sla.timeout_ms` × this.
    pub attempt_timeout_factor: f64,
}

fn consumer_lag(metrics: &Metrics) -> BTreeMap<String, i64> {
    let families = metrics.registry.gather();
    let Some(family) = families.iter().find(|f| f.get_name() == "kafka_consumer_lag") else {
        return BTreeMap::new();
    };
    family
        .get_metric()
        .iter()
        .map(|m| {
            let partition = m.get_label().iter().find(|l| l.get_name() == "partition").map(|l| l.get_value());
            (partition.unwrap_or("?").to_owned(), m.get_gauge().get_value() as i64)
        })
        .collect()
}

/// The replica's view of the service: readiness, Kafka, outbox, actors, version, shard owners.
#[utoipa::path(get, path = "/api/v1/system", tag = "system", responses(
    (status = 200, description = "This replica's view of the service", body = SystemInfo),
))]
pub async fn system(
    router: web::Data<Router>,
    components: web::Data<Components>,
    metrics: web::Data<Metrics>,
    Caller(caller): Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    let readiness = super::health::readiness(&router, &components).await;
    let ready = readiness.ready();
    let table = router.ownership();
    let me = table.member().to_owned();
    let mut replicas: BTreeMap<String, Replica> = BTreeMap::new();
    let mut unowned_shards = Vec::new();
    for shard in 0..VIRTUAL_SHARDS {
        let (member, address, local) = match table.owner(shard) {
            Owner::Local { .. } => (me.clone(), String::new(), true),
            Owner::Remote { member, address } => (member.to_string(), address.to_string(), false),
            Owner::Unknown => {
                unowned_shards.push(shard);
                continue;
            }
        };
        replicas
            .entry(member.clone())
            .or_insert_with(|| Replica { member, address, local, shards: Vec::new() })
            .shards
            .push(shard);
    }
    let policy = router.sla_policy();
    Ok(HttpResponse::Ok().json(SystemInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        member: me,
        clustered: table.is_clustered(),
        ready,
        readiness,
        live_actors: metrics.actors.live.get(),
        sla_timers_armed: metrics.actors.sla_armed.get(),
        kafka: KafkaInfo {
            consuming: components.kafka.is_some(),
            consumer_lag: consumer_lag(&metrics),
            dlq_messages: metrics.dlq.get(),
        },
        audit_backlog: components.audit.as_ref().map(|a| a.backlog()),
        events_backlog: components.kafka_events.as_ref().map(|a| a.backlog()),
        replicas: replicas.into_values().collect(),
        unowned_shards,
        sla_policy: SlaPolicyInfo {
            warning_fractions: policy.warning_fractions.clone(),
            attempt_timeout_factor: policy.attempt_timeout_factor,
        },
    }))
}
