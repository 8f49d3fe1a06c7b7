//! The `ticketctl` binary against a running application: create from a file, get, list, update, errors; and
//! a DLQ replay from a real broker (tansu, from scripts/test.sh).

use crate::common;

use std::process::Output;

use common::servers::Kafka;
use common::{spawn_app, ticket, TestApp, SERVICE_SECRET};
use serde_json::Value;

/// Run ticketctl against `app` with the service token in its environment.
async fn ticketctl(app: &TestApp, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketctl"))
        .arg("--addr")
        .arg(format!("http://127.0.0.1:{}", app.grpc_port))
        .args(args)
        .env("TICKETCTL_TOKEN", &app.token)
        .env_remove("SERVICE_JWT_SECRET")
        .output()
        .await
        .expect("run ticketctl")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "ticketctl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test]
async fn create_from_a_file_then_get_list_and_update() {
    let (store, _dir) = common::fresh_store(false).await;
    let app = spawn_app(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ticket.json");
    std::fs::write(&file, ticket("ctl-1").to_string()).unwrap();
    let file = file.to_str().unwrap();

    let created = stdout(&ticketctl(&app, &["create", file]).await);
    assert!(created.starts_with("created\n"), "{created}");
    assert!(created.contains("ctl-1") && created.contains("PENDING"), "a table of the ticket: {created}");
    let again = stdout(&ticketctl(&app, &["create", file]).await);
    assert!(again.starts_with("already exists"), "an idempotent create: {again}");

    let got: Value = serde_json::from_str(&stdout(&ticketctl(&app, &["--json", "get", "ctl-1"]).await)).unwrap();
    assert_eq!((got["ticket_id"].as_str(), got["status"].as_str()), (Some("ctl-1"), Some("PENDING")));
    assert_eq!(got["parameters"]["image"], "svc:1.2", "parameters as an object");
    assert_eq!(got["version"], 1);

    let listed = stdout(&ticketctl(&app, &["list", "--plan", "plan-1"]).await);
    let mut lines = listed.lines();
    assert!(lines.next().unwrap().starts_with("TICKET_ID  STATUS"), "{listed}");
    assert!(lines.next().unwrap().starts_with("ctl-1      PENDING"), "{listed}");
    assert!(listed.ends_with("(1 of 1 shown)\n"), "{listed}");
    let other_plan: Value =
        serde_json::from_str(&stdout(&ticketctl(&app, &["--json", "list", "--plan", "nope"]).await)).unwrap();
    assert_eq!(other_plan["total"], 0);

    let updated = stdout(&ticketctl(&app, &["--json", "update", "ctl-1", "running"]).await);
    let updated: Value = serde_json::from_str(&updated).unwrap();
    assert_eq!((updated["status"].as_str(), updated["version"].as_i64()), (Some("RUNNING"), Some(2)));

    let missing = ticketctl(&app, &["get", "ctl-missing"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"), "{missing:?}");

    // A service token minted by ticketctl itself is accepted.
    let minted = ticketctl(&app, &["dev-token", "--secret", SERVICE_SECRET]).await;
    let token = stdout(&minted).trim().to_owned();
    let listed = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketctl"))
        .args(["--addr", &format!("http://127.0.0.1:{}", app.grpc_port), "--token", &token, "list"])
        .env_remove("TICKETCTL_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(stdout(&listed).contains("ctl-1"));
}

#[tokio::test]
async fn dlq_replay_creates_what_decodes_and_reports_the_rest() {
    let kafka = Kafka::start();
    kafka.create_topic("dlq-replay", 1).await;
    let producer = kafka.producer();
    kafka.produce(&producer, "dlq-replay", "ctl-dlq-1", ticket("ctl-dlq-1").to_string().as_bytes()).await;
    kafka.produce(&producer, "dlq-replay", "junk", b"{not a ticket").await;
    let (store, _dir) = common::fresh_store(false).await;
    let app = spawn_app(&store).await;
    let replay = ["--json", "dlq-replay", "--bootstrap", &kafka.bootstrap(), "--topic", "dlq-replay"];

    let out = ticketctl(&app, &replay).await;
    assert_eq!(out.status.code(), Some(1), "one message could not be replayed");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes: Vec<(&str, &str)> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["ticket_id"].as_str().unwrap_or("-"), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(outcomes, vec![("ctl-dlq-1", "created"), ("-", "undecodable")], "{report}");
    assert_eq!(app.get("/api/v1/tickets/ctl-dlq-1").await.0, 200);

    let again: Value = serde_json::from_slice(&ticketctl(&app, &replay).await.stdout).unwrap();
    assert_eq!(again["results"][0]["outcome"], "exists", "a replay is idempotent: {again}");
    let dry = stdout(
        &ticketctl(
            &app,
            &["dlq-replay", "--bootstrap", &kafka.bootstrap(), "--topic", "dlq-replay", "--limit", "1", "--dry-run"],
        )
        .await,
    );
    assert!(dry.contains("skipped") && dry.contains("(1 read, 0 not replayed)"), "{dry}");
}
