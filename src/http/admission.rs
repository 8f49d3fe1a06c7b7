//! Connections beyond `HTTP_MAX_CONNECTIONS` are answered at once instead of waiting (issue #21, overload).
//!
//! HTTP/1.1 carries one request at a time per connection, so a client with many requests outstanding opens as
//! many connections. actix stops accepting at its connection bound, and what comes next waits in the kernel's
//! listen backlog, then in SYN retransmissions (1 s, 3 s, 7 s …): under 10× overload most refused requests got
//! no answer within 30 s, and the ones served had waited seconds for their connection.
//!
//! So the listener accepts more connections than the bound (as many more as the open-files limit leaves room
//! for, at most 1 024: `startup`), only to refuse them: each one's first request is answered 503 with
//! `Retry-After` and `Connection: close` before anything else runs (no authentication, no body read, no log
//! line), and the connection closes. A refused connection lives for one round trip, so these slots turn over
//! thousands of refusals per second; when they are taken too (clients that connect and send nothing), new
//! connections wait in the backlog as before, and actix closes the silent ones after its request-header timeout.
//! With TLS, a refused connection costs its handshake first.
//!
//! Only connections being served are counted against the bound: a place freed by a served connection goes to
//! the next one that opens, however many are being refused at that moment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Extensions, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::middleware::Next;
use actix_web::HttpResponse;
use prometheus::IntCounter;

/// The REST connections served now, against the bound (shared by every actix worker).
#[derive(Debug)]
pub struct Connections {
    served: AtomicUsize,
    limit: usize,
    /// How many more are accepted only to be refused.
    refusing: usize,
}

/// One open connection, kept in its extensions: dropped when the connection closes.
#[derive(Debug)]
pub struct Slot {
    connections: Arc<Connections>,
    /// It holds one of the `limit` places; if not, its request is refused.
    served: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.served {
            self.connections.served.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Connections {
    pub fn new(limit: usize, refusing: usize) -> Arc<Self> {
        Arc::new(Connections { served: AtomicUsize::new(0), limit, refusing })
    }

    /// actix's connection hook: give the connection a place if one is free, else mark it for refusal.
    pub fn open(self: &Arc<Self>, ext: &mut Extensions) {
        let served =
            self.served.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < self.limit).then_some(n + 1));
        ext.insert(Slot { connections: Arc::clone(self), served: served.is_ok() });
    }

    /// How many connections actix itself may hold in all: the served ones and the ones being refused.
    pub fn hard_limit(&self) -> usize {
        self.limit + self.refusing
    }
}

/// The outermost middleware: a request on a connection opened beyond the bound gets 503 at once.
pub async fn refuse_over_limit(
    refused: IntCounter,
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if req.conn_data::<Slot>().is_none_or(|slot| slot.served) {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    }
    refused.inc();
    let mut res = HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE)
        .insert_header((RETRY_AFTER, HeaderValue::from_static("1")))
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(r#"{"detail":"too many open connections: try again later"}"#);
    res.head_mut().set_connection_type(ConnectionType::Close);
    Ok(req.into_response(res).map_into_right_body())
}
