//! The webhook receiver of the torture run: a minimal HTTP/1.1 server on loopback that checks every
//! request's Standard Webhooks signature against the subscription's secret and counts deliveries by
//! `webhook-id`. Retries of a delivery the service could not record (it was killed after sending) arrive again
//! with the same id: the receiver de-duplicates them and reports how many there were.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// What the receiver saw.
#[derive(Default)]
pub struct Received {
    /// Requests per `webhook-id` (more than one: a duplicate receipt).
    pub by_id: HashMap<String, u32>,
    /// Requests whose signature did not verify with the secret (or that carried none).
    pub bad_signatures: u64,
    /// The signing secret, known once the subscription is created.
    pub secret: String,
}

impl Received {
    pub fn total(&self) -> u64 {
        self.by_id.values().map(|n| u64::from(*n)).sum()
    }

    pub fn duplicates(&self) -> u64 {
        self.by_id.values().map(|n| u64::from(n - 1)).sum()
    }
}

pub type Shared = Arc<Mutex<Received>>;

/// Whether `header` (space-separated `v1,<sig>`) holds the signature of `body` by `secret`.
fn verifies(secret: &str, id: &str, timestamp: &str, header: &str, body: &[u8]) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else { return false };
    let expected = ticket_supervisor::webhooks::sign::signature_header(&[secret], id, ts, body);
    header.split(' ').any(|sig| sig == expected)
}

async fn connection(stream: tokio::net::TcpStream, seen: Shared) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        let mut headers: HashMap<String, String> = HashMap::new();
        loop {
            let mut header = String::new();
            read.read_line(&mut header).await?;
            let h = header.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                }
                headers.insert(k, v);
            }
        }
        let mut body = vec![0; length];
        read.read_exact(&mut body).await?;
        let header = |k: &str| headers.get(k).map(String::as_str).unwrap_or_default();
        let id = header("webhook-id");
        {
            let mut seen = seen.lock().expect("not poisoned");
            let ok = verifies(&seen.secret, id, header("webhook-timestamp"), header("webhook-signature"), &body);
            if !ok {
                seen.bad_signatures += 1;
            }
            *seen.by_id.entry(id.to_owned()).or_default() += 1;
        }
        write.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await?;
    }
}

/// Start the receiver; returns its port and what it sees.
pub async fn start() -> anyhow::Result<(u16, Shared)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let seen: Shared = Arc::default();
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream, Arc::clone(&s)));
        }
    });
    Ok((port, seen))
}
