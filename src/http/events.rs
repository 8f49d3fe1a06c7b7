//! `GET /api/v1/events/stream`: ticket events as server-sent events, for browsers and any HTTP client.
//!
//! The REST twin of gRPC's WatchTickets, and the same watcher underneath (`grpc/watch.rs`): the same filters,
//! the same rules (a service token follows anything; a ticket token only its own ticket), the same bounds per
//! principal and in all, a snapshot of the matching tickets first unless `snapshot=false`, then every committed
//! change from the cluster-wide bus (`Router::subscribe`). It ends when the client goes away (the response body
//! is dropped, and with it the watcher's channel), when the token expires, and at shutdown (an `error` event
//! with UNAVAILABLE), so an open stream never holds the server's graceful stop.

use std::convert::Infallible;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use actors::enums::TicketStatus;
use actors::events::TicketEvent;
use actors::{Router, Ticket};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::CallerUntil;
use super::errors::{ApiError, ErrorBody};
use crate::grpc::{watch, Watchers};

/// How often an idle stream sends a comment line: proxies keep it open, and a client that left is noticed
/// (the write fails) within this long even when no event comes.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// What the stream follows. Lists are comma-separated; an empty or absent filter matches everything.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    pub plan_id: Option<String>,
    /// Only these ticket ids (comma-separated). A ticket token must name exactly its own ticket.
    pub ticket_id: Option<String>,
    /// Only tickets in one of these statuses (comma-separated, case-insensitive).
    pub status: Option<String>,
    /// `false`: no snapshot of the current state, only changes from now on. Default `true`.
    pub snapshot: Option<String>,
}

/// The `data` of each event (its SSE `event` field is the same `event_type`). After the stream ends on its own
/// (token expired, shutdown, fell behind) a last event `error` carries `{"code", "detail"}` instead.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEvent {
    /// `snapshot` (the current state, sent first), or the kind of change: `ticket.created`,
    /// `ticket.status_changed`, `ticket.retried`, `sla.warning`, `sla.breached`, …
    pub event_type: String,
    pub ticket: Ticket,
    /// The status before the change (absent for a snapshot or a create).
    pub from_status: Option<TicketStatus>,
    /// When it happened (epoch ms).
    pub at: i64,
    /// Who caused it (token subject, `sla`, `kafka`, `system`); absent for a snapshot.
    pub actor: Option<String>,
    /// The change's details, if any.
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

fn comma_list(value: &Option<String>) -> Vec<String> {
    value
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One SSE frame: `event: <kind>` and the JSON of [`StreamEvent`] on one `data:` line (JSON has no raw newline).
fn frame(kind: &str, t: &Ticket, e: Option<&TicketEvent>) -> web::Bytes {
    let body = StreamEvent {
        event_type: kind.to_owned(),
        ticket: t.clone(),
        from_status: e.and_then(|e| e.from),
        at: e.map_or(t.updated_at, |e| e.at),
        actor: e.map(|e| e.actor.to_string()),
        details: e.map(|e| e.details.clone()).filter(|d| !d.is_null()),
    };
    match serde_json::to_string(&body) {
        Ok(json) => web::Bytes::from(format!("event: {kind}\ndata: {json}\n\n")),
        Err(e) => {
            tracing::error!(error = %e, ticket_id = %t.ticket_id, "an event did not serialize");
            web::Bytes::from_static(b": an event was left out (logged)\n\n")
        }
    }
}

/// The last frame of a stream the server ended: the gRPC status's code and message, as JSON.
fn error_frame(status: &tonic::Status) -> web::Bytes {
    let body =
        serde_json::json!({ "code": crate::grpc::convert::code_name(status.code()), "detail": status.message() });
    web::Bytes::from(format!("event: error\ndata: {body}\n\n"))
}

/// Follow ticket events as they commit (server-sent events, `text/event-stream`).
///
/// Each event is `event: <event_type>` and `data: <StreamEvent as JSON>`; a comment line (`: keep-alive`) comes
/// every 10 s while nothing happens. First the current state of the matching tickets (`snapshot` events,
/// unless `snapshot=false`), then every change, cluster-wide, as gRPC `WatchTickets` delivers it. The stream
/// ends with an `error` event when the token expires (UNAUTHENTICATED), the client fell too far behind
/// (RESOURCE_EXHAUSTED) or the server shuts down (UNAVAILABLE: reconnect). A service token may follow anything;
/// a ticket token only its own ticket (`ticket_id=<it>`). Open streams are bounded per principal and in all
/// (429 beyond). Browsers: `EventSource` cannot send a bearer token; read the stream with `fetch`.
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "tickets", params(StreamParams), responses(
    (status = 200, description = "The event stream", body = StreamEvent, content_type = "text/event-stream"),
    (status = 422, description = "Unknown status or bad parameter", body = ErrorBody),
    (status = 429, description = "Too many open streams for this principal or this server", body = ErrorBody),
))]
pub async fn stream(
    router: web::Data<Router>,
    watchers: web::Data<Watchers>,
    caller: CallerUntil,
    params: web::Query<StreamParams>,
) -> Result<HttpResponse, ApiError> {
    let snapshot = match params.snapshot.as_deref().map(str::trim).unwrap_or_default() {
        "" | "true" | "1" => true,
        "false" | "0" => false,
        other => return Err(ApiError::Unprocessable(format!("snapshot: {other:?} is not true or false"))),
    };
    let statuses = comma_list(&params.status);
    let filter = watch::Filter::of(
        params.plan_id.clone().unwrap_or_default(),
        comma_list(&params.ticket_id),
        &statuses,
        snapshot,
    )
    .map_err(|e| ApiError::Unprocessable(format!("status: {e}")))?;
    filter.authorize(&caller.principal)?;
    let slot = watchers.open(caller.principal.subject()).map_err(|s| ApiError::TooManyStreams(s.message().into()))?;
    tracing::info!(subject = caller.principal.subject(), plan_id = ?params.plan_id, "event stream opened");
    let rx = watch::serve(router.get_ref().clone(), filter, slot, caller.valid_until, frame);
    let mut ticker = tokio::time::interval(KEEP_ALIVE);
    // The first tick after KEEP_ALIVE, not at once.
    ticker.reset();
    // `retry:` tells an EventSource-like client how long to wait before reconnecting after the stream ended.
    let first = futures::stream::once(async { Ok::<_, Infallible>(web::Bytes::from_static(b"retry: 2000\n\n")) });
    let rest = futures::stream::unfold((rx, ticker, false), |(mut rx, mut ticker, ended)| async move {
        if ended {
            return None;
        }
        tokio::select! {
            item = rx.recv() => match item {
                Some(Ok(frame)) => Some((Ok(frame), (rx, ticker, false))),
                Some(Err(status)) => Some((Ok(error_frame(&status)), (rx, ticker, true))),
                None => None,
            },
            _ = ticker.tick() => Some((Ok(web::Bytes::from_static(b": keep-alive\n\n")), (rx, ticker, false))),
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        // Reverse proxies (nginx) would otherwise buffer the stream.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(futures::StreamExt::chain(first, rest)))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v1/events/stream").get(stream));
}
