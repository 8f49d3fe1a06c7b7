//! Structured JSON logs on stdout, filtered by LOG_LEVEL (a level such as `info`, or a full `EnvFilter`);
//! and, when an OTLP endpoint is configured, the service's spans exported over OTLP ([`crate::otel`]).

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::otel::OtlpExport;

/// Spans at this level and above are exported, whatever LOG_LEVEL says: a quiet log must not empty the
/// traces. (Libraries' own spans — hyper, h2, tonic — are at debug and below, so they stay out.)
const EXPORTED_SPANS: &str = "info";

/// Install the global subscriber (once; later calls are ignored so tests can call it freely).
pub fn init(log_level: &str) {
    let _ = tracing_subscriber::registry().with(json_logs(log_level)).try_init();
}

/// [`init`], plus span export to `otlp_endpoint` when one is given. Keep the returned export for the life
/// of the process: dropping it flushes the spans still buffered and stops exporting. `None` when there is no
/// endpoint, or when a subscriber was already installed (then nothing would reach the exporter).
pub fn init_with_otlp(log_level: &str, otlp_endpoint: Option<&str>) -> anyhow::Result<Option<OtlpExport>> {
    let Some(endpoint) = otlp_endpoint else {
        init(log_level);
        return Ok(None);
    };
    let export = OtlpExport::start(endpoint)?;
    let spans = tracing_opentelemetry::layer().with_tracer(export.tracer()).with_filter(EnvFilter::new(EXPORTED_SPANS));
    if tracing_subscriber::registry().with(json_logs(log_level)).with(spans).try_init().is_err() {
        tracing::warn!("a tracing subscriber was already installed: spans are not exported");
        return Ok(None);
    }
    crate::otel::set_enabled();
    tracing::info!(endpoint, "exporting spans over OTLP");
    Ok(Some(export))
}

/// The JSON log layer on stdout (see [`json_logs_to`]).
fn json_logs<S>(log_level: &str) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    json_logs_to(log_level, std::io::stdout)
}

/// The JSON log layer, with LOG_LEVEL as its own filter (so that it does not filter what is exported); span fields
/// kept by [`SpanFields`](crate::log_fields::SpanFields). Writes to `writer`: stdout in the service, a
/// [`capture::LogBuffer`] in tests, so they see the lines the service writes.
pub(crate) fn json_logs_to<S, W>(log_level: &str, writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(log_level.to_lowercase()).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .fmt_fields(crate::log_fields::SpanFields)
        .with_writer(writer)
        .with_filter(filter)
}

/// Log lines captured in memory, for tests.
#[cfg(test)]
pub(crate) mod capture {
    use std::sync::{Arc, Mutex};

    /// A log writer that keeps what it is given; clones share the lines.
    #[derive(Clone, Default)]
    pub(crate) struct LogBuffer(Arc<Mutex<Vec<u8>>>);

    impl LogBuffer {
        /// Everything written so far.
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl std::io::Write for LogBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
        type Writer = LogBuffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }
}
