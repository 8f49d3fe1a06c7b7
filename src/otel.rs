//! Span export over OTLP, on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the legacy `OTEL_EXPORTER_ENDPOINT`) is
//! set. [`crate::telemetry`] puts the tracer of [`OtlpExport::start`] under a `tracing-opentelemetry` layer,
//! so the service's `tracing` spans (the REST root span, one per gRPC call, one per Kafka message) become
//! OpenTelemetry spans of `service.name = execution-ticket-service`.
//!
//! - Protocol: `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or `http/protobuf`) when set; otherwise gRPC when the
//!   endpoint's port is 4317 (the collector's gRPC port, as in `k8s/configmap.yaml`) and HTTP/protobuf to
//!   `<endpoint>/v1/traces` for anything else (4318).
//! - Export runs off the request path: the SDK's batch processor has a thread of its own, HTTP goes through
//!   a blocking reqwest client on that thread, and the gRPC (tonic) channel runs on a one-thread Tokio runtime
//!   owned by [`OtlpExport`], so neither depends on the actix or gRPC server runtimes.
//! - The rest is the SDK's standard environment: `OTEL_TRACES_SAMPLER`/`_ARG` (default: parent-based, always
//!   on), `OTEL_BSP_*` (batching), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "execution-ticket-service";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported. The spans that exist only for tracing (per gRPC call, per Kafka message) are
/// not created when they are not: they would cost every message something and change nothing.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Mark export as on, once the layer that exports is installed.
pub(crate) fn set_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Why export could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0:?} is not supported: use grpc or http/protobuf")]
    Protocol(String),
    #[error("OTLP endpoint {0:?} is not an http:// or https:// URL")]
    Endpoint(String),
    #[error("building the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("starting the OTLP export runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// The transport, from `OTEL_EXPORTER_OTLP_PROTOCOL` or else the endpoint's port.
pub fn protocol(endpoint: &str, configured: Option<&str>) -> Result<Protocol, OtlpError> {
    match configured.map(str::trim).filter(|p| !p.is_empty()) {
        Some("grpc") => Ok(Protocol::Grpc),
        Some("http/protobuf") => Ok(Protocol::HttpBinary),
        Some(other) => Err(OtlpError::Protocol(other.to_owned())),
        None => {
            let authority = endpoint.split("://").nth(1).unwrap_or(endpoint).split('/').next().unwrap_or_default();
            let grpc_port = authority.rsplit_once(':').is_some_and(|(_, port)| port == "4317");
            Ok(if grpc_port { Protocol::Grpc } else { Protocol::HttpBinary })
        }
    }
}

/// The HTTP traces URL of a base endpoint (the OTLP rule: append `/v1/traces`, unless already there).
pub fn http_traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// A running export pipeline. Dropping it flushes what is buffered and stops the export.
pub struct OtlpExport {
    provider: SdkTracerProvider,
    /// The runtime of the gRPC channel (gRPC protocol only).
    runtime: Option<tokio::runtime::Runtime>,
}

impl OtlpExport {
    /// Build the exporter and the tracer provider for `endpoint`; install the W3C trace-context propagator.
    pub fn start(endpoint: &str) -> Result<Self, OtlpError> {
        let endpoint = endpoint.trim();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(OtlpError::Endpoint(endpoint.to_owned()));
        }
        let protocol = protocol(endpoint, std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").ok().as_deref())?;
        let (exporter, runtime) = match protocol {
            Protocol::Grpc => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("otlp-export")
                    .enable_all()
                    .build()?;
                // The tonic channel spawns its connection task on the runtime it is built in.
                let exporter = {
                    let _entered = runtime.enter();
                    opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?
                };
                (exporter, Some(runtime))
            }
            _ => {
                let url = http_traces_url(endpoint);
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(url)
                    .build()?;
                (exporter, None)
            }
        };
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(SERVICE_NAME);
        }
        let resource =
            resource.with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracing::debug!(endpoint, ?protocol, "OTLP span export configured");
        Ok(OtlpExport { provider, runtime })
    }

    /// The tracer the `tracing` layer records into.
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer(SERVICE_NAME)
    }

    /// Export every finished span now (blocks until the exporter answered or timed out).
    pub fn flush(&self) -> anyhow::Result<()> {
        self.provider.force_flush().context("flushing OTLP spans")
    }
}

impl Drop for OtlpExport {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OTLP export did not shut down cleanly");
        }
        // Dropping a runtime blocks, which is refused inside an async context (main ends in one).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_follows_the_setting_then_the_port() {
        assert_eq!(protocol("http://collector:4317", None).unwrap(), Protocol::Grpc);
        assert_eq!(protocol("https://collector.example:4317/", None).unwrap(), Protocol::Grpc);
        assert_eq!(protocol("http://collector:4318", None).unwrap(), Protocol::HttpBinary);
        assert_eq!(protocol("http://collector", Some("")).unwrap(), Protocol::HttpBinary);
        assert_eq!(protocol("http://collector:4317", Some("http/protobuf")).unwrap(), Protocol::HttpBinary);
        assert_eq!(protocol("http://collector:4318", Some("grpc")).unwrap(), Protocol::Grpc);
        assert!(matches!(protocol("http://c", Some("http/json")), Err(OtlpError::Protocol(p)) if p == "http/json"));
    }

    #[test]
    fn http_export_goes_to_the_traces_path() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }

    #[test]
    fn an_endpoint_must_be_a_url() {
        assert!(matches!(OtlpExport::start("collector:4317"), Err(OtlpError::Endpoint(_))));
    }

    #[test]
    fn the_endpoint_comes_from_either_variable() {
        use crate::config::Settings;
        let with = |vars: &'static [(&'static str, &'static str)]| {
            Settings::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap()
        };
        assert_eq!(with(&[]).otel_endpoint, None);
        assert_eq!(
            with(&[("OTEL_EXPORTER_ENDPOINT", "http://old:4317")]).otel_endpoint.as_deref(),
            Some("http://old:4317")
        );
        let both =
            with(&[("OTEL_EXPORTER_ENDPOINT", "http://old:4317"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://new:4318")]);
        assert_eq!(both.otel_endpoint.as_deref(), Some("http://new:4318"), "the standard name wins");
        assert_eq!(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).otel_endpoint, None);
    }
}
