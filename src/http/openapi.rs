//! The OpenAPI document, generated from the handlers' annotations (utoipa) and served at `/openapi.json`.

use actix_web::HttpResponse;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{events, health, me, system, tickets, webhooks};

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
        tickets::ticket_dependencies,
        tickets::ticket_dependents,
        tickets::tickets_by_plans,
        events::stream,
        me::me,
        system::system,
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
    tags((name = "tickets", description = "Execution tickets"), (name = "webhooks", description = "Worker-pool subscriptions"), (name = "system", description = "The service itself")),
    modifiers(&BearerAuth, &ErrorResponses, &Aliases),
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

/// The error answers every `/api/v1` operation really gives, declared once here rather than in each handler:
/// 401 (no or bad token) and 403 (the token does not allow the call) everywhere, and 422 wherever a body, a
/// query parameter or an `If-Match` header is parsed. Without them a client generated from the spec (or a
/// schemathesis run) sees undocumented status codes.
struct ErrorResponses;

impl ErrorResponses {
    fn error(description: &str) -> RefOr<Response> {
        let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
        RefOr::T(ResponseBuilder::new().description(description).content("application/json", body).build())
    }

    fn parses_input(op: &Operation, if_match: bool) -> bool {
        let query = op.parameters.iter().flatten().any(|p| p.parameter_in == ParameterIn::Query);
        if_match || query || op.request_body.is_some()
    }
}

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut().filter(|(p, _)| p.starts_with("/api/v1/")) {
            let ops = [("get", &mut item.get), ("post", &mut item.post), ("put", &mut item.put)];
            let ops = ops.into_iter().chain([("patch", &mut item.patch), ("delete", &mut item.delete)]);
            for (method, op) in ops.filter_map(|(m, op)| op.as_mut().map(|op| (m, op))) {
                // PATCH …/status and POST …/retry also parse an If-Match header.
                let if_match =
                    (method == "patch" && path.ends_with("/status")) || (method == "post" && path.ends_with("/retry"));
                let needs_422 = Self::parses_input(op, if_match);
                let responses = &mut op.responses.responses;
                responses.entry("401".into()).or_insert_with(|| Self::error("Missing or invalid bearer token"));
                responses
                    .entry("403".into())
                    .or_insert_with(|| Self::error("The token does not allow this call (service token needed)"));
                if needs_422 {
                    responses.entry("422".into()).or_insert_with(|| Self::error("Invalid body, parameter or header"));
                }
            }
        }
    }
}

/// Routes served twice, documented twice: `PATCH /api/v1/tickets/{ticket_id}` (the original service's route) is
/// `PATCH …/status`, and `POST …/token` is `GET …/token`. Each copy gets its own operation id, as the
/// specification requires.
struct Aliases;

impl Modify for Aliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let paths = &mut openapi.paths.paths;
        let alias = |op: &Operation, suffix: &str, note: &str| {
            let mut op = op.clone();
            op.operation_id = op.operation_id.map(|id| format!("{id}_{suffix}"));
            op.description = Some(format!("{} {note}", op.description.unwrap_or_default()).trim().to_owned());
            op
        };
        let status = paths.get("/api/v1/tickets/{ticket_id}/status").and_then(|item| item.patch.clone());
        if let (Some(op), Some(item)) = (status, paths.get_mut("/api/v1/tickets/{ticket_id}")) {
            item.patch = Some(alias(&op, "at_ticket", "The same as `PATCH /api/v1/tickets/{ticket_id}/status`."));
        }
        if let Some(item) = paths.get_mut("/api/v1/tickets/{ticket_id}/token") {
            item.post = item.get.as_ref().map(|op| alias(op, "post", "Also answered on GET."));
        }
    }
}

/// GET /openapi.json.
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
