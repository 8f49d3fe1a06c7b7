//! Configuration from environment variables, named as in the original service, each with a default.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use actors::enums::{Priority, TaskType};
use actors::sla::{BreachAction, SlaPolicy};
use actors::SystemConfig;
use anyhow::{bail, Context as _};
use sqlx::postgres::PgConnectOptions;

/// Where tickets are stored.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// PostgreSQL (POSTGRES_* or DATABASE_URL set).
    Postgres { options: Box<PgConnectOptions>, pool_size: u32, connect_timeout: Duration },
    /// SQLite file under DATA_DIR (the default).
    Embedded { data_dir: PathBuf },
}

/// JWT minting.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub secret: String,
    pub expiration_seconds: i64,
    /// The secret was generated at startup (JWT_SECRET_KEY unset): tokens die with the process.
    pub generated: bool,
}

/// AUTH_MODE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Disabled,
}

/// Who may call: service-token verification (see `auth::verify`).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// HS256 secret of service tokens (SERVICE_JWT_SECRET).
    pub service_secret: Option<String>,
    /// The service secret was generated for a development run: a dev token is printed at startup.
    pub dev_secret: bool,
    /// RS256/ES256 keys of service tokens (SERVICE_JWKS_FILE).
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` of service tokens (SERVICE_JWT_ISSUER), if set.
    pub issuer: Option<String>,
    /// Required `aud` of service tokens (SERVICE_JWT_AUDIENCE).
    pub audience: String,
    /// Clock skew tolerated on exp/nbf (JWT_LEEWAY_SECONDS).
    pub leeway_seconds: u64,
    /// SPIFFE IDs whose client certificate (X.509-SVID, verified by mutual TLS) makes the caller a service
    /// principal without a bearer token (SERVICE_SPIFFE_IDS).
    pub spiffe_service_ids: Vec<String>,
}

/// Whether the REST listener requires a client certificate under mutual TLS (TLS_REST_CLIENT_CERT); the gRPC
/// listener always does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertPolicy {
    /// A client may connect without one (and authenticate with a bearer token); one it sends is verified.
    Optional,
    /// The handshake fails without a certificate signed by TLS_CLIENT_CA_FILE.
    Required,
}

/// TLS on the REST and gRPC listeners (TLS_*); absent when TLS_CERT_FILE is unset. See `tls.rs`.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// TLS_CERT_FILE: the server's certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// TLS_KEY_FILE: its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// TLS_CLIENT_CA_FILE: CA certificates (PEM) client certificates must chain to; set: mutual TLS.
    pub client_ca_file: Option<PathBuf>,
    /// TLS_REST_CLIENT_CERT (optional): whether REST clients must present a certificate under mutual TLS.
    pub rest_client_cert: ClientCertPolicy,
    /// TLS_RELOAD_INTERVAL_MS (10000): how often the three files are read again to find a rotation.
    pub reload_interval: Duration,
}

fn tls_settings(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<TlsSettings>> {
    let path = |name: &str| get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).map(PathBuf::from);
    let (cert_file, key_file, client_ca_file) =
        (path("TLS_CERT_FILE"), path("TLS_KEY_FILE"), path("TLS_CLIENT_CA_FILE"));
    let (cert_file, key_file) = match (cert_file, key_file) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => {
            if client_ca_file.is_some() {
                bail!("TLS_CLIENT_CA_FILE is set but TLS_CERT_FILE and TLS_KEY_FILE are not: mutual TLS needs TLS");
            }
            return Ok(None);
        }
        (Some(_), None) => bail!("TLS_CERT_FILE is set but TLS_KEY_FILE is not: set both (PEM files) or neither"),
        (None, Some(_)) => bail!("TLS_KEY_FILE is set but TLS_CERT_FILE is not: set both (PEM files) or neither"),
    };
    let rest_client_cert = match get("TLS_REST_CLIENT_CERT").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("optional") => ClientCertPolicy::Optional,
        Some("required") => ClientCertPolicy::Required,
        Some(other) => bail!("TLS_REST_CLIENT_CERT={other:?} is invalid: use optional or required"),
    };
    if rest_client_cert == ClientCertPolicy::Required && client_ca_file.is_none() {
        bail!("TLS_REST_CLIENT_CERT=required needs TLS_CLIENT_CA_FILE (the CA client certificates must chain to)");
    }
    Ok(Some(TlsSettings {
        cert_file,
        key_file,
        client_ca_file,
        rest_client_cert,
        reload_interval: Duration::from_millis(parse(get, "TLS_RELOAD_INTERVAL_MS", 10_000u64)?.max(10)),
    }))
}

/// `SERVICE_SPIFFE_IDS`: comma-separated `spiffe://trust-domain/path` IDs.
fn spiffe_ids(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for id in get("SERVICE_SPIFFE_IDS").unwrap_or_default().split(',').map(str::trim).filter(|id| !id.is_empty()) {
        let valid = id.strip_prefix("spiffe://").and_then(|rest| rest.split_once('/')).is_some_and(|(domain, path)| {
            !domain.is_empty()
                && domain.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
                && !path.is_empty()
        });
        if !valid {
            bail!("SERVICE_SPIFFE_IDS: {id:?} is not a SPIFFE ID (spiffe://trust-domain/path, lowercase trust domain)");
        }
        ids.push(id.to_owned());
    }
    Ok(ids)
}

/// Per-caller rate limits (RATE_LIMIT_*): requests per second and burst, by route class. A rate of 0 turns that
/// class's limit off. See `ratelimit.rs`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitSettings {
    /// RATE_LIMIT_READS_PER_SECOND (2000): gets, lists, history, watches.
    pub reads_per_second: u32,
    /// RATE_LIMIT_WRITES_PER_SECOND (1000): creates, status changes, retries, cancels, compensations, webhook
    /// subscriptions, worker streams.
    pub writes_per_second: u32,
    /// RATE_LIMIT_TOKENS_PER_SECOND (200): ticket-token minting.
    pub tokens_per_second: u32,
    /// RATE_LIMIT_BURST_SECONDS (2): how many seconds' worth of requests a caller may send at once.
    pub burst_seconds: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings { reads_per_second: 2000, writes_per_second: 1000, tokens_per_second: 200, burst_seconds: 2 }
    }
}

impl RateLimitSettings {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let d = RateLimitSettings::default();
        Ok(RateLimitSettings {
            reads_per_second: parse(get, "RATE_LIMIT_READS_PER_SECOND", d.reads_per_second)?,
            writes_per_second: parse(get, "RATE_LIMIT_WRITES_PER_SECOND", d.writes_per_second)?,
            tokens_per_second: parse(get, "RATE_LIMIT_TOKENS_PER_SECOND", d.tokens_per_second)?,
            burst_seconds: parse(get, "RATE_LIMIT_BURST_SECONDS", d.burst_seconds)?.max(1),
        })
    }
}

/// The shortest accepted HS256 secret in a strict environment: RFC 7518 §3.2 asks for a key at least as long as
/// the hash output (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// `ENVIRONMENT`, trimmed and case-folded, as one of the known names: `production` and `staging` are strict (real
/// secrets required, no development token, no `AUTH_MODE=disabled`); `development` and `test` are not. An
/// unknown name is refused rather than silently treated as development (`prod`, ` production` once ran with a
/// logged full-power token).
fn environment(raw: Option<String>) -> anyhow::Result<(String, bool)> {
    let name = raw.map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty());
    match name.as_deref().unwrap_or("development") {
        "production" | "prod" => Ok(("production".into(), true)),
        "staging" => Ok(("staging".into(), true)),
        "development" | "dev" | "local" => Ok(("development".into(), false)),
        "test" => Ok(("test".into(), false)),
        other => {
            bail!("ENVIRONMENT={other:?} is not known: use production (or prod), staging, development (or dev) or test")
        }
    }
}

fn random_secret() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// SLA_* variables: warning fractions, breach action, schedule-to-start limits, heartbeat defaults, the attempt
/// timeout factor.
fn sla_policy(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<SlaPolicy> {
    let defaults = SlaPolicy::default();
    let warning_fractions = match get("SLA_WARNING_FRACTIONS") {
        None => defaults.warning_fractions,
        Some(v) if v.trim().is_empty() => Vec::new(),
        Some(v) => v
            .split(',')
            .map(|f| match f.trim().parse::<f64>() {
                Ok(x) if x > 0.0 && x < 1.0 => Ok(x),
                _ => Err(anyhow::anyhow!("SLA_WARNING_FRACTIONS: {f:?} is not a fraction between 0 and 1")),
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let breach_action = match get("SLA_BREACH_ACTION").as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("alert") => BreachAction::Alert,
        Some("fail") => BreachAction::Fail,
        Some(other) => bail!("SLA_BREACH_ACTION={other:?} is invalid: use alert or fail"),
    };
    let mut start_limits_ms = defaults.start_limits_ms;
    for (i, p) in Priority::ALL.iter().enumerate() {
        let name = format!("SLA_START_LIMIT_{}_SECONDS", p.as_str());
        start_limits_ms[i] = parse(get, &name, start_limits_ms[i] / 1000)? * 1000;
    }
    let mut heartbeat_defaults_ms = Vec::new();
    for pair in get("SLA_HEARTBEAT_TIMEOUTS").unwrap_or_default().split(',').filter(|p| !p.trim().is_empty()) {
        let (kind, secs) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("SLA_HEARTBEAT_TIMEOUTS: {pair:?} is not TASK_TYPE=SECONDS"))?;
        let kind: TaskType = kind.parse().map_err(|e| anyhow::anyhow!("SLA_HEARTBEAT_TIMEOUTS: {e}"))?;
        let secs: i64 = secs.trim().parse().map_err(|_| anyhow::anyhow!("SLA_HEARTBEAT_TIMEOUTS: {pair:?}"))?;
        heartbeat_defaults_ms.push((kind, secs * 1000));
    }
    let attempt_timeout_factor = parse(get, "SLA_ATTEMPT_TIMEOUT_FACTOR", defaults.attempt_timeout_factor)?;
    if !(attempt_timeout_factor.is_finite() && attempt_timeout_factor >= 1.0) {
        bail!("SLA_ATTEMPT_TIMEOUT_FACTOR={attempt_timeout_factor} is invalid: a factor ≥ 1 of sla.timeout_ms");
    }
    Ok(SlaPolicy { warning_fractions, breach_action, start_limits_ms, heartbeat_defaults_ms, attempt_timeout_factor })
}

/// The Kafka consumer (KAFKA_*); absent when KAFKA_BOOTSTRAP_SERVERS is unset.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    /// KAFKA_CONSUMER_GROUP_ID (default `execution-ticket-service`).
    pub group_id: String,
    /// KAFKA_TICKETS_TOPIC (default `execution.tickets`).
    pub topic: String,
    /// KAFKA_DLQ_TOPIC (default: the tickets topic + `.dlq`).
    pub dlq_topic: String,
    /// KAFKA_AUTO_OFFSET_RESET (default `earliest`).
    pub auto_offset_reset: String,
    /// KAFKA_SCHEMA_REGISTRY_URL: writer schemas of Confluent-framed Avro messages.
    pub schema_registry_url: Option<String>,
    /// Security properties for librdkafka (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*).
    pub client_properties: Vec<(String, String)>,
    /// KAFKA_SESSION_TIMEOUT_MS / KAFKA_MAX_POLL_INTERVAL_MS (librdkafka's defaults when unset).
    pub session_timeout_ms: Option<u64>,
    pub max_poll_interval_ms: Option<u64>,
    /// KAFKA_MAX_IN_FLIGHT: messages handled at once before the partitions are paused.
    pub max_in_flight: usize,
    /// Ticket events published to Kafka (KAFKA_EVENTS_*); None when KAFKA_EVENTS_ENABLED=false.
    pub events: Option<KafkaEventsSettings>,
}

/// The ticket event publisher: topics and how long a batch may wait for its acknowledgements.
#[derive(Debug, Clone)]
pub struct KafkaEventsSettings {
    /// KAFKA_EVENTS_TOPIC (default `execution.ticket.events`): every ticket event.
    pub topic: String,
    /// KAFKA_SLA_VIOLATIONS_TOPIC (default `sla.violations`): deadline breaches, start overdue, final timeouts.
    pub sla_violations_topic: String,
    /// KAFKA_EVENTS_DELIVERY_TIMEOUT_MS (default 30000): how long a message may take to be acknowledged by the
    /// brokers (librdkafka's `message.timeout.ms`); a batch with one unacknowledged message is published again.
    pub delivery_timeout: Duration,
}

/// The topic this service consumes, whatever KAFKA_TICKETS_TOPIC says: it must never publish there.
pub const ORCHESTRATOR_TICKETS_TOPIC: &str = "execution.tickets";

impl KafkaSettings {
    /// Refuse a publisher configuration that would write where it must not: the consumed tickets topic (the
    /// configured one and `execution.tickets`), the DLQ, or one topic for both event streams. Checked when the
    /// settings are read and again when the publisher starts.
    pub fn check_event_topics(&self) -> anyhow::Result<()> {
        let Some(events) = &self.events else { return Ok(()) };
        for (var, topic) in
            [("KAFKA_EVENTS_TOPIC", &events.topic), ("KAFKA_SLA_VIOLATIONS_TOPIC", &events.sla_violations_topic)]
        {
            if topic.trim().is_empty() {
                bail!("{var} is empty");
            }
            if *topic == self.topic || topic == ORCHESTRATOR_TICKETS_TOPIC {
                bail!("{var}={topic:?} is the tickets topic this service consumes: it never publishes there");
            }
            if *topic == self.dlq_topic {
                bail!("{var}={topic:?} is the dead-letter topic (KAFKA_DLQ_TOPIC)");
            }
        }
        if events.topic == events.sla_violations_topic {
            bail!("KAFKA_EVENTS_TOPIC and KAFKA_SLA_VIOLATIONS_TOPIC must differ (both are {:?})", events.topic);
        }
        Ok(())
    }
}

/// The MongoDB audit sink (MONGODB_*); absent when MONGODB_URI is unset.
#[derive(Debug, Clone)]
pub struct MongoSettings {
    pub uri: String,
    /// MONGODB_DATABASE (default `neural_hive_orchestration`).
    pub database: String,
    /// MONGODB_COLLECTION_AUDIT (default `ticket_audit_log`).
    pub collection: String,
}

fn kafka_settings(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<KafkaSettings>> {
    let Some(bootstrap_servers) = get("KAFKA_BOOTSTRAP_SERVERS").filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let text = |name: &str, default: &str| get(name).filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.into());
    let topic = text("KAFKA_TICKETS_TOPIC", "execution.tickets");
    let auto_offset_reset = text("KAFKA_AUTO_OFFSET_RESET", "earliest").to_ascii_lowercase();
    if !["earliest", "latest", "error"].contains(&auto_offset_reset.as_str()) {
        bail!("KAFKA_AUTO_OFFSET_RESET={auto_offset_reset:?} is invalid: use earliest or latest");
    }
    let mut client_properties = Vec::new();
    for (var, property) in [
        ("KAFKA_SECURITY_PROTOCOL", "security.protocol"),
        ("KAFKA_SASL_MECHANISM", "sasl.mechanism"),
        ("KAFKA_SASL_USERNAME", "sasl.username"),
        ("KAFKA_SASL_PASSWORD", "sasl.password"),
        ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
        ("KAFKA_SSL_CERTIFICATE_LOCATION", "ssl.certificate.location"),
        ("KAFKA_SSL_KEY_LOCATION", "ssl.key.location"),
        ("KAFKA_SSL_KEY_PASSWORD", "ssl.key.password"),
    ] {
        if let Some(v) = get(var).filter(|v| !v.trim().is_empty()) {
            client_properties.push((property.to_owned(), v));
        }
    }
    let optional = |name: &str| -> anyhow::Result<Option<u64>> {
        get(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().parse().map_err(|e| anyhow::anyhow!("{name}={v:?} is invalid: {e}")))
            .transpose()
    };
    let events = match get("KAFKA_EVENTS_ENABLED").as_deref().map(str::trim).map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("true") | Some("1") | Some("yes") => Some(KafkaEventsSettings {
            topic: text("KAFKA_EVENTS_TOPIC", "execution.ticket.events"),
            sla_violations_topic: text("KAFKA_SLA_VIOLATIONS_TOPIC", "sla.violations"),
            delivery_timeout: Duration::from_millis(parse(get, "KAFKA_EVENTS_DELIVERY_TIMEOUT_MS", 30_000)?.max(1)),
        }),
        Some("false") | Some("0") | Some("no") => None,
        Some(other) => bail!("KAFKA_EVENTS_ENABLED={other:?} is invalid: use true or false"),
    };
    let settings = KafkaSettings {
        bootstrap_servers,
        group_id: text("KAFKA_CONSUMER_GROUP_ID", "execution-ticket-service"),
        dlq_topic: text("KAFKA_DLQ_TOPIC", &format!("{topic}.dlq")),
        topic,
        auto_offset_reset,
        schema_registry_url: get("KAFKA_SCHEMA_REGISTRY_URL").filter(|v| !v.trim().is_empty()),
        client_properties,
        session_timeout_ms: optional("KAFKA_SESSION_TIMEOUT_MS")?,
        max_poll_interval_ms: optional("KAFKA_MAX_POLL_INTERVAL_MS")?,
        max_in_flight: parse(get, "KAFKA_MAX_IN_FLIGHT", 16384)?,
        events,
    };
    settings.check_event_topics()?;
    Ok(Some(settings))
}

/// Webhook delivery (WEBHOOK_*).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// WEBHOOK_TIMEOUT_SECONDS (10).
    pub timeout: Duration,
    /// WEBHOOK_ALLOWED_NETWORKS: internal networks webhooks may reach anyway (comma-separated CIDRs).
    pub allowed_networks: String,
    /// WEBHOOK_RETRY_SCHEDULE: seconds before each retry (default 5, 300, 1800, 7200, 18000, 36000, 36000).
    pub schedule: Vec<Duration>,
    /// WEBHOOK_MAX_CONCURRENCY_PER_ENDPOINT (16).
    pub per_endpoint: usize,
    /// WEBHOOK_DISABLE_AFTER_FAILURES (50) consecutive failures spread over WEBHOOK_DISABLE_WINDOW_SECONDS
    /// (86400) disable a subscription.
    pub disable_after: i32,
    pub disable_window: Duration,
    /// WEBHOOK_SECRET_OVERLAP_SECONDS (86400): how long the old secret still signs after a rotation.
    pub secret_overlap: Duration,
    /// WEBHOOK_BREAKER_FAILURES (5) failures in a row open an endpoint's circuit breaker for
    /// WEBHOOK_BREAKER_OPEN_SECONDS (30).
    pub breaker_failures: u32,
    pub breaker_open: Duration,
    /// WEBHOOK_SECRET: signs deliveries to a ticket's own `metadata.webhook_url` (random per run when unset).
    pub legacy_secret: String,
}

fn webhook_settings(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<WebhookSettings> {
    let defaults = actors::webhooks::WebhookConfig::default();
    let schedule = match get("WEBHOOK_RETRY_SCHEDULE").filter(|v| !v.trim().is_empty()) {
        None => defaults.schedule,
        Some(v) => v
            .split(',')
            .map(|x| x.trim().parse::<f64>().map(Duration::from_secs_f64))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("WEBHOOK_RETRY_SCHEDULE={v:?} is invalid: {e}"))?,
    };
    let allowed_networks = get("WEBHOOK_ALLOWED_NETWORKS").unwrap_or_default();
    crate::webhooks::address::AddressPolicy::parse(&allowed_networks)
        .map_err(|e| anyhow::anyhow!("WEBHOOK_ALLOWED_NETWORKS: {e}"))?;
    Ok(WebhookSettings {
        timeout: Duration::from_secs_f64(parse(get, "WEBHOOK_TIMEOUT_SECONDS", 10.0)?),
        allowed_networks,
        schedule,
        per_endpoint: parse(get, "WEBHOOK_MAX_CONCURRENCY_PER_ENDPOINT", defaults.per_endpoint)?,
        disable_after: parse(get, "WEBHOOK_DISABLE_AFTER_FAILURES", defaults.disable_after)?,
        disable_window: Duration::from_secs(parse(get, "WEBHOOK_DISABLE_WINDOW_SECONDS", 86_400)?),
        secret_overlap: Duration::from_secs(parse(get, "WEBHOOK_SECRET_OVERLAP_SECONDS", 86_400)?),
        breaker_failures: parse(get, "WEBHOOK_BREAKER_FAILURES", defaults.breaker_failures)?,
        breaker_open: Duration::from_secs_f64(parse(get, "WEBHOOK_BREAKER_OPEN_SECONDS", 30.0)?),
        legacy_secret: get("WEBHOOK_SECRET")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(crate::webhooks::sign::new_secret),
    })
}

/// Everything the service reads from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind_host: String,
    pub http_port: u16,
    pub grpc_port: u16,
    /// GRPC_WORKER_THREADS (the CPUs the process may use, as for the REST workers and the arbiters): threads
    /// serving gRPC calls. With 1 (a one-CPU container), a single-threaded runtime: on one core it served reads
    /// with a third less CPU than two threads did (BENCHMARKS.md, the twenty-second session).
    pub grpc_threads: usize,
    pub prometheus_port: u16,
    pub store: StoreSettings,
    pub jwt: JwtSettings,
    pub auth: AuthSettings,
    pub log_level: String,
    pub environment: String,
    pub actors: SystemConfig,
    pub kafka: Option<KafkaSettings>,
    pub mongo: Option<MongoSettings>,
    pub webhooks: WebhookSettings,
    /// OTLP collector for spans (OTEL_EXPORTER_OTLP_ENDPOINT, or the legacy OTEL_EXPORTER_ENDPOINT); none: off.
    pub otel_endpoint: Option<String>,
    /// How the service fails while PostgreSQL is unreachable.
    pub store_outage: StoreOutageSettings,
    /// Cluster mode (PostgreSQL): how this replica shares the tickets with the others (`cluster/`).
    pub cluster: ClusterSettings,
    /// On SIGTERM, how long the process keeps answering (forwarding to the successors, each answer closing its
    /// connection) after it handed its shards off, before its listeners stop (SHUTDOWN_DRAIN_SECONDS, 3): a
    /// client's pooled connection idle longer than this is dropped by the client before the server closes it.
    pub shutdown_drain: Duration,
    /// Bounds on connections, slow clients and watchers (issue #17).
    pub limits: LimitSettings,
    /// TLS on the REST and gRPC listeners; None: plaintext (issue #22).
    pub tls: Option<TlsSettings>,
    /// Per-caller rate limits (issue #22).
    pub rate_limits: RateLimitSettings,
    /// What is deleted when (RETENTION_*; issue #20). `taken_by` is set at startup from the configured outbox
    /// consumers.
    pub retention: actors::pruner::RetentionPolicy,
}

/// RETENTION_TICKETS_DAYS (30), RETENTION_EVENTS_DAYS (30), RETENTION_DELIVERIES_DAYS (7): days, fractions
/// allowed, 0 = kept for ever; RETENTION_BATCH_SIZE (1000), RETENTION_BATCH_PAUSE_MS (100),
/// RETENTION_INTERVAL_SECONDS (3600).
fn retention_policy(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<actors::pruner::RetentionPolicy> {
    let days = |name: &str, default: f64| -> anyhow::Result<Option<Duration>> {
        let d: f64 = parse(get, name, default)?;
        if !(0.0..=1e6).contains(&d) {
            bail!("{name}={d} is invalid: a number of days ≥ 0 (0 = keep for ever)");
        }
        Ok((d > 0.0).then(|| Duration::from_secs_f64(d * 86_400.0)))
    };
    let defaults = actors::pruner::RetentionPolicy::default();
    let batch: i64 = parse(get, "RETENTION_BATCH_SIZE", defaults.batch)?;
    if !(1..=100_000).contains(&batch) {
        bail!("RETENTION_BATCH_SIZE={batch} is invalid: 1 to 100000 rows");
    }
    Ok(actors::pruner::RetentionPolicy {
        tickets: days("RETENTION_TICKETS_DAYS", 30.0)?,
        events: days("RETENTION_EVENTS_DAYS", 30.0)?,
        deliveries: days("RETENTION_DELIVERIES_DAYS", 7.0)?,
        batch,
        pause: Duration::from_millis(parse(get, "RETENTION_BATCH_PAUSE_MS", defaults.pause.as_millis() as u64)?),
        every: Duration::from_secs(parse(get, "RETENTION_INTERVAL_SECONDS", defaults.every.as_secs())?.max(1)),
        ..defaults
    })
}

/// Cluster mode: every replica on one PostgreSQL database is a member; see `cluster/`.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This replica's id (CLUSTER_MEMBER_ID; default: HOSTNAME and a random suffix, new at every start, so a
    /// restarted process never mistakes the leases of its previous life for its own).
    pub member_id: String,
    /// Where the other replicas reach this one's gRPC port (CLUSTER_ADVERTISE_ADDRESS, e.g.
    /// `http://10.0.0.7:50052`; default: `http://$POD_IP:<gRPC port>`, or 127.0.0.1 without POD_IP).
    pub advertise_address: Option<String>,
    /// The host of the default advertised address (POD_IP; 127.0.0.1 when unset).
    pub pod_ip: String,
    /// How long a shard lease lasts without renewal (CLUSTER_LEASE_TTL_MS, 5000): after a crash the shards of
    /// the dead replica are served again within about this long.
    pub lease_ttl: Duration,
    /// How often leases are renewed and the membership looked at (CLUSTER_RENEW_INTERVAL_MS, 1000; at most a
    /// third of the TTL).
    pub renew_every: Duration,
    /// How long a request waits for its shard to get an owner during a hand-off or failover before it is
    /// answered 503 (CLUSTER_HANDOFF_WAIT_MS, 10000).
    pub handoff_wait: Duration,
    /// The shared secret replicas prove to each other on forwarded calls (CLUSTER_SECRET; default: derived
    /// from JWT_SECRET_KEY, which every replica shares). None: no shared secret, so no forwarding.
    pub secret: Option<String>,
    /// With TLS on the gRPC port: the CA the replicas' certificates chain to (CLUSTER_TLS_CA_FILE; default
    /// TLS_CLIENT_CA_FILE). Each replica presents its own certificate (TLS_CERT_FILE) as the client's.
    pub tls_ca_file: Option<PathBuf>,
    /// The name the replicas' certificate is checked against (CLUSTER_TLS_SERVER_NAME; default: the first DNS
    /// name of this replica's own certificate, as all replicas usually share one).
    pub tls_server_name: Option<String>,
}

impl ClusterSettings {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>, jwt_secret: &Option<String>) -> anyhow::Result<Self> {
        let lease_ttl = Duration::from_millis(parse(get, "CLUSTER_LEASE_TTL_MS", 5000u64)?);
        let renew_every = Duration::from_millis(parse(get, "CLUSTER_RENEW_INTERVAL_MS", 1000u64)?);
        if lease_ttl < Duration::from_millis(1000) {
            bail!("CLUSTER_LEASE_TTL_MS must be ≥ 1000");
        }
        if renew_every.is_zero() || renew_every * 3 > lease_ttl {
            bail!("CLUSTER_RENEW_INTERVAL_MS must be > 0 and at most a third of CLUSTER_LEASE_TTL_MS");
        }
        let host = get("HOSTNAME").filter(|h| !h.is_empty()).unwrap_or_else(|| "replica".into());
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let secret = get("CLUSTER_SECRET").filter(|s| !s.is_empty()).or_else(|| {
            jwt_secret.as_ref().map(|s| {
                use hmac::{KeyInit as _, Mac as _};
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(s.as_bytes()).expect("any key length");
                mac.update(b"ticket-supervisor cluster secret");
                mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
            })
        });
        Ok(ClusterSettings {
            member_id: get("CLUSTER_MEMBER_ID").filter(|v| !v.is_empty()).unwrap_or_else(|| format!("{host}-{suffix}")),
            advertise_address: get("CLUSTER_ADVERTISE_ADDRESS").filter(|v| !v.is_empty()),
            pod_ip: get("POD_IP").filter(|v| !v.is_empty()).unwrap_or_else(|| "127.0.0.1".into()),
            lease_ttl,
            renew_every,
            handoff_wait: Duration::from_millis(parse(get, "CLUSTER_HANDOFF_WAIT_MS", 10_000u64)?),
            secret,
            tls_ca_file: get("CLUSTER_TLS_CA_FILE").filter(|v| !v.is_empty()).map(PathBuf::from),
            tls_server_name: get("CLUSTER_TLS_SERVER_NAME").filter(|v| !v.is_empty()),
        })
    }

    /// Where the other replicas reach this one, once the gRPC port is bound.
    pub fn address(&self, grpc_port: u16, tls: bool) -> String {
        self.advertise_address.clone().unwrap_or_else(|| {
            let (ip, scheme) = (&self.pod_ip, if tls { "https" } else { "http" });
            match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(v6)) => format!("{scheme}://[{v6}]:{grpc_port}"),
                _ => format!("{scheme}://{ip}:{grpc_port}"),
            }
        })
    }
}

/// How fast calls fail while PostgreSQL is unreachable (a 503 that takes seconds is as bad as a hang for a
/// client with its own timeout).
#[derive(Debug, Clone)]
pub struct StoreOutageSettings {
    /// How long a call waits for a pooled connection before answering 503 (POSTGRES_ACQUIRE_TIMEOUT_MS, 2000).
    pub acquire_timeout: Duration,
    /// How long calls fail at once after the database was found unreachable, before one trial call is let
    /// through (STORE_CIRCUIT_OPEN_MS, 1000; 0 turns the circuit off). See `store::circuit`.
    pub circuit_open: Duration,
}

/// What one client may hold on to: connections, unfinished handshakes and bodies, watchers. Each bound stops a
/// client (with or without a token) from taking file descriptors or memory the others need.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// GRPC_MAX_CONNECTIONS (512): open gRPC connections; beyond, new ones are closed at once. The defaults of both
    /// limits fit, with the store pool and the process's own descriptors, under the common `ulimit -n` of 1024.
    pub grpc_max_connections: usize,
    /// HTTP_MAX_CONNECTIONS (256): open REST connections served; beyond, a new one's request is answered 503
    /// (`Retry-After`) at once and the connection closed, as long as the open-files limit leaves room for it (at
    /// most 1 024 at once: `http::admission`); beyond, new ones wait in the listen backlog.
    pub http_max_connections: usize,
    /// GRPC_HANDSHAKE_TIMEOUT_MS (5000): a gRPC connection that has not sent the HTTP/2 preface by then is closed.
    pub grpc_handshake_timeout: Duration,
    /// HTTP_BODY_TIMEOUT_MS (10000): a REST request whose body has not fully arrived by then is answered 408.
    pub http_body_timeout: Duration,
    /// GRPC_WATCHERS_PER_PRINCIPAL (64): WatchTickets streams open at once per token subject.
    pub watchers_per_principal: usize,
    /// GRPC_WATCHERS_MAX (10000): WatchTickets streams open at once in all.
    pub watchers_max: usize,
}

impl LimitSettings {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let ms = |name: &str, default: u64| parse(get, name, default).map(|v| Duration::from_millis(v.max(1)));
        Ok(LimitSettings {
            grpc_max_connections: parse(get, "GRPC_MAX_CONNECTIONS", 512usize)?.max(1),
            http_max_connections: parse(get, "HTTP_MAX_CONNECTIONS", 256usize)?.max(1),
            grpc_handshake_timeout: ms("GRPC_HANDSHAKE_TIMEOUT_MS", 5_000)?,
            http_body_timeout: ms("HTTP_BODY_TIMEOUT_MS", 10_000)?,
            watchers_per_principal: parse(get, "GRPC_WATCHERS_PER_PRINCIPAL", 64usize)?.max(1),
            watchers_max: parse(get, "GRPC_WATCHERS_MAX", 10_000usize)?.max(1),
        })
    }
}

fn parse<T: FromStr>(get: &impl Fn(&str) -> Option<String>, name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match get(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e| anyhow::anyhow!("{name}={v:?} is invalid: {e}")),
    }
}

impl Settings {
    /// Read the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read settings through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let (environment, strict) = environment(get("ENVIRONMENT"))?;
        let log_level = get("LOG_LEVEL").map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let log_level = log_level.unwrap_or_else(|| "info".into());
        // A lone word that is not a level parses as a target name ("verbose" = only the target `verbose`),
        // which silences every log: refuse it, as a filter that does not parse.
        let levels = ["off", "error", "warn", "info", "debug", "trace"];
        let lone_word = !log_level.contains(['=', ',', '[']);
        let parsed = tracing_subscriber::EnvFilter::try_new(log_level.to_lowercase()).map_err(|e| e.to_string());
        if let Some(why) = match parsed {
            Err(e) => Some(e),
            Ok(_) if lone_word && !levels.contains(&log_level.to_lowercase().as_str()) => Some("not a level".into()),
            Ok(_) => None,
        } {
            bail!(
                "LOG_LEVEL={log_level:?} is invalid ({why}): use {} or a filter such as info,sqlx=warn",
                levels.join(", ")
            );
        }
        let store = if let Some(url) = get("DATABASE_URL").filter(|v| !v.is_empty()) {
            let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or_default();
            anyhow::ensure!(
                matches!(scheme, "postgres" | "postgresql"),
                "DATABASE_URL must be a PostgreSQL URL (postgres://…), not {scheme:?}: the service stores tickets \
                 in PostgreSQL, or in the embedded store when DATABASE_URL is not set"
            );
            let options = PgConnectOptions::from_str(&url).context("DATABASE_URL is not a PostgreSQL URL")?;
            Some(options)
        } else if let Some(host) = get("POSTGRES_HOST").filter(|v| !v.is_empty()) {
            let mut options = PgConnectOptions::new()
                .host(&host)
                .port(parse(&get, "POSTGRES_PORT", 5432)?)
                .database(&get("POSTGRES_DATABASE").unwrap_or_else(|| "execution_tickets".into()))
                .username(&get("POSTGRES_USER").unwrap_or_else(|| "postgres".into()));
            if let Some(password) = get("POSTGRES_PASSWORD") {
                options = options.password(&password);
            }
            Some(options)
        } else {
            None
        };
        let store = match store {
            Some(options) => StoreSettings::Postgres {
                options: Box::new(options),
                pool_size: parse(&get, "POSTGRES_POOL_SIZE", 10)?,
                connect_timeout: Duration::from_secs(parse(&get, "POSTGRES_CONNECT_TIMEOUT_SECONDS", 30)?),
            },
            None => {
                StoreSettings::Embedded { data_dir: PathBuf::from(get("DATA_DIR").unwrap_or_else(|| "./data".into())) }
            }
        };

        let jwt = match get("JWT_SECRET_KEY").filter(|v| !v.is_empty()) {
            Some(secret) => JwtSettings { secret, expiration_seconds: 0, generated: false },
            None if strict => bail!("JWT_SECRET_KEY must be set when ENVIRONMENT={environment}"),
            None => JwtSettings { secret: random_secret(), expiration_seconds: 0, generated: true },
        };
        let expiration_seconds: i64 = parse(&get, "JWT_TOKEN_EXPIRATION_SECONDS", 3600)?;
        if expiration_seconds <= 0 {
            bail!("JWT_TOKEN_EXPIRATION_SECONDS must be > 0");
        }
        let jwt = JwtSettings { expiration_seconds, ..jwt };
        let jwt_secret_for_cluster = (!jwt.generated).then(|| jwt.secret.clone());

        let production = strict;
        let mode = match get("AUTH_MODE").as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("required") => AuthMode::Required,
            Some("disabled") if production => bail!("AUTH_MODE=disabled is refused when ENVIRONMENT={environment}"),
            Some("disabled") => AuthMode::Disabled,
            Some(other) => bail!("AUTH_MODE={other:?} is invalid: use required or disabled"),
        };
        let jwks_file = get("SERVICE_JWKS_FILE").filter(|v| !v.is_empty()).map(PathBuf::from);
        let mut service_secret = get("SERVICE_JWT_SECRET").filter(|v| !v.is_empty());
        let dev_secret = mode == AuthMode::Required && service_secret.is_none() && jwks_file.is_none();
        if dev_secret {
            if production {
                bail!(
                    "AUTH_MODE=required needs SERVICE_JWT_SECRET or SERVICE_JWKS_FILE when ENVIRONMENT={environment}"
                );
            }
            service_secret = Some(random_secret());
        }
        if strict {
            // A short secret can be brute-forced offline from one token; one shared by both kinds of token would
            // let a leaked ticket-token secret mint service tokens.
            let secrets = [("JWT_SECRET_KEY", Some(&jwt.secret)), ("SERVICE_JWT_SECRET", service_secret.as_ref())];
            for (name, secret) in secrets {
                if secret.is_some_and(|s| s.len() < MIN_SECRET_BYTES) {
                    bail!("{name} must be at least {MIN_SECRET_BYTES} bytes when ENVIRONMENT={environment}");
                }
            }
            if service_secret.as_ref() == Some(&jwt.secret) {
                bail!("JWT_SECRET_KEY and SERVICE_JWT_SECRET must differ when ENVIRONMENT={environment}");
            }
        }
        let auth = AuthSettings {
            mode,
            service_secret,
            dev_secret,
            jwks_file,
            issuer: get("SERVICE_JWT_ISSUER").filter(|v| !v.is_empty()),
            audience: get("SERVICE_JWT_AUDIENCE")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "execution-ticket-service.neural-hive.local".into()),
            leeway_seconds: parse(&get, "JWT_LEEWAY_SECONDS", 30)?,
            spiffe_service_ids: spiffe_ids(&get)?,
        };
        let tls = tls_settings(&get)?;
        if !auth.spiffe_service_ids.is_empty() && tls.as_ref().is_none_or(|t| t.client_ca_file.is_none()) {
            bail!(
                "SERVICE_SPIFFE_IDS needs mutual TLS (TLS_CERT_FILE, TLS_KEY_FILE and TLS_CLIENT_CA_FILE): without \
                 client certificates no caller can present a SPIFFE ID"
            );
        }

        let defaults = SystemConfig::default();
        let actors = SystemConfig {
            shards: parse(&get, "ACTOR_SHARDS", defaults.shards)?,
            arbiters: parse(&get, "ACTOR_ARBITERS", defaults.arbiters)?,
            mailbox_capacity: parse(&get, "ACTOR_MAILBOX_CAPACITY", defaults.mailbox_capacity)?,
            passivate_after: Duration::from_secs(parse(
                &get,
                "ACTOR_PASSIVATE_AFTER_SECONDS",
                defaults.passivate_after.as_secs(),
            )?),
            sweep_every: defaults.sweep_every,
            persist_actors: parse(&get, "PERSIST_ACTORS", defaults.persist_actors)?,
            persist_in_flight: parse(&get, "PERSIST_MAX_IN_FLIGHT", defaults.persist_in_flight)?,
            persist_max_batch: parse(&get, "PERSIST_MAX_BATCH", defaults.persist_max_batch)?,
            persist_turn_below: parse(&get, "PERSIST_TURN_BELOW", defaults.persist_turn_below)?,
            event_buffer: parse(&get, "WATCH_BUFFER", defaults.event_buffer)?,
            sla: sla_policy(&get)?,
            tick_every: Duration::from_millis(
                parse(&get, "SLA_TICK_MS", defaults.tick_every.as_millis() as u64)?.max(1),
            ),
            sla_horizon: Duration::from_secs(
                parse(&get, "SLA_HORIZON_SECONDS", defaults.sla_horizon.as_secs())?.max(2),
            ),
            traceparent: crate::tracecontext::traceparent_of,
            // Set at startup: on while spans are exported (OTEL_EXPORTER_OTLP_ENDPOINT).
            spans: false,
            // Set at startup on PostgreSQL (cluster mode).
            cluster: None,
            handoff_wait: defaults.handoff_wait,
        };

        Ok(Settings {
            bind_host: get("BIND_HOST").unwrap_or_else(|| "0.0.0.0".into()),
            http_port: parse(&get, "HTTP_PORT", 8000)?,
            grpc_port: parse(&get, "GRPC_PORT", 50052)?,
            grpc_threads: parse(&get, "GRPC_WORKER_THREADS", actors::router::cores())?.max(1),
            prometheus_port: parse(&get, "PROMETHEUS_PORT", 9090)?,
            store,
            jwt,
            auth,
            log_level,
            environment,
            actors,
            kafka: kafka_settings(&get)?,
            webhooks: webhook_settings(&get)?,
            mongo: get("MONGODB_URI").filter(|v| !v.trim().is_empty()).map(|uri| MongoSettings {
                uri,
                database: get("MONGODB_DATABASE")
                    .filter(|v| !v.trim().is_empty())
                    .unwrap_or_else(|| "neural_hive_orchestration".into()),
                collection: get("MONGODB_COLLECTION_AUDIT")
                    .filter(|v| !v.trim().is_empty())
                    .unwrap_or_else(|| "ticket_audit_log".into()),
            }),
            otel_endpoint: ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_ENDPOINT"]
                .into_iter()
                .find_map(|name| get(name).filter(|v| !v.trim().is_empty())),
            store_outage: StoreOutageSettings {
                acquire_timeout: Duration::from_millis(parse(&get, "POSTGRES_ACQUIRE_TIMEOUT_MS", 2000u64)?.max(1)),
                circuit_open: Duration::from_millis(parse(&get, "STORE_CIRCUIT_OPEN_MS", 1000)?),
            },
            cluster: ClusterSettings::from_lookup(&get, &jwt_secret_for_cluster)?,
            shutdown_drain: Duration::from_secs_f64(parse(&get, "SHUTDOWN_DRAIN_SECONDS", 3.0f64)?.clamp(0.0, 25.0)),
            limits: LimitSettings::from_lookup(&get)?,
            tls,
            rate_limits: RateLimitSettings::from_lookup(&get)?,
            retention: retention_policy(&get)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_run_on_the_embedded_store() {
        let s = settings(&[]).unwrap();
        assert_eq!((s.http_port, s.grpc_port, s.prometheus_port), (8000, 50052, 9090));
        assert!(matches!(s.store, StoreSettings::Embedded { ref data_dir } if data_dir == &PathBuf::from("./data")));
        assert!(s.jwt.generated);
        assert_eq!(s.jwt.expiration_seconds, 3600);
        assert_eq!(s.auth.mode, AuthMode::Required);
        assert!(s.auth.dev_secret && s.auth.service_secret.is_some(), "development prints a dev service token");
    }

    #[test]
    fn grpc_threads_follow_the_cores_unless_set() {
        assert_eq!(settings(&[]).unwrap().grpc_threads, actors::router::cores());
        assert_eq!(settings(&[("GRPC_WORKER_THREADS", "1")]).unwrap().grpc_threads, 1);
        assert_eq!(settings(&[("GRPC_WORKER_THREADS", "0")]).unwrap().grpc_threads, 1, "at least one");
        let err = settings(&[("GRPC_WORKER_THREADS", "many")]).unwrap_err().to_string();
        assert!(err.contains("GRPC_WORKER_THREADS"), "{err}");
    }

    #[test]
    fn retention_defaults_zero_and_bad_values() {
        let day = Duration::from_secs(86_400);
        let r = settings(&[]).unwrap().retention;
        assert_eq!((r.tickets, r.events, r.deliveries), (Some(day * 30), Some(day * 30), Some(day * 7)));
        assert_eq!((r.batch, r.every), (1000, Duration::from_secs(3600)));
        let r = settings(&[("RETENTION_TICKETS_DAYS", "0"), ("RETENTION_EVENTS_DAYS", "0.5")]).unwrap().retention;
        assert_eq!((r.tickets, r.events), (None, Some(day / 2)), "0 keeps for ever; fractions allowed");
        for (name, value) in [
            ("RETENTION_TICKETS_DAYS", "-1"),
            ("RETENTION_EVENTS_DAYS", "NaN"),
            ("RETENTION_DELIVERIES_DAYS", "a week"),
            ("RETENTION_BATCH_SIZE", "0"),
        ] {
            let e = settings(&[(name, value)]).err().unwrap_or_else(|| panic!("{name}={value} accepted"));
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn kafka_and_mongo_are_off_unless_configured() {
        let s = settings(&[]).unwrap();
        assert!(s.kafka.is_none() && s.mongo.is_none());
        let s = settings(&[
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_USERNAME", "u"),
            ("MONGODB_URI", "mongodb://m:27017"),
        ])
        .unwrap();
        let k = s.kafka.unwrap();
        assert_eq!((k.group_id.as_str(), k.topic.as_str()), ("execution-ticket-service", "execution.tickets"));
        assert_eq!((k.dlq_topic.as_str(), k.auto_offset_reset.as_str()), ("execution.tickets.dlq", "earliest"));
        assert!(k.client_properties.contains(&("security.protocol".into(), "SASL_SSL".into())));
        assert!(k.client_properties.contains(&("sasl.username".into(), "u".into())));
        let m = s.mongo.unwrap();
        assert_eq!((m.database.as_str(), m.collection.as_str()), ("neural_hive_orchestration", "ticket_audit_log"));
        let err = settings(&[("KAFKA_BOOTSTRAP_SERVERS", "k"), ("KAFKA_AUTO_OFFSET_RESET", "sometime")]).unwrap_err();
        assert!(err.to_string().contains("KAFKA_AUTO_OFFSET_RESET"), "{err}");
    }

    #[test]
    fn kafka_publishes_ticket_events_unless_told_not_to() {
        let s = settings(&[("KAFKA_BOOTSTRAP_SERVERS", "k:9092")]).unwrap();
        let e = s.kafka.unwrap().events.expect("on with Kafka");
        assert_eq!((e.topic.as_str(), e.sla_violations_topic.as_str()), ("execution.ticket.events", "sla.violations"));
        assert_eq!(e.delivery_timeout, Duration::from_secs(30));
        let s = settings(&[
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("KAFKA_EVENTS_TOPIC", "t.events"),
            ("KAFKA_SLA_VIOLATIONS_TOPIC", "t.sla"),
            ("KAFKA_EVENTS_DELIVERY_TIMEOUT_MS", "5000"),
        ])
        .unwrap();
        let e = s.kafka.unwrap().events.unwrap();
        assert_eq!((e.topic.as_str(), e.sla_violations_topic.as_str()), ("t.events", "t.sla"));
        assert_eq!(e.delivery_timeout, Duration::from_secs(5));
        let off = settings(&[("KAFKA_BOOTSTRAP_SERVERS", "k:9092"), ("KAFKA_EVENTS_ENABLED", "false")]).unwrap();
        assert!(off.kafka.unwrap().events.is_none(), "consumer only");
        let err = settings(&[("KAFKA_BOOTSTRAP_SERVERS", "k"), ("KAFKA_EVENTS_ENABLED", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("KAFKA_EVENTS_ENABLED"), "{err}");
    }

    #[test]
    fn events_are_never_published_to_the_consumed_topic() {
        for (vars, named) in [
            (vec![("KAFKA_EVENTS_TOPIC", "execution.tickets")], "KAFKA_EVENTS_TOPIC"),
            (vec![("KAFKA_SLA_VIOLATIONS_TOPIC", "execution.tickets")], "KAFKA_SLA_VIOLATIONS_TOPIC"),
            // The configured consumed topic, and the orchestrator's topic even when another one is consumed.
            (vec![("KAFKA_TICKETS_TOPIC", "in"), ("KAFKA_EVENTS_TOPIC", "in")], "KAFKA_EVENTS_TOPIC"),
            (vec![("KAFKA_TICKETS_TOPIC", "in"), ("KAFKA_EVENTS_TOPIC", "execution.tickets")], "KAFKA_EVENTS_TOPIC"),
            (vec![("KAFKA_SLA_VIOLATIONS_TOPIC", "execution.tickets.dlq")], "KAFKA_SLA_VIOLATIONS_TOPIC"),
            (vec![("KAFKA_SLA_VIOLATIONS_TOPIC", "execution.ticket.events")], "must differ"),
        ] {
            let mut vars = vars;
            vars.push(("KAFKA_BOOTSTRAP_SERVERS", "k:9092"));
            let err = settings(&vars).unwrap_err().to_string();
            assert!(err.contains(named), "{vars:?}: {err}");
        }
        let off = settings(&[
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("KAFKA_EVENTS_ENABLED", "false"),
            ("KAFKA_EVENTS_TOPIC", "execution.tickets"),
        ]);
        assert!(off.is_ok(), "nothing is published when publishing is off");
    }

    #[test]
    fn connection_and_watcher_limits() {
        let l = settings(&[]).unwrap().limits;
        assert_eq!((l.grpc_max_connections, l.http_max_connections), (512, 256));
        assert_eq!((l.grpc_handshake_timeout, l.http_body_timeout), (Duration::from_secs(5), Duration::from_secs(10)));
        assert_eq!((l.watchers_per_principal, l.watchers_max), (64, 10_000));
        let l = settings(&[("GRPC_WATCHERS_PER_PRINCIPAL", "8"), ("HTTP_BODY_TIMEOUT_MS", "250")]).unwrap().limits;
        assert_eq!((l.watchers_per_principal, l.http_body_timeout), (8, Duration::from_millis(250)));
        let err = settings(&[("GRPC_MAX_CONNECTIONS", "many")]).unwrap_err().to_string();
        assert!(err.contains("GRPC_MAX_CONNECTIONS"), "{err}");
    }

    #[test]
    fn tls_is_off_unless_both_files_are_set() {
        let s = settings(&[]).unwrap();
        assert!(s.tls.is_none() && s.auth.spiffe_service_ids.is_empty());
        let t = settings(&[("TLS_CERT_FILE", "/c.pem"), ("TLS_KEY_FILE", "/k.pem")]).unwrap().tls.unwrap();
        assert_eq!((t.client_ca_file, t.rest_client_cert), (None, ClientCertPolicy::Optional));
        assert_eq!(t.reload_interval, Duration::from_secs(10));
        for (vars, named) in [
            (vec![("TLS_CERT_FILE", "/c.pem")], "TLS_KEY_FILE"),
            (vec![("TLS_KEY_FILE", "/k.pem")], "TLS_CERT_FILE"),
            (vec![("TLS_CLIENT_CA_FILE", "/ca.pem")], "TLS_CLIENT_CA_FILE"),
            (
                vec![("TLS_CERT_FILE", "/c"), ("TLS_KEY_FILE", "/k"), ("TLS_REST_CLIENT_CERT", "always")],
                "TLS_REST_CLIENT_CERT",
            ),
            (
                vec![("TLS_CERT_FILE", "/c"), ("TLS_KEY_FILE", "/k"), ("TLS_REST_CLIENT_CERT", "required")],
                "TLS_CLIENT_CA_FILE",
            ),
            (vec![("SERVICE_SPIFFE_IDS", "spiffe://td/ns/a/sa/b")], "SERVICE_SPIFFE_IDS needs mutual TLS"),
            (
                vec![("TLS_RELOAD_INTERVAL_MS", "soon"), ("TLS_CERT_FILE", "/c"), ("TLS_KEY_FILE", "/k")],
                "TLS_RELOAD_INTERVAL_MS",
            ),
        ] {
            let err = settings(&vars).unwrap_err().to_string();
            assert!(err.contains(named), "{vars:?}: {err}");
        }
        let mtls = [("TLS_CERT_FILE", "/c"), ("TLS_KEY_FILE", "/k"), ("TLS_CLIENT_CA_FILE", "/ca")];
        let mut vars = mtls.to_vec();
        vars.push(("SERVICE_SPIFFE_IDS", " spiffe://neural-hive.local/ns/o/sa/orchestrator , spiffe://td/x"));
        let s = settings(&vars).unwrap();
        assert_eq!(s.auth.spiffe_service_ids, ["spiffe://neural-hive.local/ns/o/sa/orchestrator", "spiffe://td/x"]);
        for bad in ["https://td/x", "spiffe://td", "spiffe:///x", "spiffe://TD/x"] {
            let mut vars = mtls.to_vec();
            vars.push(("SERVICE_SPIFFE_IDS", bad));
            let err = settings(&vars).unwrap_err().to_string();
            assert!(err.contains("SERVICE_SPIFFE_IDS"), "{bad}: {err}");
        }
    }

    #[test]
    fn rate_limits_have_generous_defaults() {
        assert_eq!(settings(&[]).unwrap().rate_limits, RateLimitSettings::default());
        let r = settings(&[("RATE_LIMIT_WRITES_PER_SECOND", "0"), ("RATE_LIMIT_BURST_SECONDS", "5")]).unwrap();
        assert_eq!((r.rate_limits.writes_per_second, r.rate_limits.burst_seconds), (0, 5));
        let err = settings(&[("RATE_LIMIT_READS_PER_SECOND", "-1")]).unwrap_err().to_string();
        assert!(err.contains("RATE_LIMIT_READS_PER_SECOND"), "{err}");
    }

    #[test]
    fn postgres_host_selects_postgres() {
        let s = settings(&[("POSTGRES_HOST", "db"), ("POSTGRES_POOL_SIZE", "3")]).unwrap();
        assert!(matches!(s.store, StoreSettings::Postgres { pool_size: 3, .. }));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = settings(&[("HTTP_PORT", "eighty")]).unwrap_err().to_string();
        assert!(err.contains("HTTP_PORT"), "{err}");
        let err = settings(&[("ENVIRONMENT", "production")]).unwrap_err().to_string();
        assert!(err.contains("JWT_SECRET_KEY"), "{err}");
        let err = settings(&[("ENVIRONMENT", "production"), ("JWT_SECRET_KEY", "k")]).unwrap_err().to_string();
        assert!(err.contains("SERVICE_JWT_SECRET"), "production needs a real service-token verifier: {err}");
        let err = settings(&[("AUTH_MODE", "sometimes")]).unwrap_err().to_string();
        assert!(err.contains("AUTH_MODE"), "{err}");
        let err = settings(&[("SLA_WARNING_FRACTIONS", "0.5,1.5")]).unwrap_err().to_string();
        assert!(err.contains("SLA_WARNING_FRACTIONS"), "{err}");
        let err = settings(&[("LOG_LEVEL", "verbose")]).unwrap_err().to_string();
        assert!(err.contains("LOG_LEVEL"), "a level that does not parse must not silence every log: {err}");
        assert_eq!(settings(&[("LOG_LEVEL", " DEBUG ")]).unwrap().log_level, "DEBUG");
        let err = settings(&[("DATABASE_URL", "mysql://u@db/tickets")]).unwrap_err().to_string();
        assert!(err.contains("DATABASE_URL must be a PostgreSQL URL"), "{err}");
    }

    /// A misspelt or padded environment name must not fall back to development (a logged full-power token);
    /// a strict environment wants real, distinct secrets.
    #[test]
    fn environments_are_known_names_and_strict_ones_want_real_secrets() {
        let good = "a".repeat(MIN_SECRET_BYTES);
        let other = "b".repeat(MIN_SECRET_BYTES);
        let strict = |env: &str, jwt: &str, service: &str| {
            settings(&[("ENVIRONMENT", env), ("JWT_SECRET_KEY", jwt), ("SERVICE_JWT_SECRET", service)])
        };
        for env in [" production", "PROD", "Production\n", "staging"] {
            let err = strict(env, "k", &other).unwrap_err().to_string();
            assert!(err.contains("JWT_SECRET_KEY must be at least"), "{env:?}: {err}");
            let err = strict(env, &good, &good).unwrap_err().to_string();
            assert!(err.contains("must differ"), "{env:?}: {err}");
            let s = strict(env, &good, &other).unwrap();
            assert!(!s.auth.dev_secret, "{env:?}");
        }
        let err = settings(&[("ENVIRONMENT", "prodution")]).unwrap_err().to_string();
        assert!(err.contains("ENVIRONMENT=\"prodution\" is not known"), "{err}");
        assert_eq!(settings(&[("ENVIRONMENT", "Dev")]).unwrap().environment, "development");
        assert!(settings(&[]).unwrap().auth.dev_secret, "development mints its own service secret");
    }

    #[test]
    fn sla_policy_from_the_environment() {
        let s = settings(&[
            ("SLA_WARNING_FRACTIONS", "0.8"),
            ("SLA_BREACH_ACTION", "FAIL"),
            ("SLA_START_LIMIT_CRITICAL_SECONDS", "5"),
            ("SLA_HEARTBEAT_TIMEOUTS", "build=60, deploy=120"),
        ])
        .unwrap();
        let p = &s.actors.sla;
        assert_eq!(p.warning_fractions, vec![0.8]);
        assert_eq!(p.breach_action, BreachAction::Fail);
        assert_eq!(p.start_limits_ms, [3_600_000, 600_000, 120_000, 5_000]);
        assert_eq!(p.heartbeat_defaults_ms, vec![(TaskType::Build, 60_000), (TaskType::Deploy, 120_000)]);
    }
}
