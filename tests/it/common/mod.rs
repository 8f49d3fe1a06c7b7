//! Test harness: the real application on random ports, against a fresh PostgreSQL database (from
//! TEST_DATABASE_URL, set by scripts/test.sh) or a fresh embedded store in a temporary directory.
#![allow(dead_code)]

pub mod binary;
pub mod browser;
pub mod link;
pub mod servers;

use std::path::PathBuf;
use std::sync::mpsc;

use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor};
use ticket_supervisor::config::{Settings, StoreSettings};
use ticket_supervisor::grpc::pb::ticket_service_client::TicketServiceClient;
use ticket_supervisor::startup::Application;

pub const JWT_SECRET: &str = "integration-test-secret";
pub const SERVICE_SECRET: &str = "integration-service-secret";

/// Which store an application runs on.
#[derive(Debug, Clone)]
pub enum Store {
    Embedded(PathBuf),
    Postgres(Box<PgConnectOptions>),
}

/// A fresh, empty store; the temporary directory (embedded) lives as long as the returned guard.
pub async fn fresh_store(postgres: bool) -> (Store, Option<tempfile::TempDir>) {
    if postgres {
        (Store::Postgres(Box::new(fresh_database().await)), None)
    } else {
        let dir = tempfile::tempdir().expect("temp dir");
        (Store::Embedded(dir.path().to_path_buf()), Some(dir))
    }
}

/// A new database on the test server.
pub async fn fresh_database() -> PgConnectOptions {
    let url = std::env::var("TEST_DATABASE_URL")
        .expect("TEST_DATABASE_URL is not set: run the tests with scripts/test.sh (it starts PostgreSQL)");
    let admin: PgConnectOptions = url.parse().expect("TEST_DATABASE_URL is a PostgreSQL URL");
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin.connect().await.expect("connect to the test PostgreSQL");
    conn.execute(format!("CREATE DATABASE \"{name}\"").as_str()).await.expect("create test database");
    admin.database(&name)
}

pub fn settings(store: &Store) -> Settings {
    let mut s = Settings::from_lookup(|name| match name {
        "JWT_SECRET_KEY" => Some(JWT_SECRET.into()),
        "SERVICE_JWT_SECRET" => Some(SERVICE_SECRET.into()),
        "LOG_LEVEL" => Some("error".into()),
        // A dropped test app stops at once (the cluster tests run real processes with the default).
        "SHUTDOWN_DRAIN_SECONDS" => Some("0".into()),
        _ => None,
    })
    .expect("default settings");
    s.bind_host = "127.0.0.1".into();
    s.http_port = 0;
    s.prometheus_port = 0;
    s.grpc_port = 0;
    s.store = match store {
        Store::Embedded(dir) => StoreSettings::Embedded { data_dir: dir.clone() },
        Store::Postgres(options) => StoreSettings::Postgres {
            options: options.clone(),
            pool_size: 5,
            connect_timeout: std::time::Duration::from_secs(10),
        },
    };
    s
}

/// A running application; stopped when dropped.
pub struct TestApp {
    pub base: String,
    pub metrics_base: String,
    pub grpc_port: u16,
    pub client: reqwest::Client,
    /// A service token (the orchestrator's), sent by the request helpers.
    pub token: String,
    pub settings: Settings,
    system: actix_rt::System,
    /// Dropped with the `TestApp`: the application shuts down as on SIGTERM (hands its shards off).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Told when the application's thread is done.
    done: std::sync::mpsc::Receiver<()>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.take();
        // Stopped (its data-dir lock and its shards let go) before the test goes on, as a stopped process is.
        let _ = self.done.recv_timeout(std::time::Duration::from_secs(30));
        self.system.stop();
    }
}

/// Start the application in its own thread and actix system.
pub async fn spawn_app(store: &Store) -> TestApp {
    spawn_app_with(store, |_| {}).await
}

/// Start the application with adjusted settings.
pub async fn spawn_app_with(store: &Store, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    try_spawn_app_with(store, adjust).await.expect("application failed to start")
}

/// Start the application with adjusted settings; why it did not start, if it did not.
pub async fn try_spawn_app_with(store: &Store, adjust: impl FnOnce(&mut Settings)) -> Result<TestApp, String> {
    ticket_supervisor::telemetry::init("error");
    let mut settings = settings(store);
    adjust(&mut settings);
    let token = ticket_supervisor::auth::token::service_token(SERVICE_SECRET, &settings.auth, "orchestrator", 600)
        .expect("service token");
    let app_settings = settings.clone();
    let (tx, rx) = mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (finished, done) = mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            match Application::build(app_settings).await {
                Ok(app) => {
                    let ports = (app.http_port(), app.metrics_port(), app.grpc_port());
                    let _ = tx.send(Ok((ports, actix_rt::System::current())));
                    // Until the test drops its `TestApp`: then the application shuts down as on SIGTERM.
                    let _ = app
                        .run_until(async move {
                            let _ = stopped.await;
                            "test over"
                        })
                        .await;
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("{e:#}")));
                }
            }
        });
        let _ = finished.send(());
    });
    let ((http, metrics, grpc), system) =
        tokio::task::spawn_blocking(move || rx.recv().expect("app thread")).await.unwrap()?;
    Ok(TestApp {
        base: format!("http://127.0.0.1:{http}"),
        metrics_base: format!("http://127.0.0.1:{metrics}"),
        grpc_port: grpc,
        // Idle connections are dropped before the server's 5 s keep-alive closes them: a test that pauses
        // longer (reading a Kafka topic) must not send its next request down a connection the server closed.
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(std::time::Duration::from_secs(3))
            .build()
            .unwrap(),
        token,
        settings,
        system,
        stop: Some(stop),
        done,
    })
}

impl TestApp {
    /// A gRPC client of this application.
    pub async fn grpc(&self) -> TicketServiceClient<tonic::transport::Channel> {
        TicketServiceClient::connect(format!("http://127.0.0.1:{}", self.grpc_port)).await.expect("gRPC connect")
    }

    /// A ticket-scoped token minted through the API.
    pub async fn ticket_token(&self, id: &str) -> String {
        let (code, body) = self.get(&format!("/api/v1/tickets/{id}/token")).await;
        assert_eq!(code, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request with the service token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(&self.token)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        status_json(self.req(reqwest::Method::POST, path).json(body).send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        status_json(self.req(reqwest::Method::GET, path).send().await.expect("request")).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        status_json(self.req(reqwest::Method::PATCH, path).json(body).send().await.expect("request")).await
    }

    pub async fn set_status(&self, id: &str, status: &str) -> (u16, Value) {
        self.patch(&format!("/api/v1/tickets/{id}/status"), &json!({ "status": status })).await
    }
}

pub async fn status_json(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A valid create request.
pub fn ticket(id: &str) -> Value {
    json!({
        "ticket_id": id, "plan_id": "plan-1", "intent_id": "intent-1", "decision_id": "decision-1",
        "task_id": "task-1", "task_type": "deploy", "description": "deploy the service",
        "dependencies": [], "priority": "high", "risk_band": "medium",
        "sla": {"deadline": 1_900_000_000_000i64, "timeout_ms": 60_000, "max_retries": 1},
        "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
        "parameters": {"image": "svc:1.2"}, "required_capabilities": ["k8s"],
        "security_level": "CONFIDENTIAL", "metadata": {"team": "core"}
    })
}

/// A gRPC request carrying `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// Poll `check` every 100 ms until it holds; fail the test after `secs` seconds, naming `what`.
pub async fn eventually<F: std::future::Future<Output = bool>>(what: &str, secs: u64, mut check: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Run each scenario (`async fn name(postgres: bool)`) as two tests: `embedded::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {
        mod embedded { $(#[tokio::test] async fn $name() { super::$name(false).await })+ }
        mod postgres { $(#[tokio::test] async fn $name() { super::$name(true).await })+ }
    };
}

/// A valid gRPC create request's ticket (a long attempt timeout, no retries: nothing moves it on its own).
pub fn proto_ticket(id: &str) -> ticket_supervisor::grpc::pb::ExecutionTicketProto {
    use ticket_supervisor::grpc::pb;
    pb::ExecutionTicketProto {
        ticket_id: id.into(),
        plan_id: "plan-h".into(),
        intent_id: "intent-h".into(),
        decision_id: "decision-h".into(),
        task_id: "task-h".into(),
        task_type: "test".into(),
        description: "hardening".into(),
        priority: "NORMAL".into(),
        risk_band: "LOW".into(),
        sla: Some(pb::Sla { deadline: 1_900_000_000_000, timeout_ms: 600_000, max_retries: 0 }),
        qos: Some(pb::Qos {
            delivery_mode: "AT_LEAST_ONCE".into(),
            consistency: "EVENTUAL".into(),
            durability: "PERSISTENT".into(),
        }),
        security_level: "PUBLIC".into(),
        ..Default::default()
    }
}
