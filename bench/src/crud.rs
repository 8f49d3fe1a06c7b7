//! `ticket-bench crud --database-url URL --service PATH [--pgbench PATH] [--seconds S] [--clients 8,32,64]
//!  [--env K=V]... [--perf-dir DIR] [--no-pin] [--append BENCHMARKS.md]`
//!
//! CRUD throughput over gRPC, each figure set against a limit measured in the same run on the same PostgreSQL:
//! - baselines: pgbench inserting a ticket-sized row one per transaction, 100 per transaction, and a
//!   single-row UPDATE, at each client count (into `pgb_tickets`, a copy of `execution_tickets` with its indexes);
//! - P1: CreateTicket, closed loop at each client count (the saturated rate; issue #21's goals: ≥ 1× pgbench
//!   1-row, ≥ 2× at 64 clients, and p50 at 8 clients ≤ 1.5× one client's when `--clients` has 1 and 8; pgbench
//!   100-row is shown beside), then open loop at half the best saturated rate: p50/p99 from each call's
//!   scheduled start, so a stall is not hidden by the client waiting (goal p99 ≤ 10 ms), beside pgbench's
//!   one-row INSERTs at the same rate, counted the same way (PostgreSQL's own tail on this machine);
//! - P2: UpdateTicketStatus RUNNING then COMPLETED of tickets P1 created (goal ≥ 1× pgbench UPDATE);
//! - P3: GetTicket of live tickets (goal ≥ 50 000/s, p99 ≤ 5 ms), beside the same server's gRPC health `Check` at
//!   the same concurrency (the framework's floor; issue #21's goal: GetTicket ≥ 0.8 of it), and the same reads
//!   over REST beside its `/health`. Each ticket is read once before (a created ticket has no actor until the
//!   first request loads it from the store): that first read's rate is a row of its own;
//! - resident memory per live ticket, and CPU per operation of the service and of PostgreSQL (from /proc);
//!   pinned, also the rate that CPU allows on one core (1 s ÷ CPU per operation) against pgbench's rate: where
//!   that is below 1, meeting the goal needs less CPU per operation, not better grouping. The p50 row shows
//!   pgbench's own 8-client ÷ 1-client latency beside the service's.
//!
//! On 2 cores the load generator must not take the service's CPU: the service and PostgreSQL (postmaster and
//! every backend, which inherit its affinity) are pinned to CPU 0, this process and pgbench to CPU 1
//! (`taskset`; `--no-pin` leaves scheduling to the kernel).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor};
use ticket_supervisor::grpc::pb;
use tonic::transport::Channel;

use super::{fresh_database, memory, mib, progress, report, start_service, Row};

pub(crate) type Client = pb::ticket_service_client::TicketServiceClient<Channel>;

/// The CPU the service and PostgreSQL run on; the clients run on the other.
/// The per-caller rate limits off: a bench measures capacity with one token, far beyond a caller's budget.
pub(crate) const RATE_LIMITS_OFF: [(&str, &str); 3] = [
    ("RATE_LIMIT_READS_PER_SECOND", "0"),
    ("RATE_LIMIT_WRITES_PER_SECOND", "0"),
    ("RATE_LIMIT_TOKENS_PER_SECOND", "0"),
];

pub(crate) const SERVER_CPU: &str = "0";
pub(crate) const CLIENT_CPU: &str = "1";

/// CreateTicket, status updates and GetTicket over gRPC, each beside pgbench's own rate.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: crate::Target,
    /// pgbench, for the same-run limit.
    #[arg(long, default_value = "pgbench")]
    pgbench: String,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Client counts, one phase each.
    #[arg(long, value_delimiter = ',', default_value = "8,32,64", required = false)]
    clients: Vec<usize>,
    /// An extra variable for the service (KEY=VALUE; repeatable).
    #[arg(long = "env", value_parser = super::key_value)]
    env: Vec<(String, String)>,
    /// Record `perf` profiles here.
    #[arg(long)]
    perf_dir: Option<PathBuf>,
    /// Creates per second offered in the latency phase, instead of half the best saturated rate: two binaries
    /// compared at one rate (PostgreSQL's own tail grows with the rate).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Do not pin the service and PostgreSQL to one CPU and the clients to the other.
    #[arg(long = "no-pin", action = clap::ArgAction::SetFalse)]
    pin: bool,
    /// Append the report to this file (e.g. BENCHMARKS.md).
    #[arg(long)]
    append: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------
// Processes: pinning and CPU time.

/// Pin every thread of `pid` to `cpu`; threads and processes it starts later inherit the affinity.
pub(crate) fn pin(pid: u32, cpu: &str) -> anyhow::Result<()> {
    let status = Command::new("taskset").args(["-a", "-cp", cpu, &pid.to_string()]).stdout(Stdio::null()).status()?;
    anyhow::ensure!(status.success(), "taskset -a -cp {cpu} {pid} failed");
    Ok(())
}

/// Let every thread of `pid` run on any online CPU again.
pub(crate) fn unpin(pid: u32) -> anyhow::Result<()> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").context("reading the online CPUs")?;
    pin(pid, online.trim())
}

/// Fields of /proc/PID/stat after the command name (the first is the state, field 3 of proc(5)).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect())
}

/// Microseconds per clock tick (`CLK_TCK` is 100 on Linux).
const TICK_US: u64 = 10_000;

/// CPU time of a process (all its threads, living and ended), and of its children it has reaped, in µs.
pub(crate) fn cpu_us(pid: u32) -> (u64, u64) {
    // After skipping the state: [0] ppid … [10] utime, [11] stime, [12] cutime, [13] cstime.
    stat_fields(pid).map_or((0, 0), |f| ((f[10] + f[11]) * TICK_US, (f[12] + f[13]) * TICK_US))
}

/// The PostgreSQL server under test: its postmaster and the backends it forks.
pub(crate) struct Postgres {
    postmaster: u32,
}

impl Postgres {
    pub(crate) async fn find(db: &PgConnectOptions) -> anyhow::Result<Self> {
        let mut conn = db.connect().await?;
        let dir: String = sqlx::query_scalar("SHOW data_directory").fetch_one(&mut conn).await?;
        let pidfile = std::fs::read_to_string(Path::new(&dir).join("postmaster.pid"))
            .with_context(|| format!("reading {dir}/postmaster.pid (the bench must run on the server's host)"))?;
        let postmaster = pidfile.lines().next().unwrap_or_default().trim().parse()?;
        Ok(Postgres { postmaster })
    }

    pub(crate) fn processes(&self) -> Vec<u32> {
        let mut pids = vec![self.postmaster];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if stat_fields(pid).is_some_and(|f| f.first() == Some(&(self.postmaster as u64))) {
                pids.push(pid);
            }
        }
        pids
    }

    /// CPU time of the whole server: the postmaster, the backends living now, and those that have ended
    /// (reaped by the postmaster, so counted in its children's time).
    pub(crate) fn cpu_us(&self) -> u64 {
        let (own, reaped) = cpu_us(self.postmaster);
        own + reaped + self.processes().into_iter().skip(1).map(|p| cpu_us(p).0).sum::<u64>()
    }
}

/// CPU used by the service and PostgreSQL over one phase.
struct Cpu {
    service: u32,
    pg: u64,
    svc: u64,
}

impl Cpu {
    fn start(service: u32, pg: &Postgres) -> Self {
        Cpu { service, pg: pg.cpu_us(), svc: cpu_us(service).0 }
    }

    /// (service, PostgreSQL) µs per operation since `start`.
    fn per_op(&self, pg: &Postgres, ops: u64) -> (f64, f64) {
        let ops = ops.max(1) as f64;
        let svc = cpu_us(self.service).0.saturating_sub(self.svc);
        (svc as f64 / ops, pg.cpu_us().saturating_sub(self.pg) as f64 / ops)
    }
}

// ---------------------------------------------------------------------------------------------------------
// pgbench baselines.

pub(crate) const COLUMNS: &str =
    "ticket_id, plan_id, intent_id, decision_id, task_id, task_type, description, dependencies, \
    status, priority, risk_band, sla_deadline, sla_timeout_ms, sla_max_retries, qos_delivery_mode, qos_consistency, \
    qos_durability, parameters, required_capabilities, security_level, created_at, retry_count, metadata, \
    schema_version, version, updated_at, sla_state, next_due_at";

/// A PENDING ticket row like the service writes for a CreateTicket, with `id` as its ticket_id.
fn row_values(id: &str) -> String {
    format!(
        "{id}, 'bench-plan', 'bench-intent', 'bench-decision', 'task-1', 'EXECUTE', 'bench ticket', '[]', 'PENDING', \
         'NORMAL', 'low', now() + interval '1 hour', 3600000, 1, 'AT_LEAST_ONCE', 'STRONG', 'PERSISTENT', \
         '{{\"n\": \"1\"}}', '[\"bench\"]', 'INTERNAL', now(), 0, '{{}}', 1, 1, now(), \
         jsonb_build_object('pending_since', 0, 'next_due_at', 0), now() + interval '1 hour'"
    )
}

/// Rows the UPDATE baseline picks from at random.
const UPDATE_ROWS: u64 = 100_000;

/// The three pgbench scripts: (name, rows per transaction, text).
fn scripts() -> [(&'static str, u64, String); 3] {
    [
        (
            "insert-1",
            1,
            format!("INSERT INTO pgb_tickets ({COLUMNS}) VALUES ({});\n", row_values("gen_random_uuid()::text")),
        ),
        (
            "insert-100",
            100,
            format!(
                "INSERT INTO pgb_tickets ({COLUMNS}) SELECT {} FROM generate_series(1, 100);\n",
                row_values("gen_random_uuid()::text")
            ),
        ),
        (
            "update-1",
            1,
            format!(
                "\\set id random(1, {UPDATE_ROWS})\nUPDATE pgb_tickets SET status = 'RUNNING', started_at = now(), \
                 version = version + 1, updated_at = now() WHERE ticket_id = 'u-' || :id;\n"
            ),
        ),
    ]
}

async fn prepare_baseline_table(db: &PgConnectOptions) -> anyhow::Result<()> {
    let mut conn = db.connect().await?;
    conn.execute("CREATE TABLE pgb_tickets (LIKE execution_tickets INCLUDING ALL)").await?;
    let fill = format!(
        "INSERT INTO pgb_tickets ({COLUMNS}) SELECT {} FROM generate_series(1, {UPDATE_ROWS}) i",
        row_values("'u-' || i")
    );
    conn.execute(fill.as_str()).await?;
    conn.execute("VACUUM ANALYZE pgb_tickets").await?;
    Ok(())
}

/// One pgbench run (`extra`: more of its arguments): transactions per second, and PostgreSQL CPU per
/// transaction (µs).
async fn pgbench(
    a: &Args,
    db: &PgConnectOptions,
    pg: &Postgres,
    script: &Path,
    (label, clients): (&str, usize),
    extra: &[&str],
) -> anyhow::Result<(f64, f64)> {
    let mut cmd = if a.pin {
        let mut c = Command::new("taskset");
        c.args(["-c", CLIENT_CPU]).arg(&a.pgbench);
        c
    } else {
        Command::new(&a.pgbench)
    };
    cmd.args(["-n", "-M", "prepared", "-c", &clients.to_string(), "-j", &clients.min(4).to_string()])
        .args(["-T", &a.seconds.to_string()])
        .args(extra)
        .arg("-f")
        .arg(script)
        .args(["-h", db.get_host(), "-p", &db.get_port().to_string(), "-U", db.get_username()])
        .arg(db.get_database().context("no database name")?)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let pg_before = pg.cpu_us();
    let mut child = cmd.spawn().with_context(|| format!("starting {}", a.pgbench))?;
    let bar = progress::timer(a.seconds, &format!("pgbench {label}, {clients} clients"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        bar.set_position(started.elapsed().as_secs().min(a.seconds));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    bar.finish_and_clear();
    let pg_us = pg.cpu_us().saturating_sub(pg_before);
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read as _;
    child.stdout.take().context("piped")?.read_to_string(&mut out)?;
    child.stderr.take().context("piped")?.read_to_string(&mut err)?;
    anyhow::ensure!(status.success(), "pgbench {label} failed: {err}{out}");
    let tps: f64 = out
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        .with_context(|| format!("no tps in pgbench output: {out}"))?;
    let txs = tps * started.elapsed().as_secs_f64();
    Ok((tps, pg_us as f64 / txs.max(1.0)))
}

/// PostgreSQL's own latency at a fixed rate, the limit beside the service's open loop: `script` started on
/// schedule by 64 pgbench clients (`-R`), each latency counted from its scheduled start, as the service's are
/// (pgbench's per-transaction log: with `-R` its time is from the schedule). The first second is left out: 64
/// fresh backends load their caches then (the first transactions took 70–100 ms here), where the service's
/// connections are warm.
async fn pgbench_at_rate(
    a: &Args,
    db: &PgConnectOptions,
    pg: &Postgres,
    script: &Path,
    rate: f64,
) -> anyhow::Result<Phase> {
    let logs = script.with_extension("log.d");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    let prefix = logs.join("tx");
    let prefix = prefix.to_str().context("the temporary directory's path is not UTF-8")?;
    let rate = format!("{rate:.0}");
    let extra = ["-R", &rate, "-l", "--log-prefix", prefix];
    pgbench(a, db, pg, script, ("insert-1 on schedule", 64), &extra).await?;
    // A line: client, transaction, latency µs, script, completed at (s, µs), schedule lag µs.
    let mut done: Vec<(u64, u32)> = Vec::new();
    for entry in std::fs::read_dir(&logs)? {
        for line in std::fs::read_to_string(entry?.path())?.lines() {
            let f: Vec<u64> = line.split_whitespace().map_while(|v| v.parse().ok()).collect();
            if let [_, _, latency, _, s, us, ..] = f[..] {
                done.push((s * 1_000_000 + us, u32::try_from(latency).unwrap_or(u32::MAX)));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&logs);
    let start = done.iter().map(|d| d.0).min().context("pgbench logged no transaction")?;
    let mut latencies: Vec<u32> = done.iter().filter(|d| d.0 >= start + 1_000_000).map(|d| d.1).collect();
    latencies.sort_unstable();
    Ok(Phase::from_parts(latencies.len() as u64, 0, (a.seconds as f64 - 1.0).max(1.0), latencies))
}

// ---------------------------------------------------------------------------------------------------------
// gRPC load.

pub(crate) fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {token}").parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

pub(crate) fn ticket(id: String) -> pb::ExecutionTicketProto {
    let now = chrono::Utc::now().timestamp_millis();
    pb::ExecutionTicketProto {
        ticket_id: id,
        plan_id: "bench-plan".into(),
        intent_id: "bench-intent".into(),
        decision_id: "bench-decision".into(),
        task_id: "task-1".into(),
        task_type: "EXECUTE".into(),
        description: "bench ticket".into(),
        priority: "NORMAL".into(),
        risk_band: "low".into(),
        sla: Some(pb::Sla { deadline: now + 3_600_000, timeout_ms: 3_600_000, max_retries: 1 }),
        qos: Some(pb::Qos {
            delivery_mode: "AT_LEAST_ONCE".into(),
            consistency: "STRONG".into(),
            durability: "PERSISTENT".into(),
        }),
        parameters_json: r#"{"n": "1"}"#.into(),
        required_capabilities: vec!["bench".into()],
        security_level: "INTERNAL".into(),
        ..Default::default()
    }
}

/// What one load phase did.
pub(crate) struct Phase {
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    /// The failed calls by kind (a gRPC status code, or `other`), most frequent first.
    pub(crate) error_kinds: Vec<(String, u64)>,
    pub(crate) secs: f64,
    /// Latency of each successful operation, µs, sorted.
    latencies: Vec<u32>,
}

impl Phase {
    /// A phase made of others' figures (`latencies` sorted).
    pub(crate) fn from_parts(ops: u64, errors: u64, secs: f64, latencies: Vec<u32>) -> Phase {
        Phase { ops, errors, error_kinds: Vec::new(), secs, latencies }
    }

    /// Latency of each successful operation, µs, sorted.
    pub(crate) fn latencies(&self) -> &[u32] {
        &self.latencies
    }

    pub(crate) fn rate(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }

    /// The `q` quantile of the latencies, in ms.
    pub(crate) fn ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[i] as f64 / 1000.0
    }
}

/// Shows a timed phase's progress: elapsed seconds and operations done so far.
fn ticker(secs: u64, label: String, done: Arc<AtomicU64>) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = progress::timer(secs, &label);
    let b = bar.clone();
    let started = Instant::now();
    let task = tokio::spawn(async move {
        loop {
            b.set_position(started.elapsed().as_secs().min(secs));
            b.set_message(format!("{} ops", done.load(Ordering::Relaxed)));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    (bar, task)
}

/// `concurrency` workers calling `op` back to back for `secs` seconds (the saturated rate). `op` answers
/// `Ok(false)` when it has nothing left to do, which ends that worker early. Worker `w` is handed
/// `clients[w % clients.len()]` (gRPC clients, or whatever context the caller's `op` needs).
pub(crate) async fn closed_loop<C, F, Fut>(label: String, clients: &[C], concurrency: usize, secs: u64, op: F) -> Phase
where
    C: Clone + Send + 'static,
    F: Fn(C, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<bool>> + Send + 'static,
{
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Failures::default());
    let (bar, tick) = ticker(secs, label.clone(), done.clone());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let (client, op, done, errors, label) =
            (clients[w % clients.len()].clone(), op.clone(), done.clone(), errors.clone(), label.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut seq = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                match op(client.clone(), w, seq).await {
                    Ok(true) => {
                        latencies.push(t.elapsed().as_micros() as u32);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => break,
                    Err(e) => errors.record(&label, &e),
                }
                seq += 1;
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(l) = workers.join_next().await {
        latencies.extend(l.unwrap_or_default());
    }
    let secs = started.elapsed().as_secs_f64();
    tick.abort();
    bar.finish_and_clear();
    latencies.sort_unstable();
    let (errors, error_kinds) = errors.counts();
    Phase { ops: done.load(Ordering::Relaxed), errors, error_kinds, secs, latencies }
}

/// The failed calls of a phase, by kind; the first one is printed whole.
#[derive(Default)]
struct Failures(Mutex<BTreeMap<String, u64>>);

impl Failures {
    fn record(&self, label: &str, e: &anyhow::Error) {
        let kind = e.chain().find_map(|c| c.downcast_ref::<tonic::Status>()).map(|s| format!("{:?}", s.code()));
        let mut kinds = self.0.lock().expect("not poisoned");
        if kinds.is_empty() {
            tracing::warn!(phase = %label, error = %e, "bench call failed");
            eprintln!("   {label}: a call failed: {e:#}");
        }
        *kinds.entry(kind.unwrap_or_else(|| "other".into())).or_default() += 1;
    }

    /// All failed calls, and their kinds, most frequent first.
    fn counts(&self) -> (u64, Vec<(String, u64)>) {
        let mut kinds: Vec<(String, u64)> = self.0.lock().expect("not poisoned").clone().into_iter().collect();
        kinds.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        (kinds.iter().map(|(_, n)| n).sum(), kinds)
    }
}

/// Calls started at a fixed `rate` for `secs` seconds whatever the answers (open loop); each latency counts
/// from the call's scheduled start, so a stall shows in full instead of slowing the offered load down.
pub(crate) async fn open_loop<C, F, Fut>(label: String, clients: &[C], rate: f64, secs: u64, op: F) -> Phase
where
    C: Clone + Send + 'static,
    F: Fn(C, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<bool>> + Send + 'static,
{
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Failures::default());
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let (bar, tick) = ticker(secs, label.clone(), done.clone());
    let started = Instant::now();
    let n = (rate * secs as f64) as u64;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let at = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let w = i as usize % clients.len();
        let (client, op, done, errors, latencies, label) =
            (clients[w].clone(), op.clone(), done.clone(), errors.clone(), latencies.clone(), label.clone());
        calls.spawn(async move {
            match op(client, w, i).await {
                Ok(_) => {
                    let us = at.elapsed().as_micros() as u32;
                    latencies.lock().expect("not poisoned").push(us);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => errors.record(&label, &e),
            }
        });
        // Reap finished calls as we go, so the set does not hold every call of the phase.
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
    let secs = started.elapsed().as_secs_f64();
    tick.abort();
    bar.finish_and_clear();
    let mut latencies = std::mem::take(&mut *latencies.lock().expect("not poisoned"));
    latencies.sort_unstable();
    let (errors, error_kinds) = errors.counts();
    Phase { ops: done.load(Ordering::Relaxed), errors, error_kinds, secs, latencies }
}

/// `perf record` of the service and PostgreSQL, stopped (SIGINT) by [`Perf::stop`].
struct Perf {
    child: std::process::Child,
    data: PathBuf,
}

impl Perf {
    /// Pinned, everything on the server's CPU (`-C`): PostgreSQL starts a backend for each connection the service
    /// opens, and its group commits open theirs with the first commit, after `perf` started; `-p` follows only
    /// the processes that exist when it starts. Unpinned, those processes (`pids`).
    fn start(dir: &Path, name: &str, pinned: bool, pids: &[u32]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let data = dir.join(format!("{name}.data"));
        let pids = pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let target = if pinned { ["-C", SERVER_CPU] } else { ["-p", pids.as_str()] };
        let child = Command::new("taskset")
            .args(["-c", CLIENT_CPU, "perf", "record", "-F", "499", "-g"])
            .args(target)
            .arg("-o")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf")?;
        Ok(Perf { child, data })
    }

    /// Stop recording and write the share of each thread name and the top symbols next to the data; answers
    /// their first lines.
    fn stop(mut self) -> anyhow::Result<String> {
        Command::new("kill").args(["-INT", &self.child.id().to_string()]).status()?;
        self.child.wait()?;
        let mut summary = String::new();
        for (sort, lines) in [("comm", 8), ("comm,dso,symbol", 30)] {
            let out = Command::new("perf")
                .args(["report", "--stdio", "--no-children", "-g", "none", "--sort", sort, "-i"])
                .arg(&self.data)
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            std::fs::write(self.data.with_extension(format!("{}.txt", sort.replace(',', "-"))), &text)?;
            let top = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).take(lines);
            for line in top {
                summary.push_str(line.trim_end_matches([' ', '-']));
                summary.push('\n');
            }
            summary.push('\n');
        }
        Ok(summary)
    }
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(!a.clients.is_empty(), "--clients must not be empty");
    let load_before = loadavg();
    let (db, url) = fresh_database(&a.target.database_url, "bench_crud").await?;
    let pg = Postgres::find(&db).await?;
    if a.pin {
        // Before the service starts: it inherits this one-CPU affinity, so it sizes its threads for one CPU (the
        // one it is moved to below), as a one-CPU container would.
        pin(std::process::id(), CLIENT_CPU)?;
        for p in pg.processes() {
            pin(p, SERVER_CPU)?;
        }
        eprintln!("== pinned: PostgreSQL (pid {}) to CPU {SERVER_CPU}, clients to CPU {CLIENT_CPU}", pg.postmaster);
    }

    // --- Baselines.
    prepare_baseline_table(&db).await?;
    let dir = std::env::temp_dir().join(format!("ticket-bench-crud-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // (script, clients) → (tps, PG µs per transaction)
    let mut base = std::collections::HashMap::new();
    eprintln!("== pgbench baselines, {} s each", a.seconds);
    for (name, rows, text) in scripts() {
        let path = dir.join(format!("{name}.sql"));
        std::fs::write(&path, text)?;
        for &c in &a.clients {
            let (tps, pg_us) = pgbench(&a, &db, &pg, &path, (name, c), &[]).await?;
            eprintln!("   {name} at {c} clients: {tps:.0} tx/s = {:.0} rows/s, PG {pg_us:.0} µs/tx", tps * rows as f64);
            base.insert((name, c), (tps * rows as f64, pg_us / rows as f64));
        }
    }

    // --- The service.
    // The bench drives the service at capacity with one token: the per-caller rate limits (issue #22) are off
    // unless --env sets them.
    let mut env: Vec<(&str, &str)> = RATE_LIMITS_OFF.to_vec();
    env.extend(a.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    eprintln!("== starting the service{}", if env.is_empty() { String::new() } else { format!(" with {env:?}") });
    let mut svc = start_service(&a.target.service, &url, &env)?;
    let pid = svc.child.id();
    if a.pin {
        pin(pid, SERVER_CPU)?;
    }
    let grpc_port = svc.grpc_port.context("the service logged no gRPC port")?;
    let token: Arc<str> = crate::service_token("bench")?.into();
    let rest_base: Arc<str> =
        format!("http://127.0.0.1:{}", svc.http_port.context("the service logged no HTTP port")?).into();
    let rest = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut clients = Vec::new();
    let mut health = Vec::new();
    // A few HTTP/2 connections, so one connection's ordering does not limit 64 callers.
    for _ in 0..4 {
        let channel =
            Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))?.tcp_nodelay(true).connect().await?;
        health.push(tonic_health::pb::health_client::HealthClient::new(channel.clone()));
        clients.push(Client::new(channel));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (base_rss, _) = memory(pid)?;

    let mut rows: Vec<Row> = Vec::new();
    let created = Arc::new(Mutex::new(Vec::<String>::new()));
    let max_c = *a.clients.iter().max().unwrap_or(&64);
    let mut best_create: f64 = 0.0;
    let mut p50s: Vec<(usize, f64)> = Vec::new();
    let mut cpu_create = (0.0, 0.0);
    let mut top = None;

    // --- P1: creates.
    eprintln!("== P1 CreateTicket, {} s per client count", a.seconds);
    for &c in &a.clients {
        let cpu = Cpu::start(pid, &pg);
        let perf = match &a.perf_dir {
            Some(d) if c == max_c => {
                let mut pids = vec![pid];
                pids.extend(pg.processes());
                Some(Perf::start(d, &format!("crud-p1-c{c}"), a.pin, &pids)?)
            }
            _ => None,
        };
        let (token, created) = (token.clone(), created.clone());
        let phase = closed_loop(format!("P1 create, {c} clients"), &clients, c, a.seconds, move |mut cl, w, i| {
            let (token, created) = (token.clone(), created.clone());
            async move {
                let id = format!("crud-{c}-{w}-{i}");
                cl.create_ticket(authed(pb::CreateTicketRequest { ticket: Some(ticket(id.clone())) }, &token)).await?;
                created.lock().expect("not poisoned").push(id);
                anyhow::Ok(true)
            }
        })
        .await;
        if let Some(p) = perf {
            top = Some(p.stop()?);
        }
        let per_op = cpu.per_op(&pg, phase.ops);
        if c == max_c {
            cpu_create = per_op;
        }
        best_create = best_create.max(phase.rate());
        p50s.push((c, phase.ms(0.5)));
        let (one, _) = base[&("insert-1", c)];
        let (hundred, _) = base[&("insert-100", c)];
        eprintln!(
            "   {c} clients: {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, {} errors; CPU/op service {:.0} µs, PG {:.0} µs",
            phase.rate(),
            phase.ms(0.5),
            phase.ms(0.99),
            phase.errors,
            per_op.0,
            per_op.1
        );
        rows.push((
            format!("P1 CreateTicket over gRPC, {c} clients, saturated (closed loop)"),
            format!("{:.0}/s (p50 {:.1} / p99 {:.1} ms{})", phase.rate(), phase.ms(0.5), phase.ms(0.99), errs(&phase)),
            format!(
                "{:.2} of pgbench 1 row/tx ({one:.0}/s); {:.2} of pgbench 100 rows/tx ({hundred:.0} rows/s)",
                phase.rate() / one,
                phase.rate() / hundred
            ),
            format!("≥ {} of 1 row/tx (issue #21)", if c >= 64 { 2 } else { 1 }),
        ));
    }
    // Batching must not cost a lone caller's latency: p50 at 8 clients against one client's (--clients 1,8,…).
    let p50_of = |c: usize| p50s.iter().find(|(n, _)| *n == c).map(|(_, p)| *p);
    if let (Some(one), Some(eight)) = (p50_of(1), p50_of(8)) {
        // The limit's own figure beside it: in a closed loop the mean latency is clients ÷ rate (Little's law), so
        // pgbench's 8-client latency against its 1-client latency is 8 × rate(1) ÷ rate(8). It says how much of
        // the ratio is the machine's (one core, one fsync at a time) rather than the service's.
        let (pg1, pg8) = (base[&("insert-1", 1)].0, base[&("insert-1", 8)].0);
        rows.push((
            "P1 CreateTicket p50 at 8 clients against 1 client".into(),
            format!("{eight:.1} ms against {one:.1} ms"),
            format!(
                "{:.2}; PostgreSQL alone (pgbench 1-row INSERT, mean latency by Little's law): {:.2}",
                eight / one.max(1e-9),
                8.0 * pg1 / pg8.max(1e-9)
            ),
            "≤ 1.5 (issue #21)".into(),
        ));
    }
    let live = created.lock().expect("not poisoned").len();
    let (rss, _) = memory(pid)?;

    // Latency at half the saturated rate (or the rate given).
    let offered = a.latency_rate.unwrap_or(best_create / 2.0);
    let which = if a.latency_rate.is_some() { "the rate given (--latency-rate)" } else { "half the saturated rate" };
    eprintln!("== P1 latency: CreateTicket offered at {offered:.0}/s ({which}) for {} s", a.seconds);
    let t = token.clone();
    let lat = open_loop(format!("P1 at {offered:.0}/s"), &clients, offered, a.seconds, move |mut cl, _, i| {
        let token = t.clone();
        async move {
            let id = format!("crud-half-{i}");
            cl.create_ticket(authed(pb::CreateTicketRequest { ticket: Some(ticket(id)) }, &token)).await?;
            anyhow::Ok(true)
        }
    })
    .await;
    // The same rate of one-row INSERTs by pgbench, while the service idles: what PostgreSQL alone answers in.
    let alone = pgbench_at_rate(&a, &db, &pg, &dir.join("insert-1.sql"), offered).await?;
    eprintln!(
        "   service: p50 {:.1} / p99 {:.1} ms; pgbench INSERT at {offered:.0}/s: p50 {:.1} / p99 {:.1} ms",
        lat.ms(0.5),
        lat.ms(0.99),
        alone.ms(0.5),
        alone.ms(0.99)
    );
    rows.push((
        format!("P1 latency at {which} ({offered:.0}/s offered, {:.0}/s done)", lat.rate()),
        format!("p50 {:.1} / p99 {:.1} ms{}", lat.ms(0.5), lat.ms(0.99), errs(&lat)),
        format!(
            "{:.2}; PostgreSQL alone (pgbench 1-row INSERT at {offered:.0}/s, 64 clients, after its first second): \
             p50 {:.1} / p99 {:.1} ms",
            lat.ms(0.99) / 10.0,
            alone.ms(0.5),
            alone.ms(0.99)
        ),
        "p99 ≤ 10 ms (issue #21; ratio ≤ 1 meets it)".into(),
    ));

    // --- P2: status updates of P1's tickets; a fifth of them (at most 20 000) stay PENDING (live) for P3.
    let pool = {
        let mut all = created.lock().expect("not poisoned").clone();
        let keep = (all.len() / 5).min(20_000);
        let rest = all.split_off(keep);
        Arc::new(Mutex::new((all, rest)))
    };
    eprintln!("== P2 UpdateTicketStatus RUNNING then COMPLETED, {} s per client count", a.seconds);
    let mut cpu_update = (0.0, 0.0);
    for &c in &a.clients {
        let cpu = Cpu::start(pid, &pg);
        let (token, ids) = (token.clone(), pool.clone());
        let phase = closed_loop(format!("P2 update, {c} clients"), &clients, c, a.seconds, move |mut cl, _, _| {
            let (token, pool) = (token.clone(), ids.clone());
            async move {
                let Some(id) = pool.lock().expect("not poisoned").1.pop() else { return anyhow::Ok(false) };
                for status in ["RUNNING", "COMPLETED"] {
                    let req = pb::UpdateTicketStatusRequest {
                        ticket_id: id.clone(),
                        status: status.into(),
                        ..Default::default()
                    };
                    cl.update_ticket_status(authed(req, &token)).await?;
                }
                anyhow::Ok(true)
            }
        })
        .await;
        let updates = 2 * phase.ops;
        let rate = updates as f64 / phase.secs;
        let per_op = cpu.per_op(&pg, updates);
        if c == max_c {
            cpu_update = per_op;
        }
        let (pgb, _) = base[&("update-1", c)];
        eprintln!(
            "   {c} clients: {rate:.0} updates/s, {} errors; CPU/update service {:.0} µs, PG {:.0} µs",
            phase.errors, per_op.0, per_op.1
        );
        if pool.lock().expect("not poisoned").1.is_empty() {
            eprintln!(
                "   note: P1's tickets ran out before the {} s were over (the rate is over the time used)",
                a.seconds
            );
        }
        rows.push((
            format!("P2 UpdateTicketStatus RUNNING then COMPLETED, {c} clients"),
            format!("{rate:.0} updates/s{}", errs(&phase)),
            format!("{:.2} of pgbench single-row UPDATE ({pgb:.0}/s)", rate / pgb),
            "≥ 1 (issue #21)".into(),
        ));
    }

    // --- P3: reads of live (PENDING) tickets.
    let live_ids: Arc<Vec<String>> = Arc::new(pool.lock().expect("not poisoned").0.clone());
    anyhow::ensure!(!live_ids.is_empty(), "P1 created no tickets");
    // A created ticket has no actor until something asks for it: the first read of each loads it from the store.
    // Read each once first, so P3 measures reads of live tickets (the goal's), and report the first reads apart.
    let unread = Arc::new(Mutex::new(live_ids.as_ref().clone()));
    let first = closed_loop("P3 first reads".into(), &clients, max_c, 120, {
        let token = token.clone();
        move |mut cl, _, _| {
            let (token, unread) = (token.clone(), unread.clone());
            async move {
                let Some(id) = unread.lock().expect("not poisoned").pop() else { return anyhow::Ok(false) };
                cl.get_ticket(authed(pb::GetTicketRequest { ticket_id: id }, &token)).await?;
                anyhow::Ok(true)
            }
        }
    })
    .await;
    eprintln!(
        "== P3 first read of each of {} tickets (loaded into an actor), {max_c} clients: {:.0}/s, p99 {:.2} ms",
        first.ops,
        first.rate(),
        first.ms(0.99)
    );
    rows.push((
        format!("P3 first GetTicket of each created ticket (loads it into an actor), {max_c} clients"),
        format!("{:.0}/s (p50 {:.2} / p99 {:.2} ms{})", first.rate(), first.ms(0.5), first.ms(0.99), errs(&first)),
        "-".into(),
        "-".into(),
    ));
    eprintln!("== P3 GetTicket of {} live tickets, {} s per client count", live_ids.len(), a.seconds);
    let mut cpu_get = (0.0, 0.0);
    let bearer = token.clone();
    for &c in &a.clients {
        let cpu = Cpu::start(pid, &pg);
        let (token, ids) = (token.clone(), live_ids.clone());
        let phase = closed_loop(format!("P3 get, {c} clients"), &clients, c, a.seconds, move |mut cl, _, _| {
            let (token, ids) = (token.clone(), ids.clone());
            async move {
                let id = ids[rand::random::<usize>() % ids.len()].clone();
                cl.get_ticket(authed(pb::GetTicketRequest { ticket_id: id }, &token)).await?;
                anyhow::Ok(true)
            }
        })
        .await;
        let per_op = cpu.per_op(&pg, phase.ops);
        if c == max_c {
            cpu_get = per_op;
        }
        eprintln!(
            "   {c} clients: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms; CPU/op service {:.0} µs, PG {:.0} µs",
            phase.rate(),
            phase.ms(0.5),
            phase.ms(0.99),
            per_op.0,
            per_op.1
        );
        // The framework's own floor on the same server and connections: gRPC health `Check` (no auth, no actor,
        // no store). Issue #21's goal for reads is ≥ 0.8 of it.
        let cpu = Cpu::start(pid, &pg);
        let floor =
            closed_loop(format!("health Check, {c} clients"), &health, c, a.seconds, |mut h, _, _| async move {
                h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?;
                anyhow::Ok(true)
            })
            .await;
        let floor_cpu = cpu.per_op(&pg, floor.ops);
        eprintln!(
            "   health Check, {c} clients: {:.0}/s, p99 {:.2} ms; CPU/op service {:.0} µs, PG {:.0} µs",
            floor.rate(),
            floor.ms(0.99),
            floor_cpu.0,
            floor_cpu.1
        );
        rows.push((
            format!("P3 floor: gRPC health Check, {c} clients"),
            format!("{:.0}/s (p50 {:.2} / p99 {:.2} ms{})", floor.rate(), floor.ms(0.5), floor.ms(0.99), errs(&floor)),
            format!("GetTicket = {:.2} of it", phase.rate() / floor.rate().max(1e-9)),
            "GetTicket ≥ 0.8 of it (issue #21)".into(),
        ));
        rows.push((
            format!("P3 GetTicket of live tickets, {c} clients"),
            format!("{:.0}/s (p50 {:.2} / p99 {:.2} ms{})", phase.rate(), phase.ms(0.5), phase.ms(0.99), errs(&phase)),
            format!("{:.2} of 50 000/s; p99 {:.2} of 5 ms", phase.rate() / 50_000.0, phase.ms(0.99) / 5.0),
            "≥ 50 000/s (≥ 1), p99 ≤ 5 ms (≤ 1)".into(),
        ));
        // The same reads over REST (HTTP/1.1 keep-alive, one connection per caller), beside the same server's
        // `/health` (no auth, no actor, no store).
        let rest_get = closed_loop(format!("P3 REST GET, {c} clients"), std::slice::from_ref(&rest), c, a.seconds, {
            let (token, ids, base) = (bearer.clone(), live_ids.clone(), rest_base.clone());
            move |http: reqwest::Client, _, _| {
                let (token, ids, base) = (token.clone(), ids.clone(), base.clone());
                async move {
                    let id = &ids[rand::random::<usize>() % ids.len()];
                    let res = http.get(format!("{base}/api/v1/tickets/{id}")).bearer_auth(&*token).send().await?;
                    anyhow::ensure!(res.status().is_success(), "GET answered {}", res.status());
                    res.bytes().await?;
                    anyhow::Ok(true)
                }
            }
        })
        .await;
        let rest_floor =
            closed_loop(format!("REST /health, {c} clients"), std::slice::from_ref(&rest), c, a.seconds, {
                let base = rest_base.clone();
                move |http: reqwest::Client, _, _| {
                    let base = base.clone();
                    async move {
                        let res = http.get(format!("{base}/health")).send().await?;
                        anyhow::ensure!(res.status().is_success(), "/health answered {}", res.status());
                        res.bytes().await?;
                        anyhow::Ok(true)
                    }
                }
            })
            .await;
        eprintln!(
            "   REST GET, {c} clients: {:.0}/s, p99 {:.2} ms; /health {:.0}/s, p99 {:.2} ms",
            rest_get.rate(),
            rest_get.ms(0.99),
            rest_floor.rate(),
            rest_floor.ms(0.99)
        );
        rows.push((
            format!("P3 REST GET /api/v1/tickets/{{id}} of live tickets, {c} clients (floor: /health)"),
            format!(
                "{:.0}/s (p50 {:.2} / p99 {:.2} ms{}); /health {:.0}/s (p99 {:.2} ms)",
                rest_get.rate(),
                rest_get.ms(0.5),
                rest_get.ms(0.99),
                errs(&rest_get),
                rest_floor.rate(),
                rest_floor.ms(0.99)
            ),
            format!("GET = {:.2} of /health", rest_get.rate() / rest_floor.rate().max(1e-9)),
            "GET ≥ 0.8 of /health (issue #21)".into(),
        ));
    }
    svc.child.kill()?;
    svc.child.wait()?;

    let per_ticket = rss.saturating_sub(base_rss) as f64 / live.max(1) as f64;
    rows.push((
        format!("service RSS per live ticket ({live} created in P1)"),
        format!("{per_ticket:.0} B (RSS {:.0} → {:.0} MiB)", mib(base_rss), mib(rss)),
        "-".into(),
        "-".into(),
    ));
    let insert = base[&("insert-1", max_c)];
    let update = base[&("update-1", max_c)];
    for (what, (svc_us, pg_us), pgb) in [
        ("create", cpu_create, Some(("1-row INSERT", insert))),
        ("status update", cpu_update, Some(("UPDATE", update))),
        ("GetTicket", cpu_get, None),
    ] {
        // With the service and PostgreSQL pinned to one core, that core's second of CPU bounds the rate: this
        // CPU per operation allows at most 1 s ÷ (service + PostgreSQL), however well the commits are grouped.
        let allowed = 1e6 / (svc_us + pg_us).max(1e-9);
        let ceiling = |rate: f64| match a.pin {
            true => format!(
                "; one core at this CPU: at most {allowed:.0}/s = {:.2} of pgbench's rate",
                allowed / rate.max(1e-9)
            ),
            false => String::new(),
        };
        rows.push((
            format!("CPU per {what} at {max_c} clients: service + PostgreSQL"),
            format!("{svc_us:.0} + {pg_us:.0} µs"),
            pgb.map_or("-".into(), |(n, (rate, b))| {
                format!("PG {:.2} of pgbench {n} ({b:.0} µs){}", pg_us / b, ceiling(rate))
            }),
            "-".into(),
        ));
    }
    rows.push((
        "pinning; machine load (1/5/15-min) before → after".into(),
        format!(
            "{}; {load_before} → {}",
            if a.pin { "service + PostgreSQL on CPU 0, clients + pgbench on CPU 1" } else { "none" },
            loadavg()
        ),
        "-".into(),
        "-".into(),
    ));
    let title = if a.env.is_empty() {
        "CRUD over gRPC (P1–P3)".to_owned()
    } else {
        format!(
            "CRUD over gRPC (P1–P3), {}",
            a.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        )
    };
    report(&title, "crud", "vs a limit measured in the same run", &rows, a.append.as_deref())?;
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(top) = top {
        println!("\nperf, P1 at {max_c} clients (service and PostgreSQL; top symbols by self time):\n{top}");
    }
    Ok(())
}

pub(crate) fn errs(p: &Phase) -> String {
    if p.errors == 0 {
        return String::new();
    }
    let kinds: Vec<String> = p.error_kinds.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
    match kinds.is_empty() {
        true => format!(", {} errors", p.errors),
        false => format!(", {} errors: {}", p.errors, kinds.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_calls_are_reported_by_grpc_code() {
        let failures = Failures::default();
        let refused = || anyhow::Error::from(tonic::Status::resource_exhausted("too many requests in flight"));
        failures.record("test", &refused());
        failures.record("test", &anyhow::anyhow!("connection reset"));
        failures.record("test", &refused().context("a create"));
        let (errors, error_kinds) = failures.counts();
        let phase = Phase { ops: 5, errors, error_kinds, secs: 1.0, latencies: vec![] };
        assert_eq!(errs(&phase), ", 3 errors: ResourceExhausted 2, other 1");
        assert_eq!(errs(&Phase::from_parts(5, 0, 1.0, vec![])), "");
    }
}
