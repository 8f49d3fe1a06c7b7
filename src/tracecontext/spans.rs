//! The span of each unit of work, with its remote parent and its `ticket_id` where known:
//! - REST: [`TicketRootSpan`], tracing-actix-web's root span plus `ticket_id` (from the route's
//!   `{ticket_id}`, or recorded by the handler) and `trace_id` (for log correlation);
//! - gRPC: [`grpc_request_span`], given to tonic's `trace_fn`; handlers record `ticket_id`;
//! - Kafka: [`kafka_message_span`], one per consumed message; `ticket_id` once the payload is decoded.
//!
//! The gRPC and Kafka spans exist only while spans are exported ([`crate::otel::enabled`]); the REST root span
//! existed before and is unchanged when export is off.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{Error, HttpMessage as _};
use actors::validation::NewTicket;
use actors::TicketError;
use rdkafka::message::{Message as _, OwnedMessage};
use tracing::field::Empty;
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};

use super::{set_remote_parent, trace_id, ActixHeaders, HttpHeaders, KafkaHeaders};
use crate::http::errors::ApiError;
use crate::otel;

/// Record `ticket_id` on the current span (no effect on a span that does not declare the field).
pub fn record_ticket_id(ticket_id: &str) {
    Span::current().record("ticket_id", ticket_id);
}

/// Record the id of a create request on the current span (when the client chose one), and hand the request
/// on: for call sites where the request goes straight into the create.
pub fn recording_ticket_id(new: NewTicket) -> NewTicket {
    if let Some(id) = &new.ticket_id {
        record_ticket_id(id);
    }
    new
}

/// The REST root span: tracing-actix-web's fields (method, route, status, request id, …) and `ticket_id`,
/// `trace_id`; its parent is the request's `traceparent`. `http.target` is the path without the query string:
/// every log line of the request carries the span's fields, and a query may hold a token or other secrets a
/// client put there (tracing-actix-web's `root_span!` records the query too, so the span is built here).
pub struct TicketRootSpan;

impl RootSpanBuilder for TicketRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let info = request.connection_info();
        // Matched once: before routing, each call walks the application's routes again (7 % of a GET of a
        // ticket when it was called twice).
        let pattern = request.match_pattern();
        let route = pattern.as_deref().unwrap_or("default");
        let method = request.method().as_str();
        let user_agent = request.headers().get("user-agent").and_then(|h| h.to_str().ok()).unwrap_or("");
        // The `x-request-id` the answer carries (the caller's or a new one); tracing-actix-web's own id where the
        // middleware that sets it is not in front (unit tests of the span).
        let request_id = request
            .extensions()
            .get::<crate::http::request_id::RequestId>()
            .map(|id| id.0.clone())
            .or_else(|| request.extensions().get::<tracing_actix_web::RequestId>().map(|id| id.to_string()));
        let span = tracing::info_span!(
            "HTTP request",
            http.method = %method,
            http.route = %route,
            http.flavor = ?request.version(),
            http.scheme = %info.scheme(),
            http.host = %info.host(),
            http.client_ip = %info.realip_remote_addr().unwrap_or(""),
            http.user_agent = %user_agent,
            http.target = %request.path(),
            http.status_code = Empty,
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = Empty,
            request_id = %request_id.unwrap_or_default(),
            exception.message = Empty,
            exception.details = Empty,
            ticket_id = Empty,
            trace_id = Empty,
        );
        if let Some(id) = route_ticket_id(pattern.as_deref(), request.path()) {
            span.record("ticket_id", id);
        }
        if otel::enabled() {
            set_remote_parent(&span, &ActixHeaders(request.headers()));
            span.record("trace_id", trace_id(&span));
        }
        span
    }

    /// tracing-actix-web's fields (status, exception), and one log line for a failed request: ERROR for a server
    /// error, DEBUG for a client error (4xx). tracing-actix-web's own event, a WARN line for every 4xx, is off
    /// (its `emit_event_on_error` feature): under a flood of rate-limited calls it wrote 2 KB per 429, the CPU a
    /// refusal is there to save. Client errors are counted in `api_requests_total` by status.
    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let failed = match outcome {
            Ok(res) => res.response().error().map(|e| (e, res.status())),
            Err(e) => Some((e, e.as_response_error().status_code())),
        };
        if let Some((error, status)) = failed {
            span.in_scope(|| log_failure(error, status));
        }
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

/// The one place a failed REST request is logged. Refusals under overload are counted
/// (`api_requests_total{status_code="503"}`), not logged one by one: a line per refused request would spend the
/// CPU the refusal is there to save.
fn log_failure(error: &Error, status: StatusCode) {
    let overloaded = matches!(error.as_error::<ApiError>(), Some(ApiError::Ticket(TicketError::Overloaded)));
    if status.is_server_error() && !overloaded {
        tracing::error!(error = %error, status = status.as_u16(), "request failed");
    } else {
        tracing::debug!(error = %error, status = status.as_u16(), "request refused");
    }
}

/// The path segment matched by `{ticket_id}` in the route `pattern`.
fn route_ticket_id<'p>(pattern: Option<&str>, path: &'p str) -> Option<&'p str> {
    let pattern = pattern?;
    pattern.split('/').zip(path.split('/')).find(|(p, _)| *p == "{ticket_id}").map(|(_, segment)| segment)
}

/// The span of one gRPC call (for `tonic::transport::Server::trace_fn`): named `package.Service/Method`,
/// child of the caller's `traceparent` metadata. `rpc.grpc.status_code` is recorded by the metrics layer.
pub fn grpc_request_span(req: &tonic::codegen::http::Request<()>) -> Span {
    if !otel::enabled() {
        return Span::none();
    }
    let method = req.uri().path().trim_start_matches('/');
    let (service, name) = method.split_once('/').unwrap_or((method, ""));
    let span = tracing::info_span!(
        "gRPC call",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = name,
        rpc.grpc.status_code = Empty,
        ticket_id = Empty,
    );
    set_remote_parent(&span, &HttpHeaders(req.headers()));
    span
}

/// The span of handling one consumed message, child of its `traceparent` header.
pub fn kafka_message_span(msg: &OwnedMessage) -> Span {
    if !otel::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "Kafka message",
        otel.name = format!("{} process", msg.topic()),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation = "process",
        messaging.destination.name = msg.topic(),
        messaging.kafka.partition = msg.partition(),
        messaging.kafka.offset = msg.offset(),
        ticket_id = Empty,
    );
    if let Some(headers) = msg.headers() {
        set_remote_parent(&span, &KafkaHeaders(headers));
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracecontext::tests::{with_otel, TRACEPARENT, TRACE_ID};
    use rdkafka::message::{Header, OwnedHeaders};

    #[test]
    fn a_kafka_message_span_continues_the_producers_trace_and_carries_the_ticket_id() {
        otel::set_enabled();
        let headers = OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(TRACEPARENT) });
        let msg = OwnedMessage::new(
            None,
            None,
            "execution.tickets".into(),
            rdkafka::Timestamp::NotAvailable,
            3,
            42,
            Some(headers),
        );
        with_otel(|| {
            let span = kafka_message_span(&msg);
            assert_eq!(trace_id(&span), TRACE_ID);
            let new = NewTicket { ticket_id: Some("k-1".into()), ..NewTicket::default() };
            let new = span.in_scope(|| recording_ticket_id(new));
            assert_eq!(new.ticket_id.as_deref(), Some("k-1"), "the request is handed on");
        });
    }

    /// Every log line of a request carries its span's fields: a token in the query string must not be one.
    #[test]
    fn the_request_span_logs_the_path_without_the_query() {
        use tracing_subscriber::layer::SubscriberExt as _;
        // The service's own log layer: what it writes is what must not carry the secret.
        let buffer = crate::telemetry::capture::LogBuffer::default();
        let logs = crate::telemetry::json_logs_to("info", buffer.clone());
        let request =
            actix_web::test::TestRequest::with_uri("/api/v1/tickets?plan_id=p&access_token=SECRET").to_srv_request();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(logs), || {
            let span = TicketRootSpan::on_request_start(&request);
            span.in_scope(|| tracing::info!("inside the request"));
        });
        let out = buffer.text();
        assert!(out.contains("\"http.target\":\"/api/v1/tickets\""), "{out}");
        assert!(!out.contains("SECRET"), "{out}");
    }

    /// A refused or bad request is counted, not logged above DEBUG (a flood of 429s wrote a WARN line each); a
    /// server error, the service's own or actix's, is logged once, at ERROR.
    #[test]
    fn client_errors_are_not_logged_and_a_server_error_is_logged_once() {
        use actix_web::test::{call_service, init_service, TestRequest};
        use actix_web::{web, App, HttpResponse};
        use tracing_subscriber::layer::SubscriberExt as _;

        async fn limited() -> Result<HttpResponse, ApiError> {
            let retry_after = std::time::Duration::from_millis(5);
            Err(crate::ratelimit::RateLimited { class: "write", retry_after }.into())
        }
        async fn overloaded() -> Result<HttpResponse, ApiError> {
            Err(actors::TicketError::Overloaded.into())
        }
        async fn missing() -> Result<HttpResponse, ApiError> {
            Err(ApiError::NotFound("ticket t-1 not found".into()))
        }
        async fn broken() -> Result<HttpResponse, Error> {
            Err(actix_web::error::ErrorInternalServerError("disk on fire"))
        }
        async fn internal() -> Result<HttpResponse, ApiError> {
            Err(ApiError::Internal("the store answered nonsense".into()))
        }

        let buffer = crate::telemetry::capture::LogBuffer::default();
        let logs = crate::telemetry::json_logs_to("info", buffer.clone());
        let seen = buffer.clone();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(logs), || {
            actix_web::rt::System::new().block_on(async move {
                let app = init_service(
                    App::new()
                        .wrap(tracing_actix_web::TracingLogger::<TicketRootSpan>::new())
                        .route("/limited", web::get().to(limited))
                        .route("/overloaded", web::get().to(overloaded))
                        .route("/missing", web::get().to(missing))
                        .route("/broken", web::get().to(broken))
                        .route("/internal", web::get().to(internal)),
                )
                .await;
                for (path, status) in [("/limited", 429), ("/overloaded", 503), ("/missing", 404)] {
                    let res = call_service(&app, TestRequest::get().uri(path).to_request()).await;
                    assert_eq!(res.status().as_u16(), status, "{path}");
                }
                assert_eq!(seen.text(), "", "refusals and client errors are counted, not logged");
                for path in ["/broken", "/internal"] {
                    let res = call_service(&app, TestRequest::get().uri(path).to_request()).await;
                    assert_eq!(res.status().as_u16(), 500, "{path}");
                }
            })
        });
        let out = buffer.text();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "one line per server error: {out}");
        for (line, (target, cause)) in lines.iter().zip([("/broken", "disk on fire"), ("/internal", "nonsense")]) {
            assert!(line.contains("\"level\":\"ERROR\"") && line.contains("request failed"), "{line}");
            assert!(line.contains(cause), "{line}");
            assert!(line.contains(&format!("\"http.target\":\"{target}\"")), "carries the request's span: {line}");
        }
    }

    #[test]
    fn the_ticket_id_is_the_segment_of_the_route_parameter() {
        let route = |pattern, path| route_ticket_id(Some(pattern), path);
        assert_eq!(route("/api/v1/tickets/{ticket_id}", "/api/v1/tickets/t-1"), Some("t-1"));
        assert_eq!(route("/api/v1/tickets/{ticket_id}/status", "/api/v1/tickets/t-2/status"), Some("t-2"));
        assert_eq!(route("/api/v1/tickets", "/api/v1/tickets"), None);
        assert_eq!(route("/api/v1/tickets/compensation", "/api/v1/tickets/compensation"), None);
        assert_eq!(route_ticket_id(None, "/api/v1/tickets/t-1"), None, "an unmatched request");
    }
}
