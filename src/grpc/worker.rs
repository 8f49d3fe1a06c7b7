//! StreamStatusUpdates: a worker's status changes, heartbeats and progress for any number of tickets on one
//! stream. Messages are applied in the order they arrive (a RUNNING before its COMPLETED) and each is answered
//! with the resulting version or its own error; a bad message never ends the stream. The stream ends,
//! UNAUTHENTICATED, when the token that opened it expires.

use actors::{Router, Ticket};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::convert::{code_name, status_of};
use super::decode::{self, WorkerCommand};
use super::pb;
use crate::auth::verify::{Principal, UPDATE};

async fn apply(router: &Router, caller: &Principal, m: &pb::WorkerUpdate) -> Result<Ticket, Status> {
    caller.require_ticket(&m.ticket_id, UPDATE).map_err(super::convert::auth_status)?;
    let requested_by = caller.subject();
    let result = match decode::worker_update(m)? {
        WorkerCommand::Status(update) => {
            caller.require_status_change(&m.ticket_id, update.status).map_err(super::convert::auth_status)?;
            router.update_status(&m.ticket_id, update, requested_by).await
        }
        WorkerCommand::Heartbeat => router.heartbeat(&m.ticket_id, requested_by).await,
        WorkerCommand::Progress { progress, message } => {
            router.progress(&m.ticket_id, progress, message, requested_by).await
        }
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
