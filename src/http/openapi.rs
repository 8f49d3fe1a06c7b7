//! The OpenAPI document, generated from the handlers' annotations (utoipa) and served at `/openapi.json`.

use actix_web::HttpResponse;
use utoipa::OpenApi;

use super::{health, tickets};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Execution Ticket Service",
        description = "Owns the life of every execution ticket: status machine, SLA timers, tokens."
    ),
    paths(
        health::health,
        health::ready,
        tickets::create_ticket,
        tickets::list_tickets,
        tickets::get_ticket,
        tickets::update_status,
        tickets::retry_ticket,
        tickets::compensate,
        tickets::ticket_token,
    ),
    tags((name = "tickets", description = "Execution tickets"))
)]
pub struct ApiDoc;

/// GET /openapi.json.
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
