//! The observability metrics, scraped from a running application: store calls by operation.

mod common;

use std::collections::BTreeMap;

use common::{spawn_app, ticket, TestApp};

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

async fn metrics_of_store_calls(pg: bool) {
    let (store, _dir) = common::fresh_store(pg).await;
    let app = spawn_app(&store).await;
    let text = scrape(&app).await;
    assert_eq!(sample(&text, "postgres_queries_total", &[("operation", "history")]), Some(0.0), "exported at 0");

    assert_eq!(app.post("/api/v1/tickets", &ticket("obs-1")).await.0, 201);
    assert_eq!(app.get("/api/v1/tickets/obs-missing").await.0, 404);
    let text = scrape(&app).await;
    let commits = sample(&text, "postgres_queries_total", &[("operation", "commit")]).unwrap();
    assert!(commits >= 1.0, "the create was committed through the metered store: {text}");
    let timed = sample(&text, "postgres_query_duration_seconds_count", &[("operation", "commit")]).unwrap();
    assert_eq!(timed, commits, "every call is timed");
    assert!(
        sample(&text, "postgres_queries_total", &[("operation", "get")]).unwrap() >= 1.0,
        "a missing ticket is looked up in the store"
    );
}

#[tokio::test]
async fn store_calls_are_metered_embedded() {
    metrics_of_store_calls(false).await;
}

#[tokio::test]
async fn store_calls_are_metered_postgres() {
    metrics_of_store_calls(true).await;
}
