//! Exit statuses scripts can tell apart. An error carries its [`Exit`] as a [`Coded`] anywhere in its chain;
//! anything else is a plain failure (1).
//!
//! | status | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | failed otherwise (a server error, a DLQ message not replayed, …) |
//! | 2 | usage or bad input: bad arguments, an unreadable or invalid input file, INVALID_ARGUMENT; HTTP 400, 422 |
//! | 3 | not found: NOT_FOUND; HTTP 404; a Kafka topic or DLQ message that does not exist |
//! | 4 | conflict or precondition: ALREADY_EXISTS, FAILED_PRECONDITION (illegal transition), ABORTED (stale version); HTTP 409, 412 |
//! | 5 | unauthenticated or forbidden: UNAUTHENTICATED, PERMISSION_DENIED; HTTP 401, 403 |
//! | 6 | unavailable: cannot connect, UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED (overloaded: try later); HTTP 429, 502, 503, 504 |
//!
//! The REST answers (the `webhooks` commands) map onto the same statuses as their gRPC counterparts: a body the
//! service refuses as invalid (400, 422) is the caller's input to fix, like INVALID_ARGUMENT.

use std::fmt;

/// One of the exit statuses above (except 0 and 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Usage = 2,
    NotFound = 3,
    Conflict = 4,
    Denied = 5,
    Unavailable = 6,
}

impl Exit {
    /// What a gRPC status means for the caller; `None`: a plain failure.
    pub fn of_grpc(code: tonic::Code) -> Option<Exit> {
        use tonic::Code::*;
        match code {
            InvalidArgument | OutOfRange => Some(Exit::Usage),
            NotFound => Some(Exit::NotFound),
            AlreadyExists | FailedPrecondition | Aborted => Some(Exit::Conflict),
            Unauthenticated | PermissionDenied => Some(Exit::Denied),
            Unavailable | DeadlineExceeded | ResourceExhausted => Some(Exit::Unavailable),
            _ => None,
        }
    }

    /// What an HTTP error status means for the caller; `None`: a plain failure (a 500, an unexpected code).
    pub fn of_http(status: u16) -> Option<Exit> {
        match status {
            400 | 422 => Some(Exit::Usage),
            404 => Some(Exit::NotFound),
            409 | 412 => Some(Exit::Conflict),
            401 | 403 => Some(Exit::Denied),
            // 429 as RESOURCE_EXHAUSTED: the service (or the caller's rate limit) asks to come back later.
            429 | 502 | 503 | 504 => Some(Exit::Unavailable),
            _ => None,
        }
    }
}

/// An error with the exit status it calls for.
#[derive(Debug)]
pub struct Coded {
    pub exit: Exit,
    pub message: String,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// An error exiting with `exit`.
pub fn coded(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    Coded { exit, message: message.into() }.into()
}

/// A failed gRPC call, named, with its code.
pub fn call_error(what: &'static str) -> impl FnOnce(tonic::Status) -> anyhow::Error {
    move |s| {
        let message = format!("{what}: {:?}: {}", s.code(), s.message());
        match Exit::of_grpc(s.code()) {
            Some(exit) => coded(exit, message),
            None => anyhow::anyhow!(message),
        }
    }
}

/// The exit status for an error: the first [`Coded`] in its chain, else 1.
pub fn status_of(e: &anyhow::Error) -> i32 {
    // `downcast_ref` also finds a `Coded` given as context, at any layer; `chain` one that is a source.
    e.downcast_ref::<Coded>().or_else(|| e.chain().find_map(|c| c.downcast_ref::<Coded>())).map_or(1, |c| c.exit as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_per_kind() {
        assert_eq!(status_of(&call_error("Get")(tonic::Status::not_found("x"))), 3);
        assert_eq!(status_of(&call_error("Update")(tonic::Status::failed_precondition("x"))), 4);
        assert_eq!(status_of(&call_error("Update")(tonic::Status::aborted("x"))), 4);
        assert_eq!(status_of(&call_error("Get")(tonic::Status::permission_denied("x"))), 5);
        assert_eq!(status_of(&call_error("Get")(tonic::Status::unauthenticated("x"))), 5);
        assert_eq!(status_of(&call_error("Get")(tonic::Status::unavailable("x"))), 6);
        assert_eq!(status_of(&call_error("Get")(tonic::Status::invalid_argument("x"))), 2);
        assert_eq!(status_of(&call_error("Get")(tonic::Status::internal("x"))), 1);
        let http = |status| Exit::of_http(status).map_or(1, |e| e as i32);
        assert_eq!([400, 422, 404, 409, 412, 401, 403, 429, 503, 500].map(http), [2, 2, 3, 4, 4, 5, 5, 6, 6, 1]);
        let wrapped = coded(Exit::NotFound, "gone").context("while watching");
        assert_eq!(status_of(&wrapped), 3, "found anywhere in the chain");
    }
}
