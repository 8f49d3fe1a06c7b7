//! The service binary as a child process on loopback ports (`HTTP_PORT=0` etc.), for the tests that need a real
//! process: kill -9, SIGTERM, SIGSTOP, several replicas.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The ports a started binary logged.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub grpc: u16,
    pub metrics: u16,
}

/// Start the service binary with a clean environment, the test secrets and `env` (which wins), and wait until it
/// logs "Service startup complete". Its log keeps being read; warnings and errors go to the test's output (shown
/// when a test fails), labelled with its HTTP port.
pub async fn start(env: &[(&str, String)]) -> (Child, Ports) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ticket-supervisor"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BIND_HOST", "127.0.0.1")
        .env("HTTP_PORT", "0")
        .env("PROMETHEUS_PORT", "0")
        .env("GRPC_PORT", "0")
        .env("JWT_SECRET_KEY", "binary-test")
        .env("SERVICE_JWT_SECRET", super::SERVICE_SECRET)
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start the service binary");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ports = tokio::time::timeout(Duration::from_secs(60), async {
        let mut ports = None;
        while let Some(line) = lines.next_line().await.expect("read log") {
            let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
            if event["message"] == "listening" {
                let port = |k: &str| event[k].as_u64().unwrap() as u16;
                ports = Some(Ports { http: port("http_port"), grpc: port("grpc_port"), metrics: port("metrics_port") });
            }
            if event["message"] == "Service startup complete" {
                break;
            }
        }
        ports.expect("the service logs its ports before 'Service startup complete'")
    })
    .await
    .expect("the service started within 60 s");
    let me = ports.http;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("\"WARN\"") || line.contains("\"ERROR\"") || line.contains("shards") {
                eprintln!("service :{me}: {line}");
            }
        }
    });
    (child, ports)
}
