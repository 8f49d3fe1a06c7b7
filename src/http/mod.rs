//! The REST front end (actix-web).

pub mod auth;
pub mod errors;
pub mod health;
pub mod openapi;
pub mod tickets;
pub mod webhooks;

use actix_web::middleware::{from_fn, NormalizePath, TrailingSlash};
use actix_web::{web, App, HttpResponse};

use errors::ApiError;

/// Build the application with its shared state. Trailing slashes are trimmed internally (no redirect), so
/// `/api/v1/tickets` and `/api/v1/tickets/` are the same route.
pub fn app(
    state: crate::startup::AppState,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
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
        .service(health::health)
        .service(health::ready)
        .route("/metrics", web::get().to(crate::metrics::metrics_endpoint))
        .route("/openapi.json", web::get().to(openapi::openapi_json))
        .configure(tickets::routes)
        .configure(webhooks::routes)
        .default_service(web::to(|| async {
            HttpResponse::NotFound().json(errors::ErrorBody { detail: "Not Found".into() })
        }))
        .wrap(from_fn(crate::metrics::record))
        .wrap(tracing_actix_web::TracingLogger::<crate::tracecontext::spans::TicketRootSpan>::new())
        .wrap(NormalizePath::new(TrailingSlash::Trim))
}
