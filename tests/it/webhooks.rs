//! Webhooks end to end: a real HTTP receiver on loopback (tests/python/webhook_receiver.py) verifies every
//! signature with the Standard Webhooks reference library — an implementation independent of ours.

use crate::common;
use crate::webhook_support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{eventually, fresh_store, spawn_app_with, ticket, Store, TestApp};
use serde_json::{json, Value};
use webhook_support::VerifyingReceiver;

/// The service with quick retries. The delivery timeout is generous: a reply slower than it (the receiver is a
/// Python process on a loaded machine) would be retried, and the exact counts these tests check would not hold.
async fn app(store: &Store) -> TestApp {
    app_with_timeout(store, Duration::from_secs(10)).await
}

async fn app_with_timeout(store: &Store, timeout: Duration) -> TestApp {
    spawn_app_with(store, |s| {
        s.webhooks.allowed_networks = "127.0.0.0/8".into();
        s.webhooks.timeout = timeout;
        s.webhooks.schedule = [200, 400, 800, 1600, 3200].into_iter().map(Duration::from_millis).collect();
        s.webhooks.breaker_open = Duration::from_millis(500);
    })
    .await
}

async fn subscribe(app: &TestApp, rx: &VerifyingReceiver, endpoint: &str, body: Value) -> (String, String) {
    let mut body = body;
    body["url"] = Value::String(rx.url(endpoint));
    let (code, created) = app.post("/api/v1/webhooks", &body).await;
    assert_eq!(code, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    rx.configure(endpoint, json!({ "secret": secret })).await;
    (created["id"].as_str().unwrap().to_owned(), secret)
}

fn with_deps(id: &str, deps: &[&str]) -> Value {
    let mut t = ticket(id);
    t["dependencies"] = json!(deps);
    t
}

#[tokio::test]
async fn signed_deliveries_and_ready_on_the_last_dependency() {
    let rx = VerifyingReceiver::start();
    let (store, _dir) = fresh_store(true).await;
    let app = app(&store).await;
    let (sub, _) =
        subscribe(&app, &rx, "pool", json!({"events": ["ticket.created", "ticket.ready", "ticket.blocked"]})).await;
    let (code, listed) = app.get("/api/v1/webhooks").await;
    assert_eq!(code, 200);
    assert!(listed[0].get("secret").is_none(), "the secret is shown once only: {listed}");

    assert_eq!(app.post("/api/v1/tickets", &ticket("a")).await.0, 201);
    assert_eq!(app.post("/api/v1/tickets", &ticket("b")).await.0, 201);
    assert_eq!(app.post("/api/v1/tickets", &with_deps("c", &["a", "b"])).await.0, 201);
    eventually("created ×3 and ready for a and b", 20, || async { rx.delivered("pool").await.len() == 5 }).await;
    for id in ["a", "b"] {
        assert_eq!(app.set_status(id, "RUNNING").await.0, 200);
    }
    assert_eq!(app.set_status("a", "COMPLETED").await.0, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ready_c = |r: &Vec<Value>| r.iter().filter(|d| d["type"] == "ticket.ready" && d["ticket_id"] == "c").count();
    assert_eq!(ready_c(&rx.delivered("pool").await), 0, "c still waits for b");
    assert_eq!(app.set_status("b", "COMPLETED").await.0, 200);
    eventually("ticket.ready for c the moment b completed", 20, || async { ready_c(&rx.delivered("pool").await) == 1 })
        .await;

    let got = rx.delivered("pool").await;
    assert!(got.iter().all(|d| d["verified"] == true), "every signature verifies with the reference library");
    let ready = got.iter().find(|d| d["type"] == "ticket.ready" && d["ticket_id"] == "c").unwrap();
    assert_eq!(ready["body"]["data"]["ticket"]["ticket_id"], "c");
    assert_eq!(ready["headers"]["x-event-type"], "ticket.ready");
    let tp = ready["headers"]["traceparent"].as_str().unwrap();
    assert!(tp.starts_with("00-") && tp.len() == 55, "W3C traceparent: {tp}");
    // The token in ticket.ready lets the worker act at once.
    let token = ready["body"]["data"]["token"]["access_token"].as_str().unwrap();
    let res = app
        .client
        .patch(app.url("/api/v1/tickets/c/status"))
        .bearer_auth(token)
        .json(&json!({"status": "RUNNING"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the worker starts c with the token it was sent");

    let deliveries = format!("/api/v1/webhooks/{sub}/deliveries");
    eventually("every attempt recorded", 10, || async {
        let (code, page) = app.get(&deliveries).await;
        assert_eq!((code, page["total"].as_i64()), (200, Some(6)), "{page}");
        page["deliveries"].as_array().unwrap().iter().all(|d| d["status"] == "delivered" && d["attempts"] == 1)
    })
    .await;
    let (_, history) = app.get("/api/v1/tickets/c/history").await;
    let kinds: Vec<&str> = history["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"ticket.ready") && kinds.contains(&"webhook.delivered"), "{kinds:?}");
}

#[tokio::test]
async fn a_failed_dependency_blocks_and_filters_select_the_pool() {
    let rx = VerifyingReceiver::start();
    let (store, _dir) = fresh_store(false).await;
    let app = app(&store).await;
    subscribe(
        &app,
        &rx,
        "gpu",
        json!({"events": ["ticket.created", "ticket.blocked"], "capabilities": ["gpu", "k8s"], "min_priority": "HIGH"}),
    )
    .await;
    subscribe(&app, &rx, "cpu", json!({"events": ["ticket.created"], "capabilities": ["cpu"]})).await;
    assert_eq!(app.post("/api/v1/tickets", &ticket("x")).await.0, 201); // needs k8s, priority high
    let mut low = ticket("low");
    low["priority"] = json!("LOW");
    assert_eq!(app.post("/api/v1/tickets", &low).await.0, 201);
    assert_eq!(app.post("/api/v1/tickets", &with_deps("y", &["x"])).await.0, 201);
    assert_eq!(app.set_status("x", "RUNNING").await.0, 200);
    assert_eq!(app.set_status("x", "FAILED").await.0, 200);
    let expected: Vec<(String, String)> = vec![
        ("ticket.blocked".into(), "y".into()),
        ("ticket.created".into(), "x".into()),
        ("ticket.created".into(), "y".into()),
    ];
    let seen = || async {
        let gpu = rx.delivered("gpu").await;
        let mut seen: Vec<(String, String)> =
            gpu.iter().map(|d| (d["type"].as_str().unwrap().into(), d["ticket_id"].as_str().unwrap().into())).collect();
        seen.sort();
        seen
    };
    // Deliveries to one endpoint run concurrently: wait for the set, not for the one expected last.
    eventually("created x and y, blocked y", 20, || async { seen().await.len() >= expected.len() }).await;
    assert_eq!(seen().await, expected);
    let gpu = rx.delivered("gpu").await;
    let blocked = gpu.iter().find(|d| d["type"] == "ticket.blocked").unwrap();
    assert_eq!(blocked["body"]["data"]["details"]["blocked_by"][0]["ticket_id"], "x");
    assert!(rx.delivered("cpu").await.is_empty(), "the cpu pool lacks k8s: nothing for it");
    // Outbound safety: the metadata address stays refused even with loopback allowed.
    let (code, body) = app
        .post("/api/v1/webhooks", &json!({"url": "http://169.254.169.254/latest", "events": ["ticket.created"]}))
        .await;
    assert_eq!(code, 422, "{body}");
    let (code, _) = app.post("/api/v1/webhooks", &json!({"url": rx.url("x"), "events": ["ticket.nonsense"]})).await;
    assert_eq!(code, 422);
}

#[tokio::test]
async fn receiver_down_then_up_gets_everything_once_per_id() {
    let rx = VerifyingReceiver::start();
    let (store, _dir) = fresh_store(true).await;
    let app = app(&store).await;
    let (sub, _) = subscribe(&app, &rx, "flaky", json!({"events": ["ticket.created", "ticket.started"]})).await;
    rx.configure("flaky", json!({"status": 503})).await;
    for i in 0..5 {
        assert_eq!(app.post("/api/v1/tickets", &ticket(&format!("f-{i}"))).await.0, 201);
        assert_eq!(app.set_status(&format!("f-{i}"), "RUNNING").await.0, 200);
    }
    eventually("failed attempts", 20, || async { rx.received().await.len() >= 5 }).await;
    rx.configure("flaky", json!({"status": 200})).await;
    eventually("all ten delivered", 30, || async { rx.delivered("flaky").await.len() >= 10 }).await;
    let all = rx.received().await;
    let mut ids: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for r in &all {
        let key = (r["type"].as_str().unwrap().to_owned(), r["ticket_id"].as_str().unwrap().to_owned());
        ids.entry(key).or_default().insert(r["webhook_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 10);
    assert!(ids.values().all(|set| set.len() == 1), "every retry of an event carries the same webhook-id");
    let delivered_ids: Vec<&str> =
        all.iter().filter(|r| r["status"] == 200).map(|r| r["webhook_id"].as_str().unwrap()).collect();
    assert_eq!(delivered_ids.len(), delivered_ids.iter().collect::<HashSet<_>>().len(), "none delivered twice");
    let deliveries = format!("/api/v1/webhooks/{sub}/deliveries");
    eventually("the attempts recorded", 10, || async {
        let (_, page) = app.get(&deliveries).await;
        page["deliveries"].as_array().unwrap().iter().all(|d| d["status"] == "delivered")
    })
    .await;
    let (_, page) = app.get(&deliveries).await;
    let all_deliveries = page["deliveries"].as_array().unwrap();
    let d = all_deliveries.iter().find(|d| d["attempts"].as_i64().unwrap() >= 2).expect("a retried delivery");
    assert_eq!(d["last_status"], 200);
    // Manual redelivery: same id again — through its own subscription only.
    let id = d["id"].as_str().unwrap();
    let (other, _) = subscribe(&app, &rx, "other", json!({"events": ["ticket.completed"]})).await;
    let res = app
        .req(reqwest::Method::POST, &format!("/api/v1/webhooks/{other}/deliveries/{id}/redeliver"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404, "another subscription's delivery");
    let res = app
        .req(reqwest::Method::POST, &format!("/api/v1/webhooks/{sub}/deliveries/{id}/redeliver"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    eventually("redelivered", 20, || async {
        rx.delivered("flaky").await.iter().filter(|r| r["webhook_id"] == id).count() == 2
    })
    .await;
}

#[tokio::test]
async fn pending_deliveries_survive_a_restart() {
    let rx = VerifyingReceiver::start();
    let (store, _dir) = fresh_store(true).await;
    // A shorter timeout: deliveries claimed by the service that goes away stay leased for 3 × timeout + 5 s.
    let timeout = Duration::from_secs(3);
    let app1 = app_with_timeout(&store, timeout).await;
    subscribe(&app1, &rx, "late", json!({"events": ["ticket.created"]})).await;
    rx.configure("late", json!({"status": 500})).await;
    for i in 0..3 {
        assert_eq!(app1.post("/api/v1/tickets", &ticket(&format!("r-{i}"))).await.0, 201);
    }
    eventually("attempted before the stop", 20, || async { rx.received().await.len() >= 3 }).await;
    drop(app1); // the service goes away with every delivery still pending
    tokio::time::sleep(Duration::from_millis(300)).await;
    rx.configure("late", json!({"status": 200})).await;
    let _app2 = app_with_timeout(&store, timeout).await;
    eventually("delivered by the restarted service", 30, || async { rx.delivered("late").await.len() == 3 }).await;
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_delay_a_healthy_one() {
    let rx = VerifyingReceiver::start();
    let (store, _dir) = fresh_store(true).await;
    // A short timeout: the hanging endpoint's attempts end after 1 s (it answers after 5).
    let app = app_with_timeout(&store, Duration::from_secs(1)).await;
    subscribe(&app, &rx, "hang", json!({"events": ["ticket.created"]})).await;
    let (fast, _) = subscribe(&app, &rx, "fast", json!({"events": ["ticket.created"]})).await;
    rx.configure("hang", json!({"delay": 5})).await;
    let started = Instant::now();
    for i in 0..40 {
        assert_eq!(app.post("/api/v1/tickets", &ticket(&format!("h-{i}"))).await.0, 201);
    }
    let (posted, posted_at) = (started.elapsed(), Instant::now());
    // Behind the hanging endpoint (1 s per attempt) the 40 would take 40 s or more.
    while rx.delivered("fast").await.len() < 40 {
        if posted_at.elapsed() > Duration::from_secs(15) {
            // What the service says of the healthy endpoint's deliveries, to tell a slow claim from a stuck one.
            let (_, page) = app.get(&format!("/api/v1/webhooks/{fast}/deliveries?limit=100")).await;
            let states: Vec<String> = page["deliveries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| format!("{}/{}/{}", d["status"], d["attempts"], d["last_error"]))
                .collect();
            panic!(
                "the healthy endpoint got {} of 40 after {:?} (posting took {posted:?}); its deliveries: {states:?}",
                rx.delivered("fast").await.len(),
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn gone_disables_rotation_overlaps_and_metadata_urls_get_created() {
    let rx = VerifyingReceiver::start();
    let (store, _dir) = fresh_store(false).await;
    let app = app(&store).await;
    let (gone, _) = subscribe(&app, &rx, "gone", json!({"events": ["ticket.created"]})).await;
    rx.configure("gone", json!({"status": 410})).await;
    let (rot, _) = subscribe(&app, &rx, "rot", json!({"events": ["ticket.created"]})).await;
    let res = app.req(reqwest::Method::POST, &format!("/api/v1/webhooks/{rot}/rotate-secret")).send().await.unwrap();
    let rotated: Value = res.json().await.unwrap();
    rx.configure("rot", json!({"secret": rotated["secret"]})).await;
    let mut legacy = ticket("m-1");
    legacy["metadata"]["webhook_url"] = json!(rx.url("legacy"));
    assert_eq!(app.post("/api/v1/tickets", &legacy).await.0, 201);
    eventually("all three endpoints reached", 20, || async {
        let r = rx.received().await;
        ["gone", "rot", "legacy"].iter().all(|e| r.iter().any(|x| x["endpoint"] == *e))
    })
    .await;
    let r = rx.received().await;
    let rot_hit = r.iter().find(|x| x["endpoint"] == "rot").unwrap();
    assert_eq!(rot_hit["verified_with"], json!([0, 1]), "old and new secret both sign during the overlap");
    let sig = rot_hit["headers"]["webhook-signature"].as_str().unwrap();
    assert_eq!(sig.split(' ').count(), 2);
    let legacy_hit = r.iter().find(|x| x["endpoint"] == "legacy").unwrap();
    assert_eq!((legacy_hit["type"].as_str(), legacy_hit["ticket_id"].as_str()), (Some("ticket.created"), Some("m-1")));
    eventually("410 disabled the subscription", 10, || async {
        app.get(&format!("/api/v1/webhooks/{gone}")).await.1["disabled_reason"].is_string()
    })
    .await;
    assert_eq!(r.iter().filter(|x| x["endpoint"] == "gone").count(), 1, "no retry after 410 Gone");
    let (code, resumed) = app.patch(&format!("/api/v1/webhooks/{gone}"), &json!({"paused": false})).await;
    assert_eq!((code, resumed["disabled_reason"].clone()), (200, Value::Null), "resuming re-enables it");
    let res = app.req(reqwest::Method::DELETE, &format!("/api/v1/webhooks/{gone}")).send().await.unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(app.get(&format!("/api/v1/webhooks/{gone}")).await.0, 404);
}

/// Issue #17, finding 15: a receiver's 429 and its `Retry-After` (seconds or HTTP-date) are honoured, bounded
/// by the schedule's longest step, and a 429 does not count as the endpoint failing.
#[tokio::test]
async fn too_many_requests_waits_as_asked_and_is_not_a_failure() {
    use webhook_support::{Reply, ScriptedReceiver};
    let rx = ScriptedReceiver::start().await;
    let (store, _dir) = fresh_store(true).await;
    let app = app(&store).await; // schedule 0.2, 0.4, 0.8, 1.6, 3.2 s
    let mut subscriptions = HashMap::new();
    for name in ["secs", "date", "capped", "always"] {
        let body = json!({"url": rx.url(&format!("/hook/{name}")), "events": ["ticket.created"]});
        let (code, created) = app.post("/api/v1/webhooks", &body).await;
        assert_eq!(code, 201, "{created}");
        subscriptions.insert(name, created["id"].as_str().unwrap().to_owned());
    }
    rx.script("/hook/secs", vec![Reply::status(429).header("retry-after", "2")]);
    // An HTTP-date a few seconds ahead, within the bound (whole seconds: the format has no fraction).
    let date = std::time::SystemTime::now() + Duration::from_secs(3);
    rx.script("/hook/date", vec![Reply::status(429).header("retry-after", &httpdate::fmt_http_date(date))]);
    let date = httpdate::parse_http_date(&httpdate::fmt_http_date(date)).unwrap();
    // An hour asked: cut to the schedule's longest step (3.2 s here).
    rx.script("/hook/capped", vec![Reply::status(429).header("retry-after", "3600")]);
    rx.always("/hook/always", Reply::status(429).header("retry-after", "1"));
    assert_eq!(app.post("/api/v1/tickets", &ticket("throttled-1")).await.0, 201);

    let delivered = |path: &'static str| {
        let rx = &rx;
        async move { rx.hits(path).iter().any(|h| h.status == 200) }
    };
    eventually("secs, date and capped delivered after their 429", 30, || async {
        delivered("/hook/secs").await && delivered("/hook/date").await && delivered("/hook/capped").await
    })
    .await;
    let gap = |path: &str| {
        let hits = rx.hits(path);
        assert!(hits.len() >= 2, "{path}: {hits:?}");
        assert_eq!(hits[0].headers["webhook-id"], hits[1].headers["webhook-id"], "the same delivery, retried");
        hits[1].at - hits[0].at
    };
    let secs = gap("/hook/secs");
    assert!(secs >= Duration::from_secs(2), "Retry-After: 2 was honoured: the retry came after {secs:?}");
    let retried_at = rx.hits("/hook/date")[1].wall;
    assert!(retried_at >= date, "Retry-After as an HTTP-date: retried {:?} before it", date.duration_since(retried_at));
    let capped = gap("/hook/capped");
    assert!(
        capped >= Duration::from_millis(3200) && capped < Duration::from_secs(30),
        "Retry-After: 3600 waits the schedule's longest step, not an hour: {capped:?}"
    );

    // An endpoint that keeps answering 429 is slowed down, not counted as failing.
    eventually("three attempts at the always-429 endpoint", 30, || async { rx.hits("/hook/always").len() >= 3 }).await;
    let hits = rx.hits("/hook/always");
    for pair in hits.windows(2) {
        assert!(pair[1].at - pair[0].at >= Duration::from_secs(1), "Retry-After: 1 between attempts: {hits:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // the attempts' records are flushed
    let (code, sub) = app.get(&format!("/api/v1/webhooks/{}", subscriptions["always"])).await;
    assert_eq!(code, 200);
    assert_eq!(sub["consecutive_failures"], 0, "429 is not a failure of the endpoint: {sub}");
    assert!(sub["disabled_reason"].is_null(), "{sub}");
    let metrics = app.client.get(format!("{}/metrics", app.metrics_base)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("webhooks_failed_total{") && l.contains("outcome=\"throttled\"")),
        "429s are counted as throttled: {metrics}"
    );
}

/// A name that answers differently on successive lookups (DNS rebinding).
struct Flipping {
    lookups: std::sync::atomic::AtomicUsize,
    answers: Vec<std::net::IpAddr>,
}

impl ticket_supervisor::webhooks::address::Resolve for Flipping {
    fn lookup<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
    ) -> futures::future::BoxFuture<'a, std::io::Result<Vec<std::net::IpAddr>>> {
        let n = self.lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ip = self.answers[n % self.answers.len()];
        Box::pin(async move { Ok(vec![ip]) })
    }
}

/// Issue #17, finding 5: the address the delivery connects to is one the policy checked. 127.0.0.1 is
/// allowed, 127.0.0.2 is not; the name flips between them on every lookup, and listeners on both (same
/// port) count who is reached — subscriptions and `metadata.webhook_url` deliveries alike.
#[actix_rt::test]
async fn dns_rebinding_never_reaches_a_forbidden_address() {
    use actors::webhooks::{Delivery, DeliveryStatus, Subscription, WebhookTransport};
    use std::sync::Arc;
    use ticket_supervisor::webhooks::address::AddressPolicy;
    use ticket_supervisor::webhooks::transport::HttpTransport;
    use webhook_support::ScriptedReceiver;

    // Both loopback addresses on one port (127.0.0.0/8 is all loopback on Linux).
    let (allowed, forbidden) = 'bind: {
        for _ in 0..20 {
            let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = first.local_addr().unwrap().port();
            if let Ok(second) = tokio::net::TcpListener::bind(("127.0.0.2", port)).await {
                break 'bind (ScriptedReceiver::on(first), ScriptedReceiver::on(second));
            }
        }
        panic!("no port free on both 127.0.0.1 and 127.0.0.2");
    };
    let port = allowed.addr.port();
    // Lookups answer .1, .2, .1, .2 …: a connection made with a second lookup after a check would get .2.
    let answers = ["127.0.0.1", "127.0.0.2"].iter().map(|a| a.parse().unwrap()).collect();
    let resolver = Arc::new(Flipping { lookups: Default::default(), answers });
    let policy = AddressPolicy::parse("127.0.0.1/32").unwrap().with_resolver(resolver.clone());
    let settings = common::settings(&Store::Embedded("/nonexistent".into()));
    let issuer = ticket_supervisor::auth::token::TokenIssuer::new(&settings.jwt);
    let transport = HttpTransport::new(Duration::from_secs(5), policy, "whsec_dGVzdA==".into(), issuer);

    let url = format!("http://rebinding.test:{port}/hook");
    let subscription = Subscription {
        id: "sub".into(),
        url: url.clone(),
        events: vec!["ticket.created".into()],
        task_types: Vec::new(),
        capabilities: None,
        min_priority: None,
        plan_id: None,
        secret: "whsec_dGVzdA==".into(),
        previous_secret: None,
        previous_secret_until: None,
        paused: false,
        disabled_reason: None,
        consecutive_failures: 0,
        failing_since: None,
        created_at: 0,
        updated_at: 0,
    };
    let (mut delivered, mut refused) = (0, 0);
    for i in 0..30 {
        let delivery = Delivery {
            id: format!("msg_{i}"),
            subscription_id: (i % 2 == 0).then(|| "sub".to_owned()),
            url: url.clone(),
            event_type: "ticket.created".into(),
            ticket_id: format!("t-{i}"),
            at: 0,
            data: json!({"ticket": null}),
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_status: None,
            last_error: None,
            next_attempt_at: Some(0),
            created_at: 0,
            delivered_at: None,
            traceparent: None,
        };
        let sub = delivery.subscription_id.as_ref().map(|_| &subscription);
        let outcome = transport.send(&delivery, sub).await;
        if outcome.ok() {
            delivered += 1;
        } else {
            let error = outcome.error.unwrap_or_default();
            assert!(error.contains("127.0.0.2"), "refused for the forbidden address: {error}");
            refused += 1;
        }
    }
    assert_eq!(forbidden.all_hits().len(), 0, "a connection reached the forbidden address 127.0.0.2");
    assert_eq!(allowed.all_hits().len(), delivered);
    assert!(delivered > 0 && refused > 0, "both answers were seen: {delivered} delivered, {refused} refused");
}
