//! The REST side of authentication: an extractor that verifies the bearer token of a request.

use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};

use super::errors::ApiError;
use crate::auth::verify::{Authenticator, Principal};

/// The verified caller of a request; handlers check what it may do.
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(auth) = req.app_data::<web::Data<Arc<Authenticator>>>() else {
            return ready(Err(ApiError::Internal("authenticator not configured".into())));
        };
        let value = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        ready(auth.authenticate(value).map(Caller).map_err(ApiError::from))
    }
}
