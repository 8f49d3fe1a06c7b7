//! Network stand-ins for a database that goes away: a host that accepts connections and never answers, and a
//! proxy to the real test server that can be switched off and on (an outage without stopping the shared
//! PostgreSQL the other tests use). Both count the connections they accepted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::net::{TcpListener, TcpStream};

/// `options` pointed at `127.0.0.1:port` instead.
pub fn via(options: &PgConnectOptions, port: u16) -> PgConnectOptions {
    options.clone().host("127.0.0.1").port(port).ssl_mode(PgSslMode::Disable)
}

/// A loopback port that accepts connections and never sends a byte (a hung database host).
pub struct SilentServer {
    pub port: u16,
    pub accepted: Arc<AtomicUsize>,
}

impl SilentServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        SilentServer { port, accepted }
    }

    /// Options for a PostgreSQL "server" at this port.
    pub fn options(&self) -> PgConnectOptions {
        via(&PgConnectOptions::new().username("postgres").database("none"), self.port)
    }
}

/// A TCP proxy to `target`; while down, it closes each new connection at once (connection refused, as seen
/// by a client) and cuts the ones it carried.
pub struct Switch {
    pub port: u16,
    pub accepted: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicUsize>,
}

impl Switch {
    pub async fn start(target: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, up, generation) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
        let (count, is_up, gen) = (Arc::clone(&accepted), Arc::clone(&up), Arc::clone(&generation));
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                if !is_up.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let (target, born, gen) = (target.clone(), gen.load(Ordering::SeqCst), Arc::clone(&gen));
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect((target.0.as_str(), target.1)).await else { return };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let cut = async {
                        while gen.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                });
            }
        });
        Switch { port, accepted, up, generation }
    }

    /// Stop carrying traffic: open connections are cut, new ones closed.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
