//! `ticket-bench webhooks --database-url URL --service PATH [--deliveries N] [--append BENCHMARKS.md]`
//!
//! Webhook delivery throughput and isolation. A loopback receiver runs in this process (a minimal HTTP/1.1
//! server: `/fast` answers 200 at once, `/hang` never answers within the service's timeout). N tickets are
//! created while the subscriptions are paused (their deliveries wait in the outbox), then the subscriptions
//! are resumed and the clock runs until the healthy endpoint has received all N (distinct `webhook-id`s):
//! - run 1: one healthy subscription alone — signed deliveries per second (goal ≥ 5 000/s);
//! - run 2: the same beside a hanging subscription — the healthy endpoint's rate as a ratio of the mean of
//!   runs 1 and 3 (goal ≥ 0.90);
//! - run 3: the healthy subscription alone again (the hanging one deleted).
//!
//! Each run prints the store calls of the delivery path (claims, attempt records) from the service's metrics.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{fresh_database, now_ms, report, start_service};

/// Delivery throughput, and isolation from a hanging endpoint.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: crate::Target,
    /// Deliveries to send.
    #[arg(long, default_value_t = 20_000)]
    deliveries: usize,
    /// Append the report to this file (e.g. BENCHMARKS.md).
    #[arg(long)]
    append: Option<String>,
}

/// webhook-ids received at /fast.
type Seen = Arc<Mutex<HashSet<String>>>;

/// Serve one keep-alive connection: read requests, answer /fast at once, let /hang wait.
async fn connection(stream: tokio::net::TcpStream, seen: Seen) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let (mut length, mut id) = (0usize, None);
        loop {
            let mut header = String::new();
            read.read_line(&mut header).await?;
            let h = header.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "webhook-id" => id = Some(v.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        read.read_exact(&mut body).await?;
        if path == "/hang" {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return Ok(());
        }
        if let Some(id) = id {
            seen.lock().expect("not poisoned").insert(id);
        }
        write.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await?;
    }
}

async fn receiver() -> anyhow::Result<(u16, Seen)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream, Arc::clone(&s)));
        }
    });
    Ok((port, seen))
}

struct Api {
    base: String,
    metrics_port: u16,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await?;
        let status = res.status();
        let text = res.text().await?;
        anyhow::ensure!(status.is_success(), "{path}: HTTP {status}: {text}");
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create_tickets(&self, prefix: &str, n: usize) -> anyhow::Result<()> {
        let created = now_ms();
        let mut tasks = futures::stream::iter((0..n).map(|i| {
            let t = json!({
                "ticket_id": format!("{prefix}-{i}"), "plan_id": format!("wh-plan-{}", i / 10), "intent_id": "i",
                "decision_id": "d", "task_id": "t", "task_type": "EXECUTE", "description": "bench",
                "priority": "NORMAL", "risk_band": "low",
                "sla": {"deadline": created + 3_600_000, "timeout_ms": 600_000, "max_retries": 1},
                "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
                "security_level": "INTERNAL"
            });
            async move { self.call(reqwest::Method::POST, "/api/v1/tickets", Some(t)).await }
        }))
        .buffer_unordered(64);
        use futures::StreamExt as _;
        while let Some(r) = tasks.next().await {
            r?;
        }
        Ok(())
    }
}

/// Create `n` tickets with `subs` paused, resume them, and time the healthy endpoint receiving all `n`.
/// The service's store-call counters and seconds by operation, from `/metrics` (a breakdown printed per run:
/// where the delivery path spent its store time).
async fn store_calls(http: &reqwest::Client, metrics_port: u16) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let text = http.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await?.text().await?;
    let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let mut out: Vec<(String, f64, f64)> = Vec::new();
    for line in text.lines() {
        let (count, op) = if let Some(rest) = line.strip_prefix("postgres_query_duration_seconds_count{operation=\"") {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix("postgres_query_duration_seconds_sum{operation=\"") {
            (false, rest)
        } else {
            continue;
        };
        let op = op.split('"').next().unwrap_or_default().to_owned();
        if !op.starts_with("webhook") && op != "commit" {
            continue;
        }
        let slot = match out.iter().position(|(o, _, _)| *o == op) {
            Some(i) => i,
            None => {
                out.push((op, 0.0, 0.0));
                out.len() - 1
            }
        };
        if count {
            out[slot].1 = value(line);
        } else {
            out[slot].2 = value(line);
        }
    }
    Ok(out)
}

fn print_store_calls(before: &[(String, f64, f64)], after: &[(String, f64, f64)]) {
    for (op, count, secs) in after {
        let (c0, s0) = before.iter().find(|(o, _, _)| o == op).map_or((0.0, 0.0), |(_, c, s)| (*c, *s));
        if count - c0 > 0.0 {
            eprintln!("   store {op}: {} calls, {:.2} s", count - c0, secs - s0);
        }
    }
}

async fn run(api: &Api, subs: &[String], seen: &Seen, prefix: &str, n: usize) -> anyhow::Result<f64> {
    for s in subs {
        api.call(reqwest::Method::PATCH, &format!("/api/v1/webhooks/{s}"), Some(json!({"paused": true}))).await?;
    }
    api.create_tickets(prefix, n).await?;
    seen.lock().expect("not poisoned").clear();
    let before = store_calls(&api.http, api.metrics_port).await?;
    let started = Instant::now();
    for s in subs {
        api.call(reqwest::Method::PATCH, &format!("/api/v1/webhooks/{s}"), Some(json!({"paused": false}))).await?;
    }
    let deadline = started + Duration::from_secs(300);
    while seen.lock().expect("not poisoned").len() < n {
        anyhow::ensure!(Instant::now() < deadline, "only {} of {n} delivered", seen.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    print_store_calls(&before, &store_calls(&api.http, api.metrics_port).await?);
    Ok(rate)
}

pub async fn run_bench(a: Args) -> anyhow::Result<()> {
    let (_, url) = fresh_database(&a.target.database_url, "bench_webhooks").await?;
    let (port, seen) = receiver().await?;
    // The tickets behind the deliveries are created as fast as the bench can: the per-caller rate limits
    // (issue #22) are off, as in the crud bench.
    let mut env = vec![("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8"), ("WEBHOOK_TIMEOUT_SECONDS", "2")];
    env.extend(super::crud::RATE_LIMITS_OFF);
    let mut svc = start_service(&a.target.service, &url, &env)?;
    let token = crate::service_token("bench")?;
    let http_port = svc.http_port.context("the service logged no HTTP port")?;
    let metrics_port = svc.metrics_port.context("the service logged no metrics port")?;
    let api = Api { base: format!("http://127.0.0.1:{http_port}"), metrics_port, token, http: reqwest::Client::new() };
    let subscribe = |path: &'static str| {
        let body = json!({"url": format!("http://127.0.0.1:{port}{path}"), "events": ["ticket.created"]});
        api.call(reqwest::Method::POST, "/api/v1/webhooks", Some(body))
    };
    let fast = subscribe("/fast").await?["id"].as_str().unwrap_or_default().to_owned();
    eprintln!("== run 1: {} deliveries to one healthy endpoint", a.deliveries);
    let alone = run(&api, std::slice::from_ref(&fast), &seen, "wa", a.deliveries).await?;
    eprintln!("   {alone:.0} deliveries/s");
    let hang = subscribe("/hang").await?["id"].as_str().unwrap_or_default().to_owned();
    eprintln!("== run 2: the same beside a hanging endpoint");
    let beside = run(&api, &[fast.clone(), hang.clone()], &seen, "wb", a.deliveries).await?;
    eprintln!("   {beside:.0} deliveries/s");
    // Alone again, on the table as run 2 left it: the ratio compares run 2 with the mean of the runs before and
    // after it, so that what the runs leave behind (rows, dead tuples, a warmer cache) does not pass for the
    // hanging endpoint's effect.
    api.call(reqwest::Method::DELETE, &format!("/api/v1/webhooks/{hang}"), None).await?;
    eprintln!("== run 3: one healthy endpoint again");
    let after = run(&api, std::slice::from_ref(&fast), &seen, "wc", a.deliveries).await?;
    eprintln!("   {after:.0} deliveries/s");
    let alone = (alone + after) / 2.0;
    svc.child.kill()?;
    svc.child.wait()?;
    let rows = [
        (
            format!("signed webhook deliveries to a loopback receiver ({} deliveries)", a.deliveries),
            format!("{alone:.0}/s"),
            format!("{:.2}", alone / 5000.0),
            "≥ 5 000/s".to_owned(),
        ),
        (
            "healthy endpoint beside a hanging one, vs alone before and after (same run)".to_owned(),
            format!("{beside:.0}/s"),
            format!("{:.2}", beside / alone),
            "≥ 0.90".to_owned(),
        ),
    ];
    report("Webhooks", "webhooks", "≥ 1 meets it; isolation: the ratio itself", &rows, a.append.as_deref())?;
    Ok(())
}
