//! How the JSON log keeps each span's fields: [`SpanFields`], the same JSON object as tracing-subscriber's
//! `JsonFields` writes, but a field recorded after the span was created is appended instead of the whole object
//! being parsed and written again.
//!
//! Why: every REST request has a root span (`TicketRootSpan`) that records its status code, and often its
//! ticket id, after creation. With `JsonFields` each such record parsed the span's JSON into a map and wrote it
//! out again: about half of the CPU of a `GET /health`, and a third of a `GET` of a ticket, when LOG_LEVEL
//! enables the span (`info`, the default). Appending writes a key twice when a field is recorded twice; the log
//! line's formatter reads the object back with serde_json, where the later value wins, as it did before.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};

/// See the module docs. Used as the JSON log layer's field formatter (`fmt_fields`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SpanFields;

impl<'w> FormatFields<'w> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut object = String::from("{");
        let mut v = Append { out: &mut object, first: true, result: Ok(()) };
        fields.record(&mut v);
        v.result?;
        object.push('}');
        writer.write_str(&object)
    }

    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &tracing::span::Record<'_>) -> fmt::Result {
        let object = &mut current.fields;
        // Anything but an object written here (nothing yet): start one.
        if !(object.starts_with('{') && object.ends_with('}')) {
            object.clear();
            object.push('{');
        } else {
            object.pop();
        }
        let first = object.len() == 1;
        let mut v = Append { out: object, first, result: Ok(()) };
        fields.record(&mut v);
        let result = v.result;
        object.push('}');
        result
    }
}

/// Writes `"name":value` pairs, comma-separated, with the values `JsonFields` gives each type.
struct Append<'a> {
    out: &'a mut String,
    first: bool,
    result: fmt::Result,
}

impl Append<'_> {
    fn pair(&mut self, name: &str, value: impl serde::Serialize) {
        if self.result.is_err() {
            return;
        }
        let (Ok(name), Ok(value)) = (serde_json::to_string(name), serde_json::to_string(&value)) else {
            self.result = Err(fmt::Error);
            return;
        };
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        self.out.push_str(&name);
        self.out.push(':');
        self.out.push_str(&value);
    }
}

impl Visit for Append<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // As `serde_json::Value::from(f64)`: a non-finite number is null.
        self.pair(field.name(), value.is_finite().then_some(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.pair(field.name(), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.pair(field.name(), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.pair(field.name(), value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.pair(field.name(), value);
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.pair(field.name(), value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            // As `JsonFields`: `log.*` fields are the log crate's metadata, already in the line.
            name if name.starts_with("log.") => {}
            name => self.pair(name.strip_prefix("r#").unwrap_or(name), format!("{value:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing::field::Empty;
    use tracing_subscriber::layer::SubscriberExt as _;

    use crate::telemetry::capture::LogBuffer;

    /// Spans whose fields are recorded at creation, later, and twice, with every kind of value; an event in
    /// the inner one. Returns the log line, parsed.
    fn log_line(subscriber: impl tracing::Subscriber + Send + Sync, lines: &LogBuffer) -> serde_json::Value {
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("outer", none = Empty, flag = true, quoted = "say \"hi\"\n");
            let _o = outer.enter();
            let inner = tracing::info_span!(
                "inner",
                status = Empty,
                ticket_id = Empty,
                n = -3i64,
                big = 7u64,
                ratio = 0.5f64,
                nan = f64::NAN,
                debug = ?vec!["a", "b"],
                r#type = "raw",
            );
            inner.record("status", 200u64);
            inner.record("ticket_id", "t-1");
            inner.record("status", 404u64);
            outer.record("none", "set later");
            let _i = inner.enter();
            tracing::info!(answer = 42, "inside");
        });
        serde_json::from_str(lines.text().trim()).unwrap()
    }

    /// The service's log layer (`telemetry::json_logs_to`, with `SpanFields`) against tracing-subscriber's own
    /// JSON formatter (`JsonFields`).
    #[test]
    fn span_fields_log_as_the_json_formatter_logs_them() {
        let theirs = LogBuffer::default();
        let expected = log_line(
            tracing_subscriber::registry()
                .with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(theirs.clone())),
            &theirs,
        );
        let ours = LogBuffer::default();
        let got =
            log_line(tracing_subscriber::registry().with(crate::telemetry::json_logs_to("info", ours.clone())), &ours);
        let strip = |mut v: serde_json::Value| {
            v.as_object_mut().unwrap().remove("timestamp");
            v
        };
        let (expected, got) = (strip(expected), strip(got));
        assert_eq!(got, expected);
        // The later record won, and the fields are all there.
        assert_eq!(got["span"]["status"], 404);
        assert_eq!(got["span"]["ticket_id"], "t-1");
        assert_eq!(got["span"]["type"], "raw");
        assert_eq!(got["span"]["nan"], serde_json::Value::Null);
        assert_eq!(got["spans"][0]["quoted"], "say \"hi\"\n");
        assert_eq!(got["spans"][0]["none"], "set later");
    }
}
