//! StreamStatusUpdates: a worker's status changes, heartbeats and progress for any number of tickets on one
//! stream. Messages are applied in the order they arrive (a RUNNING before its COMPLETED) and each is answered
//! with the resulting version or its own error; a bad message never ends the stream. The stream ends,
//! UNAUTHENTICATED, when the token that opened it expires.

use actors::{Router, StatusUpdate, Ticket, TicketError};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::convert::{code_name, status_of};
use super::pb::{self, worker_update::Kind};
use crate::auth::verify::{Principal, UPDATE};

async fn apply(router: &Router, caller: &Principal, m: &pb::WorkerUpdate) -> Result<Ticket, Status> {
    caller.require_ticket(&m.ticket_id, UPDATE).map_err(super::convert::auth_status)?;
    let actor = caller.subject();
    let result: Result<Ticket, TicketError> = match Kind::try_from(m.kind) {
        Ok(Kind::Status) => {
            let status = m.status.parse().map_err(|e| Status::invalid_argument(format!("status: {e}")))?;
            caller.require_status_change(&m.ticket_id, status).map_err(super::convert::auth_status)?;
            let update = StatusUpdate {
                status,
                error_message: Some(m.error_message.clone()).filter(|s| !s.is_empty()),
                actual_duration_ms: m.actual_duration_ms,
                expected_version: m.expected_version,
            };
            router.update_status(&m.ticket_id, update, actor).await
        }
        Ok(Kind::Heartbeat) => router.heartbeat(&m.ticket_id, actor).await,
        Ok(Kind::Progress) => {
            if !(0.0..=1.0).contains(&m.progress) {
                return Err(Status::invalid_argument("progress: must be between 0.0 and 1.0"));
            }
            let message = Some(m.message.clone()).filter(|s| !s.is_empty());
            router.progress(&m.ticket_id, m.progress, message, actor).await
        }
        Err(_) => return Err(Status::invalid_argument(format!("kind: unknown value {}", m.kind))),
    };
    result.map_err(status_of)
}

/// Apply each message of `inbound` in turn and send its answer, until the client ends the stream or leaves.
async fn answer(
    router: &Router,
    caller: &Principal,
    inbound: &mut Streaming<pb::WorkerUpdate>,
    tx: &mpsc::Sender<Result<pb::WorkerUpdateResult, Status>>,
) {
    while let Some(message) = inbound.next().await {
        let m = match message {
            Ok(m) => m,
            // The client broke the stream itself (cancelled, or sent bytes that are not a message).
            Err(status) => {
                tracing::debug!(%status, "worker stream ended by the client");
                break;
            }
        };
        let mut result = pb::WorkerUpdateResult {
            request_id: m.request_id.clone(),
            ticket_id: m.ticket_id.clone(),
            ..Default::default()
        };
        match apply(router, caller, &m).await {
            Ok(t) => {
                result.ok = true;
                result.version = t.version;
                result.status = t.status.as_str().to_owned();
            }
            Err(status) => {
                result.error_code = code_name(status.code()).to_owned();
                result.error_message = status.message().to_owned();
            }
        }
        if tx.send(Ok(result)).await.is_err() {
            break;
        }
    }
}

/// Start serving one worker stream, until the client ends it or `valid_until` (the token's expiry) passes; the
/// receiver carries the answers.
pub fn serve(
    router: Router,
    caller: Principal,
    mut inbound: Streaming<pb::WorkerUpdate>,
    valid_until: Option<i64>,
) -> mpsc::Receiver<Result<pb::WorkerUpdateResult, Status>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        tokio::select! {
            _ = tx.closed() => {}
            () = answer(&router, &caller, &mut inbound, &tx) => {}
            status = super::expiry::token_expired(valid_until) => super::expiry::send_last(&tx, status).await,
        }
    });
    rx
}
