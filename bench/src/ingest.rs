//! `ticket-bench ingest --database-url URL --service PATH --tansu PATH [--nx-27017 PATH] [--messages N]
//!  [--partitions P] [--format json|avro] [--append BENCHMARKS.md]`
//!
//! Kafka ingestion: N tickets are produced to `execution.tickets` on a private tansu broker *before* the
//! service starts (so the producer does not share the CPU with the measured part), then the service starts
//! on a fresh database and consumes them. Figures:
//! - ingest rate: tickets committed to PostgreSQL per second, from the first committed row to the last
//!   (the consumer-group join before that is reported apart), goal ≥ 20 000/s;
//! - the same measured from "Service startup complete";
//! - with `--nx-27017`: audit shipping to the MongoDB-wire server — when the outbox was empty again, and the
//!   shipping rate over the same span (it must keep up with ingestion).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{ConnectOptions, Row};
use ticket_supervisor::kafka::decode::encode_confluent;

use super::{fresh_database, memory, mib, now_ms, progress, report, start_service};

/// Kafka → PostgreSQL ingestion throughput.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: crate::Target,
    /// The tansu broker binary.
    #[arg(long, default_value = "target/tools/tansu")]
    tansu: String,
    /// nx-27017: also ship the audit trail to it while ingesting.
    #[arg(long = "nx-27017", value_name = "PATH")]
    nx: Option<String>,
    /// Tickets to produce.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Message format: avro (Confluent wire format) or json.
    #[arg(long = "format", value_name = "avro|json", default_value = "json", value_parser = avro_format, action = clap::ArgAction::Set)]
    avro: bool,
    /// Append the report to this file (e.g. BENCHMARKS.md).
    #[arg(long)]
    append: Option<String>,
}

/// `--format`: true for avro.
fn avro_format(s: &str) -> Result<bool, String> {
    match s {
        "avro" => Ok(true),
        "json" => Ok(false),
        other => Err(format!("{other}: avro or json")),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, port: u16) -> anyhow::Result<Proc> {
    let proc = Proc(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{cmd:?} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(proc)
}

fn ticket(i: usize, created: i64) -> serde_json::Value {
    serde_json::json!({
        // Ten tickets per plan (a plan's tasks), created over time: not one plan, one instant for all.
        "ticket_id": format!("ingest-{i}"), "plan_id": format!("bench-plan-{}", i / 10),
        "intent_id": format!("bench-intent-{}", i / 10), "decision_id": format!("bench-decision-{}", i / 10), "correlation_id": null, "trace_id": null, "span_id": null,
        "task_id": format!("task-{i}"), "task_type": "EXECUTE", "description": "bench ticket", "dependencies": [],
        "status": "PENDING", "priority": "NORMAL", "risk_band": "low",
        "sla": {"deadline": created + 3_600_000 + (i as i64), "timeout_ms": 600_000, "max_retries": 1},
        "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
        "parameters": {"n": i.to_string()}, "required_capabilities": ["bench"], "security_level": "INTERNAL",
        "created_at": created + (i as i64) / 20, "started_at": null, "completed_at": null, "estimated_duration_ms": null,
        "actual_duration_ms": null, "retry_count": 0, "error_message": null, "compensation_ticket_id": null,
        "metadata": {}, "schema_version": 1
    })
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let (db, url) = fresh_database(&a.target.database_url, "bench_ingest").await?;

    let kafka_port = free_port()?;
    let listener = format!("tcp://127.0.0.1:{kafka_port}");
    let _tansu = spawn(
        Command::new(&a.tansu).args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener]),
        kafka_port,
    )?;
    let bootstrap = format!("127.0.0.1:{kafka_port}");
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &bootstrap);
    let admin_client: AdminClient<DefaultClientContext> = client.create()?;
    for topic in ["execution.tickets", "execution.tickets.dlq"] {
        let new = NewTopic::new(topic, a.partitions, TopicReplication::Fixed(1));
        for r in admin_client.create_topics([&new], &AdminOptions::new()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
        }
    }

    let format = if a.avro { "Confluent Avro" } else { "JSON" };
    eprintln!("== producing {} {format} tickets to execution.tickets ({} partitions)", a.messages, a.partitions);
    let producer: FutureProducer = client
        .clone()
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "60000")
        .create()?;
    let produced = Instant::now();
    let created = now_ms();
    let mut pending = Vec::with_capacity(a.messages);
    let bar = progress::counter(a.messages as u64, "produced");
    for i in 0..a.messages {
        bar.inc(1);
        let t = ticket(i, created);
        let payload = if a.avro { encode_confluent(1, &t)? } else { serde_json::to_vec(&t)? };
        let key = format!("ingest-{i}");
        let record = FutureRecord::to("execution.tickets").key(&key).payload(&payload);
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    bar.finish_and_clear();
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    eprintln!("   produced in {:.1} s", produced.elapsed().as_secs_f64());

    let mut env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
        ("KAFKA_MAX_POLL_INTERVAL_MS", "7000".into()),
        ("SLA_WARNING_FRACTIONS", String::new()),
    ];
    let _nx = match &a.nx {
        Some(nx) => {
            let port = free_port()?;
            let dir = std::env::temp_dir().join(format!("ticket-bench-nx-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let proc = spawn(
                Command::new(nx)
                    .arg("--db")
                    .arg(dir.join("audit.db"))
                    .args(["-p", &port.to_string(), "--log-file"])
                    .arg(dir.join("nx.log"))
                    .arg("--pid-file")
                    .arg(dir.join("nx.pid")),
                port,
            )?;
            env.push(("MONGODB_URI", format!("mongodb://127.0.0.1:{port}")));
            Some(proc)
        }
        None => None,
    };
    eprintln!("== starting the service and consuming");
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut svc = start_service(&a.target.service, &url, &env_refs)?;
    let ready_at = Instant::now();
    let mut conn = db.connect().await?;
    let total = a.messages as i64;
    let mut first: Option<Instant> = None;
    let last;
    let deadline = Instant::now() + Duration::from_secs(600);
    // The probe must not load what it measures: a `count(*)` of the table every 50 ms scanned up to 300 000
    // rows each time, a good part of a core on this 2-core machine. The service's own counter of tickets
    // created by committed transactions is read instead; the table is counted once at the end.
    let metrics_port = svc.metrics_port.context("the service did not log its metrics port")?;
    let http = reqwest::Client::new();
    let persisted = |text: String| -> i64 {
        text.lines()
            .find(|l| l.starts_with("tickets_persisted_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map_or(0, |v| v as i64)
    };
    let bar = progress::counter(total as u64, "committed");
    loop {
        let text = http.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await?.text().await?;
        let n = persisted(text);
        bar.set_position(n.max(0) as u64);
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if n >= total {
            last = Instant::now();
            break;
        }
        if Instant::now() > deadline {
            bail!("only {n} of {total} tickets stored after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    let stored: i64 = sqlx::query("SELECT count(*) FROM execution_tickets").fetch_one(&mut conn).await?.get(0);
    anyhow::ensure!(stored == total, "the service counted {total} tickets persisted, the table has {stored}");
    let (rss, _) = memory(svc.child.id())?;
    if let Some(port) = svc.metrics_port {
        // Where the time went, for the record: batch sizes and commit latency of the group commit.
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?.text().await?;
        let value = |name: &str| -> f64 {
            text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
        };
        let commits = value("persistence_batch_size_count");
        eprintln!(
            "   group commits: {commits:.0}, mean {:.0} units, mean commit {:.1} ms; tickets consumed {:.0}",
            value("persistence_batch_size_sum") / commits.max(1.0),
            1000.0 * value("persistence_commit_duration_seconds_sum") / commits.max(1.0),
            value("tickets_consumed_total"),
        );
    }
    let first = first.unwrap_or(ready_at);
    let span = last.duration_since(first).as_secs_f64().max(0.001);
    let rate = total as f64 / span;
    let since_ready = last.duration_since(ready_at).as_secs_f64();
    let join = first.duration_since(ready_at).as_secs_f64();
    let mut audit_row = None;
    if a.nx.is_some() {
        let bar = progress::spinner("audit outbox draining");
        loop {
            // One step into the outbox index after the audit cursor, not a count of what waits.
            let pending: bool = sqlx::query(
                "SELECT EXISTS (SELECT 1 FROM ticket_events e, outbox_cursors c \
                 WHERE c.consumer = 'audit' AND (e.txid, e.seq) > (c.txid, c.seq))",
            )
            .fetch_one(&mut conn)
            .await?
            .get(0);
            if !pending {
                break;
            }
            if Instant::now() > deadline {
                bail!("audit records still unshipped after 600 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bar.finish_and_clear();
        let drained = first.elapsed().as_secs_f64();
        // Each ingested ticket has two records (`ticket.created`, `ticket.ready`).
        let records: i64 = sqlx::query("SELECT count(*) FROM ticket_events").fetch_one(&mut conn).await?.get(0);
        audit_row = Some((drained, records));
    }
    svc.child.kill()?;
    svc.child.wait()?;

    let mut rows = vec![
        (
            format!(
                "Kafka → PostgreSQL ingest, {total} {format} tickets, {} partitions (first to last committed row)",
                a.partitions
            ),
            format!("{rate:.0} tickets/s ({span:.2} s)"),
            format!("{:.2}", rate / 20_000.0),
            "≥ 20 000/s".to_owned(),
        ),
        (
            "same, from `Service startup complete` (includes the consumer-group join)".to_owned(),
            format!("{:.0} tickets/s ({since_ready:.2} s, join {join:.2} s)", total as f64 / since_ready),
            format!("{:.2}", total as f64 / since_ready / 20_000.0),
            "≥ 20 000/s".to_owned(),
        ),
        ("service RSS after ingest".to_owned(), format!("{:.0} MiB", mib(rss)), "-".into(), "-".into()),
    ];
    if let Some((drained, records)) = audit_row {
        let uri = env.iter().find(|(k, _)| *k == "MONGODB_URI").map(|(_, v)| v.clone()).context("no MONGODB_URI")?;
        let record_rate = records as f64 / drained;
        let ceiling = sink_ceiling(&uri, (records as usize).min(100_000)).await?;
        rows.push((
            format!("audit shipping to nx-27017: outbox empty after (from the first stored row), {records} records of {total} tickets"),
            format!("{drained:.2} s ({record_rate:.0} records/s, {:.0} tickets/s)", total as f64 / drained),
            format!("{:.2}", total as f64 / drained / rate),
            "keeps up with ingest (≥ 1.00 of the ingest rate)".to_owned(),
        ));
        rows.push((
            "the MongoDB-wire server's own ceiling, same run: records of the same shape stored through the service's sink by one client in batches of 1 000 (the shipper's batch), no service running".to_owned(),
            format!("{ceiling:.0} records/s"),
            format!("{:.2}", record_rate / ceiling),
            "shipping rate ÷ ceiling (the share of the server the shipper gets)".to_owned(),
        ));
    }
    report("Kafka ingest", "ingest", "≥ 1 meets it", &rows, a.append.as_deref())?;
    Ok(())
}

/// The limit the audit shipping runs against, measured in the same run: `n` records like the service's
/// (`ticket.created`, one ticket each) stored through the service's own sink, one batch at a time as the
/// shipper does, into a collection of their own. nx-27017 (SQLite behind a Python server) is far slower than a
/// MongoDB server, so the shipping rate is judged against this and not only against the ingest rate.
async fn sink_ceiling(uri: &str, n: usize) -> anyhow::Result<f64> {
    use actors::history::AuditEvent;
    use actors::outbox_sink::OutboxSink as _;
    let ops = prometheus::IntCounterVec::new(prometheus::Opts::new("bench_ops", "ops"), &["operation", "outcome"])?;
    let sink = ticket_supervisor::audit::mongo::MongoAuditSink::connect(uri, "ticket_bench", "ceiling", ops).await?;
    let at = now_ms();
    let events: Vec<AuditEvent> = (0..n)
        .map(|i| AuditEvent {
            event_id: uuid::Uuid::new_v4().to_string(),
            ticket_id: format!("ceiling-{i}"),
            kind: "ticket.created".into(),
            from_status: None,
            to_status: Some("PENDING".into()),
            version: Some(1),
            actor: "kafka".into(),
            at,
            details: serde_json::Value::Null,
            traceparent: Some(format!("00-{:032x}-{:016x}-01", i + 1, i + 1)),
        })
        .collect();
    let started = Instant::now();
    for batch in events.chunks(1000) {
        sink.ship(batch).await.map_err(|e| anyhow::anyhow!("ceiling insert: {e}"))?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
