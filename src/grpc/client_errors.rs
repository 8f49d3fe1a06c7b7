//! Requests that are not valid gRPC messages are answered INVALID_ARGUMENT, not INTERNAL.
//!
//! tonic decodes the message of a unary or server-streaming call before the handler runs — so before
//! authentication — and answers a body that does not decode with INTERNAL: tonic-prost maps every protobuf
//! decode error to INTERNAL (as grpc's status code guide suggests), and tonic's own framing errors (a frame cut
//! short, no message at all, a bad compressed flag) are INTERNAL too. INTERNAL means the server failed: anyone,
//! without a token, could trip the server-error alerts with a few garbage bytes. This layer, inside the metrics
//! layer, rewrites those answers to INVALID_ARGUMENT so that they are counted (and alerted on) as client errors.
//!
//! The answers are recognised by tonic's messages. The handlers of this server never produce them (their
//! INTERNAL errors are store and signing failures, see `convert::status_of`), and `tests/it/grpc_bad_input.rs`
//! checks each case, so a tonic upgrade that rewords one is noticed.

use std::task::{Context, Poll};

use futures::future::{MapOk, TryFutureExt as _};
use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;

/// Beginnings of the messages of INTERNAL statuses tonic answers for a request body that is not a valid message.
const CLIENT_FAULTS: &[&str] = &[
    // tonic-prost: `prost::DecodeError`'s display.
    "failed to decode Protobuf message",
    // tonic: the body ended inside a frame.
    "Unexpected EOF decoding stream",
    // tonic: a unary call whose body holds no message.
    "Missing request message",
    // tonic: a compressed flag other than 0 or 1, or 1 without a grpc-encoding.
    "protocol error: received message with",
    // tonic: a compressed message that does not decompress.
    "Error decompressing",
];

/// Wraps each service in a [`ClientErrorsService`].
#[derive(Clone, Copy, Default)]
pub struct ClientErrorsLayer;

impl<S> Layer<S> for ClientErrorsLayer {
    type Service = ClientErrorsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientErrorsService { inner }
    }
}

/// Rewrites tonic's INTERNAL answers to undecodable requests (see the module docs).
#[derive(Clone)]
pub struct ClientErrorsService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ClientErrorsService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MapOk<S::Future, fn(http::Response<ResBody>) -> http::Response<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        self.inner.call(req).map_ok(rewrite::<ResBody> as fn(_) -> _)
    }
}

/// INVALID_ARGUMENT instead of INTERNAL when the answer is one of [`CLIENT_FAULTS`]; any other answer unchanged.
fn rewrite<B>(mut res: http::Response<B>) -> http::Response<B> {
    // The status of an answer without a message is in its headers (trailers-only), where tonic puts these.
    if res.headers().get("grpc-status").map(http::HeaderValue::as_bytes) != Some(b"13") {
        return res;
    }
    let Some(status) = tonic::Status::from_header_map(res.headers()) else { return res };
    if !CLIENT_FAULTS.iter().any(|prefix| status.message().starts_with(prefix)) {
        return res;
    }
    tracing::debug!(error = %status.message(), "answering an undecodable gRPC request INVALID_ARGUMENT");
    let rewritten =
        tonic::Status::invalid_argument(format!("the request is not a valid gRPC message: {}", status.message()));
    if rewritten.add_header(res.headers_mut()).is_err() {
        // Only an unencodable message can fail; the code alone still says whose fault it was.
        let _ =
            tonic::Status::invalid_argument("the request is not a valid gRPC message").add_header(res.headers_mut());
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: tonic::Status) -> http::Response<()> {
        let mut res = http::Response::new(());
        status.add_header(res.headers_mut()).unwrap();
        res
    }

    fn code(res: &http::Response<()>) -> tonic::Code {
        tonic::Status::from_header_map(res.headers()).unwrap().code()
    }

    #[test]
    fn decode_failures_become_invalid_argument_and_server_failures_stay_internal() {
        let decode = answer(tonic::Status::internal("failed to decode Protobuf message: invalid wire type"));
        let rewritten = rewrite(decode);
        assert_eq!(code(&rewritten), tonic::Code::InvalidArgument);
        let message = tonic::Status::from_header_map(rewritten.headers()).unwrap().message().to_owned();
        assert!(message.contains("invalid wire type"), "{message}");
        assert_eq!(
            code(&rewrite(answer(tonic::Status::internal("Missing request message.")))),
            tonic::Code::InvalidArgument
        );
        let store = answer(tonic::Status::internal("store error: connection reset"));
        assert_eq!(code(&rewrite(store)), tonic::Code::Internal);
        let other = answer(tonic::Status::not_found("failed to decode Protobuf message"));
        assert_eq!(code(&rewrite(other)), tonic::Code::NotFound);
    }
}
