//! The Python receiver (tests/python/webhook_receiver.py): it verifies every delivery's signature with the
//! Standard Webhooks reference library — an implementation independent of ours — and records what arrived.

use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::common::servers::free_port;

/// The receiver process, killed on drop.
pub struct VerifyingReceiver {
    port: u16,
    child: Child,
    http: reqwest::Client,
}

impl Drop for VerifyingReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl VerifyingReceiver {
    pub fn start() -> VerifyingReceiver {
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/webhook_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the receiver");
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(
            line.contains("listening"),
            "receiver did not start (is standardwebhooks installed? run scripts/test.sh): {line}"
        );
        VerifyingReceiver { port, child, http: reqwest::Client::new() }
    }

    pub fn url(&self, endpoint: &str) -> String {
        format!("http://127.0.0.1:{}/hook/{endpoint}", self.port)
    }

    /// Set how `endpoint` answers and which secrets it verifies with (see the script).
    pub async fn configure(&self, endpoint: &str, config: Value) {
        let url = format!("http://127.0.0.1:{}/_config/{endpoint}", self.port);
        assert!(self.http.post(url).json(&config).send().await.unwrap().status().is_success());
    }

    /// Add `secret` to those the endpoint verifies with (each delivery records which verified it, by index).
    pub async fn trust(&self, endpoint: &str, secret: &str) {
        self.configure(endpoint, json!({ "secret": secret })).await;
    }

    /// Every request received, at every endpoint.
    pub async fn received(&self) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/_received", self.port);
        self.http.get(url).send().await.unwrap().json().await.unwrap()
    }

    /// Requests received at `endpoint`.
    pub async fn received_at(&self, endpoint: &str) -> Vec<Value> {
        self.received().await.into_iter().filter(|r| r["endpoint"] == endpoint).collect()
    }

    /// Requests answered 2xx at `endpoint`.
    pub async fn delivered(&self, endpoint: &str) -> Vec<Value> {
        self.received_at(endpoint).await.into_iter().filter(|r| r["status"] == 200).collect()
    }
}
