//! Per-caller rate limits (issue #22): a noisy caller gets 429 / RESOURCE_EXHAUSTED while another caller's calls
//! all succeed; unauthenticated callers are limited by address; the refusals are counted.

use crate::common;

use common::{authed, spawn_app_with, SERVICE_SECRET};
use ticket_supervisor::config::RateLimitSettings;
use ticket_supervisor::grpc::pb;

const LIMITS: RateLimitSettings =
    RateLimitSettings { reads_per_second: 20, writes_per_second: 20, tokens_per_second: 5, burst_seconds: 1 };

#[tokio::test]
async fn a_noisy_caller_is_limited_and_the_others_are_not() {
    let (store, _dir) = common::fresh_store(false).await;
    let app = spawn_app_with(&store, |s| s.rate_limits = LIMITS).await;
    let noisy =
        ticket_supervisor::auth::token::service_token(SERVICE_SECRET, &app.settings.auth, "noisy", 600).unwrap();
    let (code, _) = app.post("/api/v1/tickets", &common::ticket("rl-1")).await;
    assert_eq!(code, 201);

    // REST: the noisy caller's reads beyond its budget are refused with Retry-After…
    let mut refused = 0;
    for _ in 0..60 {
        let res = app.client.get(app.url("/api/v1/tickets/rl-1")).bearer_auth(&noisy).send().await.unwrap();
        match res.status().as_u16() {
            200 => {}
            429 => {
                refused += 1;
                let after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(after >= 1, "{after}");
                let body: serde_json::Value = res.json().await.unwrap();
                assert!(body["detail"].as_str().unwrap().contains("rate limit"), "{body}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 30, "only {refused} of 60 refused");
    // …while the orchestrator's all succeed, reads and writes.
    for i in 0..10 {
        assert_eq!(app.get("/api/v1/tickets/rl-1").await.0, 200);
        assert_eq!(app.post("/api/v1/tickets", &common::ticket(&format!("rl-o-{i}"))).await.0, 201);
    }

    // gRPC: the same budget (REST and gRPC are one caller), RESOURCE_EXHAUSTED with RetryInfo.
    let mut grpc = app.grpc().await;
    let get = |token: &str| authed(pb::GetTicketRequest { ticket_id: "rl-1".into() }, token);
    let mut exhausted = None;
    for _ in 0..40 {
        if let Err(status) = grpc.get_ticket(get(&noisy)).await {
            exhausted = Some(status);
        }
    }
    let status = exhausted.expect("the noisy caller is limited on gRPC too");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    use tonic_types::StatusExt as _;
    let retry = status.get_details_retry_info().expect("google.rpc.RetryInfo");
    assert!(retry.retry_delay.is_some_and(|d| d > std::time::Duration::ZERO), "{retry:?}");
    assert!(status.metadata().get("retry-after").is_some());
    for _ in 0..10 {
        grpc.get_ticket(get(&app.token)).await.expect("the other caller is not limited");
    }

    // No token: limited by address (401 until the budget is spent, then 429).
    let mut codes = Vec::new();
    for _ in 0..40 {
        codes.push(app.client.get(app.url("/api/v1/tickets/rl-1")).send().await.unwrap().status().as_u16());
    }
    assert!(codes.contains(&401) && codes.contains(&429), "{codes:?}");

    // Probes are never limited.
    for _ in 0..50 {
        assert_eq!(app.client.get(app.url("/health")).send().await.unwrap().status(), 200);
    }

    let metrics = reqwest::get(format!("{}/metrics", app.metrics_base)).await.unwrap().text().await.unwrap();
    for series in [
        "rate_limited_total{principal_kind=\"service\",route_class=\"read\"}",
        "rate_limited_total{principal_kind=\"peer\",route_class=\"read\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

/// Minting ticket tokens has its own budget: a caller that spent it can still read.
#[tokio::test]
async fn token_minting_has_its_own_budget() {
    let (store, _dir) = common::fresh_store(false).await;
    let app = spawn_app_with(&store, |s| s.rate_limits = LIMITS).await;
    assert_eq!(app.post("/api/v1/tickets", &common::ticket("rl-t")).await.0, 201);
    let mut codes = Vec::new();
    for _ in 0..15 {
        codes.push(app.get("/api/v1/tickets/rl-t/token").await.0);
    }
    assert!(codes.contains(&429), "{codes:?}");
    assert_eq!(app.get("/api/v1/tickets/rl-t").await.0, 200, "reads are another budget");
}
