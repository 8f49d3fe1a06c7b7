//! Ending long-lived calls (the worker and watch streams) when the token that opened them expires: a stream
//! must not outlive the authority it was opened with, or a leaked token keeps working for as long as its
//! connection stays up.

use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;

/// How long the closing status may wait for room in a stream's buffer (a client that reads nothing) before the
/// stream is ended without it.
const LAST_SEND_WAIT: Duration = Duration::from_secs(5);

/// Resolves with UNAUTHENTICATED at `valid_until` (unix seconds, exp + leeway); never when None (no
/// authentication).
pub(crate) async fn token_expired(valid_until: Option<i64>) -> Status {
    let Some(until) = valid_until else { return std::future::pending().await };
    let left_ms = until.saturating_mul(1000).saturating_sub(chrono::Utc::now().timestamp_millis());
    tokio::time::sleep(Duration::from_millis(u64::try_from(left_ms).unwrap_or(0))).await;
    tracing::info!(valid_until = until, "ending a gRPC stream: its token expired");
    Status::unauthenticated("the token that opened this stream has expired; reconnect with a fresh token")
}

/// Send the status a stream ends with, unless the client is gone or reads nothing for [`LAST_SEND_WAIT`].
pub(crate) async fn send_last<T>(tx: &mpsc::Sender<Result<T, Status>>, status: Status) {
    let _ = tokio::time::timeout(LAST_SEND_WAIT, tx.send(Err(status))).await;
}
