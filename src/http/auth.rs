//! The REST side of authentication: an extractor that verifies the caller of a request — its bearer token, and
//! the client certificate of its connection under mutual TLS — and takes the call from the caller's rate limit.

use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::{dev::Payload, http::header, http::Method, web, FromRequest, HttpRequest};

use super::errors::ApiError;
use crate::auth::verify::{Authenticator, Principal};
use crate::ratelimit::{CallerKey, PrincipalKind, RateLimits, RouteClass};
use crate::tls::PeerIdentity;

/// The verified caller of a request; handlers check what it may do.
pub struct Caller(pub Principal);

/// The budget a REST call is taken from: minting a ticket token, reading, or writing.
fn route_class(req: &HttpRequest) -> RouteClass {
    if req.match_pattern().is_some_and(|p| p.ends_with("/{ticket_id}/token")) {
        RouteClass::Token
    } else if matches!(*req.method(), Method::GET | Method::HEAD) {
        RouteClass::Read
    } else {
        RouteClass::Write
    }
}

/// The verified caller and until when its credential verifies: for a long-lived answer (the event stream),
/// which ends when the token expires.
pub struct CallerUntil {
    pub principal: Principal,
    /// Unix seconds; None when authentication is disabled.
    pub valid_until: Option<i64>,
}

fn caller(req: &HttpRequest) -> Result<Caller, ApiError> {
    authenticated(req).map(|a| Caller(a.principal))
}

fn authenticated(req: &HttpRequest) -> Result<crate::auth::verify::Authenticated, ApiError> {
    let Some(auth) = req.app_data::<web::Data<Arc<Authenticator>>>() else {
        return Err(ApiError::Internal("authenticator not configured".into()));
    };
    let value = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let peer = req.conn_data::<PeerIdentity>();
    let verified = auth.authenticate_peer(value, peer);
    if let Some(limits) = req.app_data::<web::Data<RateLimits>>() {
        // A caller that did not authenticate (or is anonymous) is told apart by its address — the TCP peer, not
        // a forwarded-for header a client could make up.
        let (key, kind) = match &verified {
            Ok(a) if a.principal != Principal::Anonymous => {
                (CallerKey::Principal(a.principal.subject().into()), a.kind())
            }
            _ => (req.peer_addr().map_or(CallerKey::Unknown, |a| CallerKey::Peer(a.ip())), PrincipalKind::Peer),
        };
        limits.check(route_class(req), &key, kind)?;
    }
    Ok(verified?)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(caller(req))
    }
}

impl FromRequest for CallerUntil {
    type Error = ApiError;
    type Future = Ready<Result<CallerUntil, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticated(req).map(|a| CallerUntil { principal: a.principal, valid_until: a.valid_until }))
    }
}
