//! `ticket-bench retention --database-url URL --service PATH [--tickets 1000000] [--rate 200] [--append FILE]`
//!
//! Retention under load (issue #20): the database holds `--tickets` finished tickets two months old, the service
//! starts with the default retention (finished tickets kept 30 days, batches of 1 000, 100 ms apart, first round
//! 60 s after start), and an open-loop gRPC load (CreateTicket and GetTicket alternating, `--rate` calls/s) runs
//! throughout. The load's latency before the first round is the baseline; the same load while the pruner deletes
//! the old tickets is set against it (goal: p99 ≤ 2× the baseline's). Also reported: how fast the pruner
//! deleted, and that it deleted every old ticket and none of the live ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{ConnectOptions, Executor, Row as _};
use ticket_supervisor::grpc::pb;
use tonic::transport::Channel;

use super::crud::{authed, open_loop, ticket, Client, Phase, COLUMNS, RATE_LIMITS_OFF};
use super::{fresh_database, report, start_service, Row};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: crate::Target,
    /// Finished tickets to prune.
    #[arg(long, default_value_t = 1_000_000)]
    tickets: u64,
    /// Calls per second of the load (half creates, half reads).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Append the results to this file.
    #[arg(long)]
    append: Option<String>,
}

/// Seconds of load before the baseline is measured (connections, caches).
const WARM_UP: u64 = 8;
/// Seconds of the baseline: it must end before the pruner's first round (60 s after the service started).
const BASELINE: u64 = 40;
/// Seconds per load phase while pruning (phases follow one another until every old ticket is gone).
const DURING: u64 = 5;

/// A finished ticket row, last changed 60 days ago, with `id` as its ticket_id (the columns of [`COLUMNS`]).
fn old_row(id: &str) -> String {
    format!(
        "{id}, 'old-plan', 'old-intent', 'old-decision', 'task-1', 'EXECUTE', 'finished long ago', '[]', \
         'COMPLETED', 'NORMAL', 'low', now() - interval '59 days', 3600000, 1, 'AT_LEAST_ONCE', 'STRONG', \
         'PERSISTENT', '{{\"n\": \"1\"}}', '[\"bench\"]', 'INTERNAL', now() - interval '60 days', 0, '{{}}', 1, 3, \
         now() - interval '60 days', '{{}}', NULL"
    )
}

/// `tickets_pruned_total{kind="tickets"}` from the service's metrics.
async fn pruned(http: &reqwest::Client, metrics: &str) -> anyhow::Result<u64> {
    let text = http.get(metrics).send().await?.text().await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("tickets_pruned_total{kind=\"tickets\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let (db, url) = fresh_database(&a.target.database_url, "bench_retention").await?;
    let mut conn = db.connect().await?;
    eprintln!("== seeding {} finished tickets, 60 days old", a.tickets);
    let seeding = Instant::now();
    let chunk = 100_000u64;
    let mut from = 1;
    while from <= a.tickets {
        let to = (from + chunk - 1).min(a.tickets);
        let fill = format!(
            "INSERT INTO execution_tickets ({COLUMNS}, completed_at, started_at) SELECT {}, now() - interval '60 days', \
             now() - interval '60 days' FROM generate_series({from}, {to}) i",
            old_row("'old-' || i")
        );
        conn.execute(fill.as_str()).await?;
        from = to + 1;
    }
    conn.execute("VACUUM ANALYZE execution_tickets").await?;
    eprintln!("   seeded in {:.0} s", seeding.elapsed().as_secs_f64());

    // The retention defaults, but for the kinds not seeded here (outbox rows, deliveries): off, so the rounds
    // time the tickets alone.
    let mut env: Vec<(&str, &str)> = RATE_LIMITS_OFF.to_vec();
    env.extend([("RETENTION_TICKETS_DAYS", "30"), ("RETENTION_EVENTS_DAYS", "0"), ("RETENTION_DELIVERIES_DAYS", "0")]);
    let started = Instant::now();
    let mut svc = start_service(&a.target.service, &url, &env)?;
    let grpc_port = svc.grpc_port.context("the service logged no gRPC port")?;
    let metrics = format!("http://127.0.0.1:{}/metrics", svc.metrics_port.context("no metrics port")?);
    let token: Arc<str> = crate::service_token("bench")?.into();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let channel =
            Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))?.tcp_nodelay(true).connect().await?;
        clients.push(Client::new(channel));
    }
    let seq = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    // The last ticket a create was answered for: what the reads read (never one not created yet).
    let last: Arc<Mutex<Option<String>>> = Arc::default();
    let load = |label: String, secs: u64| {
        let (token, seq, created, last) = (token.clone(), seq.clone(), created.clone(), last.clone());
        open_loop(label, &clients, a.rate, secs, move |mut cl: Client, _, i| {
            let (token, seq, created, last) = (token.clone(), seq.clone(), created.clone(), last.clone());
            async move {
                // Even calls create `live-n`, odd calls read the ticket created last.
                let read = if i % 2 == 1 { last.lock().expect("not poisoned").clone() } else { None };
                match read {
                    Some(id) => {
                        cl.get_ticket(authed(pb::GetTicketRequest { ticket_id: id }, &token)).await?;
                    }
                    None => {
                        let id = format!("live-{}", seq.fetch_add(1, Ordering::Relaxed));
                        let req = pb::CreateTicketRequest { ticket: Some(ticket(id.clone())) };
                        cl.create_ticket(authed(req, &token)).await?;
                        created.fetch_add(1, Ordering::Relaxed);
                        *last.lock().expect("not poisoned") = Some(id);
                    }
                }
                anyhow::Ok(true)
            }
        })
    };

    eprintln!("== load at {} calls/s: {WARM_UP} s warm-up, then the {BASELINE} s baseline", a.rate);
    load("warm-up".into(), WARM_UP).await;
    let baseline = load("baseline".into(), BASELINE).await;
    let http = reqwest::Client::new();
    anyhow::ensure!(
        pruned(&http, &metrics).await? == 0,
        "the pruner started during the baseline ({:.0} s after start)",
        started.elapsed().as_secs_f64()
    );

    eprintln!("== load until the pruner has deleted {} tickets", a.tickets);
    let mut during: Vec<Phase> = Vec::new();
    let mut first_pruned = None;
    let mut done_at = None;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while done_at.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "pruning did not finish within 30 minutes");
        let phase = load(format!("during pruning ({} so far)", pruned(&http, &metrics).await?), DURING).await;
        let n = pruned(&http, &metrics).await?;
        if n > 0 {
            first_pruned.get_or_insert(Instant::now());
            during.push(phase);
        }
        if n >= a.tickets {
            done_at = Some(Instant::now());
        }
    }
    // The pruning window as seen at phase boundaries: from the end of the last phase before it began.
    let prune_secs = done_at.zip(first_pruned).map_or(f64::NAN, |(d, f)| {
        (d - f).as_secs_f64() + DURING as f64 // the first phase that saw pruning began at most DURING earlier
    });

    let left: i64 = sqlx::query("SELECT count(*) FROM execution_tickets WHERE ticket_id LIKE 'old-%'")
        .fetch_one(&mut conn)
        .await?
        .get(0);
    let live: i64 = sqlx::query("SELECT count(*) FROM execution_tickets WHERE ticket_id LIKE 'live-%'")
        .fetch_one(&mut conn)
        .await?
        .get(0);
    let created = created.load(Ordering::Relaxed);
    svc.kill()?;

    let mut latencies: Vec<u32> = during.iter().flat_map(|p| p.latencies().iter().copied()).collect();
    latencies.sort_unstable();
    let during_all = Phase::from_parts(
        during.iter().map(|p| p.ops).sum(),
        during.iter().map(|p| p.errors).sum(),
        during.iter().map(|p| p.secs).sum(),
        latencies,
    );
    let ratio = during_all.ms(0.99) / baseline.ms(0.99);
    let rows: Vec<Row> = vec![
        (
            format!("finished tickets pruned ({} seeded, 60 days old)", a.tickets),
            format!(
                "{} pruned in ≤ {prune_secs:.0} s = {:.0}/s; {left} left",
                a.tickets - left as u64,
                (a.tickets as f64 - left as f64) / prune_secs
            ),
            if left == 0 { "all".into() } else { "INCOMPLETE".into() },
            "every one".into(),
        ),
        (
            "live tickets kept (created by the load)".into(),
            format!("{live} of {created} created"),
            if live as u64 == created { "all".into() } else { "LOST".into() },
            "every one".into(),
        ),
        (
            format!("load p50 / p99, baseline ({:.0} calls/s, {BASELINE} s)", baseline.rate()),
            format!("{:.2} / {:.2} ms, {} errors", baseline.ms(0.5), baseline.ms(0.99), baseline.errors),
            "—".into(),
            "—".into(),
        ),
        (
            format!("load p50 / p99 while pruning ({:.0} calls/s, {:.0} s)", during_all.rate(), during_all.secs),
            format!("{:.2} / {:.2} ms, {} errors", during_all.ms(0.5), during_all.ms(0.99), during_all.errors),
            format!("{ratio:.2}× the baseline p99"),
            "p99 ≤ 2× baseline".into(),
        ),
    ];
    report("Retention: pruning under load", "retention", "measured / goal", &rows, a.append.as_deref())
}
