//! `x-request-id`: every REST answer carries one — the caller's, when it sent a usable one, else a new UUID —
//! and the request's root span records it (`request_id`), so the log lines and the trace of a request can be
//! found from what the client saw.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage as _;

/// The header, in both directions.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-chosen id that is kept (longer ones are replaced by a new id, not cut).
const MAX_LEN: usize = 128;

/// A request's id, in its extensions (read by the root span, [`crate::tracecontext::spans::TicketRootSpan`]).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A caller's id is kept when it is 1–128 visible ASCII characters: it goes into logs and a response header.
fn usable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Give the request its id before the root span starts, and the answer the same id.
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let given = req.headers().get(&HEADER).and_then(|v| v.to_str().ok()).filter(|v| usable(v));
    let id = given.map(str::to_owned).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = next.call(req).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HEADER, value);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::usable;

    #[test]
    fn a_callers_id_is_kept_only_when_it_is_short_visible_ascii() {
        assert!(usable("req-7f3a"));
        assert!(usable(&"x".repeat(128)));
        assert!(!usable(""));
        assert!(!usable(&"x".repeat(129)));
        assert!(!usable("two words"));
        assert!(!usable("é"));
    }
}
