//! The observability metrics, scraped from a running application: store calls by operation, gRPC calls by
//! method and code, tickets by status; and the store query behind the last.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actors::enums::TicketStatus;
use actors::store::{TicketStore, Write, WriteUnit};
use actors::validation::NewTicket;
use common::{authed, spawn_app, ticket, TestApp};
use ticket_supervisor::grpc::pb;
use ticket_supervisor::store::postgres::PgTicketStore;
use ticket_supervisor::store::sqlite::SqliteTicketStore;

/// Every sample of `name` whose labels include `labels`, summed (None: no such sample).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let have: BTreeMap<&str, &str> =
            label_text.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k, v.trim_matches('"'))).collect();
        if labels.iter().all(|(k, v)| have.get(k) == Some(v)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

async fn scrape(app: &TestApp) -> String {
    app.client.get(format!("{}/metrics", app.metrics_base)).send().await.unwrap().text().await.unwrap()
}

async fn metrics_of_store_and_grpc_calls(pg: bool) {
    let (store, _dir) = common::fresh_store(pg).await;
    let app = spawn_app(&store).await;
    let text = scrape(&app).await;
    assert_eq!(sample(&text, "postgres_queries_total", &[("operation", "history")]), Some(0.0), "exported at 0");
    // The process families dashboards expect (issue #20): this test process's own, as the service shares it.
    assert!(sample(&text, "process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6), "{text}");
    assert!(sample(&text, "process_open_fds", &[]).is_some_and(|n| n >= 3.0), "{text}");
    assert!(sample(&text, "process_start_time_seconds", &[]).is_some_and(|t| t > 1.7e9), "{text}");
    assert!(sample(&text, "process_cpu_seconds_total", &[]).is_some(), "{text}");

    assert_eq!(app.post("/api/v1/tickets", &ticket("obs-1")).await.0, 201);
    assert_eq!(app.get("/api/v1/tickets/obs-missing").await.0, 404);
    let mut grpc = app.grpc().await;
    let get = |id: &str| authed(pb::GetTicketRequest { ticket_id: id.into() }, &app.token);
    grpc.get_ticket(get("obs-1")).await.unwrap();
    grpc.get_ticket(get("obs-1")).await.unwrap();
    let missing = grpc.get_ticket(get("obs-missing")).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let unauthenticated = grpc.get_ticket(pb::GetTicketRequest { ticket_id: "obs-1".into() }).await.unwrap_err();
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);

    let text = scrape(&app).await;
    let commits = sample(&text, "postgres_queries_total", &[("operation", "commit")]).unwrap();
    assert!(commits >= 1.0, "the create was committed through the metered store: {text}");
    let timed = sample(&text, "postgres_query_duration_seconds_count", &[("operation", "commit")]).unwrap();
    assert_eq!(timed, commits, "every call is timed");
    assert!(
        sample(&text, "postgres_queries_total", &[("operation", "get")]).unwrap() >= 1.0,
        "a missing ticket is looked up in the store"
    );

    // go-grpc-prometheus's labels, so its dashboards and alerts apply (issue #20).
    let method =
        [("grpc_type", "unary"), ("grpc_service", "ticket_service.TicketService"), ("grpc_method", "GetTicket")];
    let handled = |code: &str| {
        let labels: Vec<(&str, &str)> = method.iter().copied().chain([("grpc_code", code)]).collect();
        sample(&text, "grpc_server_handled_total", &labels)
    };
    assert_eq!(handled("OK"), Some(2.0), "{text}");
    assert_eq!(handled("NotFound"), Some(1.0));
    assert_eq!(handled("Unauthenticated"), Some(1.0));
    assert_eq!(sample(&text, "grpc_server_started_total", &method), Some(4.0), "{text}");
    assert_eq!(sample(&text, "grpc_server_handling_seconds_count", &method), Some(4.0));
}

#[tokio::test]
async fn store_and_grpc_calls_are_metered_embedded() {
    metrics_of_store_and_grpc_calls(false).await;
}

#[tokio::test]
async fn store_and_grpc_calls_are_metered_postgres() {
    metrics_of_store_and_grpc_calls(true).await;
}

#[tokio::test]
async fn tickets_by_status_is_a_store_count_sampled_when_scraped() {
    let (store, _dir) = common::fresh_store(false).await;
    let app = spawn_app(&store).await;
    for id in ["s-1", "s-2"] {
        assert_eq!(app.post("/api/v1/tickets", &ticket(id)).await.0, 201);
    }
    assert_eq!(app.set_status("s-2", "RUNNING").await.0, 200);
    let text = scrape(&app).await;
    assert_eq!(sample(&text, "tickets_by_status", &[("status", "PENDING")]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "tickets_by_status", &[("status", "RUNNING")]), Some(1.0));
    assert_eq!(sample(&text, "tickets_by_status", &[("status", "COMPLETED")]), Some(0.0), "every status");
    assert_eq!(sample(&text, "postgres_queries_total", &[("operation", "count_by_status")]), Some(1.0));
    let text = scrape(&app).await;
    let queries = sample(&text, "postgres_queries_total", &[("operation", "count_by_status")]);
    assert_eq!(queries, Some(1.0), "a scrape right after another is served from the 5 s cache");
}

async fn count_by_status(pg: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn TicketStore> = if pg {
        Arc::new(PgTicketStore::connect(common::fresh_database().await, 2, Duration::from_secs(10)).await.unwrap())
    } else {
        Arc::new(SqliteTicketStore::open(dir.path()).await.unwrap())
    };
    assert!(store.count_by_status().await.unwrap().iter().all(|(_, n)| *n == 0), "an empty store");
    let with_status = |id: &str, status: &str| {
        let mut v = ticket(id);
        v["status"] = status.into();
        serde_json::from_value::<NewTicket>(v).unwrap().validate(1_800_000_000_000, String::new).unwrap().ticket
    };
    let units: Vec<WriteUnit> = [("a", "PENDING"), ("b", "PENDING"), ("c", "RUNNING"), ("d", "FAILED")]
        .into_iter()
        .map(|(id, status)| WriteUnit(vec![Write::Insert(with_status(id, status))]))
        .collect();
    assert!(store.commit(&units, None).await.iter().all(Result::is_ok));
    let mut counts = store.count_by_status().await.unwrap();
    counts.retain(|(_, n)| *n > 0);
    counts.sort();
    let expected = vec![(TicketStatus::Pending, 2), (TicketStatus::Running, 1), (TicketStatus::Failed, 1)];
    assert_eq!(counts, expected, "{}", store.backend());
}

#[tokio::test]
async fn count_by_status_embedded() {
    count_by_status(false).await;
}

#[tokio::test]
async fn count_by_status_postgres() {
    count_by_status(true).await;
}

/// Every REST answer carries an `x-request-id` (issue #20): the caller's when usable, else a new one, different
/// per request; the same id is the root span's `request_id` (tests/otel.rs checks it in the exported trace).
#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let (store, _dir) = common::fresh_store(false).await;
    let app = spawn_app(&store).await;
    let id_of = |res: &reqwest::Response| res.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
    let mine = app.req(reqwest::Method::GET, "/api/v1/tickets/nope").header("x-request-id", "abc-123").send().await;
    let mine = mine.unwrap();
    assert_eq!((mine.status().as_u16(), id_of(&mine).as_deref()), (404, Some("abc-123")), "an error answer too");
    let (a, b) = (
        app.req(reqwest::Method::GET, "/health").send().await.unwrap(),
        app.client.get(app.url("/ready")).send().await.unwrap(),
    );
    let (a, b) = (id_of(&a).expect("a new id"), id_of(&b).expect("a new id"));
    assert!(uuid::Uuid::parse_str(&a).is_ok() && a != b, "{a} {b}");
    let long = "x".repeat(200);
    let replaced = app.req(reqwest::Method::GET, "/health").header("x-request-id", long.as_str()).send().await.unwrap();
    let replaced = id_of(&replaced).unwrap();
    assert!(replaced != long && uuid::Uuid::parse_str(&replaced).is_ok(), "an unusable id is replaced: {replaced}");
    // The metrics port (scrapes, kubelet probes) answers with one too.
    for path in ["/metrics", "/ready", "/health"] {
        let url = format!("{}{path}", app.metrics_base);
        let probe = app.client.get(&url).header("x-request-id", "probe-1").send().await.unwrap();
        assert_eq!(id_of(&probe).as_deref(), Some("probe-1"), "{path} on the metrics port");
    }
}
