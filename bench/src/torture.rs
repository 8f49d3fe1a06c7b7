//! `ticket-bench torture --database-url URL --service PATH --tansu PATH [--kills N] [--seed S]`
//!
//! Crash torture: the release service runs under mixed load (REST creates and status updates, SLA timers
//! firing all the time, a webhook subscription to an in-process receiver, Kafka ingest from a private tansu
//! broker) and is killed with SIGKILL N times at random moments (seeded: the seed is printed, and the same
//! seed gives the same kill schedule). After each restart, and once more at the end after the load stopped and
//! everything drained, the invariants of [`checks`] are verified. Prints a summary; exits non-zero when any
//! invariant failed. Loopback only, bounded in time (about two minutes for 20 kills).

pub(crate) mod checks;
pub(crate) mod load;
mod receiver;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::{json, Value};
use sqlx::{ConnectOptions, PgConnection};

use super::{fresh_database, now_ms, start_service_async as start};
use checks::Verdicts;

/// The event kinds the torture subscription asks for: creations, status changes and every SLA event.
const KINDS: &[&str] = &[
    "ticket.created",
    "ticket.started",
    "ticket.completed",
    "ticket.failed",
    "ticket.retry",
    "ticket.sla_warning",
    "ticket.sla_breached",
    "ticket.sla_timeout",
    "ticket.start_overdue",
];

/// How late an SLA instant may fire once the service has been up that long (a loaded 2-core machine).
const GRACE_MS: i64 = 5_000;

/// Kill -9 the service under mixed load; the invariants are checked after each restart.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: crate::Target,
    /// The tansu broker binary.
    #[arg(long, default_value = "target/tools/tansu")]
    tansu: String,
    /// How many times to kill the service.
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// The seed of the kill moments and the load (default: now; printed, so a run can be repeated).
    #[arg(long, default_value_t = now_ms() as u64)]
    seed: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Tickets per second through Kafka.
    #[arg(long, default_value_t = 100)]
    kafka_per_second: u64,
}

/// The tansu broker, killed on drop.
pub(crate) struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tansu broker on a free loopback port with the tickets topic (and its DLQ): (broker, bootstrap).
pub(crate) async fn broker(tansu: &str) -> anyhow::Result<(Broker, String)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {tansu}"))?;
    let broker = Broker(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "tansu did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bootstrap = format!("127.0.0.1:{port}");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
    for topic in ["execution.tickets", "execution.tickets.dlq"] {
        for r in
            admin.create_topics([&NewTopic::new(topic, 2, TopicReplication::Fixed(1))], &AdminOptions::new()).await?
        {
            r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
        }
    }
    Ok((broker, bootstrap))
}

/// The checks made after every restart.
async fn after_restart(
    db: &mut PgConnection,
    v: &mut Verdicts,
    when: &str,
    acked: &load::Ledger,
    subscription: &str,
) -> anyhow::Result<()> {
    let (creates, updates) = checks::acknowledged(db, acked).await?;
    v.record("every acknowledged create present", when, creates);
    v.record("every acknowledged update present with >= its version", when, updates);
    v.record("no ticket created twice", when, checks::no_duplicates(db).await?);
    v.record("live tickets have their next SLA instant (re-armed on start)", when, checks::timers_armed(db).await?);
    v.record("no SLA event recorded twice", when, checks::sla_once(db).await?);
    v.record(
        "every subscribed event has its webhook delivery",
        when,
        checks::deliveries_enqueued(db, subscription, KINDS).await?,
    );
    Ok(())
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    println!(
        "torture: seed {} ({} kills, {} workers, {} Kafka tickets/s)",
        a.seed, a.kills, a.workers, a.kafka_per_second
    );
    let (db, url) = fresh_database(&a.target.database_url, "torture").await?;
    let mut conn = db.connect().await?;
    let (_broker, bootstrap) = broker(&a.tansu).await?;
    let (hook_port, received) = receiver::start().await?;
    let env: Vec<(String, String)> = [
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str()),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_MAX_POLL_INTERVAL_MS", "7000"),
        ("KAFKA_EVENTS_ENABLED", "false"),
        ("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8"),
        ("WEBHOOK_TIMEOUT_SECONDS", "2"),
        ("WEBHOOK_RETRY_SCHEDULE", "1,1,2,2,5,5,10,10,30"),
        ("SLA_START_LIMIT_LOW_SECONDS", "3"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let (mut svc, base) = start(&a.target.service, &url, &env).await?;

    let token = crate::service_token("torture")?;
    let http = reqwest::Client::new();
    let body = json!({"url": format!("http://127.0.0.1:{hook_port}/hook"), "events": KINDS});
    let res = http.post(format!("{base}/api/v1/webhooks")).bearer_auth(&token).json(&body).send().await?;
    anyhow::ensure!(res.status().is_success(), "subscribing: HTTP {}", res.status());
    let sub: Value = res.json().await?;
    let subscription = sub["id"].as_str().context("subscription id")?.to_owned();
    received.lock().expect("not poisoned").secret = sub["secret"].as_str().context("subscription secret")?.to_owned();

    let target: load::Target = Arc::new(RwLock::new(Some(base)));
    let producer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("message.timeout.ms", "10000")
        .set("linger.ms", "5")
        .create()?;
    let load = load::Load::start(Arc::clone(&target), token, producer, a.workers, a.kafka_per_second, a.seed)?;
    let mut rng = StdRng::seed_from_u64(a.seed);
    let mut v = Verdicts::default();
    let mut ready = Vec::new();
    let mut up_since = Instant::now();
    // The instant of the last restart, and the most tickets written since a restart that were found more than
    // the grace past their SLA instant (SLA lag under load, reported apart from lost timers).
    let mut restarted_at = chrono::Utc::now();
    let mut max_lagging = 0i64;
    for k in 1..=a.kills {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_500..5_000))).await;
        let when = format!("restart {k}");
        if up_since.elapsed() > Duration::from_millis(GRACE_MS as u64 + 1_000) {
            let (fired, lagging) = checks::due_ones_fired(&mut conn, GRACE_MS, restarted_at).await?;
            v.record("due SLA instants fire after a restart", &when, fired);
            max_lagging = max_lagging.max(lagging);
        }
        *target.write().expect("not poisoned") = None;
        svc.kill()?;
        // Everything acknowledged so far was acknowledged before the kill.
        let acked = load.snapshot();
        let down = Duration::from_millis(rng.gen_range(0..1_500));
        tokio::time::sleep(down).await;
        restarted_at = chrono::Utc::now();
        let (next, base) = start(&a.target.service, &url, &env).await?;
        svc = next;
        up_since = Instant::now();
        ready.push(svc.ready_after.as_secs_f64());
        *target.write().expect("not poisoned") = Some(base);
        after_restart(&mut conn, &mut v, &when, &acked, &subscription).await?;
        println!(
            "kill {k}/{}: down {} ms, ready in {:.2} s; acknowledged so far: {} creates, {} updates, {} Kafka tickets",
            a.kills,
            down.as_millis(),
            svc.ready_after.as_secs_f64(),
            acked.creates,
            acked.updates,
            acked.kafka.len()
        );
    }

    // The end: stop the load, let Kafka ingest, the timers and the webhooks drain, and check everything.
    let acked = load.stop().await;
    println!("load stopped after {:.0} s; draining", started.elapsed().as_secs_f64());
    let deadline = Instant::now() + Duration::from_secs(90);
    while checks::kafka_stored(&mut conn, &acked.kafka).await?.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every short deadline of the load is at most 6 s ahead of its creation, plus the grace to fire.
    tokio::time::sleep(Duration::from_millis(6_000 + GRACE_MS as u64)).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while checks::deliveries(&mut conn, &subscription).await?.1 > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let when = "end";
    after_restart(&mut conn, &mut v, when, &acked, &subscription).await?;
    let (fired, lagging) = checks::due_ones_fired(&mut conn, GRACE_MS, restarted_at).await?;
    v.record("due SLA instants fire after a restart", when, fired);
    max_lagging = max_lagging.max(lagging);
    v.record("every Kafka ticket stored exactly once", when, checks::kafka_stored(&mut conn, &acked.kafka).await?);
    let (ids, pending) = checks::deliveries(&mut conn, &subscription).await?;
    let sla_events = checks::sla_events(&mut conn).await?;
    let (all, signed, total, duplicates) = {
        let got = received.lock().expect("not poisoned");
        let (all, signed) = checks::all_received(&ids, pending, &got);
        (all, signed, got.total(), got.duplicates())
    };
    v.record("every webhook delivery received at least once", when, all);
    v.record("every webhook signature verifies", when, signed);
    svc.kill()?;

    let mean = ready.iter().sum::<f64>() / ready.len().max(1) as f64;
    let max = ready.iter().copied().fold(0.0, f64::max);
    println!("\n== torture summary (seed {}, {} kills, {:.0} s)", a.seed, a.kills, started.elapsed().as_secs_f64());
    println!(
        "load: {} acknowledged creates, {} acknowledged updates, {} Kafka tickets, {} failed calls (service down)",
        acked.creates,
        acked.updates,
        acked.kafka.len(),
        acked.failed_calls
    );
    println!(
        "SLA events: {sla_events}; webhook deliveries: {} in the outbox, {} requests received, {} duplicate receipts",
        ids.len(),
        total,
        duplicates
    );
    println!("restart ready (spawn to 'Service startup complete'): mean {mean:.2} s, max {max:.2} s");
    println!("SLA lag: at most {max_lagging} tickets written since the last restart were > {GRACE_MS} ms past due");
    for line in v.lines() {
        println!("{line}");
    }
    if !v.all_pass() {
        bail!("invariants failed (seed {})", a.seed);
    }
    println!("all invariants hold");
    Ok(())
}
