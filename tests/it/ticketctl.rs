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
    assert_eq!(missing.status.code(), Some(3), "not found has its own exit status");
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

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&stdout(out)).unwrap()
}

#[tokio::test]
async fn retry_cancel_compensate_and_history() {
    let (store, _dir) = common::fresh_store(false).await;
    let app = spawn_app(&store).await;
    let mut body = ticket("ctl-r");
    body["sla"]["max_retries"] = 0.into();
    assert_eq!(app.post("/api/v1/tickets", &body).await.0, 201);
    for status in ["RUNNING", "FAILED"] {
        assert_eq!(app.set_status("ctl-r", status).await.0, 200);
    }

    let retried = json_of(&ticketctl(&app, &["--json", "retry", "ctl-r"]).await);
    assert_eq!(retried["status"], "PENDING");
    let again = ticketctl(&app, &["retry", "ctl-r"]).await;
    assert_eq!(again.status.code(), Some(4), "only a FAILED ticket can be retried: a precondition");
    assert!(String::from_utf8_lossy(&again.stderr).contains("FailedPrecondition"), "{again:?}");
    let cancelled = json_of(&ticketctl(&app, &["--json", "cancel", "ctl-r", "--reason", "not needed"]).await);
    assert_eq!(
        (cancelled["status"].as_str(), cancelled["error_message"].as_str()),
        (Some("CANCELLED"), Some("not needed"))
    );

    let table = stdout(&ticketctl(&app, &["history", "ctl-r"]).await);
    assert!(table.starts_with("AT "), "{table}");
    for kind in ["ticket.created", "ticket.started", "ticket.failed", "ticket.retry", "ticket.cancelled"] {
        assert!(table.contains(kind), "{kind} in {table}");
    }
    let history = json_of(&ticketctl(&app, &["--json", "history", "ctl-r"]).await);
    let kinds: Vec<&str> =
        history["events"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(kinds.last(), Some(&"ticket.cancelled"), "{history}");
    assert_eq!(history["total"].as_u64(), Some(kinds.len() as u64));
    assert_eq!(history["events"][0]["from_status"], Value::Null);

    assert_eq!(app.post("/api/v1/tickets", &ticket("ctl-c")).await.0, 201);
    assert_eq!(app.set_status("ctl-c", "RUNNING").await.0, 200);
    let comp = json_of(&ticketctl(&app, &["--json", "compensate", "ctl-c", "--reason", "rollback it"]).await);
    assert_eq!((comp["original_ticket_id"].as_str(), comp["created"].as_bool()), (Some("ctl-c"), Some(true)));
    assert_eq!(comp["compensation_ticket"]["task_type"], "COMPENSATE", "{comp}");
    let shown = stdout(&ticketctl(&app, &["compensate", "ctl-c", "--reason", "again"]).await);
    assert!(shown.contains("already being compensated"), "{shown}");
    let bad = ticketctl(&app, &["compensate", "ctl-c", "--parameters", "[1]"]).await;
    assert_eq!(bad.status.code(), Some(2), "usage: {bad:?}");
}

#[tokio::test]
async fn exit_statuses_tell_failures_apart_and_addr_takes_host_port() {
    let (store, _dir) = common::fresh_store(false).await;
    let app = spawn_app(&store).await;
    let run = |args: Vec<String>, token: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketctl"))
            .args(args)
            .env("TICKETCTL_TOKEN", token)
            .env_remove("TICKETCTL_ADDR")
            .output()
    };
    let host_port = format!("127.0.0.1:{}", app.grpc_port);
    let args = |rest: &[&str]| -> Vec<String> {
        ["--addr", host_port.as_str()].iter().chain(rest).map(|s| s.to_string()).collect()
    };
    let listed = run(args(&["list"]), &app.token).await.unwrap();
    assert!(listed.status.success(), "host:port: {listed:?}");
    let denied = run(args(&["list"]), "not-a-token").await.unwrap();
    assert_eq!(denied.status.code(), Some(5), "unauthenticated: {denied:?}");
    let missing = run(args(&["history", "nope"]), &app.token).await.unwrap();
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");
    let usage = run(args(&["get"]), &app.token).await.unwrap();
    assert_eq!(usage.status.code(), Some(2), "a missing argument: {usage:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.json");
    std::fs::write(&file, "{}").unwrap();
    let bad_file = run(args(&["create", file.to_str().unwrap()]), &app.token).await.unwrap();
    assert_eq!(bad_file.status.code(), Some(2), "an invalid input file: {bad_file:?}");
    let dup = ticket("ctl-dup");
    assert_eq!(app.post("/api/v1/tickets", &dup).await.0, 201);
    let mut changed = dup.clone();
    changed["description"] = "something else".into();
    std::fs::write(&file, changed.to_string()).unwrap();
    let conflict = run(args(&["create", file.to_str().unwrap()]), &app.token).await.unwrap();
    assert_eq!(conflict.status.code(), Some(4), "a different ticket under a taken id: {conflict:?}");
    let gone = run(vec!["--addr".into(), "127.0.0.1:1".into(), "list".into()], &app.token).await.unwrap();
    assert_eq!(gone.status.code(), Some(6), "unavailable: {gone:?}");
}

/// `watch` outlives a broken connection (a proxy cut and restored): it reconnects with back-off and shows what
/// changed meanwhile (recovered from the history), then follows again — nothing lost, nothing twice.
#[tokio::test]
async fn watch_reconnects_and_recovers_from_the_history() {
    use tokio::io::AsyncBufReadExt as _;
    type Lines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;
    async fn next_of(lines: &mut Lines) -> Value {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line()).await;
        serde_json::from_str::<Value>(&line.expect("a line in time").unwrap().expect("watch still running")).unwrap()
    }
    let (store, _dir) = common::fresh_store(false).await;
    let app = spawn_app(&store).await;
    let link = common::link::Switch::start(("127.0.0.1".into(), app.grpc_port)).await;
    let mut body = ticket("ctl-w");
    body["plan_id"] = "plan-w".into();
    assert_eq!(app.post("/api/v1/tickets", &body).await.0, 201);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketctl"))
        .args(["--addr", &format!("127.0.0.1:{}", link.port), "--json", "watch", "--plan", "plan-w"])
        .args(["--max-backoff", "1"])
        .env("TICKETCTL_TOKEN", &app.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = next_of(&mut lines).await;
    assert_eq!((first["event_type"].as_str(), first["version"].as_i64()), (Some("snapshot"), Some(1)));
    assert_eq!(app.set_status("ctl-w", "RUNNING").await.0, 200);
    let started = next_of(&mut lines).await;
    assert_eq!((started["event_type"].as_str(), started["version"].as_i64()), (Some("ticket.started"), Some(2)));
    assert!(started["recovered"].is_null());

    link.down();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await; // the proxy cuts within 20 ms
                                                                     // While the watch is cut off: a change only the history can tell.
    assert_eq!(app.set_status("ctl-w", "COMPLETED").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    link.up();
    let completed = next_of(&mut lines).await;
    assert_eq!((completed["event_type"].as_str(), completed["version"].as_i64()), (Some("ticket.completed"), Some(3)));
    assert_eq!((completed["status"].as_str(), completed["recovered"].as_bool()), (Some("COMPLETED"), Some(true)));
    // Following again: the next change is the next line (the snapshot of ctl-w is not shown again).
    let mut body = ticket("ctl-w2");
    body["plan_id"] = "plan-w".into();
    assert_eq!(app.post("/api/v1/tickets", &body).await.0, 201);
    let created = next_of(&mut lines).await;
    assert_eq!(
        (created["event_type"].as_str(), created["ticket_id"].as_str()),
        (Some("ticket.created"), Some("ctl-w2"))
    );
    child.kill().await.unwrap();
    let mut rest = Vec::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(std::time::Duration::from_millis(300), lines.next_line()).await
    {
        rest.push(line);
    }
    assert!(rest.iter().all(|l| !l.contains("\"ctl-w\"")), "nothing about ctl-w shown twice: {rest:?}");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).await.unwrap();
    assert!(stderr.contains("reconnecting in"), "says what it does: {stderr}");
}
