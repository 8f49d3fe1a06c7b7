//! The gRPC server's stream of accepted connections, with the socket options it needs.
//!
//! tonic's `Server::tcp_nodelay` / `tcp_keepalive` apply only when tonic binds the port itself; with
//! `serve_with_incoming*` (used here, as the port is bound early to learn it) they are silently ignored. Without
//! `TCP_NODELAY` every unary call waited ~40 ms: the response's last small segment sat behind Nagle's algorithm
//! until the client's delayed ACK came. So the options are set on each accepted socket here.

use std::time::Duration;

use tonic::transport::server::TcpIncoming;

/// How long an idle connection waits before the kernel probes it (dead peers are noticed and dropped).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Accepted connections of `listener` (non-blocking), each with `TCP_NODELAY` and TCP keepalive set.
pub(crate) fn incoming(listener: std::net::TcpListener) -> std::io::Result<TcpIncoming> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(TCP_KEEPALIVE)))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;

    /// The accepted socket has Nagle's algorithm off, whatever the OS default: a unary answer is sent at once.
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = incoming(listener).unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.expect("a connection").expect("accepted");
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY must be set on accepted gRPC connections");
    }
}
