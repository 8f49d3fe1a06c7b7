//! Errors as the original FastAPI clients expect them: a status code and `{"detail": "..."}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use actors::store::StoreError;
use actors::TicketError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::verify::AuthError;

/// Body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub detail: String,
}

/// Body of a 409 for an illegal status transition.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransitionErrorBody {
    pub detail: String,
    pub from: String,
    pub to: String,
    pub allowed: Vec<String>,
}

/// An error answered by the REST API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Ticket(#[from] TicketError),
    /// 422 for a body or query that does not parse.
    #[error("{0}")]
    Unprocessable(String),
    /// 401: no token or one that does not verify.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
    /// 429 with Retry-After: the caller's rate limit (`ratelimit.rs`).
    #[error(transparent)]
    RateLimited(#[from] crate::ratelimit::RateLimited),
    /// 429: the caller (or the server) has as many event streams open as allowed; close one first.
    #[error("{0}")]
    TooManyStreams(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(m) => ApiError::Unauthorized(m),
            AuthError::Forbidden(m) => ApiError::Forbidden(m),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Ticket(TicketError::Store(e))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::RateLimited(_) | ApiError::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Ticket(e) => match e {
                TicketError::NotFound(_) => StatusCode::NOT_FOUND,
                TicketError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                TicketError::IllegalTransition(_) | TicketError::AlreadyExists(_) => StatusCode::CONFLICT,
                TicketError::VersionMismatch { .. } => StatusCode::PRECONDITION_FAILED,
                TicketError::Overloaded
                | TicketError::NotOwner(_)
                | TicketError::Store(StoreError::Unavailable(_) | StoreError::NotOwner(_)) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                TicketError::Store(_) | TicketError::ActorFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        // Logged by the request's root span when it ends (`tracecontext::spans`).
        let status = self.status_code();
        let mut res = HttpResponse::build(status);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.insert_header((header::RETRY_AFTER, "1"));
        }
        if let ApiError::RateLimited(limited) = self {
            res.insert_header((header::RETRY_AFTER, limited.retry_after_seconds().to_string()));
        }
        if status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        match self {
            ApiError::Ticket(TicketError::IllegalTransition(t)) => res.json(TransitionErrorBody {
                detail: t.detail.clone(),
                from: t.from.as_str().to_owned(),
                to: t.to.clone(),
                allowed: t.allowed.iter().map(|s| s.as_str().to_owned()).collect(),
            }),
            other => res.json(ErrorBody { detail: other.public_detail() }),
        }
    }
}

impl ApiError {
    /// What a client is told. Server-side failures carry driver and database text (hosts, SQL, versions): that
    /// stays in the log (`error_response` logs every 5xx), and the client gets what it can act on.
    fn public_detail(&self) -> String {
        match self {
            ApiError::Ticket(TicketError::Store(StoreError::Unavailable(_))) => {
                "the ticket store is unavailable; retry after the Retry-After delay".into()
            }
            ApiError::Ticket(TicketError::Store(_) | TicketError::ActorFailed(_)) | ApiError::Internal(_) => {
                "internal error; it has been logged".into()
            }
            other => other.to_string(),
        }
    }
}
