//! The OpenAPI document, generated from the handlers' annotations (utoipa) and served at `/openapi.json`.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{health, tickets, webhooks};

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
        tickets::ticket_history,
        webhooks::create,
        webhooks::list,
        webhooks::get,
        webhooks::patch,
        webhooks::delete,
        webhooks::rotate,
        webhooks::deliveries,
        webhooks::redeliver,
        webhooks::event_types,
    ),
    tags((name = "tickets", description = "Execution tickets"), (name = "webhooks", description = "Worker-pool subscriptions")),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// Every `/api/v1` call takes `authorization: Bearer <jwt>`: a service token, or (for reading and updating
/// its own ticket) a ticket-scoped token. 401 without a valid token, 403 when the token does not allow the call.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// GET /openapi.json.
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
