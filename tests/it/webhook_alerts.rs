//! The shipped webhook alert (k8s/prometheusrule.yaml, `WebhookFailureRatioHigh`) against what the service
//! really exposes: the service delivers to a receiver that fails (or succeeds), its /metrics is scraped, the
//! scraped webhook counters become promtool input series (each growing by the scraped value per minute, as a
//! steady state), and `promtool test rules` evaluates the shipped rule on them. promtool comes with Debian's
//! `prometheus` package (scripts/test.sh installs it).

use crate::common;
use crate::webhook_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{eventually, fresh_store, spawn_app_with, ticket};
use serde_json::json;
use webhook_support::{Reply, ScriptedReceiver};

const METRICS: [&str; 2] = ["webhooks_sent_total", "webhooks_failed_total"];

/// Scrape the service after deliveries to a receiver answering `status`, and return the webhook counters as
/// promtool series lines (`metric{labels,job=…}` and the value scraped).
async fn scrape_after_deliveries(status: u16) -> Vec<(String, f64)> {
    let rx = ScriptedReceiver::start().await;
    rx.always("/hook", Reply::status(status));
    let (store, _dir) = fresh_store(true).await;
    let app = spawn_app_with(&store, |s| {
        s.webhooks.allowed_networks = "127.0.0.0/8".into();
        s.webhooks.schedule = [100, 100, 100].into_iter().map(Duration::from_millis).collect();
        s.webhooks.breaker_open = Duration::from_millis(100);
    })
    .await;
    let (code, created) =
        app.post("/api/v1/webhooks", &json!({"url": rx.url("/hook"), "events": ["ticket.created"]})).await;
    assert_eq!(code, 201, "{created}");
    for i in 0..3 {
        assert_eq!(app.post("/api/v1/tickets", &ticket(&format!("alert-{i}"))).await.0, 201);
    }
    // Three deliveries; when they fail, their retries too.
    let attempts = if status == 200 { 3 } else { 6 };
    eventually("deliveries attempted", 30, || async { rx.all_hits().len() >= attempts }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = app.client.get(format!("{}/metrics", app.metrics_base)).send().await.unwrap().text().await.unwrap();
    let series: Vec<(String, f64)> = text
        .lines()
        .filter(|l| METRICS.iter().any(|m| l.starts_with(&format!("{m}{{")) || l.starts_with(&format!("{m} "))))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            // Prometheus adds the job label at scrape time (the ServiceMonitor's job).
            let name = match name.strip_suffix('}') {
                Some(open) => format!("{open},job=\"execution-ticket-service\"}}"),
                None => format!("{name}{{job=\"execution-ticket-service\"}}"),
            };
            (name, value.parse().expect("a sample value"))
        })
        .collect();
    assert!(!series.is_empty(), "no webhook counters in the scrape:\n{text}");
    series
}

/// Run promtool on the scraped series; `firing` whether WebhookFailureRatioHigh must fire after 30 minutes.
fn promtool_test(dir: &Path, series: &[(String, f64)], firing: bool) {
    std::fs::write(dir.join("rules.yaml"), crate::alerts::rule_file()).unwrap();
    let input: String = series
        .iter()
        .map(|(name, value)| format!("      - series: '{name}'\n        values: '0+{value}x60'\n"))
        .collect();
    let expected = if firing {
        "        exp_alerts:\n          - exp_labels: {severity: warning}\n            exp_annotations:\n              \
         summary: More than 10% of webhook deliveries fail\n              \
         description: '100% of webhook deliveries failed over the last 10 minutes.'\n"
    } else {
        "        exp_alerts: []\n"
    };
    let test = format!(
        "rule_files: [rules.yaml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{input}    \
         alert_rule_test:\n      - eval_time: 30m\n        alertname: WebhookFailureRatioHigh\n{expected}"
    );
    std::fs::write(dir.join("test.yaml"), &test).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "test.yaml"])
        .current_dir(dir)
        .output()
        .expect("promtool runs (Debian package prometheus; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}\n{}\ninput:\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn failure_ratio_alert_fires_when_every_delivery_fails() {
    let series = scrape_after_deliveries(500).await;
    assert!(series.iter().any(|(n, v)| n.starts_with("webhooks_failed_total") && *v > 0.0), "{series:?}");
    let dir = tempfile::tempdir().unwrap();
    promtool_test(dir.path(), &series, true);
}

#[tokio::test]
async fn failure_ratio_alert_stays_quiet_when_deliveries_succeed() {
    let series = scrape_after_deliveries(200).await;
    assert!(series.iter().any(|(n, v)| n.starts_with("webhooks_sent_total") && *v > 0.0), "{series:?}");
    let dir = tempfile::tempdir().unwrap();
    promtool_test(dir.path(), &series, false);
}
