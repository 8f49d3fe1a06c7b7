//! Per-caller rate limits (issue #22): a noisy caller gets 429 / RESOURCE_EXHAUSTED while another caller's calls
//! all succeed; unauthenticated callers are limited by address; the refusals are counted.
//!
//! A budget refills while the test runs, so how many calls a burst loses depends on how fast the machine serves
//! them. The tests therefore send in concurrent rounds until a refusal comes (a loaded CI machine just needs more
//! rounds), and check what a token bucket guarantees whatever the speed: no more calls pass than the burst plus
//! the rate over the time taken.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::common;

use common::{authed, spawn_app_with, SERVICE_SECRET};
use ticket_supervisor::config::RateLimitSettings;
use ticket_supervisor::grpc::pb;

const LIMITS: RateLimitSettings =
    RateLimitSettings { reads_per_second: 20, writes_per_second: 20, tokens_per_second: 5, burst_seconds: 1 };

/// Sends `calls()` in concurrent rounds of `round` until one of them is refused (`refused` says which are), for
/// at most 30 s. Returns every outcome and the time taken.
async fn until_refused<T, F: Future<Output = T>>(
    round: usize,
    calls: impl Fn() -> F,
    refused: impl Fn(&T) -> bool,
) -> (Vec<T>, Duration) {
    let started = Instant::now();
    let mut outcomes = Vec::new();
    while !outcomes.iter().any(&refused) {
        assert!(started.elapsed() < Duration::from_secs(30), "no call refused in 30 s");
        outcomes.extend(futures::future::join_all((0..round).map(|_| calls())).await);
    }
    (outcomes, started.elapsed())
}

/// A token bucket of `per_second` × 1 s lets through at most its burst plus what refilled while the calls ran
/// (one more for the refill that may land between the clock reads).
fn assert_within_budget(passed: usize, per_second: u32, took: Duration) {
    let most = f64::from(per_second) * (1.0 + took.as_secs_f64()) + 1.0;
    assert!(passed as f64 <= most, "{passed} calls passed in {took:?}; a budget of {per_second}/s allows {most:.0}");
}

#[tokio::test]
async fn a_noisy_caller_is_limited_and_the_others_are_not() {
    let (store, _dir) = common::fresh_store(false).await;
    let app = spawn_app_with(&store, |s| s.rate_limits = LIMITS).await;
    let noisy =
        ticket_supervisor::auth::token::service_token(SERVICE_SECRET, &app.settings.auth, "noisy", 600).unwrap();
    let (code, _) = app.post("/api/v1/tickets", &common::ticket("rl-1")).await;
    assert_eq!(code, 201);

    // REST: the noisy caller's reads beyond its budget are refused with Retry-After…
    let read = || app.client.get(app.url("/api/v1/tickets/rl-1")).bearer_auth(&noisy).send();
    let (answers, took) = until_refused(60, read, |r| matches!(r, Ok(r) if r.status() == 429)).await;
    let mut passed = 0;
    for res in answers {
        let res = res.unwrap();
        match res.status().as_u16() {
            200 => passed += 1,
            429 => {
                let after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(after >= 1, "{after}");
                let body: serde_json::Value = res.json().await.unwrap();
                assert!(body["detail"].as_str().unwrap().contains("rate limit"), "{body}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(passed >= 1, "the budget lets the first calls through");
    assert_within_budget(passed, LIMITS.reads_per_second, took);
    // …while the orchestrator's all succeed, reads and writes.
    for i in 0..10 {
        assert_eq!(app.get("/api/v1/tickets/rl-1").await.0, 200);
        assert_eq!(app.post("/api/v1/tickets", &common::ticket(&format!("rl-o-{i}"))).await.0, 201);
    }

    // gRPC: the same budget (REST and gRPC are one caller), RESOURCE_EXHAUSTED with RetryInfo.
    let mut grpc = app.grpc().await;
    let get = |token: &str| authed(pb::GetTicketRequest { ticket_id: "rl-1".into() }, token);
    let noisy_get = || {
        let mut grpc = grpc.clone();
        let call = get(&noisy);
        async move { grpc.get_ticket(call).await }
    };
    let (answers, took) = until_refused(40, noisy_get, |r| r.is_err()).await;
    let passed = answers.iter().filter(|r| r.is_ok()).count();
    assert_within_budget(passed, LIMITS.reads_per_second, took);
    let status = answers.into_iter().find_map(Result::err).expect("the noisy caller is limited on gRPC too");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    use tonic_types::StatusExt as _;
    let retry = status.get_details_retry_info().expect("google.rpc.RetryInfo");
    assert!(retry.retry_delay.is_some_and(|d| d > std::time::Duration::ZERO), "{retry:?}");
    assert!(status.metadata().get("retry-after").is_some());
    for _ in 0..10 {
        grpc.get_ticket(get(&app.token)).await.expect("the other caller is not limited");
    }

    // No token: limited by address (401 until the budget is spent, then 429).
    let anonymous =
        || async { app.client.get(app.url("/api/v1/tickets/rl-1")).send().await.unwrap().status().as_u16() };
    let (codes, took) = until_refused(40, anonymous, |code| *code == 429).await;
    assert!(codes.iter().all(|c| [401, 429].contains(c)), "{codes:?}");
    assert_within_budget(codes.iter().filter(|c| **c == 401).count(), LIMITS.reads_per_second, took);
    assert!(codes.contains(&401), "{codes:?}");

    // Probes are never limited: more at once than any budget holds.
    let probe = || async { app.client.get(app.url("/health")).send().await.unwrap().status().as_u16() };
    let probes = futures::future::join_all((0..50).map(|_| probe())).await;
    assert!(probes.iter().all(|c| *c == 200), "{probes:?}");

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
    let mint = || async { app.get("/api/v1/tickets/rl-t/token").await.0 };
    let (codes, took) = until_refused(15, mint, |code| *code == 429).await;
    assert!(codes.iter().all(|c| [200, 429].contains(c)), "{codes:?}");
    assert_within_budget(codes.iter().filter(|c| **c == 200).count(), LIMITS.tokens_per_second, took);
    assert_eq!(app.get("/api/v1/tickets/rl-t").await.0, 200, "reads are another budget");
}
