//! `ticket-bench`: measures the service on real local servers and prints each figure next to its goal.
//! Run it through `scripts/bench.sh`, which starts a private PostgreSQL and builds the release binaries.
//!
//! - `ticket-bench crud …`: CreateTicket, status updates and GetTicket over gRPC vs pgbench (see [`crud`]).
//! - `ticket-bench sla …`: SLA scale (see [`sla`]).
//! - `ticket-bench ingest …`: Kafka ingestion throughput (see [`ingest`]).
//! - `ticket-bench webhooks …`: webhook delivery throughput and isolation (see [`webhooks`]).
//! - `ticket-bench faults …`: outages of PostgreSQL, Mongo and Kafka, and overload (see [`faults`]).
//! - `ticket-bench torture …`: kill -9 under mixed load, invariants checked after each restart (see [`torture`]).
//! - `ticket-bench cluster …`: several replicas on one database: throughput 1 vs N, forwarded-request latency,
//!   kill -9 failover drill with invariants (see [`cluster`]).
//! - `ticket-bench retention …`: pruning 1 M finished tickets under load (see [`retention`]).

mod cluster;
mod crud;
mod faults;
mod ingest;
mod progress;
mod retention;
mod sla;
mod tls;
mod torture;
mod webhooks;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor};
use ticket_supervisor::store::postgres::PgTicketStore;

/// Measures the service on real local servers; each figure is printed next to its goal and the same-run limit.
#[derive(clap::Parser, Debug)]
#[command(name = "ticket-bench", version)]
enum Cli {
    Crud(crud::Args),
    /// GetTicket and CreateTicket over gRPC with TLS vs plaintext, in one run.
    Tls(tls::Args),
    Sla(sla::Args),
    Ingest(ingest::Args),
    Webhooks(webhooks::Args),
    Faults(faults::Args),
    Torture(torture::Args),
    Cluster(cluster::Args),
    /// Pruning finished tickets while the service serves load.
    Retention(retention::Args),
}

/// The PostgreSQL server and the service binary every bench runs against (flattened into each bench's flags).
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// An administrative PostgreSQL URL; the bench creates a database of its own.
    #[arg(long)]
    pub database_url: String,
    /// The service binary.
    #[arg(long, default_value = "target/release/ticket-supervisor")]
    pub service: String,
}

/// `KEY=VALUE`, for flags that pass variables to the service.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{s}: expected KEY=VALUE"))
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A running service and the moment it reported `Service startup complete`.
pub struct Service {
    pub child: Child,
    pub ready_after: Duration,
    /// The metrics and HTTP ports the service logged.
    pub metrics_port: Option<u16>,
    pub http_port: Option<u16>,
    pub grpc_port: Option<u16>,
}

impl Service {
    /// SIGKILL, and reap the process.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

/// [`start_service`] off the async workers (it reads the child's log synchronously): the service and its REST
/// base URL (`http://127.0.0.1:PORT`).
pub async fn start_service_async(
    service: &str,
    url: &str,
    env: &[(String, String)],
) -> anyhow::Result<(Service, String)> {
    let (service, url, env) = (service.to_owned(), url.to_owned(), env.to_vec());
    let svc = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        start_service(&service, &url, &env)
    })
    .await??;
    let base = format!("http://127.0.0.1:{}", svc.http_port.context("the service logged no HTTP port")?);
    Ok((svc, base))
}

/// The secret every bench's service is started with (`SERVICE_JWT_SECRET`, see [`start_service`]).
const SERVICE_SECRET: &str = "bench";

/// A service token (valid an hour) that a service started by [`start_service`] accepts, for `subject`.
pub fn service_token(subject: &str) -> anyhow::Result<String> {
    let settings = ticket_supervisor::config::Settings::from_lookup(|k| match k {
        "SERVICE_JWT_SECRET" => Some(SERVICE_SECRET.into()),
        _ => None,
    })?;
    Ok(ticket_supervisor::auth::token::service_token("bench", &settings.auth, subject, 3600)?)
}

pub fn start_service(path: &str, database_url: &str, env: &[(&str, &str)]) -> anyhow::Result<Service> {
    let started = Instant::now();
    let mut child = Command::new(path)
        .env("DATABASE_URL", database_url)
        .env("BIND_HOST", "127.0.0.1")
        .env("HTTP_PORT", "0")
        .env("GRPC_PORT", "0")
        .env("PROMETHEUS_PORT", "0")
        .env("JWT_SECRET_KEY", "bench-ticket-tokens")
        .env("SERVICE_JWT_SECRET", SERVICE_SECRET)
        .env("POSTGRES_POOL_SIZE", "16")
        .env("LOG_LEVEL", std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "info".into()))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {path}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut metrics_port = None;
    let mut http_port = None;
    let mut grpc_port = None;
    loop {
        let Some(line) = lines.next() else { bail!("the service exited before it was ready") };
        let line = line?;
        if let Some(rest) = line.split("\"metrics_port\":").nth(1) {
            metrics_port = rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|p| p.parse().ok());
        }
        if let Some(rest) = line.split("\"http_port\":").nth(1) {
            http_port = rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|p| p.parse().ok());
        }
        if let Some(rest) = line.split("\"grpc_port\":").nth(1) {
            grpc_port = rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|p| p.parse().ok());
        }
        if line.contains("Service startup complete") {
            break;
        }
    }
    let ready_after = started.elapsed();
    // The rest of the service's log goes to a file, for looking into a bad run.
    let log_path = std::env::temp_dir().join(format!("ticket-bench-service-{}.log", child.id()));
    eprintln!("   service log: {}", log_path.display());
    let mut log = std::fs::File::create(&log_path)?;
    std::thread::spawn(move || {
        use std::io::Write as _;
        for line in lines.map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
        }
    });
    Ok(Service { child, ready_after, metrics_port, http_port, grpc_port })
}

/// (VmRSS, VmHWM) of a process, in bytes.
pub fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One result row: figure, measured, ratio to the goal, goal.
pub type Row = (String, String, String, String);

/// Print the rows as a Markdown table (`ratio_note` explains the ratio column) and, with `append`, add them
/// to that file under `### {title}, {date}` with the command that produced them.
pub fn report(title: &str, kind: &str, ratio_note: &str, rows: &[Row], append: Option<&str>) -> anyhow::Result<()> {
    println!("| figure | measured | ratio to goal ({ratio_note}) | goal |\n|---|---|---|---|");
    let mut table = String::new();
    for (figure, measured, ratio, goal) in rows {
        let line = format!("| {figure} | {measured} | {ratio} | {goal} |");
        println!("{line}");
        table.push_str(&line);
        table.push('\n');
    }
    if let Some(path) = append {
        let date = chrono::Utc::now().format("%Y-%m-%d");
        let cmd = std::env::args().collect::<Vec<_>>().join(" ");
        let text = format!(
            "\n### {title}, {date}\n\n`scripts/bench.sh {kind}` → `{cmd}`\n\n| figure | measured | ratio to goal | goal |\n|---|---|---|---|\n{table}"
        );
        use std::io::Write as _;
        std::fs::OpenOptions::new().create(true).append(true).open(path)?.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// A new, migrated database `{prefix}_{now}` on the server of `admin_url`: its options and its URL.
pub async fn fresh_database(admin_url: &str, prefix: &str) -> anyhow::Result<(PgConnectOptions, String)> {
    let admin: PgConnectOptions = admin_url.parse()?;
    let name = format!("{prefix}_{}", now_ms());
    admin.connect().await?.execute(format!("CREATE DATABASE {name}").as_str()).await?;
    let db = admin.database(&name);
    let url = format!("postgres://{}@{}:{}/{name}", db.get_username(), db.get_host(), db.get_port());
    PgTicketStore::connect(db.clone(), 2, Duration::from_secs(10)).await?; // applies the migrations
    Ok((db, url))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::Crud(a) => crud::run(a).await,
        Cli::Tls(a) => tls::run(a).await,
        Cli::Sla(a) => sla::run(a).await,
        Cli::Ingest(a) => ingest::run(a).await,
        Cli::Webhooks(a) => webhooks::run_bench(a).await,
        Cli::Faults(a) => faults::run(a).await,
        Cli::Torture(a) => torture::run(a).await,
        Cli::Cluster(a) => cluster::run(a).await,
        Cli::Retention(a) => retention::run(a).await,
    }
}
