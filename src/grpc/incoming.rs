//! The gRPC server's stream of accepted connections, with the socket options it needs and the bounds that keep
//! silent clients from taking the process's file descriptors.
//!
//! tonic's `Server::tcp_nodelay` / `tcp_keepalive` apply only when tonic binds the port itself; with
//! `serve_with_incoming*` (used here, as the port is bound early to learn it) they are silently ignored. Without
//! `TCP_NODELAY` every unary call waited ~40 ms: the response's last small segment sat behind Nagle's algorithm
//! until the client's delayed ACK came. So the options are set on each accepted socket here.
//!
//! hyper waits for a connection's HTTP/2 preface for ever, and its keepalive pings start only after the
//! handshake: 1 100 connections that sent nothing once held every file descriptor of the process (REST and gRPC
//! unreachable). So a connection is handed to tonic only once its client sent the preface, within the handshake
//! timeout, and at most `max_connections` are open at once (waiting or served); one beyond is closed at once.
//!
//! With TLS (issue #22) the handshake comes first, bounded by the same timeout together with the preface: the
//! preface is then read from the TLS stream (it cannot be peeked through it) and replayed to tonic. A plaintext
//! client of a TLS port fails the handshake and is closed. The client certificate's identity (mutual TLS) goes
//! with the connection ([`ConnInfo`]): every request on it finds it in its extensions.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::transport::server::{Connected, TcpIncoming};

use crate::tls::PeerIdentity;

/// How long an idle connection waits before the kernel probes it (dead peers are noticed and dropped).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How often a connection that sent part of the preface is looked at again.
const PREFACE_POLL: Duration = Duration::from_millis(20);

/// Bounds on the connections of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Open connections at once, whether still in their handshake or served.
    pub max_connections: usize,
    /// How long a new connection may take to send the HTTP/2 preface.
    pub handshake_timeout: Duration,
}

/// A connection's transport.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

#[cfg(test)]
impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(io) => io,
            Io::Tls(io) => io.get_ref().0,
        }
    }

    fn nodelay(&self) -> io::Result<bool> {
        self.tcp().nodelay()
    }
}

/// What every request of a connection knows about it (in its extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The identity of its client certificate (mutual TLS), if it sent one.
    pub peer: Option<PeerIdentity>,
}

/// An accepted connection that sent the HTTP/2 preface (still unread: tonic reads it — from `replay` first when
/// it had to be read to be seen, under TLS), holding its place among the open connections until it is dropped.
pub(crate) struct Connection {
    /// Writes are held back until the connection is flushed, up to [`WRITE_BUFFER`] bytes (see
    /// `is_write_vectored`).
    io: BufWriter<Io>,
    replay: Vec<u8>,
    replayed: usize,
    info: ConnInfo,
    _permit: OwnedSemaphorePermit,
}

/// The most a connection holds back until its next flush: a write that would take it beyond sends what is held
/// first, and one at least this large goes straight through.
const WRITE_BUFFER: usize = 16 * 1024;

impl Connected for Connection {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.replay.len() {
            let n = buf.remaining().min(this.replay.len() - this.replayed);
            buf.put_slice(&this.replay[this.replayed..this.replayed + n]);
            this.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

/// Calls `$call` on whichever transport `$self` (a pinned [`Io`]) is.
macro_rules! on_io {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            Io::Plain($io) => {
                let $io = Pin::new($io);
                $call
            }
            Io::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $call
            }
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        on_io!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        on_io!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_io!(self, io => io.poll_shutdown(cx))
    }
}

/// h2 flushes whenever it has nothing more to send, so what it writes between two flushes (a frame and its payload,
/// which it writes separately without vectored writes) leaves in one system call; flush and shutdown send what is
/// held first.
impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    /// No, on purpose. When the transport writes vectored, h2 sends a DATA frame's payload of 256 bytes or more
    /// (an answer that holds a ticket has several hundred) as a slice of its own beside its buffer, and must write
    /// it before it takes the next frame: one `writev` per answer, however many answers were ready. Without
    /// vectored writes it copies payloads under 1 KiB into its buffer, and the answers ready at once leave in one
    /// write: one system call and one segment instead of one per answer (BENCHMARKS.md, the twenty-fifth session).
    /// A larger payload is written after its frame's head, and the write buffer joins the two.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Why a new connection was not handed to tonic.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("no HTTP/2 preface within {0:?}")]
    Silent(Duration),
    #[error("the connection did not start with the HTTP/2 preface")]
    NotHttp2,
    #[error("the client closed the connection during the handshake")]
    Closed,
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Wait (without reading it) until `io` starts with the HTTP/2 preface.
async fn preface(io: &TcpStream) -> Result<(), Refused> {
    let mut buf = [0u8; PREFACE.len()];
    loop {
        // `peek` waits for the first bytes; a partial preface is looked at again shortly (peeking the same bytes
        // again would return at once).
        let n = io.peek(&mut buf).await?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        if buf[..n] != PREFACE[..n] {
            return Err(Refused::NotHttp2);
        }
        if n == PREFACE.len() {
            return Ok(());
        }
        tokio::time::sleep(PREFACE_POLL).await;
    }
}

/// The TLS handshake, then the preface read from the TLS stream (to be replayed): the transport, the bytes read
/// and the client certificate's identity.
async fn tls_preface(
    acceptor: &TlsAcceptor,
    io: TcpStream,
) -> Result<(TlsStream<TcpStream>, Vec<u8>, Option<PeerIdentity>), Refused> {
    let mut stream = acceptor.accept(io).await.map_err(Refused::Tls)?;
    let peer = PeerIdentity::from_peer_certificates(stream.get_ref().1.peer_certificates());
    let mut read = [0u8; PREFACE.len()];
    let mut n = 0;
    while n < PREFACE.len() {
        let got = stream.read(&mut read[n..]).await?;
        if got == 0 {
            return Err(Refused::Closed);
        }
        n += got;
        if read[..n] != PREFACE[..n] {
            return Err(Refused::NotHttp2);
        }
    }
    Ok((stream, read.to_vec(), peer))
}

/// A new connection, ready for tonic once it did its TLS handshake (if any) and sent the preface.
async fn handshake(
    io: TcpStream,
    tls: Option<&TlsAcceptor>,
    permit: OwnedSemaphorePermit,
) -> Result<Connection, Refused> {
    let remote_addr = io.peer_addr().ok();
    let (io, replay, peer) = match tls {
        None => {
            preface(&io).await?;
            (Io::Plain(io), Vec::new(), None)
        }
        Some(acceptor) => {
            let (stream, replay, peer) = tls_preface(acceptor, io).await?;
            (Io::Tls(Box::new(stream)), replay, peer)
        }
    };
    let info = ConnInfo { remote_addr, peer };
    let io = BufWriter::with_capacity(WRITE_BUFFER, io);
    Ok(Connection { io, replay, replayed: 0, info, _permit: permit })
}

/// Accepted connections of `listener` (non-blocking), each with `TCP_NODELAY` and TCP keepalive set, once they
/// sent the HTTP/2 preface; within `limits`. Must be called inside a tokio runtime: the accepting runs on a task
/// of its own, which ends (closing the port) when the returned stream is dropped.
#[cfg(test)]
pub(crate) fn incoming(
    listener: std::net::TcpListener,
    limits: ConnectionLimits,
) -> io::Result<ReceiverStream<io::Result<Connection>>> {
    incoming_tls(listener, limits, None)
}

/// [`incoming`], with a TLS handshake (`tls`) before the preface when set.
pub(crate) fn incoming_tls(
    listener: std::net::TcpListener,
    limits: ConnectionLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<ReceiverStream<io::Result<Connection>>> {
    let acceptor = tls.map(TlsAcceptor::from);
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut accepted = TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(TCP_KEEPALIVE));
    let (tx, rx) = mpsc::channel(64);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        let mut last_warning: Option<Instant> = None;
        loop {
            let io = tokio::select! {
                _ = tx.closed() => return,
                io = accepted.next() => match io {
                    Some(Ok(io)) => io,
                    Some(Err(e)) => {
                        // Out of file descriptors, typically: do not spin on it.
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    None => return,
                },
            };
            let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
                // Closed at once (dropped): the client learns now, and the connections being served go on.
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        limit = limits.max_connections,
                        peer = ?io.peer_addr().ok(),
                        "refusing gRPC connections: GRPC_MAX_CONNECTIONS are open"
                    );
                }
                continue;
            };
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                let peer = io.peer_addr().ok();
                match tokio::time::timeout(limits.handshake_timeout, handshake(io, acceptor.as_ref(), permit)).await {
                    Ok(Ok(connection)) => {
                        let _ = tx.send(Ok(connection)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(peer = ?peer, error = %e, "gRPC connection dropped"),
                    Err(_) => {
                        let e = Refused::Silent(limits.handshake_timeout);
                        tracing::debug!(peer = ?peer, error = %e, "gRPC connection dropped");
                    }
                }
            });
        }
    });
    Ok(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn limits(max_connections: usize, handshake_ms: u64) -> ConnectionLimits {
        ConnectionLimits { max_connections, handshake_timeout: Duration::from_millis(handshake_ms) }
    }

    fn listener() -> (std::net::TcpListener, std::net::SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// A client that sent the preface, and its connection as the server got it.
    async fn connected() -> (TcpStream, Connection) {
        let (listener, addr) = listener();
        let mut incoming = incoming(listener, limits(4, 5_000)).unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(PREFACE).await.unwrap();
        (client, incoming.next().await.expect("a connection").expect("accepted"))
    }

    /// The accepted socket has Nagle's algorithm off, whatever the OS default: a unary answer is sent at once;
    /// and the preface is still there for tonic to read.
    #[tokio::test]
    async fn accepted_connections_have_nodelay_and_their_preface() {
        let (_client, mut accepted) = connected().await;
        assert!(accepted.io.get_ref().nodelay().unwrap(), "TCP_NODELAY must be set on accepted gRPC connections");
        let mut read = [0u8; PREFACE.len()];
        accepted.read_exact(&mut read).await.unwrap();
        assert_eq!(&read[..], PREFACE);
    }

    /// Small writes are held back until the flush (so the answers h2 writes between two flushes leave together), and
    /// what the server writes reaches the client whole and in order: small writes, one that overflows the buffer,
    /// one larger than it; what is still held at shutdown is sent first.
    #[tokio::test]
    async fn writes_arrive_whole_and_in_order() {
        let (mut client, mut accepted) = connected().await;
        let chunks: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 700]).chain([vec![200; 3 * WRITE_BUFFER]]).collect();
        let expected = chunks.concat();
        let (length, length_rx) = tokio::sync::oneshot::channel();
        for chunk in &chunks[..3] {
            accepted.write_all(chunk).await.unwrap();
        }
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(200), client.peek(&mut byte)).await;
        assert!(early.is_err(), "small writes were sent before the flush: {early:?}");
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; length_rx.await.unwrap()];
            client.read_exact(&mut got).await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            (got, rest)
        });
        for chunk in &chunks[3..] {
            accepted.write_all(chunk).await.unwrap();
        }
        length.send(expected.len()).unwrap();
        accepted.flush().await.unwrap();
        accepted.write_all(b"last words").await.unwrap();
        accepted.shutdown().await.unwrap();
        let (got, rest) = tokio::time::timeout(Duration::from_secs(10), reader).await.expect("all read").unwrap();
        assert!(got == expected, "the flushed bytes differ from those written");
        assert_eq!(rest, b"last words");
    }

    /// A client that sends nothing, or something else than HTTP/2, is closed; one beyond the limit at once.
    #[tokio::test]
    async fn silent_and_surplus_connections_are_closed() {
        let (listener, addr) = listener();
        let _incoming = incoming(listener, limits(2, 300)).unwrap();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut http1 = TcpStream::connect(addr).await.unwrap();
        http1.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut byte = [0u8; 1];
        let eof = tokio::time::timeout(Duration::from_secs(1), http1.read(&mut byte)).await.expect("closed at once");
        assert!(matches!(eof, Ok(0) | Err(_)), "{eof:?}");
        // Two open (the silent one and this one): a third is closed at once.
        let _second = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        let eof = tokio::time::timeout(Duration::from_millis(250), third.read(&mut byte)).await.expect("refused");
        assert!(matches!(eof, Ok(0) | Err(_)), "{eof:?}");
        let started = Instant::now();
        let eof = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut byte)).await.expect("timed out");
        assert!(matches!(eof, Ok(0) | Err(_)), "{eof:?}");
        assert!(started.elapsed() < Duration::from_millis(1_000));
    }
}
