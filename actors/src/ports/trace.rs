//! W3C trace context as the actor system hands it on. Audit records (and the events published from them) and
//! webhook deliveries store the `traceparent` of the work that made them, so what is sent later, outside any
//! request, still joins that trace. The actor system has no OpenTelemetry of its own: the service supplies a
//! [`TraceHook`] that reads a span's context.

/// Turns a span into its `traceparent` (None when spans are not exported).
pub type TraceHook = fn(&tracing::Span) -> Option<String>;

/// The [`TraceHook`] of a process that exports no spans.
pub fn no_trace(_: &tracing::Span) -> Option<String> {
    None
}

/// A `traceparent` in the ticket's own trace (`trace_id` from its create request) with a new span id; None
/// unless `trace_id` is a valid W3C trace id (32 hex digits, not all zero).
pub fn ticket_traceparent(trace_id: Option<&str>) -> Option<String> {
    let trace =
        trace_id.filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) && *t != "0".repeat(32))?;
    Some(format!("00-{}-{}-01", trace.to_ascii_lowercase(), random_hex(16)))
}

/// A `traceparent` in the ticket's trace when it has a valid one, else in a new trace.
pub fn traceparent_in(trace_id: Option<&str>) -> String {
    ticket_traceparent(trace_id).unwrap_or_else(|| format!("00-{}-{}-01", random_hex(32), random_hex(16)))
}

/// `n` (≤ 32) random lowercase hex digits, never all zero (UUID v4 bytes: the version nibble is never 0).
fn random_hex(n: usize) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    let digits = &hex[..n];
    if digits.bytes().all(|b| b == b'0') {
        return random_hex(n);
    }
    digits.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn a_ticket_traceparent_joins_the_tickets_trace_or_starts_one() {
        let well_formed = |tp: &str| {
            let parts: Vec<&str> = tp.split('-').collect();
            parts.len() == 4
                && (parts[0], parts[3]) == ("00", "01")
                && [(parts[1], 32), (parts[2], 16)]
                    .iter()
                    .all(|(p, n)| p.len() == *n && p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
                && parts[1] != "0".repeat(32)
                && parts[2] != "0".repeat(16)
        };
        let joined = traceparent_in(Some(&TRACE_ID.to_ascii_uppercase()));
        assert!(well_formed(&joined) && joined.starts_with(&format!("00-{TRACE_ID}-")), "{joined}");
        assert_ne!(joined, traceparent_in(Some(TRACE_ID)), "a span of its own each time");
        for bad in [None, Some("short"), Some(&*"0".repeat(32)), Some(&*"g".repeat(32))] {
            assert_eq!(ticket_traceparent(bad), None, "{bad:?}");
            let started = traceparent_in(bad);
            assert!(well_formed(&started), "{bad:?}: {started}");
            assert_ne!(started[3..35], traceparent_in(bad)[3..35], "a new trace each time");
        }
    }
}
