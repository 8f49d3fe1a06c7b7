//! The mixed load of the torture run, kept up across kills: REST creates and status updates, Kafka ingest
//! (JSON tickets produced to `execution.tickets`), with SLA settings chosen so that timers fire all the time
//! (deadlines seconds away: warnings and breaches; short attempt timeouts: retries and failures; LOW priority
//! tickets left PENDING: start overdue). Every acknowledgement is written down in the [`Ledger`]: what the
//! service (or the broker) confirmed is what the checks demand after each restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use crate::now_ms;

/// What was acknowledged.
#[derive(Default, Clone)]
pub struct Ledger {
    /// Acknowledged creates: ticket id → the highest version acknowledged for it (the create's, or an update's).
    pub acked: HashMap<String, i64>,
    /// The ids of `acked`, to pick update targets from.
    pub ids: Vec<String>,
    /// Tickets whose acknowledged version comes from an update.
    pub updated: HashMap<String, i64>,
    pub creates: u64,
    pub updates: u64,
    /// Kafka tickets the broker acknowledged.
    pub kafka: Vec<String>,
    /// Calls that got no answer or an error status (the service was down, or the change was refused).
    pub failed_calls: u64,
}

/// The service's current base URL; None while it is down.
pub type Target = Arc<RwLock<Option<String>>>;

/// An SLA block and priority for a new ticket: a third breach soon, a third time out soon once RUNNING, a third
/// are LOW priority tickets that wait (start overdue), all with a deadline far enough for warnings to fire.
fn sla(rng: &mut StdRng, now: i64) -> (Value, &'static str) {
    match rng.gen_range(0..10) {
        0..=3 => {
            (json!({"deadline": now + rng.gen_range(1_500..6_000), "timeout_ms": 600_000, "max_retries": 1}), "NORMAL")
        }
        4..=6 => (
            json!({"deadline": now + 3_600_000, "timeout_ms": rng.gen_range(1_000..4_000), "max_retries": 1}),
            "NORMAL",
        ),
        _ => (json!({"deadline": now + 3_600_000, "timeout_ms": 600_000, "max_retries": 0}), "LOW"),
    }
}

fn rest_ticket(id: &str, rng: &mut StdRng) -> Value {
    let (sla, priority) = sla(rng, now_ms());
    json!({
        "ticket_id": id, "plan_id": format!("torture-plan-{}", rng.gen_range(0..100)), "intent_id": "i",
        "decision_id": "d", "task_id": "t", "task_type": "EXECUTE", "description": "torture",
        "dependencies": [], "priority": priority, "risk_band": "low", "sla": sla,
        "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
        "security_level": "INTERNAL"
    })
}

fn kafka_ticket(id: &str, rng: &mut StdRng) -> Value {
    let now = now_ms();
    let (sla, priority) = sla(rng, now);
    json!({
        "ticket_id": id, "plan_id": "torture-kafka", "intent_id": "i", "decision_id": "d",
        "correlation_id": null, "trace_id": null, "span_id": null, "task_id": "t", "task_type": "EXECUTE",
        "description": "torture via Kafka", "dependencies": [], "status": "PENDING", "priority": priority,
        "risk_band": "low", "sla": sla,
        "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
        "parameters": {}, "required_capabilities": [], "security_level": "INTERNAL", "created_at": now,
        "started_at": null, "completed_at": null, "estimated_duration_ms": null, "actual_duration_ms": null,
        "retry_count": 0, "error_message": null, "compensation_ticket_id": null, "metadata": {}, "schema_version": 1
    })
}

/// The running load: stopped with [`Load::stop`].
pub struct Load {
    pub ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Ctx {
    ledger: Arc<Mutex<Ledger>>,
    target: Target,
    stop: Arc<AtomicBool>,
    http: reqwest::Client,
    token: String,
    next_id: AtomicU64,
}

impl Ctx {
    /// The base URL once the service is up (None: stopping).
    async fn base(&self) -> Option<String> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(b) = self.target.read().expect("not poisoned").clone() {
                return Some(b);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The ticket's version when the call was answered 2xx.
    async fn call(&self, req: reqwest::RequestBuilder) -> Option<i64> {
        let ok = match req.bearer_auth(&self.token).send().await {
            Ok(res) if res.status().is_success() => res.json::<Value>().await.ok().and_then(|t| t["version"].as_i64()),
            _ => None,
        };
        if ok.is_none() {
            self.ledger.lock().expect("not poisoned").failed_calls += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ok
    }
}

async fn creator(ctx: Arc<Ctx>, mut rng: StdRng) {
    while let Some(base) = ctx.base().await {
        let id = format!("rest-{}", ctx.next_id.fetch_add(1, Ordering::Relaxed));
        let body = rest_ticket(&id, &mut rng);
        if let Some(version) = ctx.call(ctx.http.post(format!("{base}/api/v1/tickets")).json(&body)).await {
            let mut l = ctx.ledger.lock().expect("not poisoned");
            l.creates += 1;
            l.acked.insert(id.clone(), version);
            l.ids.push(id);
        }
    }
}

async fn updater(ctx: Arc<Ctx>, mut rng: StdRng) {
    while let Some(base) = ctx.base().await {
        let id = {
            let l = ctx.ledger.lock().expect("not poisoned");
            if l.ids.is_empty() {
                None
            } else {
                Some(l.ids[rng.gen_range(0..l.ids.len())].clone())
            }
        };
        let Some(id) = id else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Mostly starts (which arm attempt timeouts), then completions and failures; refused transitions are
        // part of the mix.
        let status = ["RUNNING", "RUNNING", "RUNNING", "COMPLETED", "FAILED"][rng.gen_range(0..5)];
        let req = ctx.http.patch(format!("{base}/api/v1/tickets/{id}/status")).json(&json!({ "status": status }));
        if let Some(version) = ctx.call(req).await {
            let mut l = ctx.ledger.lock().expect("not poisoned");
            l.updates += 1;
            let acked = l.acked.entry(id.clone()).or_default();
            *acked = (*acked).max(version);
            let updated = l.updated.entry(id).or_default();
            *updated = (*updated).max(version);
        }
    }
}

async fn producer(ctx: Arc<Ctx>, producer: FutureProducer, per_second: u64, mut rng: StdRng) {
    let mut n = 0u64;
    let mut every = tokio::time::interval(Duration::from_micros(1_000_000 / per_second.max(1)));
    while !ctx.stop.load(Ordering::Relaxed) {
        every.tick().await;
        let id = format!("kafka-{n}");
        n += 1;
        let payload = serde_json::to_vec(&kafka_ticket(&id, &mut rng)).expect("JSON");
        let record = FutureRecord::to("execution.tickets").key(&id).payload(&payload);
        if producer.send(record, Duration::from_secs(10)).await.is_ok() {
            ctx.ledger.lock().expect("not poisoned").kafka.push(id);
        }
    }
}

impl Load {
    /// Start `workers` creators, as many updaters, and the Kafka producer at `kafka_per_second`.
    pub fn start(
        target: Target,
        token: String,
        kafka: FutureProducer,
        workers: usize,
        kafka_per_second: u64,
        seed: u64,
    ) -> anyhow::Result<Load> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1))
            .build()?;
        let ledger: Arc<Mutex<Ledger>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Ctx {
            ledger: Arc::clone(&ledger),
            target,
            stop: Arc::clone(&stop),
            http,
            token,
            next_id: AtomicU64::new(0),
        });
        let mut tasks = Vec::new();
        for w in 0..workers as u64 {
            tasks.push(tokio::spawn(creator(Arc::clone(&ctx), StdRng::seed_from_u64(seed ^ (w << 1)))));
            tasks.push(tokio::spawn(updater(Arc::clone(&ctx), StdRng::seed_from_u64(seed ^ ((w << 1) | 1)))));
        }
        tasks.push(tokio::spawn(producer(ctx, kafka, kafka_per_second, StdRng::seed_from_u64(!seed))));
        Ok(Load { ledger, stop, tasks })
    }

    /// A copy of what was acknowledged so far.
    pub fn snapshot(&self) -> Ledger {
        self.ledger.lock().expect("not poisoned").clone()
    }

    /// Stop every generator and wait for the calls in flight.
    pub async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        let ledger = Arc::clone(&self.ledger);
        for t in self.tasks {
            let _ = t.await;
        }
        let snapshot = ledger.lock().expect("not poisoned").clone();
        snapshot
    }
}
