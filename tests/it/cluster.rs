//! Cluster mode (issue #16): three replicas of the release binary on one PostgreSQL database, on loopback
//! ports. Whatever replica a client reaches, it gets the answer one process would give.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};
use ticket_supervisor::grpc::pb;

use tokio::process::Child;

use crate::common::{self, fresh_database};

/// Short leases, so failover tests take seconds.
const LEASE_TTL_MS: u64 = 3000;

/// One replica: a process of the service binary.
struct Replica {
    child: Child,
    http: u16,
    grpc: u16,
    metrics: u16,
}

impl Replica {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/api/v1{path}", self.http)
    }

    fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    /// A service caller's WatchTickets of `plan_id` on this replica, without the snapshot, once it is open.
    async fn watch_plan(&self, plan_id: &str) -> tonic::Streaming<pb::TicketEvent> {
        let address = format!("http://127.0.0.1:{}", self.grpc);
        let mut grpc = pb::ticket_service_client::TicketServiceClient::connect(address).await.unwrap();
        let mut req = tonic::Request::new(pb::WatchTicketsRequest {
            plan_id: plan_id.into(),
            skip_snapshot: true,
            ..Default::default()
        });
        req.metadata_mut().insert("authorization", format!("Bearer {}", service_token("watcher")).parse().unwrap());
        let stream = grpc.watch_tickets(req).await.unwrap().into_inner();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream
    }

    fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill").args([signal, &self.pid().to_string()]).status().unwrap();
        assert!(ok.success(), "kill {signal}");
    }
}

/// The database every replica of a test shares, and how to start replicas on it.
struct Cluster {
    url: String,
    db: PgConnectOptions,
    env: Vec<(&'static str, String)>,
}

impl Cluster {
    async fn new() -> Cluster {
        let db = fresh_database().await;
        let url = format!("postgres://postgres@{}:{}/{}", db.get_host(), db.get_port(), db.get_database().unwrap());
        Cluster { url, db, env: Vec::new() }
    }

    async fn start(&self) -> Replica {
        let mut env = vec![
            ("DATABASE_URL", self.url.clone()),
            ("CLUSTER_LEASE_TTL_MS", LEASE_TTL_MS.to_string()),
            ("CLUSTER_RENEW_INTERVAL_MS", "500".into()),
            ("POSTGRES_POOL_SIZE", "8".into()),
        ];
        env.extend(self.env.iter().cloned());
        let (child, ports) = common::binary::start(&env).await;
        Replica { child, http: ports.http, grpc: ports.grpc, metrics: ports.metrics }
    }

    async fn start_three(&self) -> Vec<Replica> {
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(self.start().await);
        }
        self.balanced(&replicas).await;
        replicas
    }

    /// Wait until every replica in `replicas` serves some shards and together they serve all 256.
    async fn balanced(&self, replicas: &[Replica]) {
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut owned = Vec::new();
            for r in replicas {
                owned.push(metric(&client, r.metrics, "cluster_shards_owned").await);
            }
            if owned.iter().all(|n| *n > 0.0) && owned.iter().sum::<f64>() == 256.0 {
                return;
            }
            assert!(Instant::now() < deadline, "shards not balanced in 30 s: {owned:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The gRPC port of the replica that owns `ticket_id`'s shard now (from the leases).
    async fn owner_of(&self, ticket_id: &str) -> Option<u16> {
        let shard = i32::from(actors::ownership::vshard_of(ticket_id));
        let mut conn = self.db.connect().await.unwrap();
        let address: Option<String> = sqlx::query_scalar(
            "SELECT m.address FROM shard_leases l JOIN cluster_members m ON m.member_id = l.owner \
             WHERE l.shard = $1 AND l.expires_at > now()",
        )
        .bind(shard)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        address.and_then(|a| a.rsplit(':').next()?.parse().ok())
    }
}

/// A service token for `subject`.
fn service_token(subject: &str) -> String {
    let settings = common::settings(&common::Store::Embedded(std::path::PathBuf::new()));
    ticket_supervisor::auth::token::service_token(common::SERVICE_SECRET, &settings.auth, subject, 600).unwrap()
}

/// An HTTP client that sends a service token.
fn client() -> reqwest::Client {
    let auth = format!("Bearer {}", service_token("cluster")).parse().unwrap();
    reqwest::Client::builder()
        .default_headers([(reqwest::header::AUTHORIZATION, auth)].into_iter().collect())
        // Idle connections are dropped before the server's 5 s keep-alive closes them (a paused replica's close
        // them all at once when it resumes): a request must not go down a connection the server is closing.
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn metric(client: &reqwest::Client, port: u16, name: &str) -> f64 {
    let text = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    common::status_json(req.send().await.unwrap()).await
}

fn new_ticket(id: &str) -> Value {
    let mut t = common::ticket(id);
    t["plan_id"] = json!("plan-cluster");
    t
}

async fn history_kinds(client: &reqwest::Client, r: &Replica, id: &str) -> Vec<String> {
    let (code, page) = send(client.get(r.url(&format!("/tickets/{id}/history?limit=1000")))).await;
    assert_eq!(code, 200, "{page}");
    let records = page["records"].as_array().or_else(|| page["events"].as_array()).expect("history records");
    records.iter().map(|e| e["kind"].as_str().or(e["event_type"].as_str()).unwrap_or_default().to_owned()).collect()
}

/// Read-your-writes through every replica, and the sequence that used to meet a stale copy: a replica that
/// read a ticket before another moved it answers the new state, takes a legal change and the right If-Match.
#[tokio::test]
async fn every_replica_answers_what_one_process_would() {
    let cluster = Cluster::new().await;
    let r = cluster.start_three().await;
    let c = client();
    for i in 0..12 {
        let id = format!("ryw-{i}");
        let (a, b, cc) = (&r[i % 3], &r[(i + 1) % 3], &r[(i + 2) % 3]);
        assert_eq!(send(c.post(a.url("/tickets")).json(&new_ticket(&id))).await.0, 201);
        // Every replica reads it at once, and A keeps "its" copy warm.
        for x in [a, b, cc] {
            let (code, t) = send(c.get(x.url(&format!("/tickets/{id}")))).await;
            assert_eq!((code, t["status"].as_str(), t["version"].as_i64()), (200, Some("PENDING"), Some(1)));
        }
        let (code, t) =
            send(c.patch(b.url(&format!("/tickets/{id}/status"))).json(&json!({"status": "RUNNING"}))).await;
        assert_eq!((code, t["version"].as_i64()), (200, Some(2)), "{t}");
        let (code, t) = send(c.get(a.url(&format!("/tickets/{id}")))).await;
        assert_eq!((code, t["status"].as_str(), t["version"].as_i64()), (200, Some("RUNNING"), Some(2)), "stale copy");
        let completed = c
            .patch(a.url(&format!("/tickets/{id}/status")))
            .header("If-Match", "\"2\"")
            .json(&json!({"status": "COMPLETED", "actual_duration_ms": 5}));
        let (code, t) = send(completed).await;
        assert_eq!((code, t["status"].as_str(), t["version"].as_i64()), (200, Some("COMPLETED"), Some(3)), "{t}");
        // A stale RUNNING for a finished ticket is refused wherever it arrives, and nothing is written.
        let (code, _) =
            send(c.patch(cc.url(&format!("/tickets/{id}/status"))).json(&json!({"status": "RUNNING"}))).await;
        assert_eq!(code, 409);
        for x in [a, b, cc] {
            let (_, t) = send(c.get(x.url(&format!("/tickets/{id}")))).await;
            assert_eq!((t["status"].as_str(), t["version"].as_i64()), (Some("COMPLETED"), Some(3)));
        }
    }
    // Who asked travels with a forwarded request: every change is recorded as the caller's (the token's subject).
    for i in 0..12 {
        let (_, page) = send(c.get(r[0].url(&format!("/tickets/ryw-{i}/history")))).await;
        let actors: Vec<&str> = page["events"].as_array().unwrap().iter().filter_map(|e| e["actor"].as_str()).collect();
        assert!(actors.iter().filter(|a| **a == "cluster").count() >= 3, "ryw-{i}: {actors:?}");
    }
    let forwarded: f64 =
        futures::future::join_all(r.iter().map(|x| metric(&c, x.metrics, "cluster_forwarded_requests_total")))
            .await
            .iter()
            .sum();
    assert!(forwarded > 0.0, "requests for other replicas' shards were forwarded");
}

/// Concurrent updates of one ticket through different replicas: one transition, the other requests no-ops
/// answering the same version; with If-Match exactly one winner per version; never 412 without If-Match.
#[tokio::test]
async fn concurrent_updates_through_different_replicas_have_one_winner() {
    let cluster = Cluster::new().await;
    let r = cluster.start_three().await;
    let c = client();
    for i in 0..20 {
        let id = format!("race-{i}");
        assert_eq!(send(c.post(r[0].url("/tickets")).json(&new_ticket(&id))).await.0, 201);
        let running = r
            .iter()
            .map(|x| send(c.patch(x.url(&format!("/tickets/{id}/status"))).json(&json!({"status": "RUNNING"}))));
        let answers = futures::future::join_all(running).await;
        for (code, t) in &answers {
            assert_eq!((*code, t["version"].as_i64()), (200, Some(2)), "{answers:?}");
        }
        let finish = r.iter().zip(["COMPLETED", "FAILED", "COMPLETED"]).map(|(x, status)| {
            let body = json!({"status": status, "error_message": "x", "actual_duration_ms": 1});
            send(c.patch(x.url(&format!("/tickets/{id}/status"))).header("If-Match", "\"2\"").json(&body))
        });
        let codes: Vec<u16> = futures::future::join_all(finish).await.into_iter().map(|(code, _)| code).collect();
        assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "one winner at version 2: {codes:?}");
        assert!(codes.iter().all(|c| [200, 409, 412].contains(c)), "{codes:?}");
    }
}

/// A watcher on replica C sees the changes made through A and B (its snapshot from the owners).
#[tokio::test]
async fn a_watcher_on_one_replica_sees_changes_made_through_the_others() {
    let cluster = Cluster::new().await;
    let r = cluster.start_three().await;
    let c = client();
    let mut stream = r[2].watch_plan("plan-watch").await;
    let mut expected = Vec::new();
    for i in 0..6 {
        let id = format!("watched-{i}");
        let mut t = new_ticket(&id);
        t["plan_id"] = json!("plan-watch");
        assert_eq!(send(c.post(r[0].url("/tickets")).json(&t)).await.0, 201);
        let (code, _) =
            send(c.patch(r[1].url(&format!("/tickets/{id}/status"))).json(&json!({"status": "RUNNING"}))).await;
        assert_eq!(code, 200);
        expected.push((id.clone(), "ticket.created".to_owned()));
        expected.push((id, "ticket.started".to_owned()));
    }
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < expected.len() {
        let next = tokio::time::timeout_at(deadline, stream.message()).await;
        let Ok(Ok(Some(e))) = next else { panic!("watcher saw only {seen:?}") };
        // (`ticket.ready` too: a ticket without dependencies is ready when created.)
        if e.event_type != "ticket.ready" {
            seen.push((e.ticket.unwrap().ticket_id, e.event_type));
        }
    }
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
}

/// A replica alone sends nothing through PostgreSQL's notification queue (nobody would hear it), and its own
/// watchers still see its commits, also when its earlier commits had nobody to watch them (those the relay gathers
/// and frees in batches). A replica that joins announces itself, and from then on the first one relays
/// its commits: a watcher opened on the newcomer at once sees them, long before the first one's next lease round
/// would have noticed the newcomer.
#[tokio::test]
async fn a_replica_alone_relays_nothing_and_one_that_joins_hears_every_commit() {
    let mut cluster = Cluster::new().await;
    // Rounds every 10 s: only the newcomer's announcement can tell the first replica in time.
    cluster.env = vec![("CLUSTER_LEASE_TTL_MS", "30000".into()), ("CLUSTER_RENEW_INTERVAL_MS", "10000".into())];
    let a = cluster.start().await;
    let c = client();
    let mut heard = sqlx::postgres::PgListener::connect(&cluster.url).await.unwrap();
    heard.listen("ticket_events").await.unwrap();
    for i in 0..20 {
        assert_eq!(send(c.post(a.url("/tickets")).json(&new_ticket(&format!("unwatched-{i}")))).await.0, 201);
    }
    let mut own = a.watch_plan("plan-alone").await;
    let mut t = new_ticket("alone-1");
    t["plan_id"] = json!("plan-alone");
    assert_eq!(send(c.post(a.url("/tickets")).json(&t)).await.0, 201);
    let quiet = tokio::time::timeout(Duration::from_millis(500), heard.recv()).await;
    assert!(quiet.is_err(), "a replica alone relayed a commit: {quiet:?}");
    let got = tokio::time::timeout(Duration::from_secs(5), own.message()).await;
    let Ok(Ok(Some(e))) = got else { panic!("the lone replica's watcher saw nothing") };
    assert_eq!((e.event_type.as_str(), e.ticket.unwrap().ticket_id.as_str()), ("ticket.created", "alone-1"));

    let b = cluster.start().await;
    let mut stream = b.watch_plan("plan-join").await;
    let mut expected = Vec::new();
    for i in 0..10 {
        let id = format!("joined-{i}");
        let mut t = new_ticket(&id);
        t["plan_id"] = json!("plan-join");
        assert_eq!(send(c.post(a.url("/tickets")).json(&t)).await.0, 201);
        expected.push(id);
    }
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.len() < expected.len() {
        let next = tokio::time::timeout_at(deadline, stream.message()).await;
        let Ok(Ok(Some(e))) = next else { panic!("the newcomer's watcher saw only {seen:?}") };
        if e.event_type == "ticket.created" {
            seen.push(e.ticket.unwrap().ticket_id);
        }
    }
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), heard.recv()).await.is_ok(),
        "with two replicas, commits go through the notification queue"
    );
}

/// `ticket.ready` is decided once per dependent, though its dependencies finish on different replicas; and a
/// subscription made on A delivers for tickets created on B a second later.
#[tokio::test]
async fn readiness_is_announced_once_and_subscriptions_reach_every_replica() {
    let mut cluster = Cluster::new().await;
    cluster.env.push(("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8".into()));
    let r = cluster.start_three().await;
    let c = client();
    let (port, got) = crate::crash::hook_receiver().await;
    let sub = json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": ["ticket.created", "ticket.ready"]});
    let (code, body) = send(c.post(r[0].url("/webhooks")).json(&sub)).await;
    assert_eq!(code, 201, "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deps = ["dep-a", "dep-b"];
    for (i, d) in deps.iter().enumerate() {
        assert_eq!(send(c.post(r[i].url("/tickets")).json(&new_ticket(d))).await.0, 201);
    }
    let dependents: Vec<String> = (0..10).map(|i| format!("dependent-{i}")).collect();
    for (i, id) in dependents.iter().enumerate() {
        let mut t = new_ticket(id);
        t["dependencies"] = json!(deps);
        assert_eq!(send(c.post(r[(i + 1) % 3].url("/tickets")).json(&t)).await.0, 201);
    }
    // The two dependencies finish at once, through different replicas.
    let finish = deps.iter().enumerate().map(|(i, d)| {
        let c = c.clone();
        let (a, b) = (r[i].url(&format!("/tickets/{d}/status")), r[(i + 2) % 3].url(&format!("/tickets/{d}/status")));
        async move {
            assert_eq!(send(c.patch(a).json(&json!({"status": "RUNNING"}))).await.0, 200);
            assert_eq!(send(c.patch(b).json(&json!({"status": "COMPLETED", "actual_duration_ms": 1}))).await.0, 200);
        }
    });
    futures::future::join_all(finish).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    for id in &dependents {
        loop {
            let kinds = history_kinds(&c, &r[2], id).await;
            let ready = kinds.iter().filter(|k| *k == "ticket.ready").count();
            assert!(ready <= 1, "{id}: {kinds:?}");
            if ready == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "{id} never became ready: {kinds:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Every ticket created on any replica was delivered once as created; every dependent once as ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = got.lock().unwrap().clone();
        let count = |kind: &str, id: &str| seen.iter().filter(|(k, t)| k == kind && t == id).count();
        let created_ok =
            deps.iter().map(|d| d.to_string()).chain(dependents.clone()).all(|id| count("ticket.created", &id) >= 1);
        let ready_ok = dependents.iter().all(|id| count("ticket.ready", id) >= 1);
        if created_ok && ready_ok {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let seen = got.lock().unwrap().clone();
            for id in &dependents {
                let n = seen.iter().filter(|(k, t)| k == "ticket.ready" && t == id).count();
                assert_eq!(n, 1, "{id}: one ticket.ready delivery");
            }
            break;
        }
        assert!(Instant::now() < deadline, "deliveries missing: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// kill -9 of the owner of a ticket with a deadline 5 s ahead: a survivor takes the shard over and the breach
/// fires once, at most a lease TTL + 1 s late.
#[tokio::test]
async fn a_killed_owners_timers_fire_once_on_a_survivor_within_the_lease_ttl() {
    let mut cluster = Cluster::new().await;
    cluster.env.push(("SLA_WARNING_FRACTIONS", String::new()));
    let mut r = cluster.start_three().await;
    let c = client();
    let deadline_ms = chrono::Utc::now().timestamp_millis() + 5_000;
    let id = "doomed";
    let mut t = new_ticket(id);
    t["sla"] = json!({"deadline": deadline_ms, "timeout_ms": 60_000, "max_retries": 0});
    assert_eq!(send(c.post(r[0].url("/tickets")).json(&t)).await.0, 201);
    let owner_port = cluster.owner_of(id).await.expect("an owner");
    let owner = r.iter().position(|x| x.grpc == owner_port).expect("the owner is one of the replicas");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut dead = r.remove(owner);
    dead.signal("-KILL");
    let _ = dead.child.wait().await;
    let survivor = &r[0];
    let limit = deadline_ms + LEASE_TTL_MS as i64 + 1_000;
    loop {
        let (_, got) = send(c.get(survivor.url(&format!("/tickets/{id}")))).await;
        if let Some(at) = got["sla_state"]["breached_at"].as_i64() {
            let now = chrono::Utc::now().timestamp_millis();
            assert!(at >= deadline_ms, "not early");
            assert!(now <= limit + 500, "breach fired {} ms after the deadline", now - deadline_ms);
            break;
        }
        assert!(chrono::Utc::now().timestamp_millis() <= limit + 500, "no breach within the lease TTL + 1 s: {got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kinds = history_kinds(&c, survivor, id).await;
    assert_eq!(kinds.iter().filter(|k| *k == "ticket.sla_breached").count(), 1, "{kinds:?}");
}

/// SIGTERM of one replica under load: it hands its shards off, the requests that still reach it are forwarded
/// to the successors, and no client request fails, through any replica; it exits well within 30 s.
#[tokio::test]
async fn a_graceful_shutdown_under_load_fails_no_request() {
    let cluster = Cluster::new().await;
    let mut r = cluster.start_three().await;
    let c = client();
    let leaving = r.pop().unwrap();
    // The leaving replica is in every client's rotation too, as it is in a Service's until its endpoint goes:
    // until its readiness fails (polled every 100 ms, as the endpoints controller would).
    let urls: Vec<String> = [&r[0], &r[1], &leaving].iter().map(|x| x.url("")).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let unready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn({
        let (c, unready, ready) =
            (c.clone(), std::sync::Arc::clone(&unready), format!("http://127.0.0.1:{}/ready", leaving.metrics));
        async move {
            while c.get(&ready).send().await.is_ok_and(|r| r.status().is_success()) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            unready.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let workers = (0..6).map(|w| {
        let (c, urls, stop, unready) =
            (c.clone(), urls.clone(), std::sync::Arc::clone(&stop), std::sync::Arc::clone(&unready));
        tokio::spawn(async move {
            let (mut done, mut failed) = (0, Vec::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("load-{w}-{i}");
                let create = |base: &str| c.post(format!("{base}/tickets")).json(&new_ticket(&id));
                let running =
                    |base: &str| c.patch(format!("{base}/tickets/{id}/status")).json(&json!({"status": "RUNNING"}));
                for (step, expected) in [(0, 201), (1, 200)] {
                    let replicas = if unready.load(std::sync::atomic::Ordering::SeqCst) { 2 } else { 3 };
                    let mut base = (w + i + step) % replicas;
                    loop {
                        let req = if step == 0 { create(&urls[base]) } else { running(&urls[base]) };
                        match req.send().await {
                            Ok(res) => {
                                let code = res.status().as_u16();
                                // A create forwarded to an owner that committed it just as it handed the shard off
                                // is asked again of the successor, which answers the idempotent repeat: 200.
                                if code != expected && !(step == 0 && code == 200) {
                                    failed.push((base, code, res.text().await.unwrap_or_default()));
                                }
                                break;
                            }
                            // Only a replica that stopped listening may refuse a connection: a client (a Service)
                            // then goes to another one.
                            Err(e) if base == 2 && e.is_connect() => base = (w + i) % 2,
                            Err(e) => {
                                failed.push((base, 0, e.to_string()));
                                break;
                            }
                        }
                    }
                    done += 1;
                }
                i += 1;
            }
            (done, failed)
        })
    });
    let workers: Vec<_> = workers.collect();
    // A watcher on the leaving replica: it must not hold the process, and learns to reconnect elsewhere.
    let mut grpc =
        pb::ticket_service_client::TicketServiceClient::connect(format!("http://127.0.0.1:{}", leaving.grpc))
            .await
            .unwrap();
    let mut watch = tonic::Request::new(pb::WatchTicketsRequest { skip_snapshot: true, ..Default::default() });
    watch.metadata_mut().insert("authorization", format!("Bearer {}", service_token("watcher")).parse().unwrap());
    let mut stream = grpc.watch_tickets(watch).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let signalled = Instant::now();
    leaving.signal("-TERM");
    let mut leaving = leaving;
    let status = tokio::time::timeout(Duration::from_secs(30), leaving.child.wait()).await.expect("exits within 30 s");
    assert!(status.unwrap().success(), "a graceful shutdown exits 0");
    let took = signalled.elapsed();
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert!(matches!(&ended, Err(s) if s.code() == tonic::Code::Unavailable), "the watch ends UNAVAILABLE: {ended:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut done, mut failed) = (0, Vec::new());
    for w in workers {
        let (d, f) = w.await.unwrap();
        done += d;
        failed.extend(f);
    }
    assert!(done > 50, "load ran ({done} requests)");
    assert!(failed.is_empty(), "{} of {done} requests failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
    cluster.balanced(&r).await;
}

/// A zombie: a replica paused (SIGSTOP) past its lease, whose shards were taken over and written meanwhile,
/// answers the current state when it resumes — never its memory — and its writes land on the current version
/// (the store refusing its old epoch is `store::a_commit_under_a_lost_lease_is_refused`).
#[tokio::test]
async fn a_paused_replica_cannot_answer_or_commit_from_its_old_leases() {
    let cluster = Cluster::new().await;
    let r = cluster.start_three().await;
    let c = client();
    // A ticket owned by replica 0, warm in its memory.
    let mut mine = None;
    for i in 0..200 {
        let id = format!("zombie-{i}");
        if cluster.owner_of(&id).await == Some(r[0].grpc) {
            mine = Some(id);
            break;
        }
    }
    let id = mine.expect("replica 0 owns some shard");
    assert_eq!(send(c.post(r[0].url("/tickets")).json(&new_ticket(&id))).await.0, 201);
    assert_eq!(send(c.get(r[0].url(&format!("/tickets/{id}")))).await.1["version"], 1);
    r[0].signal("-STOP");
    // Its lease lapses, a survivor takes the shard and moves the ticket on.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, t) =
            send(c.patch(r[1].url(&format!("/tickets/{id}/status"))).json(&json!({"status": "RUNNING"}))).await;
        if code == 200 {
            assert_eq!(t["version"], 2);
            break;
        }
        assert!(Instant::now() < deadline, "no survivor took the shard over: {code} {t}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    r[0].signal("-CONT");
    // At once after resuming: the zombie's answer is the owner's, and its write lands on the current version.
    let (code, t) = send(c.get(r[0].url(&format!("/tickets/{id}")))).await;
    assert_eq!((code, t["status"].as_str(), t["version"].as_i64()), (200, Some("RUNNING"), Some(2)), "{t}");
    let (code, t) = send(
        c.patch(r[0].url(&format!("/tickets/{id}/status")))
            .json(&json!({"status": "COMPLETED", "actual_duration_ms": 1})),
    )
    .await;
    assert_eq!((code, t["version"].as_i64()), (200, Some(3)), "{t}");
    let kinds = history_kinds(&c, &r[2], &id).await;
    assert_eq!(kinds, ["ticket.created", "ticket.ready", "ticket.started", "ticket.completed"]);
}

/// Outbox shipping has one shipper per row in the cluster: every audit record reaches MongoDB, and the
/// replicas together ship each exactly once (two shippers on one cursor used to ship ~1.7× over).
#[tokio::test]
async fn the_audit_trail_is_shipped_once_by_the_cluster() {
    let mongo = common::servers::Mongo::start();
    let mut cluster = Cluster::new().await;
    cluster.env.push(("MONGODB_URI", mongo.uri()));
    cluster.env.push(("MONGODB_DATABASE", "cluster_audit".into()));
    let r = cluster.start_three().await;
    let c = client();
    for i in 0..12 {
        let id = format!("audited-{i}");
        assert_eq!(send(c.post(r[i % 3].url("/tickets")).json(&new_ticket(&id))).await.0, 201);
        let (code, _) =
            send(c.patch(r[(i + 1) % 3].url(&format!("/tickets/{id}/status"))).json(&json!({"status": "RUNNING"})))
                .await;
        assert_eq!(code, 200);
    }
    // created, ready and started of each ticket.
    let expected = 36.0;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let shipped: f64 =
            futures::future::join_all(r.iter().map(|x| metric(&c, x.metrics, "audit_events_shipped_total")))
                .await
                .iter()
                .sum();
        if shipped >= expected {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let shipped: f64 =
                futures::future::join_all(r.iter().map(|x| metric(&c, x.metrics, "audit_events_shipped_total")))
                    .await
                    .iter()
                    .sum();
            assert_eq!(shipped, expected, "each record shipped once by the cluster");
            break;
        }
        assert!(Instant::now() < deadline, "only {shipped} of {expected} records shipped");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let client = mongodb::Client::with_uri_str(mongo.uri()).await.unwrap();
    let docs = client
        .database("cluster_audit")
        .collection::<mongodb::bson::Document>("ticket_audit_log")
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap();
    assert_eq!(docs as f64, expected);
}

/// Kafka with three replicas: tickets consumed by whichever replica holds the partition are created once (through
/// their owner), and the event stream has one publisher: every ticket event is on the topic exactly once.
#[tokio::test]
async fn kafka_ingestion_and_the_event_stream_work_once_across_replicas() {
    use crate::common::servers::{header, Kafka};
    let kafka = Kafka::start();
    for (topic, partitions) in [("cl-tickets", 3), ("cl-tickets.dlq", 1), ("cl-events", 3), ("cl-violations", 1)] {
        kafka.create_topic(topic, partitions).await;
    }
    let mut cluster = Cluster::new().await;
    for (k, v) in [
        ("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap()),
        ("KAFKA_TICKETS_TOPIC", "cl-tickets".into()),
        ("KAFKA_CONSUMER_GROUP_ID", "cl".into()),
        ("KAFKA_EVENTS_TOPIC", "cl-events".into()),
        ("KAFKA_SLA_VIOLATIONS_TOPIC", "cl-violations".into()),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
        ("KAFKA_MAX_POLL_INTERVAL_MS", "7000".into()),
    ] {
        cluster.env.push((k, v));
    }
    let r = cluster.start_three().await;
    let c = client();
    let producer = kafka.producer();
    // Enough events, arriving over a while, that shippers on several replicas would overlap.
    let consumed: Vec<String> = (0..150).map(|i| format!("from-kafka-{i}")).collect();
    let rest: Vec<String> = (0..90).map(|i| format!("from-rest-{i}")).collect();
    let produce = async {
        for id in &consumed {
            kafka.produce(&producer, "cl-tickets", id, new_ticket(id).to_string().as_bytes()).await;
        }
    };
    let create = async {
        for (i, id) in rest.iter().enumerate() {
            assert_eq!(send(c.post(r[i % 3].url("/tickets")).json(&new_ticket(id))).await.0, 201);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    futures::join!(produce, create);
    let deadline = Instant::now() + Duration::from_secs(40);
    for (i, id) in consumed.iter().enumerate() {
        while send(c.get(r[i % 3].url(&format!("/tickets/{id}")))).await.0 != 200 {
            assert!(Instant::now() < deadline, "{id} was never ingested");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Each ticket was created once: one ticket.created in its history.
    for id in consumed.iter().chain(&rest).step_by(7) {
        let kinds = history_kinds(&c, &r[0], id).await;
        assert_eq!(kinds.iter().filter(|k| *k == "ticket.created").count(), 1, "{id}: {kinds:?}");
    }
    let mut conn = {
        use sqlx::ConnectOptions as _;
        cluster.db.connect().await.unwrap()
    };
    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket_events WHERE kind = 'ticket.created'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(created, 240, "each ticket created once");
    // Every ticket event of the outbox, on the topic once.
    let expected: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket_events WHERE kind LIKE 'ticket.%'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(expected >= 480, "created and ready of 240 tickets at least: {expected}");
    let messages =
        kafka.read_expecting("cl-events", expected as usize, Duration::from_secs(40), Duration::from_secs(3));
    let mut ids: Vec<String> = messages.iter().filter_map(|m| header(m, "event-id")).collect();
    assert_eq!(ids.len(), expected as usize, "every event published, none twice");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), expected as usize, "no event id twice");
}
