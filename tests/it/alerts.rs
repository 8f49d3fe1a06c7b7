//! The shipped alerts (`k8s/prometheusrule.yaml`) and dashboard (`k8s/grafana-dashboard.json`) against what a
//! running service really exposes. A service with every part switched on (PostgreSQL, Kafka in and out, MongoDB
//! audit, webhooks to a failing receiver) is driven until it has produced each kind of series; then its scrape
//! is checked by `tests/python/check_scrape.py`: every metric and label the rules and the dashboard select
//! exists in the scrape, and every input series of the rules' unit tests (`k8s/alerts/prometheusrule-tests.yaml`)
//! has the shape of a real one. Then `promtool check rules` and `promtool test rules` run on the shipped rules:
//! each alert has a test that fires it and one that keeps it quiet. promtool comes with Debian's `prometheus`
//! package, PyYAML and promql-parser from PyPI (scripts/test.sh installs them).

use crate::common;
use crate::webhook_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::servers::{Kafka, Mongo};
use common::Store;
use common::{fresh_database, spawn_app_with, ticket};
use serde_json::json;
use ticket_supervisor::config::{KafkaEventsSettings, MongoSettings};
use webhook_support::{Reply, ScriptedReceiver};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `spec` of the PrometheusRule as a plain Prometheus rule file (what promtool reads).
pub fn rule_file() -> String {
    let manifest = std::fs::read_to_string(root().join("k8s/prometheusrule.yaml")).unwrap();
    let spec = manifest.split_once("\nspec:\n").expect("a spec").1;
    spec.lines()
        .map(|l| {
            assert!(l.is_empty() || l.starts_with("  "), "spec ends the manifest: {l}");
            l.get(2..).unwrap_or("")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn run(what: &str, cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{what} does not run: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{what} failed:\n{text}"))
    }
}

/// The scrape check on `scrape` (a file holding the metrics port's answer).
fn check_scrape(scrape: &Path) -> Result<String, String> {
    run(
        "tests/python/check_scrape.py",
        Command::new("python3")
            .arg(root().join("tests/python/check_scrape.py"))
            .arg(scrape)
            .arg(root().join("k8s"))
            .arg(root().join("k8s/alerts/prometheusrule-tests.yaml")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_alerts_and_dashboard_select_real_series_and_each_alert_fires_in_its_unit_test() {
    let dir = tempfile::tempdir().unwrap();
    // The rules first: a syntax error needs no service to be found.
    std::fs::write(dir.path().join("rules.yaml"), rule_file()).unwrap();
    std::fs::copy(root().join("k8s/alerts/prometheusrule-tests.yaml"), dir.path().join("tests.yaml")).unwrap();
    let checked = run(
        "promtool check rules",
        Command::new("promtool").args(["check", "rules", "rules.yaml"]).current_dir(dir.path()),
    );
    println!("{}", checked.unwrap_or_else(|e| panic!("{e}")));
    let tested = run(
        "promtool test rules",
        Command::new("promtool").args(["test", "rules", "tests.yaml"]).current_dir(dir.path()),
    );
    println!("{}", tested.unwrap_or_else(|e| panic!("{e}")));

    let kafka = Kafka::start();
    let mongo = Mongo::start();
    for topic in ["tickets-al", "tickets-al.dlq", "events-al", "violations-al"] {
        kafka.create_topic(topic, 1).await;
    }
    let rx = ScriptedReceiver::start().await;
    rx.always("/hook", Reply::status(500));
    let store = Store::Postgres(Box::new(fresh_database().await));
    let app = spawn_app_with(&store, |s| {
        s.kafka = Some(ticket_supervisor::config::KafkaSettings {
            events: Some(KafkaEventsSettings {
                topic: "events-al".into(),
                sla_violations_topic: "violations-al".into(),
                delivery_timeout: Duration::from_secs(3),
            }),
            ..kafka.consumer_settings("tickets-al", "svc-al")
        });
        s.mongo =
            Some(MongoSettings { uri: mongo.uri(), database: "alerts".into(), collection: "ticket_audit_log".into() });
        s.webhooks.allowed_networks = "127.0.0.0/8".into();
        s.webhooks.schedule = [100, 100].into_iter().map(Duration::from_millis).collect();
    })
    .await;

    // Each kind of series the rules and the dashboard select: a failing webhook, a CRITICAL ticket breached at
    // once, a ticket consumed from Kafka, a gRPC call, REST calls (all of these also persist and ship records).
    let (code, sub) =
        app.post("/api/v1/webhooks", &json!({"url": rx.url("/hook"), "events": ["ticket.created"]})).await;
    assert_eq!(code, 201, "{sub}");
    let mut late = ticket("al-critical");
    late["priority"] = json!("critical");
    late["sla"]["deadline"] = json!(chrono::Utc::now().timestamp_millis() - 60_000);
    assert_eq!(app.post("/api/v1/tickets", &late).await.0, 201);
    let producer = kafka.producer();
    kafka.produce(&producer, "tickets-al", "al-kafka", &serde_json::to_vec(&ticket("al-kafka")).unwrap()).await;
    let mut grpc = app.grpc().await;
    let get = ticket_supervisor::grpc::pb::GetTicketRequest { ticket_id: "al-critical".into() };
    grpc.get_ticket(common::authed(get, &app.token)).await.expect("a gRPC call");

    // Stored and its offset committed: the lag is known only from a committed offset (the first message after
    // the group's assignment was once stored under the old generation and never committed).
    common::eventually("the Kafka ticket stored and committed", 30, || async {
        app.get("/api/v1/tickets/al-kafka").await.0 == 200 && kafka.committed("svc-al", "tickets-al") == Some(1)
    })
    .await;
    let scrape = dir.path().join("scrape.txt");
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let text = app.client.get(format!("{}/metrics", app.metrics_base)).send().await.unwrap().text().await.unwrap();
        std::fs::write(&scrape, &text).unwrap();
        match check_scrape(&scrape) {
            Ok(report) => break report,
            Err(e) if Instant::now() > deadline => panic!("{e}\nthe last scrape:\n{text}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    println!("{report}");
}
