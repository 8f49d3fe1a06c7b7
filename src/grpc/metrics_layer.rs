//! gRPC server metrics, recorded by a tower layer around every service of the server (tickets, health,
//! reflection): `grpc_server_started_total{grpc_type,grpc_service,grpc_method}`,
//! `grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}` and
//! `grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}`, named and labelled as
//! go-grpc-prometheus does so that the usual dashboards and alerts apply. (Its per-message counters,
//! `grpc_server_msg_{received,sent}_total`, are not kept.)
//!
//! - `grpc_service` is `package.Service`, `grpc_method` the method's name, `grpc_type` `unary`,
//!   `client_stream`, `server_stream` or `bidi_stream` (from the descriptor). Only methods this server declares
//!   (read from the descriptor sets it serves) get their own values; any other path is `unknown` in all three,
//!   so a client cannot grow the label set.
//! - `grpc_code` is the Go name of the status (`OK`, `NotFound`, `Canceled`, …), read from the `grpc-status`
//!   header of the response. A handler's error is sent trailers-only, so its status is in that header; a
//!   successful unary call carries its status in the trailers, so a 200 response without the header counts as
//!   `OK`. A call dropped before its response (the client went away) counts as `Canceled`.
//! - Calls are recorded when the response *future* resolves, i.e. when the response headers are ready. For a
//!   unary call that is the whole call. For a streaming call (WatchTickets, StreamStatusUpdates) it is only
//!   the opening of the stream: the duration is the time to the first response headers and the code says
//!   whether the stream was accepted; how the stream later ends is not counted here.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use prost::Message as _;
use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;

/// The label of a path this server does not serve.
const UNKNOWN_METHOD: &str = "unknown";

/// The labels of one method: `grpc_type`, `grpc_service`, `grpc_method`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodLabels {
    kind: &'static str,
    service: String,
    method: String,
}

impl MethodLabels {
    fn values(&self) -> [&str; 3] {
        [self.kind, &self.service, &self.method]
    }
}

/// The metric families and the methods worth labels of their own.
#[derive(Clone)]
pub struct GrpcMetrics {
    started: IntCounterVec,
    handled: IntCounterVec,
    handling: HistogramVec,
    /// `/package.Service/Method` → its labels.
    methods: Arc<HashMap<String, Arc<MethodLabels>>>,
    unknown: Arc<MethodLabels>,
    /// `grpc_watchers`: WatchTickets streams open now (see `grpc::watch::Watchers`).
    pub watchers: IntGauge,
}

impl GrpcMetrics {
    /// Register both families in `registry`; the methods are those of this server's services.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let started = IntCounterVec::new(
            Opts::new("grpc_server_started_total", "gRPC calls started on the server"),
            &["grpc_type", "grpc_service", "grpc_method"],
        )?;
        let handled = IntCounterVec::new(
            Opts::new("grpc_server_handled_total", "gRPC calls completed on the server, by method and status code"),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        let handling = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "gRPC call latency until the response headers (a whole unary call; a stream's opening)",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["grpc_type", "grpc_service", "grpc_method"],
        )?;
        let watchers = IntGauge::new("grpc_watchers", "WatchTickets streams open now")?;
        registry.register(Box::new(started.clone()))?;
        registry.register(Box::new(handled.clone()))?;
        registry.register(Box::new(handling.clone()))?;
        registry.register(Box::new(watchers.clone()))?;
        let methods = served_methods()
            .into_iter()
            .map(|labels| (format!("/{}/{}", labels.service, labels.method), Arc::new(labels)))
            .collect::<HashMap<_, _>>();
        let unknown = Arc::new(MethodLabels {
            kind: UNKNOWN_METHOD,
            service: UNKNOWN_METHOD.to_owned(),
            method: UNKNOWN_METHOD.to_owned(),
        });
        Ok(GrpcMetrics { started, handled, handling, methods: Arc::new(methods), unknown, watchers })
    }

    /// The layer to give the server builder.
    pub fn layer(&self) -> GrpcMetricsLayer {
        GrpcMetricsLayer { metrics: self.clone() }
    }

    fn method_labels(&self, path: &str) -> Arc<MethodLabels> {
        Arc::clone(self.methods.get(path).unwrap_or(&self.unknown))
    }
}

/// The labels of every method in the descriptor sets the server registers (its own proto, the health service
/// and both reflection versions).
fn served_methods() -> Vec<MethodLabels> {
    let sets: [&[u8]; 4] = [
        super::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut out = Vec::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            tracing::warn!("a gRPC descriptor set does not decode: its methods are labelled unknown");
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                let full = if package.is_empty() { service_name } else { format!("{package}.{service_name}") };
                out.extend(service.method.into_iter().map(|m| MethodLabels {
                    kind: match (m.client_streaming(), m.server_streaming()) {
                        (false, false) => "unary",
                        (true, false) => "client_stream",
                        (false, true) => "server_stream",
                        (true, true) => "bidi_stream",
                    },
                    service: full.clone(),
                    method: m.name.unwrap_or_default(),
                }));
            }
        }
    }
    out
}

/// The Go name of a status code (what go-grpc-prometheus puts in `grpc_code`).
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The status of a response whose headers are ready (see the module documentation).
fn response_code<B>(res: &http::Response<B>) -> tonic::Code {
    match res.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()) {
        Some(code) => tonic::Code::from_i32(code),
        None if res.status() == http::StatusCode::OK => tonic::Code::Ok,
        None => tonic::Code::Unknown,
    }
}

/// Wraps each service in a [`GrpcMetricsService`].
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: GrpcMetrics,
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService { inner, metrics: self.metrics.clone() }
    }
}

/// Times each call and counts it with its status code.
#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let labels = self.metrics.method_labels(req.uri().path());
        self.metrics.started.with_label_values(&labels.values()).inc();
        let call = Call { metrics: self.metrics.clone(), labels, started: Instant::now(), done: false };
        ResponseFuture { inner: self.inner.call(req), call }
    }
}

/// One call being timed. Recorded once: when its response is ready, or as `Canceled` if dropped before.
struct Call {
    metrics: GrpcMetrics,
    labels: Arc<MethodLabels>,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let [kind, service, method] = self.labels.values();
        self.metrics.handled.with_label_values(&[kind, service, method, code_label(code)]).inc();
        self.metrics.handling.with_label_values(&[kind, service, method]).observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// The inner service's response future, recording the call when it resolves.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Call,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        // An error of the service itself (not a gRPC status) ends the HTTP/2 stream without a status.
        let code = out.as_ref().map_or(tonic::Code::Unknown, response_code);
        this.call.finish(code);
        // The call's span (see `tracecontext::spans::grpc_request_span`) is the current one here.
        let span = tracing::Span::current();
        span.record("rpc.grpc.status_code", code as i32);
        if code != tonic::Code::Ok {
            span.record("otel.status_code", "ERROR");
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counter `family` with these labels (every one named must match).
    fn count(registry: &Registry, family: &str, want: &[(&str, &str)]) -> u64 {
        let families = registry.gather();
        let Some(family) = families.iter().find(|f| f.get_name() == family) else { return 0 };
        family
            .get_metric()
            .iter()
            .find(|m| want.iter().all(|(k, v)| m.get_label().iter().any(|l| l.get_name() == *k && l.get_value() == *v)))
            .map_or(0, |m| m.get_counter().get_value() as u64)
    }

    /// `grpc_server_handled_total` of `service/method` with `code`.
    fn handled(registry: &Registry, path: &str, code: &str) -> u64 {
        let (service, method) = path.split_once('/').unwrap_or((path, path));
        let want = [("grpc_service", service), ("grpc_method", method), ("grpc_code", code)];
        count(registry, "grpc_server_handled_total", &want)
    }

    /// A service answering every call at once with the response its function builds.
    #[derive(Clone)]
    struct Answer(fn() -> http::Response<()>);

    impl Service<http::Request<()>> for Answer {
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok((self.0)()))
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(format!("http://localhost{path}")).body(()).unwrap()
    }

    #[tokio::test]
    async fn codes_come_from_the_grpc_status_header_and_unknown_paths_share_a_label() {
        let registry = Registry::new();
        let metrics = GrpcMetrics::register(&registry).unwrap();
        let ok = || http::Response::new(());
        let not_found = || http::Response::builder().header("grpc-status", "5").body(()).unwrap();
        let get = "/ticket_service.TicketService/GetTicket";

        metrics.layer().layer(Answer(ok)).call(request(get)).await.unwrap();
        metrics.layer().layer(Answer(not_found)).call(request(get)).await.unwrap();
        metrics.layer().layer(Answer(not_found)).call(request("/evil.Service/Random123")).await.unwrap();
        metrics.layer().layer(Answer(ok)).call(request("/grpc.health.v1.Health/Check")).await.unwrap();

        assert_eq!(handled(&registry, "ticket_service.TicketService/GetTicket", "OK"), 1);
        assert_eq!(handled(&registry, "ticket_service.TicketService/GetTicket", "NotFound"), 1);
        assert_eq!(handled(&registry, "unknown/unknown", "NotFound"), 1);
        let started =
            [("grpc_type", "unary"), ("grpc_service", "ticket_service.TicketService"), ("grpc_method", "GetTicket")];
        assert_eq!(count(&registry, "grpc_server_started_total", &started), 2, "go-grpc-prometheus labels");
        assert_eq!(handled(&registry, "grpc.health.v1.Health/Check", "OK"), 1);
        let families = registry.gather();
        let hist = families.iter().find(|f| f.get_name() == "grpc_server_handling_seconds").unwrap();
        let total: u64 = hist.get_metric().iter().map(|m| m.get_histogram().get_sample_count()).sum();
        assert_eq!(total, 4);
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_response_is_canceled() {
        let registry = Registry::new();
        let metrics = GrpcMetrics::register(&registry).unwrap();
        let call = ResponseFuture {
            inner: std::future::pending::<Result<http::Response<()>, ()>>(),
            call: Call {
                metrics: metrics.clone(),
                labels: metrics.method_labels("/ticket_service.TicketService/WatchTickets"),
                started: Instant::now(),
                done: false,
            },
        };
        assert!(tokio::time::timeout(std::time::Duration::from_millis(5), call).await.is_err());
        assert_eq!(handled(&registry, "ticket_service.TicketService/WatchTickets", "Canceled"), 1);
        let stream = [("grpc_type", "server_stream"), ("grpc_method", "WatchTickets"), ("grpc_code", "Canceled")];
        assert_eq!(count(&registry, "grpc_server_handled_total", &stream), 1);
    }

    #[test]
    fn every_ticket_service_method_is_known() {
        let methods = served_methods();
        let find = |service: &str, method: &str| methods.iter().find(|m| m.service == service && m.method == method);
        for (m, kind) in [
            ("CreateTicket", "unary"),
            ("StreamStatusUpdates", "bidi_stream"),
            ("WatchTickets", "server_stream"),
            ("GetTicketHistory", "unary"),
        ] {
            let labels = find("ticket_service.TicketService", m).unwrap_or_else(|| panic!("{m}: {methods:?}"));
            assert_eq!(labels.kind, kind, "{m}");
        }
        assert!(find("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo").is_some());
    }
}
