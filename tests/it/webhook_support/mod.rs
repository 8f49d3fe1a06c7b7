//! A scripted HTTP receiver for webhook tests: each path answers from a queue of replies (status and extra
//! headers; 200 once the queue is empty or no script is set, or a fixed reply for every request), and every request is
//! recorded with its arrival time. Plain HTTP/1.1 over tokio, one request per connection (`connection:
//! close`), so every delivery makes a new connection (and, for a name, a new lookup).
#![allow(dead_code)]

mod verifying;
pub use verifying::VerifyingReceiver;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply { status, headers: Vec::new() }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// One request received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub at: Instant,
    pub wall: SystemTime,
    pub status: u16,
}

#[derive(Default)]
struct State {
    scripts: HashMap<String, VecDeque<Reply>>,
    fixed: HashMap<String, Reply>,
    hits: Vec<Hit>,
}

/// See the module docs. Stops when dropped.
pub struct ScriptedReceiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedReceiver {
    /// A receiver on an already bound listener.
    pub fn on(listener: TcpListener) -> ScriptedReceiver {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&shared)));
            }
        });
        ScriptedReceiver { addr, state, task }
    }

    /// A receiver on a free loopback port.
    pub async fn start() -> ScriptedReceiver {
        ScriptedReceiver::on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Replies for the next requests to `path`, in order.
    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        self.state.lock().unwrap().scripts.insert(path.into(), replies.into());
    }

    /// The reply to every request to `path` (after any scripted ones).
    pub fn always(&self, path: &str, reply: Reply) {
        self.state.lock().unwrap().fixed.insert(path.into(), reply);
    }

    pub fn hits(&self, path: &str) -> Vec<Hit> {
        self.state.lock().unwrap().hits.iter().filter(|h| h.path == path).cloned().collect()
    }

    pub fn all_hits(&self) -> Vec<Hit> {
        self.state.lock().unwrap().hits.clone()
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let (at, wall) = (Instant::now(), SystemTime::now());
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("").to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let reply = {
        let mut state = state.lock().unwrap();
        let reply = state
            .scripts
            .get_mut(&path)
            .and_then(VecDeque::pop_front)
            .or_else(|| state.fixed.get(&path).cloned())
            .unwrap_or_else(|| Reply::status(200));
        state.hits.push(Hit { path, headers, at, wall, status: reply.status });
        reply
    };
    let mut out = format!("HTTP/1.1 {} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n", reply.status);
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.shutdown().await;
}
