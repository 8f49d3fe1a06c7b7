//! The REST front end (actix-web).

pub mod admission;
pub mod auth;
pub mod console;
pub mod cursor;
pub mod docs;
pub mod errors;
pub mod events;
pub mod health;
pub mod me;
pub mod openapi;
pub mod request_id;
pub mod system;
pub mod tickets;
pub mod webhooks;

use std::cell::Cell;
use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::{from_fn, Next, NormalizePath, TrailingSlash};
use actix_web::{web, App, HttpMessage as _, HttpResponse};

use errors::ApiError;

pin_project_lite::pin_project! {
    /// A request body that fails once its deadline passed (see [`body_deadline`]).
    struct DeadlinePayload {
        #[pin]
        inner: Payload,
        #[pin]
        deadline: tokio::time::Sleep,
        timeout: Duration,
        timed_out: Rc<Cell<bool>>,
        // The whole body arrived: the deadline no longer matters (a handler may take its time after reading it).
        complete: bool,
    }
}

impl futures::Stream for DeadlinePayload {
    type Item = Result<web::Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if this.timed_out.get() || *this.complete {
            return Poll::Ready(None);
        }
        // The deadline first: a body that trickles in never leaves the inner stream idle for long.
        if this.deadline.poll(cx).is_ready() {
            this.timed_out.set(true);
            let message = format!("the request body did not arrive within {:?}", this.timeout);
            return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                message,
            )))));
        }
        let next = this.inner.poll_next(cx);
        *this.complete = matches!(next, Poll::Ready(None));
        next
    }
}

/// Bounds how long a request body may take to arrive, counted from when its head was read. actix-web bounds the
/// head (`client_request_timeout`) but not the body: a client sending a byte every few seconds held a worker's
/// connection for as long as it liked. A body that misses the deadline fails its extractor, and the request is
/// answered 408 with the connection closed.
async fn body_deadline(
    timeout: Duration,
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let timed_out = Rc::new(Cell::new(false));
    match req.take_payload() {
        Payload::None => {}
        inner => {
            let deadline = tokio::time::sleep(timeout);
            let stream =
                DeadlinePayload { inner, deadline, timeout, timed_out: Rc::clone(&timed_out), complete: false };
            let boxed: Pin<Box<dyn futures::Stream<Item = Result<web::Bytes, PayloadError>>>> = Box::pin(stream);
            req.set_payload(Payload::from(boxed));
        }
    }
    let res = next.call(req).await?;
    if !timed_out.get() {
        return Ok(res.map_into_left_body());
    }
    tracing::warn!(timeout_ms = timeout.as_millis() as u64, "a request body arrived too slowly: 408");
    let detail = format!("the request body did not arrive within {} ms", timeout.as_millis());
    let answer = HttpResponse::RequestTimeout().force_close().json(errors::ErrorBody { detail });
    Ok(res.into_response(answer).map_into_right_body())
}

/// Build the application with its shared state. Trailing slashes are trimmed internally (no redirect), so
/// `/api/v1/tickets` and `/api/v1/tickets/` are the same route.
pub fn app(
    state: crate::startup::AppState,
) -> App<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let body_timeout = state.body_timeout;
    let draining = std::sync::Arc::clone(&state.components.draining);
    let refused = state.metrics.http_connections_refused.clone();
    App::new()
        .app_data(web::JsonConfig::default().limit(1 << 20))
        .app_data(web::QueryConfig::default().error_handler(|e, _| ApiError::Unprocessable(e.to_string()).into()))
        .app_data(web::PathConfig::default().error_handler(|e, _| ApiError::Unprocessable(e.to_string()).into()))
        .app_data(web::PayloadConfig::default().limit(1 << 20))
        .app_data(web::Data::new(state.router))
        .app_data(web::Data::new(state.issuer))
        .app_data(web::Data::new(state.metrics))
        .app_data(web::Data::new(state.auth))
        .app_data(web::Data::new(state.components))
        .app_data(web::Data::new(state.webhooks))
        .app_data(web::Data::new(state.rate_limits))
        .app_data(web::Data::new(state.watchers))
        .service(health::health)
        .service(health::ready)
        .route("/metrics", web::get().to(crate::metrics::metrics_endpoint))
        .route("/openapi.json", web::get().to(openapi::openapi_json))
        .configure(tickets::routes)
        .configure(webhooks::routes)
        .configure(events::routes)
        .route("/api/v1/me", web::get().to(me::me))
        .route("/api/v1/system", web::get().to(system::system))
        .configure(console::routes)
        .configure(docs::routes)
        .default_service(web::to(|| async {
            HttpResponse::NotFound().json(errors::ErrorBody { detail: "Not Found".into() })
        }))
        .wrap(from_fn(move |req, next| body_deadline(body_timeout, req, next)))
        .wrap(from_fn(move |req, next| close_while_draining(std::sync::Arc::clone(&draining), req, next)))
        .wrap(from_fn(crate::metrics::record))
        .wrap(tracing_actix_web::TracingLogger::<crate::tracecontext::spans::TicketRootSpan>::new())
        // Outside the tracing logger: the root span reads the id this sets.
        .wrap(from_fn(request_id::request_id))
        .wrap(NormalizePath::new(TrailingSlash::Trim))
        // Outermost: a connection beyond HTTP_MAX_CONNECTIONS costs nothing but its 503.
        .wrap(from_fn(move |req, next| admission::refuse_over_limit(refused.clone(), req, next)))
}

/// During a graceful shutdown every answer closes its connection, so clients open their next request elsewhere
/// (the listener stops soon) instead of reusing a connection the server is about to close under them.
async fn close_while_draining(
    draining: std::sync::Arc<std::sync::atomic::AtomicBool>,
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut res = next.call(req).await?;
    if draining.load(std::sync::atomic::Ordering::SeqCst) {
        res.response_mut().head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(res)
}
