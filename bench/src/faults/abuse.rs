//! The `abuse` scenario: what an outsider probing the service did to it (issue #17), all at once, while a
//! steady client creates tickets — a NUL character PATCHed once a second with a ticket token, tickets nested 125
//! deep, 20 000 opened-and-cancelled watches, 5 000 requests with odd HTTP methods, 2 000 silent TCP
//! connections on the gRPC port — under a 1 024-file-descriptor limit (the limit the finding used). It passes
//! when the steady client's success rate is ≥ 99.9 %, `/ready` never answered 503, and RSS comes back within
//! 10 % of its baseline once the abuse has stopped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};
use ticket_supervisor::grpc::pb;

use super::{
    alive, fresh_database, memory, mib, ok, service_env, start, statuses, Api, Args, Load, ReadyProbe, Verdict,
};

/// `{"a": [[…[1]…]]}`, `depth` levels deep.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 1..depth {
        v = json!([v]);
    }
    json!({ "a": v })
}

/// Counts of what each kind of abuse got back.
#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    refused_as_client_error: AtomicUsize,
    server_error: AtomicUsize,
}

impl Tally {
    fn count(&self, status: u16) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        if (400..500).contains(&status) {
            self.refused_as_client_error.fetch_add(1, Ordering::Relaxed);
        } else if status >= 500 || status == 0 {
            self.server_error.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn line(&self) -> String {
        let (s, c, e) = (
            self.sent.load(Ordering::Relaxed),
            self.refused_as_client_error.load(Ordering::Relaxed),
            self.server_error.load(Ordering::Relaxed),
        );
        format!("{s} sent, {c} refused with 4xx, {e} 5xx or no answer")
    }
}

async fn status_of(res: reqwest::Result<reqwest::Response>) -> u16 {
    match res {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    }
}

pub async fn abuse(a: &Args) -> anyhow::Result<Verdict> {
    let (_, url) = fresh_database(&a.target.database_url, "faults_abuse").await?;
    let mut svc = start(a, &url, &service_env(a, &[]))?;
    let pid = svc.child.id();
    // The finding's limit: a service that holds idle connections for ever runs out of descriptors here.
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=1024:1024"])
        .status()
        .is_ok_and(|s| s.success());
    let api = Api::new(&svc)?;
    let grpc_port = svc.grpc_port.context("the service logged no gRPC port")?;
    let mut v = Verdict::new("abuse: hostile input and connections while a client creates 100 tickets/s");

    // The abuser's own ticket and token; a COMPLETED one to watch.
    let http = &api.http;
    let create =
        |body: Value| http.post(format!("{}/api/v1/tickets", api.base)).bearer_auth(&api.token).json(&body).send();
    let mut own = super::ticket("abuser");
    own["sla"]["deadline"] = json!(super::now_ms() + 86_400_000);
    anyhow::ensure!(status_of(create(own).await).await == 201, "creating the abuser's ticket");
    let token: Value = http
        .get(format!("{}/api/v1/tickets/abuser/token", api.base))
        .bearer_auth(&api.token)
        .send()
        .await?
        .json()
        .await?;
    let token = token["access_token"].as_str().context("no ticket token")?.to_owned();
    for status in ["RUNNING", "COMPLETED"] {
        let res = http.patch(format!("{}/api/v1/tickets/abuser/status", api.base)).bearer_auth(&token);
        anyhow::ensure!(status_of(res.json(&json!({ "status": status })).send().await).await == 200, "{status}");
    }

    let t0 = Instant::now();
    let load = Load::start(&api, "steady", 100.0, t0, 2_000);
    let probe = ReadyProbe::start(&api, t0);
    // The baseline once the steady load has warmed the service up (pools, caches, the allocator's arenas).
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (rss_baseline, _) = memory(pid)?;

    let (nul, deep, watches, methods) = (Tally::default(), Tally::default(), Tally::default(), Tally::default());
    let watch_refused = AtomicUsize::new(0);
    let mut rss_peak = rss_baseline;
    // Two rounds: growth that a second round of the same abuse does not repeat is a high-water mark (pools,
    // the allocator's retained pages), growth it repeats is a leak.
    let (mut rss_after_rounds, mut took) = (Vec::new(), Vec::new());
    let (mut watch_run, mut silent_opened) = (Ok(()), 0);
    for _round in 0..2 {
        let abuse_started = Instant::now();
        let abuse = async {
            // Once a second for the whole abuse: the NUL PATCH with the worker's own token, a 125-deep ticket.
            let steady_nul = async {
                for i in 0..30 {
                    let res = http.patch(format!("{}/api/v1/tickets/abuser/status", api.base)).bearer_auth(&token);
                    let body = json!({"status": "RUNNING", "error_message": "\u{0}"});
                    nul.count(status_of(res.json(&body).send().await).await);
                    let mut t = super::ticket(&format!("deep-{i}"));
                    t["parameters"] = nested(125);
                    deep.count(status_of(create(t).await).await);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            };
            // 20 000 watches of the finished ticket, each cancelled right after it opened (64 at a time).
            let cancelled_watches = async {
                let channel =
                    tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))?.connect().await?;
                let next = AtomicUsize::new(0);
                let worker = || async {
                    let mut client = pb::ticket_service_client::TicketServiceClient::new(channel.clone());
                    while next.fetch_add(1, Ordering::Relaxed) < 20_000 {
                        let mut req = tonic::Request::new(pb::WatchTicketsRequest {
                            ticket_ids: vec!["abuser".into()],
                            ..Default::default()
                        });
                        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
                        match client.watch_tickets(req).await {
                            Ok(stream) => {
                                let mut stream = stream.into_inner();
                                let _ = tokio::time::timeout(Duration::from_millis(5), stream.message()).await;
                                watches.count(200);
                            }
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                                watch_refused.fetch_add(1, Ordering::Relaxed);
                                watches.count(429);
                            }
                            Err(_) => watches.count(0),
                        }
                    }
                };
                futures::future::join_all((0..64).map(|_| worker())).await;
                anyhow::Ok(())
            };
            // 5 000 requests with 1 000-character methods, anonymous.
            let odd_methods = async {
                for i in 0..5_000 {
                    let method = format!("M{i}{}", "X".repeat(1_000));
                    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a token is a method");
                    methods.count(
                        status_of(http.request(method, format!("{}/api/v1/tickets", api.base)).send().await).await,
                    );
                }
            };
            // 2 000 silent TCP connections on the gRPC port, held for 20 s.
            let silent = async {
                let mut held = Vec::new();
                for _ in 0..2_000 {
                    if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", grpc_port)).await {
                        held.push(s);
                    }
                }
                let opened = held.len();
                tokio::time::sleep(Duration::from_secs(20)).await;
                opened
            };
            let sample_rss = async {
                let mut peak = 0;
                while abuse_started.elapsed() < Duration::from_secs(32) {
                    peak = peak.max(memory(pid).map(|m| m.0).unwrap_or(0));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                peak
            };
            let ((), w, (), opened, peak) =
                tokio::join!(steady_nul, cancelled_watches, odd_methods, silent, sample_rss);
            anyhow::Ok((w, opened, peak))
        };
        let (w, opened, peak) = abuse.await?;
        (watch_run, silent_opened) = (watch_run.and(w), opened);
        rss_peak = rss_peak.max(peak);
        took.push(abuse_started.elapsed().as_secs_f64());
        // After the abuse: the load goes on for 20 s more, then RSS is read against the baseline.
        tokio::time::sleep(Duration::from_secs(20)).await;
        rss_after_rounds.push(memory(pid)?.0);
    }
    let rss_after = *rss_after_rounds.last().expect("two rounds");
    let (samples, skipped) = load.finish().await;
    let ready = probe.finish().await;
    let alive = alive(&mut svc);
    svc.child.kill()?;
    svc.child.wait()?;

    let acked = samples.iter().filter(|s| ok(s)).count();
    let success = acked as f64 / samples.len().max(1) as f64;
    let not_ready = ready.iter().filter(|(_, s)| *s != 200).count();
    v.figure("service file-descriptor limit lowered to 1 024 (prlimit)", if limited { "yes" } else { "NO" });
    v.figure("each round of abuse lasted", format!("{:.1} / {:.1} s", took[0], took[1]));
    v.figure("NUL PATCH (ticket token), once a second", nul.line());
    v.figure("125-deep parameters create, once a second", deep.line());
    v.figure(
        "watches opened and cancelled",
        format!(
            "{} ({} RESOURCE_EXHAUSTED){}",
            watches.line(),
            watch_refused.load(Ordering::Relaxed),
            watch_run.err().map(|e| format!("; stopped: {e:#}")).unwrap_or_default()
        ),
    );
    v.figure("odd-method requests", methods.line());
    v.figure("silent TCP connections opened on the gRPC port", silent_opened.to_string());
    v.figure(
        "steady client: creates, answers",
        format!("{} sent ({skipped} skipped): {}", samples.len(), statuses(samples.iter())),
    );
    v.figure("steady client success rate", format!("{:.3} %", 100.0 * success));
    v.figure("/ready polls, not 200", format!("{not_ready} of {}", ready.len()));
    v.figure(
        "RSS baseline / peak / 20 s after round 1 / 20 s after round 2",
        format!(
            "{:.0} / {:.0} / {:.0} / {:.0} MiB",
            mib(rss_baseline),
            mib(rss_peak),
            mib(rss_after_rounds[0]),
            mib(rss_after)
        ),
    );
    v.require(alive, "the service did not crash");
    v.require(success >= 0.999, "the steady client's success rate ≥ 99.9 %");
    v.require(not_ready == 0, "/ready never answered anything but 200");
    v.require(rss_after as f64 <= rss_baseline as f64 * 1.10, "RSS back within 10 % of its baseline");
    v.require(
        rss_after as f64 <= rss_after_rounds[0] as f64 * 1.05,
        "a second round of abuse adds < 5 % to RSS (no leak)",
    );
    v.require(nul.server_error.load(Ordering::Relaxed) == 0, "no NUL PATCH got a 5xx");
    v.require(deep.server_error.load(Ordering::Relaxed) == 0, "no deep ticket got a 5xx");
    Ok(v)
}
