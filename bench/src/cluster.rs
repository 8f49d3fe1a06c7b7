//! `ticket-bench cluster --database-url URL [--service PATH] [--replicas N] [--kills K] [--kill-every-seconds S]
//!  [--lease-ttl-ms T] [--clients C] [--seconds S] [--sla-per-second R] [--tansu PATH] [--kafka-per-second R]
//!  [--append BENCHMARKS.md]`
//!
//! Cluster mode: N replicas of the release binary on one PostgreSQL database (loopback ports), in three phases,
//! each figure printed next to its goal:
//! 1. **throughput, 1 vs N replicas in the same run**, each on a fresh database: C clients run cycles of create →
//!    RUNNING → COMPLETED → GET of a ticket (half of them over REST, half over gRPC), spread over every replica;
//!    completed operations per second, and the ratio N / 1 (goal ≥ 0.8: on 2 cores, no collapse);
//! 2. **forwarded-request latency**: GetTicket through the replica that owns the ticket's shard (from
//!    `shard_leases`) and through another one, which forwards it; p50 / p99 of each and the difference;
//! 3. **failover drill**: the mixed load plus a stream of SLA tickets (deadline 2–6 s ahead, left PENDING, so
//!    breaches fire all the time), and optionally Kafka ingestion; every `--kill-every-seconds` one replica
//!    (round-robin) is killed with SIGKILL and restarted at once as a new member. Every acknowledged write (2xx /
//!    gRPC OK) is written down with its resulting version, and the end is checked against PostgreSQL: no
//!    acknowledged write lost, no ticket created twice, no SLA event recorded twice, every breach fired. Failover
//!    time (kill → every shard the victim held has a valid lease of another member, polled every 50 ms) and the
//!    lateness of the breaches due in that window on the victim's shards, both against lease TTL + 1 s.
//!
//! Nothing is pinned: N replicas, PostgreSQL and the clients share the machine's cores.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actors::ownership::vshard_of;
use anyhow::{bail, Context as _};
use rand::Rng as _;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection, Row as _};
use ticket_supervisor::grpc::pb;
use tonic::transport::Channel;

use crate::crud::{authed, closed_loop, errs, loadavg, open_loop, ticket, Client, Phase, RATE_LIMITS_OFF};
use crate::torture::checks::{self, Verdict, Verdicts};
use crate::torture::load::Ledger;
use crate::{fresh_database, now_ms, report, start_service_async, Row, Service};

/// Throughput 1 vs N replicas, forwarded-request latency, and a kill -9 failover drill with invariants.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: crate::Target,
    /// Replicas of the cluster (at least 2).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Replicas killed (SIGKILL) in the failover drill, one at a time, round-robin.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Seconds between two kills.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    kill_every_seconds: u64,
    /// CLUSTER_LEASE_TTL_MS of every replica (renewed every third of it, at most every second).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(300..))]
    lease_ttl_ms: u64,
    /// Concurrent client tasks of the mixed load (half REST, half gRPC).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    clients: u64,
    /// Seconds of each throughput and latency measurement.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// SLA tickets created per second during the drill (deadline 2–6 s ahead, left PENDING).
    #[arg(long, default_value_t = 50)]
    sla_per_second: u64,
    /// The tansu broker: also ingest tickets from Kafka during the drill (skipped without it).
    #[arg(long)]
    tansu: Option<String>,
    /// Tickets per second produced to Kafka during the drill (with --tansu).
    #[arg(long, default_value_t = 20)]
    kafka_per_second: u64,
    /// Append the report to this file (e.g. BENCHMARKS.md).
    #[arg(long)]
    append: Option<String>,
}

/// How long a client waits for one answer: beyond CLUSTER_HANDOFF_WAIT_MS (10 s), so a request waiting for a
/// failover is answered by the service (served, or 503 / UNAVAILABLE), not cut off by the client.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts of one step of a cycle (the same request, each to the next replica up).
const ATTEMPTS: usize = 5;
/// Requests of one mixed-load cycle.
const CALLS_PER_CYCLE: u64 = 4;
/// Callers of the forwarded-latency phase: a light load, so the figure is the forward's cost, not queueing.
const LATENCY_CALLERS: u64 = 4;
/// Tickets the forwarded-latency phase reads.
const LATENCY_TICKETS: usize = 256;

// ---------------------------------------------------------------------------------------------------------
// The replicas.

/// One replica's addresses, as the clients see them.
#[derive(Clone)]
struct Endpoint {
    base: String,
    /// Two HTTP/2 connections to its gRPC port.
    grpc: [Client; 2],
}

fn grpc_client(port: u16) -> anyhow::Result<Client> {
    let endpoint = Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(1))
        .timeout(CALL_TIMEOUT);
    Ok(Client::new(endpoint.connect_lazy()))
}

/// Where the clients send requests: per replica slot, a generation (grows at every kill, so a failed call can
/// tell whether its replica was killed meanwhile) and the endpoint while the replica is up.
type Slots = Arc<RwLock<Vec<(u64, Option<Endpoint>)>>>;

/// N replicas on one database; each slot's process is replaced by a new member when it is killed. Every
/// process still running is killed on drop.
struct Cluster {
    service: String,
    url: String,
    env: Vec<(String, String)>,
    /// Per slot: the process and its member id (`CLUSTER_MEMBER_ID`).
    procs: Vec<Option<(Service, String)>>,
    slots: Slots,
}

impl Cluster {
    async fn start(service: &str, url: &str, env: &[(String, String)], n: usize) -> anyhow::Result<Cluster> {
        let mut c = Cluster {
            service: service.to_owned(),
            url: url.to_owned(),
            env: env.to_vec(),
            procs: (0..n).map(|_| None).collect(),
            slots: Arc::new(RwLock::new(vec![(0, None); n])),
        };
        for slot in 0..n {
            c.start_slot(slot).await?;
        }
        Ok(c)
    }

    fn len(&self) -> usize {
        self.procs.len()
    }

    /// Start a new member in `slot`; answers how long it took to be ready.
    async fn start_slot(&mut self, slot: usize) -> anyhow::Result<Duration> {
        let member = format!("bench-r{slot}-{}", now_ms());
        let mut env = self.env.clone();
        env.push(("CLUSTER_MEMBER_ID".into(), member.clone()));
        let (svc, base) = start_service_async(&self.service, &self.url, &env).await?;
        let port = svc.grpc_port.context("the service logged no gRPC port")?;
        let endpoint = Endpoint { base, grpc: [grpc_client(port)?, grpc_client(port)?] };
        let ready = svc.ready_after;
        self.procs[slot] = Some((svc, member));
        self.slots.write().expect("not poisoned")[slot].1 = Some(endpoint);
        Ok(ready)
    }

    /// SIGKILL the replica in `slot` (the clients stop choosing it at once).
    fn kill(&mut self, slot: usize) -> anyhow::Result<()> {
        {
            let mut slots = self.slots.write().expect("not poisoned");
            slots[slot].0 += 1;
            slots[slot].1 = None;
        }
        if let Some((mut svc, _)) = self.procs[slot].take() {
            svc.kill()?;
        }
        Ok(())
    }

    fn member(&self, slot: usize) -> Option<&str> {
        self.procs[slot].as_ref().map(|(_, m)| m.as_str())
    }

    fn members(&self) -> Vec<String> {
        (0..self.len()).filter_map(|s| self.member(s).map(str::to_owned)).collect()
    }

    /// Wait until the replicas hold all 256 shards between them, each some.
    async fn balanced(&self, db: &PgConnectOptions) -> anyhow::Result<()> {
        let members = self.members();
        let mut conn = db.connect().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let owned: Vec<(String, i64)> = sqlx::query_as(
                "SELECT owner, count(*) FROM shard_leases WHERE expires_at > now() AND owner = ANY($1) GROUP BY owner",
            )
            .bind(&members)
            .fetch_all(&mut conn)
            .await?;
            if owned.len() == members.len() && owned.iter().map(|o| o.1).sum::<i64>() == 256 {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "shards not balanced in 60 s: {owned:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The slot of each shard's owner now (from the valid leases).
    async fn owners(&self, db: &PgConnectOptions) -> anyhow::Result<HashMap<u16, usize>> {
        let leases: Vec<(i32, String)> =
            sqlx::query_as("SELECT shard, owner FROM shard_leases WHERE expires_at > now() AND owner IS NOT NULL")
                .fetch_all(&mut db.connect().await?)
                .await?;
        Ok(leases
            .into_iter()
            .filter_map(|(shard, owner)| {
                let slot = (0..self.len()).find(|s| self.member(*s) == Some(owner.as_str()))?;
                Some((u16::try_from(shard).ok()?, slot))
            })
            .collect())
    }

    /// `cluster_forwarded_requests_total`, summed over the running replicas.
    async fn forwarded(&self, http: &reqwest::Client) -> anyhow::Result<f64> {
        let mut sum = 0.0;
        for (svc, _) in self.procs.iter().flatten() {
            let port = svc.metrics_port.context("the service logged no metrics port")?;
            let text = http.get(format!("http://127.0.0.1:{port}/metrics")).send().await?.text().await?;
            let name = "cluster_forwarded_requests_total";
            sum += text
                .lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        Ok(sum)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (svc, _) in self.procs.iter_mut().flatten() {
            let _ = svc.kill();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The load.

/// The REST body of the ticket `t` (the same ticket as the gRPC message, so a retry is the same create).
fn rest_body(t: &pb::ExecutionTicketProto) -> Value {
    json!({
        "ticket_id": t.ticket_id, "plan_id": t.plan_id, "intent_id": t.intent_id, "decision_id": t.decision_id,
        "task_id": t.task_id, "task_type": t.task_type, "description": t.description,
        "dependencies": t.dependencies, "priority": t.priority, "risk_band": t.risk_band,
        "sla": t.sla.as_ref().map(|s| json!({"deadline": s.deadline, "timeout_ms": s.timeout_ms, "max_retries": s.max_retries})),
        "qos": t.qos.as_ref().map(|q| json!({"delivery_mode": q.delivery_mode, "consistency": q.consistency, "durability": q.durability})),
        "parameters": serde_json::from_str::<Value>(&t.parameters_json).unwrap_or_else(|_| json!({})),
        "required_capabilities": t.required_capabilities, "security_level": t.security_level,
    })
}

/// One request of a cycle.
enum Step<'a> {
    Create(&'a pb::ExecutionTicketProto),
    Status(&'static str),
    Get,
}

/// A failed call: its class (for the summary), whether another attempt may help (not a 4xx), and what the
/// service or the transport said.
struct Failure {
    class: String,
    retry: bool,
    detail: String,
}

impl Failure {
    fn new(class: impl Into<String>, retry: bool, detail: impl std::fmt::Display) -> Failure {
        let mut detail = detail.to_string();
        if let Some((cut, _)) = detail.char_indices().nth(160) {
            detail.truncate(cut);
        }
        Failure { class: class.into(), retry, detail }
    }
}

/// The (version, status) of an answered ticket; an answer without a version is a failure (the ledger needs it).
fn answered(version: Option<i64>, status: &str, proto: &str) -> Result<(i64, String), Failure> {
    match version {
        Some(v) if v > 0 => Ok((v, status.to_owned())),
        _ => Err(Failure::new(format!("{proto} answer without a version"), true, status)),
    }
}

/// The clients: cycles of create → RUNNING → COMPLETED → GET of one ticket per worker, over REST or gRPC, to
/// the worker's replica (the next one up while it is down); a failed call is repeated, the same request to the
/// next replica up, up to [`ATTEMPTS`] times. With a ledger, every acknowledgement is written down.
struct Load {
    slots: Slots,
    http: reqwest::Client,
    token: Arc<str>,
    /// Distinguishes the ids of this load from any other's.
    run: i64,
    ledger: Option<Mutex<Ledger>>,
    /// Failed calls by class ("REST 503 (live replica)", "gRPC Unavailable (replica killed)", …): how many,
    /// and what the first one said.
    failures: Mutex<BTreeMap<String, (u64, String)>>,
    /// GETs answered with an older version than acknowledged, or not COMPLETED; and the first of them.
    stale_reads: AtomicU64,
    stale_example: Mutex<Option<String>>,
}

impl Load {
    fn new(slots: Slots, http: &reqwest::Client, token: &Arc<str>, ledger: bool) -> Arc<Load> {
        Arc::new(Load {
            slots,
            http: http.clone(),
            token: Arc::clone(token),
            run: now_ms(),
            ledger: ledger.then(Mutex::default),
            failures: Mutex::default(),
            stale_reads: AtomicU64::new(0),
            stale_example: Mutex::default(),
        })
    }

    fn replicas(&self) -> usize {
        self.slots.read().expect("not poisoned").len()
    }

    /// The first replica up from slot `from`: (slot, its generation, its endpoint).
    fn pick(&self, from: usize) -> Option<(usize, u64, Endpoint)> {
        let slots = self.slots.read().expect("not poisoned");
        (0..slots.len()).map(|i| (from + i) % slots.len()).find_map(|i| slots[i].1.clone().map(|e| (i, slots[i].0, e)))
    }

    /// One call: the ticket's (version, status) as answered.
    async fn call(
        &self,
        ep: &Endpoint,
        rest: bool,
        lane: usize,
        id: &str,
        step: &Step<'_>,
    ) -> Result<(i64, String), Failure> {
        if rest {
            let url = format!("{}/api/v1/tickets", ep.base);
            let req = match step {
                Step::Create(t) => self.http.post(url).json(&rest_body(t)),
                Step::Status(s) => {
                    self.http.patch(format!("{url}/{id}/status")).json(&json!({"status": s, "actual_duration_ms": 1}))
                }
                Step::Get => self.http.get(format!("{url}/{id}")),
            };
            let res = req.bearer_auth(&*self.token).send().await.map_err(|e| {
                let what = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connection refused"
                } else {
                    "transport error"
                };
                Failure::new(format!("REST {what}"), true, &e)
            })?;
            let code = res.status();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            if !code.is_success() {
                let detail = body["detail"].as_str().map_or_else(|| body.to_string(), str::to_owned);
                return Err(Failure::new(format!("REST {}", code.as_u16()), !code.is_client_error(), detail));
            }
            answered(body["version"].as_i64(), body["status"].as_str().unwrap_or_default(), "REST")
        } else {
            let mut c = ep.grpc[lane % 2].clone();
            let token = &*self.token;
            let answer = match step {
                Step::Create(t) => {
                    let req = pb::CreateTicketRequest { ticket: Some((*t).clone()) };
                    c.create_ticket(authed(req, token)).await.map(|r| r.into_inner().ticket)
                }
                Step::Status(s) => {
                    let req = pb::UpdateTicketStatusRequest {
                        ticket_id: id.to_owned(),
                        status: (*s).to_owned(),
                        actual_duration_ms: Some(1),
                        ..Default::default()
                    };
                    c.update_ticket_status(authed(req, token)).await.map(|r| r.into_inner().ticket)
                }
                Step::Get => c
                    .get_ticket(authed(pb::GetTicketRequest { ticket_id: id.to_owned() }, token))
                    .await
                    .map(|r| r.into_inner().ticket),
            };
            let retry = |code: tonic::Code| {
                !matches!(
                    code,
                    tonic::Code::InvalidArgument
                        | tonic::Code::NotFound
                        | tonic::Code::AlreadyExists
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::Aborted
                )
            };
            let t = answer.map_err(|s| Failure::new(format!("gRPC {:?}", s.code()), retry(s.code()), s.message()))?;
            let t = t.ok_or_else(|| Failure::new("gRPC answer without a ticket", true, ""))?;
            answered(Some(t.version), &t.status, "gRPC")
        }
    }

    /// `step` with its retries, from worker `w`'s replica on; None when every attempt failed.
    async fn step(&self, w: usize, rest: bool, id: &str, step: &Step<'_>) -> Option<(i64, String)> {
        let n = self.replicas();
        for attempt in 0..ATTEMPTS {
            let Some((slot, generation, ep)) = self.pick(w + attempt) else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            match self.call(&ep, rest, w / (2 * n), id, step).await {
                Ok(answer) => return Some(answer),
                Err(f) => {
                    let killed = self.slots.read().expect("not poisoned")[slot].0 != generation;
                    let class = format!("{} ({})", f.class, if killed { "replica killed" } else { "live replica" });
                    self.failures.lock().expect("not poisoned").entry(class).or_insert((0, f.detail)).0 += 1;
                    if !f.retry {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100 * (attempt as u64 + 1))).await;
                }
            }
        }
        None
    }

    /// Write an acknowledgement down: ticket `id` is at `version` (at least) after a create or an update.
    fn ack(&self, id: &str, version: i64, update: bool) {
        let Some(ledger) = &self.ledger else { return };
        let mut l = ledger.lock().expect("not poisoned");
        if update {
            l.updates += 1;
            let v = l.updated.entry(id.to_owned()).or_default();
            *v = (*v).max(version);
        } else {
            l.creates += 1;
        }
        let v = l.acked.entry(id.to_owned()).or_default();
        *v = (*v).max(version);
    }

    /// One cycle of worker `w`: create, RUNNING, COMPLETED, GET (which must show the last acknowledged version).
    /// Half the workers of each replica speak REST, the others gRPC.
    async fn cycle(&self, w: usize, seq: u64) -> anyhow::Result<bool> {
        let rest = (w / self.replicas()).is_multiple_of(2);
        let id = format!("mix-{}-{w}-{seq}", self.run);
        let t = ticket(id.clone());
        let (mut version, _) =
            self.step(w, rest, &id, &Step::Create(&t)).await.context("create: every attempt failed")?;
        self.ack(&id, version, false);
        for status in ["RUNNING", "COMPLETED"] {
            let step = Step::Status(status);
            (version, _) =
                self.step(w, rest, &id, &step).await.with_context(|| format!("{status}: every attempt failed"))?;
            self.ack(&id, version, true);
        }
        let (read, status) = self.step(w, rest, &id, &Step::Get).await.context("GET: every attempt failed")?;
        if read < version || status != "COMPLETED" {
            self.stale_reads.fetch_add(1, Ordering::Relaxed);
            self.stale_example
                .lock()
                .expect("not poisoned")
                .get_or_insert_with(|| format!("{id}: acknowledged v{version} COMPLETED, read v{read} {status}"));
        }
        Ok(true)
    }

    /// Create SLA ticket `i`: deadline 2–6 s ahead, no retries, left PENDING (its breach fires at the deadline).
    async fn sla_ticket(&self, i: u64) -> anyhow::Result<bool> {
        let id = format!("sla-{}-{i}", self.run);
        let mut t = ticket(id.clone());
        let deadline = now_ms() + rand::thread_rng().gen_range(2_000..6_000);
        t.sla = Some(pb::Sla { deadline, timeout_ms: 600_000, max_retries: 0 });
        let (version, _) = self
            .step(i as usize, i.is_multiple_of(2), &id, &Step::Create(&t))
            .await
            .context("SLA create: every attempt failed")?;
        self.ack(&id, version, false);
        Ok(true)
    }

    /// The failed calls, most frequent first: "N class (e.g. what the first said); …".
    fn failures(&self) -> String {
        let mut f: Vec<(String, (u64, String))> =
            self.failures.lock().expect("not poisoned").clone().into_iter().collect();
        f.sort_by_key(|b| std::cmp::Reverse(b.1 .0));
        if f.is_empty() {
            return "none".into();
        }
        f.iter().map(|(class, (n, e))| format!("{n} {class}, e.g. \"{e}\"")).collect::<Vec<_>>().join("; ")
    }
}

/// The mixed load against every slot of `load` for `secs` seconds.
async fn mixed(label: String, load: &Arc<Load>, clients: u64, secs: u64) -> Phase {
    closed_loop(label, &[Arc::clone(load)], clients as usize, secs, |l: Arc<Load>, w, seq| async move {
        l.cycle(w, seq).await
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------
// Phases.

/// Phase 1 on `cluster` (balanced): operations per second, p50 / p99 of a cycle, and the share of requests the
/// replicas forwarded.
async fn throughput(
    a: &Args,
    cluster: &Cluster,
    http: &reqwest::Client,
    token: &Arc<str>,
) -> anyhow::Result<(Phase, f64)> {
    let n = cluster.len();
    let load = Load::new(Arc::clone(&cluster.slots), http, token, false);
    let before = cluster.forwarded(http).await?;
    let phase = mixed(format!("mixed load, {n} replica(s)"), &load, a.clients, a.seconds).await;
    let forwarded = cluster.forwarded(http).await? - before;
    let share = forwarded / (CALLS_PER_CYCLE * phase.ops).max(1) as f64;
    eprintln!(
        "   {n} replica(s): {:.0} ops/s ({:.0} cycles/s), cycle p50 {:.1} / p99 {:.1} ms, {:.0} % forwarded{}; failed calls: {}",
        phase.rate() * CALLS_PER_CYCLE as f64,
        phase.rate(),
        phase.ms(0.5),
        phase.ms(0.99),
        share * 100.0,
        errs(&phase),
        load.failures()
    );
    Ok((phase, share))
}

/// Phase 2: GetTicket through the owner, then through a non-owner: each phase and the forwards counted meanwhile.
async fn forward_latency(
    a: &Args,
    cluster: &Cluster,
    db: &PgConnectOptions,
    http: &reqwest::Client,
    token: &Arc<str>,
) -> anyhow::Result<Vec<(Phase, f64)>> {
    let n = cluster.len();
    let load = Load::new(Arc::clone(&cluster.slots), http, token, false);
    let mut ids = Vec::new();
    for i in 0..LATENCY_TICKETS {
        let id = format!("fwd-{}-{i}", load.run);
        if load.step(i, false, &id, &Step::Create(&ticket(id.clone()))).await.is_some() {
            ids.push(id);
        }
    }
    let owners = cluster.owners(db).await?;
    let targets: Arc<Vec<(String, usize)>> =
        Arc::new(ids.into_iter().filter_map(|id| owners.get(&vshard_of(&id)).map(|s| (id, *s))).collect());
    anyhow::ensure!(!targets.is_empty(), "no ticket with a known owner");
    let clients: Arc<Vec<Client>> = Arc::new(
        cluster
            .slots
            .read()
            .expect("not poisoned")
            .iter()
            .filter_map(|(_, e)| Some(e.as_ref()?.grpc[0].clone()))
            .collect(),
    );
    anyhow::ensure!(clients.len() == n, "a replica is down");
    let mut out = Vec::new();
    for (label, hop) in [("through the owner", 0), ("through a non-owner (forwarded)", 1)] {
        let ctx = (Arc::clone(&targets), Arc::clone(&clients), Arc::clone(token));
        let before = cluster.forwarded(http).await?;
        let phase = closed_loop(
            format!("GetTicket {label}"),
            &[ctx],
            LATENCY_CALLERS as usize,
            a.seconds,
            move |(targets, clients, token), _, _| async move {
                let (id, owner) = &targets[rand::random::<usize>() % targets.len()];
                let mut c = clients[(owner + hop) % clients.len()].clone();
                c.get_ticket(authed(pb::GetTicketRequest { ticket_id: id.clone() }, &token)).await?;
                anyhow::Ok(true)
            },
        )
        .await;
        let forwarded = cluster.forwarded(http).await? - before;
        eprintln!(
            "   GetTicket {label}: {:.0}/s, p50 {:.2} / p99 {:.2} ms, {forwarded} forwarded of {}{}",
            phase.rate(),
            phase.ms(0.5),
            phase.ms(0.99),
            phase.ops,
            errs(&phase)
        );
        out.push((phase, forwarded));
    }
    Ok(out)
}

/// One kill of the drill.
struct Kill {
    /// Wall clock of the kill, ms.
    at_ms: i64,
    /// The shards the victim held then.
    shards: HashSet<u16>,
    /// Kill → every one of them leased by another member (None: not within 60 s).
    failover: Option<Duration>,
}

/// How long after `t0` (the kill) every shard of `shards` had a valid lease of another member than `victim`,
/// polled every 50 ms on `conn` (opened before the kill); None after 60 s.
async fn taken_over(
    mut conn: sqlx::PgConnection,
    victim: String,
    shards: Vec<i32>,
    t0: Instant,
) -> anyhow::Result<Option<Duration>> {
    while t0.elapsed() < Duration::from_secs(60) {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM shard_leases WHERE shard = ANY($1) \
             AND (owner IS NULL OR owner = $2 OR expires_at <= now())",
        )
        .bind(&shards)
        .bind(&victim)
        .fetch_one(&mut conn)
        .await?;
        if left == 0 {
            return Ok(Some(t0.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(None)
}

/// The `q` quantile of sorted values (None when empty).
fn quantile(sorted: &[i64], q: f64) -> Option<i64> {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied()
}

fn ms(v: Option<i64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// What the drill measured.
struct Drill {
    load: Phase,
    sla: Phase,
    kills: Vec<Kill>,
    failures: String,
    stale_reads: (u64, Option<String>),
    ledger: Ledger,
    /// Breach lateness (ms) of the SLA tickets due within TTL + 1 s after a kill on the victim's shards, and of
    /// every SLA ticket; how many of the former never fired.
    after_kill: Vec<i64>,
    all: Vec<i64>,
    unfired_after_kill: usize,
    verdicts: Verdicts,
    /// Kafka tickets produced (acknowledged by the broker), and the ingestion lag of each stored one (ms, sorted).
    kafka: Option<(usize, Vec<i64>)>,
}

/// No ticket has more than one `ticket.sla_breached`.
async fn breached_once(conn: &mut PgConnection) -> anyhow::Result<Verdict> {
    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT ticket_id FROM ticket_events WHERE kind = 'ticket.sla_breached' \
         GROUP BY ticket_id HAVING count(*) > 1) d",
    )
    .fetch_one(conn)
    .await?;
    Ok(if twice == 0 { Ok(()) } else { Err(format!("{twice} tickets breached more than once")) })
}

/// The drill's invariants, read from PostgreSQL against what the clients saw acknowledged.
async fn invariants(conn: &mut PgConnection, ledger: &Ledger) -> anyhow::Result<Vec<(&'static str, Verdict)>> {
    let (creates, updates) = checks::acknowledged(conn, ledger).await?;
    Ok(vec![
        ("acknowledged writes lost: creates", creates),
        ("acknowledged writes lost: updates (version)", updates),
        ("duplicate creates", checks::no_duplicates(conn).await?),
        ("duplicate SLA events: ticket.sla_breached", breached_once(conn).await?),
        ("duplicate SLA events: any SLA rule", checks::sla_once(conn).await?),
    ])
}

/// The control of [`invariants`]: in a transaction that is rolled back, plant one violation of each (an
/// acknowledged create never stored, an acknowledged version above the stored one, a second `ticket.created`, a
/// second `ticket.sla_breached`) and demand that every check fails — so a PASS means the checks look at the
/// right rows of this very database, not that they cannot fail.
async fn control(db: &PgConnectOptions, ledger: &Ledger) -> anyhow::Result<Verdict> {
    let mut planted = ledger.clone();
    planted.acked.insert("never-stored".into(), 1);
    if let Some((id, v)) = ledger.updated.iter().next() {
        planted.updated.insert(id.clone(), v + 1_000_000);
    }
    let mut conn = db.connect().await?;
    let mut tx = conn.begin().await?;
    for kind in ["ticket.created", "ticket.sla_breached"] {
        sqlx::query(
            "INSERT INTO ticket_events (event_id, ticket_id, kind, actor, at, details) \
             SELECT event_id || '-planted', ticket_id, kind, actor, at, details FROM ticket_events \
             WHERE kind = $1 LIMIT 1",
        )
        .bind(kind)
        .execute(&mut *tx)
        .await?;
    }
    let results = invariants(&mut tx, &planted).await?;
    tx.rollback().await?;
    let missed: Vec<&str> = results.iter().filter(|(_, r)| r.is_ok()).map(|(name, _)| *name).collect();
    Ok(if missed.is_empty() { Ok(()) } else { Err(format!("planted violations not seen by: {}", missed.join(", "))) })
}

/// Phase 3 (see the module docs).
async fn drill(a: &Args, env: &[(String, String)], http: &reqwest::Client, token: &Arc<str>) -> anyhow::Result<Drill> {
    let n = a.replicas;
    let (db, url) = fresh_database(&a.target.database_url, "bench_cluster_drill").await?;
    let mut env = env.to_vec();
    let mut broker = None;
    if let Some(tansu) = &a.tansu {
        let (b, bootstrap) = crate::torture::broker(tansu).await?;
        broker = Some((b, bootstrap.clone()));
        for (k, v) in [
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str()),
            ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("KAFKA_MAX_POLL_INTERVAL_MS", "7000"),
            ("KAFKA_EVENTS_ENABLED", "false"),
        ] {
            env.push((k.into(), v.into()));
        }
    } else {
        eprintln!("   Kafka skipped (no --tansu)");
    }
    let mut cluster = Cluster::start(&a.target.service, &url, &env, n).await?;
    cluster.balanced(&db).await?;
    let load = Load::new(Arc::clone(&cluster.slots), http, token, true);
    let every = a.kill_every_seconds;
    let secs = a.kills as u64 * every + (every / 2).max(a.lease_ttl_ms / 1000 + 2);
    eprintln!(
        "== failover drill: {n} replicas, {} clients + {} SLA tickets/s for {secs} s, a kill -9 every {every} s ({} kills)",
        a.clients, a.sla_per_second, a.kills
    );
    let mixed_task = tokio::spawn({
        let load = Arc::clone(&load);
        let clients = a.clients;
        async move { mixed("drill: mixed load".into(), &load, clients, secs).await }
    });
    let sla_task = tokio::spawn({
        let load = Arc::clone(&load);
        let rate = a.sla_per_second as f64;
        async move {
            let create = |l: Arc<Load>, _, i| async move { l.sla_ticket(i).await };
            open_loop("drill: SLA tickets".into(), &[load], rate, secs, create).await
        }
    });
    let kafka = match &broker {
        Some((_, bootstrap)) => {
            let producer = rdkafka::config::ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("message.timeout.ms", "10000")
                .set("linger.ms", "5")
                .create()?;
            let nowhere = Arc::new(RwLock::new(None));
            let seed = now_ms() as u64;
            Some(crate::torture::load::Load::start(nowhere, token.to_string(), producer, 0, a.kafka_per_second, seed)?)
        }
        None => None,
    };

    let mut conn = db.connect().await?;
    let mut kills = Vec::new();
    let started = Instant::now();
    for k in 0..a.kills {
        tokio::time::sleep_until((started + Duration::from_secs(every * (k as u64 + 1))).into()).await;
        let slot = k % n;
        let victim = cluster.member(slot).context("the victim is not running")?.to_owned();
        let shards: Vec<i32> =
            sqlx::query_scalar("SELECT shard FROM shard_leases WHERE owner = $1 AND expires_at > now()")
                .bind(&victim)
                .fetch_all(&mut conn)
                .await?;
        let poll_conn = db.connect().await?;
        let at_ms = now_ms();
        let t0 = Instant::now();
        cluster.kill(slot)?;
        let poll = tokio::spawn(taken_over(poll_conn, victim.clone(), shards.clone(), t0));
        let ready = cluster.start_slot(slot).await?;
        let failover = poll.await??;
        eprintln!(
            "   kill {}/{}: replica {slot} ({victim}) held {} shards; all leased by another member after {}; restarted, ready in {:.2} s",
            k + 1,
            a.kills,
            shards.len(),
            failover.map_or("> 60 s".into(), |d| format!("{} ms", d.as_millis())),
            ready.as_secs_f64()
        );
        kills.push(Kill { at_ms, shards: shards.iter().map(|s| *s as u16).collect(), failover });
    }
    let load_phase = mixed_task.await?;
    let sla_phase = sla_task.await?;
    let kafka_ledger = match kafka {
        Some(k) => Some(k.stop().await),
        None => None,
    };
    eprintln!("   load stopped; waiting for the last deadlines and timers");

    // Every deadline is at most 6 s after its creation; then the lease TTL and a margin for the last failover.
    tokio::time::sleep(Duration::from_millis(6_000 + a.lease_ttl_ms + 2_000)).await;
    let unfired_sql = "SELECT count(*) FROM execution_tickets WHERE ticket_id LIKE 'sla-%' \
        AND sla_state->'breached_at' IS NULL AND sla_deadline < now() - interval '2 seconds'";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut unfired: i64 = sqlx::query_scalar(unfired_sql).fetch_one(&mut conn).await?;
    while unfired > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        unfired = sqlx::query_scalar(unfired_sql).fetch_one(&mut conn).await?;
    }
    let mut v = Verdicts::default();
    if let Some(kl) = &kafka_ledger {
        let deadline = Instant::now() + Duration::from_secs(60);
        while checks::kafka_stored(&mut conn, &kl.kafka).await?.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        v.record("every Kafka ticket stored exactly once", "end", checks::kafka_stored(&mut conn, &kl.kafka).await?);
    }
    let ledger = load.ledger.as_ref().expect("the drill keeps a ledger").lock().expect("not poisoned").clone();
    for (name, verdict) in invariants(&mut conn, &ledger).await? {
        v.record(name, "end", verdict);
    }
    v.record("control: each check flags a violation planted (and rolled back)", "end", control(&db, &ledger).await?);
    v.record(
        "every SLA breach fired",
        "end",
        if unfired == 0 { Ok(()) } else { Err(format!("{unfired} SLA tickets past their deadline never breached")) },
    );

    // Breach lateness of the tickets due while their shard's owner was dead.
    let rows = sqlx::query(
        "SELECT ticket_id, (extract(epoch FROM sla_deadline) * 1000)::bigint, (sla_state->>'breached_at')::bigint \
         FROM execution_tickets WHERE ticket_id LIKE 'sla-%'",
    )
    .fetch_all(&mut conn)
    .await?;
    let window = a.lease_ttl_ms as i64 + 1_000;
    let (mut after_kill, mut all, mut unfired_after_kill) = (Vec::new(), Vec::new(), 0);
    for r in &rows {
        let (id, due, breached): (String, i64, Option<i64>) = (r.get(0), r.get(1), r.get(2));
        let shard = vshard_of(&id);
        let hit = kills.iter().any(|k| k.shards.contains(&shard) && (k.at_ms..=k.at_ms + window).contains(&due));
        match (breached, hit) {
            (Some(b), true) => after_kill.push(b - due),
            (None, true) => unfired_after_kill += 1,
            _ => {}
        }
        if let Some(b) = breached {
            all.push(b - due);
        }
    }
    after_kill.sort_unstable();
    all.sort_unstable();
    // Kafka ingestion lag: the ticket's `ticket.created` − its `created_at`, which the producer set.
    let kafka_lag: Vec<i64> = sqlx::query_scalar(
        "SELECT e.at - (extract(epoch FROM t.created_at) * 1000)::bigint FROM execution_tickets t \
         JOIN ticket_events e ON e.ticket_id = t.ticket_id AND e.kind = 'ticket.created' \
         WHERE t.ticket_id LIKE 'kafka-%' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await?;
    drop(cluster);
    let stale = (load.stale_reads.load(Ordering::Relaxed), load.stale_example.lock().expect("not poisoned").clone());
    Ok(Drill {
        load: load_phase,
        sla: sla_phase,
        kills,
        failures: load.failures(),
        stale_reads: stale,
        ledger,
        after_kill,
        all,
        unfired_after_kill,
        verdicts: v,
        kafka: kafka_ledger.map(|k| (k.kafka.len(), kafka_lag)),
    })
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.replicas >= 2, "--replicas must be at least 2");
    let n = a.replicas;
    let renew = (a.lease_ttl_ms / 3).min(1_000);
    let mut env: Vec<(String, String)> = RATE_LIMITS_OFF.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    env.push(("CLUSTER_LEASE_TTL_MS".into(), a.lease_ttl_ms.to_string()));
    env.push(("CLUSTER_RENEW_INTERVAL_MS".into(), renew.to_string()));
    let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).connect_timeout(Duration::from_secs(1)).build()?;
    let token: Arc<str> = crate::service_token("bench-cluster")?.into();
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    let load_before = loadavg();
    let goal_ms = a.lease_ttl_ms as f64 + 1_000.0;

    // --- Phase 1: 1 replica, then N, each on a fresh database.
    eprintln!(
        "== phase 1: throughput, 1 vs {n} replicas, {} clients (half REST, half gRPC), {} s each",
        a.clients, a.seconds
    );
    let (one, _) = {
        let (db, url) = fresh_database(&a.target.database_url, "bench_cluster_one").await?;
        let cluster = Cluster::start(&a.target.service, &url, &env, 1).await?;
        cluster.balanced(&db).await?;
        throughput(&a, &cluster, &http, &token).await?
    };
    let (db, url) = fresh_database(&a.target.database_url, "bench_cluster_n").await?;
    let cluster = Cluster::start(&a.target.service, &url, &env, n).await?;
    cluster.balanced(&db).await?;
    let (many, share) = throughput(&a, &cluster, &http, &token).await?;

    // --- Phase 2: on the same N replicas.
    eprintln!(
        "== phase 2: GetTicket through the owner vs a non-owner, {LATENCY_CALLERS} callers, {} s each",
        a.seconds
    );
    let lat = forward_latency(&a, &cluster, &db, &http, &token).await?;
    drop(cluster);

    // --- Phase 3.
    let d = drill(&a, &env, &http, &token).await?;

    // --- Report.
    let ops = |p: &Phase| p.rate() * CALLS_PER_CYCLE as f64;
    let cycle = |p: &Phase| format!("cycle p50 {:.1} / p99 {:.1} ms{}", p.ms(0.5), p.ms(0.99), errs(p));
    let ratio = ops(&many) / ops(&one).max(1e-9);
    let mut rows: Vec<Row> = vec![
        (
            format!(
                "P1 mixed load, 1 replica: {} clients, create → RUNNING → COMPLETED → GET, half REST half gRPC",
                a.clients
            ),
            format!("{:.0} ops/s ({})", ops(&one), cycle(&one)),
            "-".into(),
            "-".into(),
        ),
        (
            format!("P1 same load spread over {n} replicas (fresh database each)"),
            format!("{:.0} ops/s ({}); {:.0} % of requests forwarded", ops(&many), cycle(&many), share * 100.0),
            format!("{ratio:.2} of 1 replica"),
            "≥ 0.8× (2 cores: no collapse)".into(),
        ),
    ];
    let (own, other) = (&lat[0], &lat[1]);
    for ((p, fwd), what) in [(own, "owner"), (other, "non-owner (forwarded to the owner)")] {
        rows.push((
            format!("P2 GetTicket over gRPC through the {what}, {LATENCY_CALLERS} callers"),
            format!(
                "p50 {:.2} / p99 {:.2} ms ({:.0}/s; {fwd:.0} of {} forwarded{})",
                p.ms(0.5),
                p.ms(0.99),
                p.rate(),
                p.ops,
                errs(p)
            ),
            "-".into(),
            "-".into(),
        ));
    }
    rows.push((
        "P2 extra latency of a forward (non-owner − owner)".into(),
        format!("p50 +{:.2} / p99 +{:.2} ms", other.0.ms(0.5) - own.0.ms(0.5), other.0.ms(0.99) - own.0.ms(0.99)),
        "-".into(),
        "-".into(),
    ));
    let mut failovers: Vec<i64> = d.kills.iter().map(|k| k.failover.map_or(60_000, |f| f.as_millis() as i64)).collect();
    failovers.sort_unstable();
    let max_failover = failovers.last().copied();
    rows.push((
        format!(
            "P3 failover: kill -9 → every shard of the victim leased by another member ({} kills, polled every 50 ms)",
            d.kills.len()
        ),
        format!(
            "p50 {} / p99 {} / max {} ms",
            ms(quantile(&failovers, 0.5)),
            ms(quantile(&failovers, 0.99)),
            ms(max_failover)
        ),
        max_failover.map_or("-".into(), |m| format!("{:.2} (max)", m as f64 / goal_ms)),
        format!("≤ lease TTL + 1 s = {goal_ms:.0} ms"),
    ));
    let p99_after = quantile(&d.after_kill, 0.99);
    rows.push((
        format!(
            "P3 SLA lateness after failover: breached_at − deadline, {} tickets of the victims' shards due within TTL + 1 s of a kill{}",
            d.after_kill.len(),
            if d.unfired_after_kill > 0 { format!(" ({} never fired)", d.unfired_after_kill) } else { String::new() }
        ),
        format!("p50 {} / p99 {} / max {} ms", ms(quantile(&d.after_kill, 0.5)), ms(p99_after), ms(d.after_kill.last().copied())),
        p99_after.map_or("-".into(), |p| format!("{:.2} (p99)", p as f64 / goal_ms)),
        format!("p99 ≤ lease TTL + 1 s = {goal_ms:.0} ms"),
    ));
    rows.push((
        format!("P3 SLA lateness of every SLA ticket of the drill ({} breaches)", d.all.len()),
        format!(
            "p50 {} / p99 {} / max {} ms",
            ms(quantile(&d.all, 0.5)),
            ms(quantile(&d.all, 0.99)),
            ms(d.all.last().copied())
        ),
        "-".into(),
        "-".into(),
    ));
    rows.push((
        format!(
            "P3 load during the drill: {} acknowledged creates ({} SLA tickets), {} acknowledged updates",
            d.ledger.creates, d.sla.ops, d.ledger.updates
        ),
        format!(
            "{:.0} ops/s, {} (max {:.0} ms); cycles abandoned: {}; failed calls: {}",
            ops(&d.load),
            cycle(&d.load),
            d.load.ms(1.0),
            d.load.errors,
            d.failures
        ),
        "-".into(),
        "-".into(),
    ));
    rows.push((
        "P3 GET after an acknowledged COMPLETED answering an older version".into(),
        format!("{}{}", d.stale_reads.0, d.stale_reads.1.as_ref().map_or(String::new(), |e| format!(" (e.g. {e})"))),
        "-".into(),
        "0".into(),
    ));
    for line in d.verdicts.lines() {
        let (verdict, rest) = line.split_once(' ').unwrap_or(("", &line));
        rows.push((format!("P3 {rest}"), verdict.to_owned(), "-".into(), "0 / PASS".into()));
    }
    rows.push((
        "P3 Kafka ingestion during the drill: tickets produced; lag from `created_at` to `ticket.created`".into(),
        d.kafka.as_ref().map_or("skipped (no --tansu)".into(), |(n, lag)| {
            format!(
                "{n} at {}/s; lag p50 {} / p99 {} / max {} ms",
                a.kafka_per_second,
                ms(quantile(lag, 0.5)),
                ms(quantile(lag, 0.99)),
                ms(lag.last().copied())
            )
        }),
        "-".into(),
        "-".into(),
    ));
    rows.push((
        "machine: cores (nproc); load (1/5/15-min) before → after; pinning".into(),
        format!("{cores}; {load_before} → {}; none (replicas, PostgreSQL and clients share the cores)", loadavg()),
        "-".into(),
        "-".into(),
    ));
    report(
        &format!("Cluster: {n} replicas, throughput, forwarding, failover (TTL {} ms)", a.lease_ttl_ms),
        "cluster",
        "≥ 1 meets a ≥ goal, ≤ 1 a ≤ goal",
        &rows,
        a.append.as_deref(),
    )?;
    if !d.verdicts.all_pass() || d.stale_reads.0 > 0 {
        bail!("cluster drill: invariants failed (see above)");
    }
    Ok(())
}
