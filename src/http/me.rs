//! `GET /api/v1/me`: who the bearer token says the caller is. A client (the console) asks once after sign-in
//! to know what to show; what the caller may do is still decided by each call.

use actix_web::HttpResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::CallerUntil;
use super::errors::ApiError;
use crate::auth::verify::Principal;

/// The caller as its credential says.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// `service` (may do everything), `ticket` (only its own ticket, only its scopes), or `anonymous`
    /// (AUTH_MODE=disabled: everything is allowed).
    pub kind: String,
    /// Recorded as the author of the caller's changes.
    pub subject: String,
    /// A ticket token's ticket.
    pub ticket_id: Option<String>,
    /// A ticket token's scopes.
    pub scopes: Vec<String>,
    /// Unix seconds after which the credential no longer verifies (absent with AUTH_MODE=disabled).
    pub valid_until: Option<i64>,
}

/// Who the caller is: the kind of its token, its subject, and a ticket token's ticket and scopes.
#[utoipa::path(get, path = "/api/v1/me", tag = "tickets", responses(
    (status = 200, description = "The caller", body = Me),
))]
pub async fn me(caller: CallerUntil) -> Result<HttpResponse, ApiError> {
    let subject = caller.principal.subject().to_owned();
    let (kind, ticket_id, scopes) = match caller.principal {
        Principal::Service { .. } => ("service", None, Vec::new()),
        Principal::Ticket { ticket_id, scopes, .. } => ("ticket", Some(ticket_id), scopes),
        Principal::Anonymous => ("anonymous", None, Vec::new()),
    };
    Ok(HttpResponse::Ok().json(Me { kind: kind.into(), subject, ticket_id, scopes, valid_until: caller.valid_until }))
}
