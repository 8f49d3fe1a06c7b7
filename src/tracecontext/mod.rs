//! W3C trace context (`traceparent`/`tracestate`) in and out of the service.
//!
//! Inbound, the parent of a request's span comes from its HTTP headers, its gRPC metadata or its Kafka
//! message headers ([`spans`]). Outbound, [`current_traceparent`] gives the header to send with a call made
//! on behalf of the current span, so the callee joins the same trace; [`traceparent_of`] is the actor system's
//! hook for the same (what is sent later, outside the request — webhook deliveries, published events — carries
//! the traceparent stored with it).
//!
//! Extraction always uses the W3C format, whatever global propagator is set, since that is the only format
//! this service's peers speak; and it only has an effect while spans are exported ([`crate::otel::enabled`]).

pub mod spans;

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The `traceparent` header value of the current span (`00-<trace id>-<span id>-<flags>`), or `None` when
/// there is no trace to join (export is off, or no span is current).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The `traceparent` header value of `span` (None when it is not exported). The actor system's
/// [`TraceHook`](actors::trace::TraceHook): audit records and webhook deliveries carry it.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The remote parent carried by `headers` (an empty context when there is none, or it does not parse).
pub fn extract(headers: &dyn Extractor) -> Context {
    TraceContextPropagator::new().extract(headers)
}

/// Make the trace context carried by `headers` the parent of `span` (before the span is entered). Nothing
/// happens without a valid `traceparent`: the span then starts a trace of its own.
pub fn set_remote_parent(span: &tracing::Span, headers: &dyn Extractor) {
    let parent = extract(headers);
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled or has no OpenTelemetry layer: then there is nothing to link.
        let _ = span.set_parent(parent);
    }
}

/// Make the span whose `traceparent` was stored (with a webhook delivery, say) the parent of `span`.
pub fn set_stored_parent(span: &tracing::Span, traceparent: &str) {
    set_remote_parent(span, &StoredTraceparent(traceparent));
}

/// A stored `traceparent` as a carrier.
struct StoredTraceparent<'a>(&'a str);

impl Extractor for StoredTraceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The hexadecimal trace id of `span` (32 zeros when it has none).
pub fn trace_id(span: &tracing::Span) -> String {
    format!("{:032x}", span.context().span().span_context().trace_id())
}

/// HTTP/2 headers of a gRPC call (`http` 1.x, as tonic has them).
pub struct HttpHeaders<'a>(pub &'a tonic::codegen::http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Headers of an actix-web request.
pub struct ActixHeaders<'a>(pub &'a actix_web::http::header::HeaderMap);

impl Extractor for ActixHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Headers of a Kafka message (keys compared case-insensitively; values must be UTF-8).
pub struct KafkaHeaders<'a, H: rdkafka::message::Headers>(pub &'a H);

impl<H: rdkafka::message::Headers> Extractor for KafkaHeaders<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use rdkafka::message::{Header, OwnedHeaders};
    use tracing_subscriber::layer::SubscriberExt as _;

    pub const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
    pub const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    /// Run `f` under a subscriber with an OpenTelemetry layer (a provider with no exporter: spans get real
    /// ids, nothing is sent).
    pub fn with_otel<T>(f: impl FnOnce() -> T) -> T {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f)
    }

    #[test]
    fn an_inbound_traceparent_becomes_the_parent_and_goes_out_again() {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "TraceParent", value: Some(TRACEPARENT) })
            .insert(Header { key: "other", value: Some(&[0xff, 0xfe][..]) });
        with_otel(|| {
            let span = tracing::info_span!("work");
            set_remote_parent(&span, &KafkaHeaders(&headers));
            assert_eq!(trace_id(&span), TRACE_ID);
            let out = span.in_scope(current_traceparent).expect("a traceparent to send");
            assert!(out.starts_with(&format!("00-{TRACE_ID}-")), "{out}");
            assert!(!out.contains("b7ad6b7169203331"), "the outgoing parent is this span, not the caller: {out}");
        });
    }

    #[test]
    fn no_or_bad_traceparent_starts_a_new_trace() {
        with_otel(|| {
            let bad = OwnedHeaders::new().insert(Header { key: "traceparent", value: Some("00-zz-01") });
            let span = tracing::info_span!("work");
            set_remote_parent(&span, &KafkaHeaders(&bad));
            let id = trace_id(&span);
            assert_ne!(id, TRACE_ID);
            assert_ne!(id, "0".repeat(32), "a trace of its own");
        });
    }

    #[test]
    fn without_export_there_is_no_traceparent() {
        let span = tracing::info_span!("work");
        assert_eq!(span.in_scope(current_traceparent), None);
    }
}
