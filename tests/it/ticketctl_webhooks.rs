//! `ticketctl webhooks …` (over the REST API) against a running application and a real receiver: the Python
//! receiver of the webhook tests (tests/python/webhook_receiver.py), which verifies each delivery's signature
//! with the Standard Webhooks reference library, so a secret ticketctl prints is checked by what it signs.

use crate::common;
use crate::webhook_support::VerifyingReceiver;

use std::process::Output;
use std::time::Duration;

use common::{eventually, fresh_store, spawn_app_with, ticket, TestApp};
use serde_json::{json, Value};

/// The service delivering to loopback, polling for deliveries often.
async fn app() -> (TestApp, Option<tempfile::TempDir>) {
    let (store, dir) = fresh_store(false).await;
    let app = spawn_app_with(&store, |s| {
        s.webhooks.allowed_networks = "127.0.0.0/8".into();
        s.webhooks.schedule = [200, 400, 800].into_iter().map(Duration::from_millis).collect();
    })
    .await;
    (app, dir)
}

/// The REST address as `host:port` (what `--rest-addr` also takes).
fn rest_addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Run ticketctl with `token` (none: no token at all) and the app's REST address.
async fn ticketctl_as(app: &TestApp, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketctl"));
    cmd.arg("--rest-addr").arg(rest_addr(app)).args(args).env_remove("TICKETCTL_REST_URL");
    match token {
        Some(t) => cmd.env("TICKETCTL_TOKEN", t),
        None => cmd.env_remove("TICKETCTL_TOKEN"),
    };
    cmd.output().await.expect("run ticketctl")
}

async fn ticketctl(app: &TestApp, args: &[&str]) -> Output {
    ticketctl_as(app, Some(&app.token), args).await
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "ticketctl failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "nothing on stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&stdout(out)).unwrap()
}

/// The value of `field` in a FIELD/VALUE table.
fn field<'a>(table: &'a str, field: &str) -> &'a str {
    let line = table.lines().find(|l| l.split_whitespace().next() == Some(field));
    line.unwrap_or_else(|| panic!("no {field} in {table}"))[field.len()..].trim()
}

#[tokio::test]
async fn subscribe_pause_resume_rotate_redeliver_and_delete() {
    let rx = VerifyingReceiver::start();
    let (app, _dir) = app().await;

    let created = json_of(
        &ticketctl(
            &app,
            &["--json", "webhooks", "create", "--url", &rx.url("ctl"), "--event", "ticket.created,ticket.completed"],
        )
        .await,
    );
    let id = created["id"].as_str().expect("an id").to_owned();
    let first_secret = created["secret"].as_str().expect("the secret, shown on creation").to_owned();
    assert!(first_secret.starts_with("whsec_"), "{created}");
    rx.trust("ctl", &first_secret).await;
    let (code, stored) = app.get(&format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(code, 200, "{stored}");
    assert_eq!(stored["events"], json!(["ticket.created", "ticket.completed"]));
    assert!(stored.get("secret").is_none(), "the service never shows it again: {stored}");

    let listed = stdout(&ticketctl(&app, &["webhooks", "list"]).await);
    assert!(listed.starts_with("ID "), "{listed}");
    let row = listed.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("{id} listed: {listed}"));
    assert!(row.contains("active") && row.contains(&rx.url("ctl")), "{row}");
    let shown = stdout(&ticketctl(&app, &["webhooks", "show", &id]).await);
    assert_eq!(
        (field(&shown, "state"), field(&shown, "events")),
        ("active", "ticket.created, ticket.completed"),
        "{shown}"
    );

    // Paused: the event's delivery waits in the store, unsent.
    let paused = stdout(&ticketctl(&app, &["webhooks", "pause", &id]).await);
    assert_eq!(field(&paused, "state"), "paused", "{paused}");
    assert_eq!(app.get(&format!("/api/v1/webhooks/{id}")).await.1["paused"], true, "the service's answer changed");
    assert_eq!(app.post("/api/v1/tickets", &ticket("ctlw-1")).await.0, 201);
    eventually("the delivery is recorded", 10, || async {
        app.get(&format!("/api/v1/webhooks/{id}/deliveries")).await.1["total"] == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // several delivery polls
    let waiting = json_of(&ticketctl(&app, &["--json", "webhooks", "deliveries", &id]).await);
    let delivery = &waiting["deliveries"][0];
    assert_eq!((delivery["status"].as_str(), delivery["attempts"].as_i64()), (Some("pending"), Some(0)), "{waiting}");
    assert!(rx.received_at("ctl").await.is_empty(), "nothing sent while paused");
    let delivery_id = delivery["id"].as_str().unwrap().to_owned();

    let resumed = json_of(&ticketctl(&app, &["--json", "webhooks", "resume", &id]).await);
    assert_eq!(resumed["paused"], false, "{resumed}");
    assert_eq!(app.get(&format!("/api/v1/webhooks/{id}")).await.1["paused"], false);
    eventually("delivered after the resume", 15, || async { rx.received_at("ctl").await.len() == 1 }).await;
    let hit = &rx.received_at("ctl").await[0];
    assert_eq!((hit["webhook_id"].as_str(), hit["verified_with"].clone()), (Some(delivery_id.as_str()), json!([0])));
    eventually("recorded as delivered", 10, || async {
        app.get(&format!("/api/v1/webhooks/{id}/deliveries")).await.1["deliveries"][0]["status"] == "delivered"
    })
    .await;
    let table = stdout(&ticketctl(&app, &["webhooks", "deliveries", &id]).await);
    assert!(table.starts_with("DELIVERY_ID "), "{table}");
    let row = table.lines().find(|l| l.starts_with(&delivery_id)).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("ticket.created") && row.contains("ctlw-1") && row.contains("delivered"), "{row}");
    assert!(table.ends_with("(1 of 1 shown)\n"), "{table}");

    // A new secret, printed once; the receiver trusting only it (index 1) verifies the next delivery.
    let rotated = stdout(&ticketctl(&app, &["webhooks", "rotate-secret", &id]).await);
    let secret_line = rotated.lines().find(|l| l.starts_with("secret: ")).unwrap_or_else(|| panic!("{rotated}"));
    let second_secret = secret_line["secret: ".len()..].trim().to_owned();
    assert!(second_secret.starts_with("whsec_") && second_secret != first_secret, "{rotated}");
    assert!(rotated.contains("shown this once"), "{rotated}");
    assert_ne!(field(&rotated, "old_secret_until"), "-", "the old secret keeps signing for a while: {rotated}");
    rx.trust("ctl", &second_secret).await;
    let redelivered = stdout(&ticketctl(&app, &["webhooks", "redeliver", &id, &delivery_id]).await);
    assert!(redelivered.contains(&delivery_id), "{redelivered}");
    eventually("sent again", 15, || async { rx.received_at("ctl").await.len() == 2 }).await;
    let again = &rx.received_at("ctl").await[1];
    assert_eq!(again["webhook_id"].as_str(), Some(delivery_id.as_str()), "the same delivery: {again}");
    assert_eq!(again["verified_with"], json!([0, 1]), "signed with the new secret (and the old, meanwhile): {again}");

    let deleted = json_of(&ticketctl(&app, &["--json", "webhooks", "delete", &id]).await);
    assert_eq!(deleted["deleted"], id.as_str());
    assert_eq!(app.get(&format!("/api/v1/webhooks/{id}")).await.0, 404);
    let gone = ticketctl(&app, &["webhooks", "show", &id]).await;
    assert_eq!(gone.status.code(), Some(3), "{gone:?}");
}

#[tokio::test]
async fn webhook_errors_have_the_exit_statuses_of_the_grpc_commands() {
    let (app, _dir) = app().await;
    let code = |out: &Output| (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned());

    let (status, err) = code(&ticketctl(&app, &["webhooks", "show", "wh_nope"]).await);
    assert_eq!(status, Some(3), "not found: {err}");
    assert!(err.contains("404") && err.contains("wh_nope"), "the service's detail: {err}");
    let body = json!({"url": "http://127.0.0.1:9/hook", "events": ["ticket.created"]});
    let (created, sub) = app.post("/api/v1/webhooks", &body).await;
    assert_eq!(created, 201, "{sub}");
    let id = sub["id"].as_str().unwrap();
    let (status, err) = code(&ticketctl(&app, &["webhooks", "redeliver", id, "msg_nope"]).await);
    assert_eq!(status, Some(3), "no such delivery: {err}");

    let (status, err) = code(&ticketctl_as(&app, Some("not-a-token"), &["webhooks", "list"]).await);
    assert_eq!(status, Some(5), "unauthenticated: {err}");
    let (status, err) = code(&ticketctl_as(&app, None, &["webhooks", "list"]).await);
    assert_eq!(status, Some(5), "no token: {err}");
    assert!(err.contains("TICKETCTL_TOKEN"), "says how to give one: {err}");
    assert_eq!(app.post("/api/v1/tickets", &ticket("ctlw-t")).await.0, 201);
    let ticket_token = app.ticket_token("ctlw-t").await;
    let (status, err) = code(&ticketctl_as(&app, Some(&ticket_token), &["webhooks", "list"]).await);
    assert_eq!(status, Some(5), "a ticket token is not a service token: {err}");

    let bad = ["webhooks", "create", "--url", "http://127.0.0.1:9/hook", "--event", "ticket.nope"];
    let (status, err) = code(&ticketctl(&app, &bad).await);
    assert_eq!(status, Some(2), "refused input (422): {err}");
    assert!(err.contains("422") && err.contains("ticket.nope"), "{err}");
    let (status, err) = code(&ticketctl(&app, &["webhooks", "create", "--url", "http://x"]).await);
    assert_eq!(status, Some(2), "no --event: a usage error: {err}");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ticketctl"))
        .args(["--rest-addr", "127.0.0.1:1", "webhooks", "list"])
        .env("TICKETCTL_TOKEN", &app.token)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "unavailable: {out:?}");
    assert_eq!(app.get("/api/v1/webhooks").await.1.as_array().map(Vec::len), Some(1), "nothing created");
}
