//! The `ticketctl` binary against a running application: create from a file, get, list, update, errors; and
//! the DLQ (list, show, replay) on a real broker (tansu, from scripts/test.sh). The webhook commands:
//! `ticketctl_webhooks.rs`.

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
    assert!(dry.contains("skipped") && dry.contains("(1 read, 0 undecodable; dry run: nothing sent)"), "{dry}");
    // The whole topic in a dry run: the undecodable message is reported, and is no failure of the run.
    let dry = ["--json", "dlq", "replay", "--bootstrap", &kafka.bootstrap(), "--topic", "dlq-replay", "--dry-run"];
    let dry: Value = serde_json::from_str(&stdout(&ticketctl(&app, &dry).await)).unwrap();
    assert_eq!((dry["read"].as_u64(), dry["failed"].as_u64()), (Some(2), Some(1)), "{dry}");
}

/// `dlq list` and `dlq show` read what the service itself dead-lettered (its headers), change nothing, print
/// nothing on stderr, and exit 0 for an empty DLQ; a topic or message that is not there exits 3.
#[tokio::test]
async fn dlq_list_and_show_what_the_service_dead_lettered() {
    let kafka = Kafka::start();
    kafka.create_topic("ctl-in", 1).await;
    kafka.create_topic("ctl-in.dlq", 2).await;
    kafka.create_topic("ctl-empty.dlq", 1).await;
    let (store, _dir) = common::fresh_store(false).await;
    let app = common::spawn_app_with(&store, |s| s.kafka = Some(kafka.consumer_settings("ctl-in", "svc-ctl"))).await;
    let producer = kafka.producer();
    let mut invalid = ticket("ctl-bad");
    invalid["sla"]["timeout_ms"] = Value::from(0);
    kafka.produce(&producer, "ctl-in", "ctl-bad", &serde_json::to_vec(&invalid).unwrap()).await;
    kafka.produce(&producer, "ctl-in", "junk", b"{not a ticket").await;
    assert_eq!(kafka.read_all("ctl-in.dlq", 2, std::time::Duration::from_secs(30)).len(), 2, "both dead-lettered");
    let at = |topic: &str, rest: &[&str]| -> Vec<String> {
        let base = ["--bootstrap".to_owned(), kafka.bootstrap(), "--topic".to_owned(), topic.to_owned()];
        rest.iter().map(|s| s.to_string()).chain(base).collect()
    };
    let run = |args: Vec<String>| {
        let app = &app;
        async move { ticketctl(app, &args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    let quiet = |out: &Output| {
        assert!(out.stderr.is_empty(), "no librdkafka noise: {}", String::from_utf8_lossy(&out.stderr));
        stdout(out)
    };

    let listed: Value = serde_json::from_str(&quiet(&run(at("ctl-in.dlq", &["--json", "dlq", "list"])).await)).unwrap();
    assert_eq!((listed["shown"].as_i64(), listed["complete"].as_bool()), (Some(2), Some(true)), "{listed}");
    let messages = listed["messages"].as_array().unwrap();
    let bad = messages.iter().find(|m| m["ticket_id"] == "ctl-bad").unwrap_or_else(|| panic!("{listed}"));
    let junk = messages.iter().find(|m| m["key"] == "junk").unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(bad["reason"], "validation", "the error_reason header: {bad}");
    assert!(bad["error"].as_str().unwrap().contains("timeout_ms") && bad["decode_error"].is_null(), "{bad}");
    assert!(bad["timestamp"].as_i64().unwrap() > 1_700_000_000_000, "{bad}");
    assert!(junk["ticket_id"].is_null() && junk["decode_error"].is_string() && junk["reason"].is_string(), "{junk}");
    let table = quiet(&run(at("ctl-in.dlq", &["dlq", "list"])).await);
    assert!(table.starts_with("PARTITION  OFFSET  TIMESTAMP"), "{table}");
    assert!(table.contains("ctl-bad") && table.contains("(undecodable)"), "{table}");
    assert!(table.ends_with("(2 shown)\n"), "{table}");

    let position = format!("{}:{}", bad["partition"], bad["offset"]);
    let shown: Value =
        serde_json::from_str(&quiet(&run(at("ctl-in.dlq", &["--json", "dlq", "show", &position])).await)).unwrap();
    assert_eq!(
        (shown["ticket"]["ticket_id"].as_str(), shown["reason"].as_str()),
        (Some("ctl-bad"), Some("validation"))
    );
    assert_eq!(shown["payload"]["sla"]["timeout_ms"], 0, "the payload as it was: {shown}");
    let header =
        |key: &str| shown["headers"].as_array().unwrap().iter().find(|h| h["key"] == key).map(|h| h["value"].clone());
    assert_eq!(header("original_topic"), Some(Value::from("ctl-in")), "{shown}");
    assert!(header("traceparent").is_some(), "the original message's headers too: {shown}");
    let table = quiet(&run(at("ctl-in.dlq", &["dlq", "show", &position])).await);
    assert!(
        table.contains("yes: ticket ctl-bad") && table.contains("original_topic") && table.contains("payload:"),
        "{table}"
    );
    let junk_at = format!("{}:{}", junk["partition"], junk["offset"]);
    let table = quiet(&run(at("ctl-in.dlq", &["dlq", "show", &junk_at])).await);
    assert!(table.contains("{not a ticket") && table.contains("decoded    no: "), "{table}");

    let past_the_end = format!("{}:999", junk["partition"]);
    let missing = run(at("ctl-in.dlq", &["dlq", "show", &past_the_end])).await;
    assert_eq!(missing.status.code(), Some(3), "no such message: {missing:?}");
    let no_partition = run(at("ctl-in.dlq", &["dlq", "show", "7:0"])).await;
    assert_eq!(no_partition.status.code(), Some(3), "no such partition: {no_partition:?}");
    let usage = run(at("ctl-in.dlq", &["dlq", "show", "zero"])).await;
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
    let no_topic = run(at("ctl-nope.dlq", &["dlq", "list"])).await;
    assert_eq!(no_topic.status.code(), Some(3), "a topic that does not exist: {no_topic:?}");

    // An empty DLQ: nothing is wrong.
    let empty = quiet(&run(at("ctl-empty.dlq", &["dlq", "list"])).await);
    assert_eq!(empty, "topic ctl-empty.dlq holds no messages\n");
    let empty: Value =
        serde_json::from_str(&quiet(&run(at("ctl-empty.dlq", &["--json", "dlq", "list"])).await)).unwrap();
    assert_eq!((empty["shown"].as_i64(), empty["messages"].clone()), (Some(0), serde_json::json!([])), "{empty}");
    let replayed = quiet(&run(at("ctl-empty.dlq", &["dlq", "replay"])).await);
    assert!(replayed.ends_with("(0 read, 0 not replayed)\n"), "{replayed}");

    // Reading changed nothing: the DLQ reads the same again, and no ticket was created.
    let again: Value = serde_json::from_str(&quiet(&run(at("ctl-in.dlq", &["--json", "dlq", "list"])).await)).unwrap();
    assert_eq!(again["messages"], listed["messages"]);
    assert_eq!(app.get("/api/v1/tickets/ctl-bad").await.0, 404, "list and show create nothing");

    // A broker out of reach: unavailable, said once.
    let gone = ticketctl(&app, &["dlq", "list", "--bootstrap", "127.0.0.1:1", "--idle-timeout", "1"]).await;
    assert_eq!(gone.status.code(), Some(6), "{gone:?}");
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line, ticketctl's own: {stderr}");
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
