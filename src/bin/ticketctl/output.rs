//! What ticketctl prints: aligned tables for people, JSON (`--json`) for scripts. The JSON of a ticket uses
//! the field names of the REST API, with `parameters` and `sla_state` as objects rather than JSON strings.

use serde_json::{json, Value};
use ticket_supervisor::grpc::pb;

/// Columns separated by two spaces, each as wide as its widest cell; a header line first.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells.zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push('\n');
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// Epoch milliseconds as RFC 3339 (UTC); `-` for 0 or absent.
pub fn time(ms: Option<i64>) -> String {
    ms.filter(|ms| *ms > 0)
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "-".into())
}

/// `text` on one line, cut to `max` characters (an ellipsis marks the cut): for a table cell.
pub fn shorten(text: &str, max: usize) -> String {
    let line = text.replace(['\n', '\r'], " ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn parsed(raw: &str) -> Value {
    if raw.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
    }
}

/// A ticket as JSON.
pub fn ticket_json(t: &pb::ExecutionTicketProto) -> Value {
    json!({
        "ticket_id": t.ticket_id, "plan_id": t.plan_id, "intent_id": t.intent_id, "decision_id": t.decision_id,
        "task_id": t.task_id, "task_type": t.task_type, "description": t.description, "status": t.status,
        "priority": t.priority, "risk_band": t.risk_band, "security_level": t.security_level,
        "correlation_id": t.correlation_id, "trace_id": t.trace_id, "span_id": t.span_id,
        "dependencies": t.dependencies, "required_capabilities": t.required_capabilities,
        "sla": t.sla.as_ref().map(|s| json!({"deadline": s.deadline, "timeout_ms": s.timeout_ms, "max_retries": s.max_retries})),
        "qos": t.qos.as_ref().map(|q| json!({
            "delivery_mode": q.delivery_mode, "consistency": q.consistency, "durability": q.durability
        })),
        "parameters": parsed(&t.parameters_json), "metadata": t.metadata,
        "created_at": t.created_at, "started_at": t.started_at, "completed_at": t.completed_at,
        "estimated_duration_ms": t.estimated_duration_ms, "actual_duration_ms": t.actual_duration_ms,
        "retry_count": t.retry_count, "error_message": t.error_message,
        "compensation_ticket_id": t.compensation_ticket_id, "schema_version": t.schema_version,
        "version": t.version, "updated_at": t.updated_at, "sla_state": parsed(&t.sla_state_json),
    })
}

/// One ticket, one field per line.
pub fn ticket_details(t: &pb::ExecutionTicketProto) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut rows = vec![
        ("ticket_id", t.ticket_id.clone()),
        ("status", t.status.clone()),
        ("version", t.version.to_string()),
        ("plan_id", t.plan_id.clone()),
        ("intent_id", t.intent_id.clone()),
        ("decision_id", t.decision_id.clone()),
        ("task", format!("{} {}", t.task_type, t.task_id)),
        ("description", t.description.clone()),
        ("priority", t.priority.clone()),
        ("risk_band", t.risk_band.clone()),
        ("security_level", t.security_level.clone()),
        ("created_at", time(Some(t.created_at))),
        ("started_at", time(t.started_at)),
        ("completed_at", time(t.completed_at)),
        ("updated_at", time(Some(t.updated_at))),
        ("deadline", time(t.sla.as_ref().map(|s| s.deadline))),
        ("retry_count", t.retry_count.to_string()),
        ("error_message", opt(&t.error_message)),
        ("compensation", opt(&t.compensation_ticket_id)),
    ];
    if !t.dependencies.is_empty() {
        rows.push(("dependencies", t.dependencies.join(", ")));
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(k, v)| vec![k.to_owned(), v]).collect();
    table(&["FIELD", "VALUE"], &rows)
}

/// Tickets, one per line.
pub fn ticket_rows(tickets: &[pb::ExecutionTicketProto]) -> String {
    let rows: Vec<Vec<String>> = tickets
        .iter()
        .map(|t| {
            vec![
                t.ticket_id.clone(),
                t.status.clone(),
                t.priority.clone(),
                t.task_type.clone(),
                t.plan_id.clone(),
                t.version.to_string(),
                time(Some(t.created_at)),
            ]
        })
        .collect();
    table(&["TICKET_ID", "STATUS", "PRIORITY", "TASK_TYPE", "PLAN_ID", "VERSION", "CREATED_AT"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![vec!["a-long-id".to_owned(), "PENDING".to_owned()], vec!["b".to_owned(), "RUNNING".to_owned()]];
        assert_eq!(table(&["ID", "STATUS"], &rows), "ID         STATUS\na-long-id  PENDING\nb          RUNNING");
    }

    #[test]
    fn times_are_utc_and_absent_ones_a_dash() {
        assert_eq!(time(Some(1_700_000_000_123)), "2023-11-14T22:13:20.123Z");
        assert_eq!((time(Some(0)), time(None)), ("-".to_owned(), "-".to_owned()));
    }

    #[test]
    fn long_cells_are_cut_on_one_line() {
        assert_eq!(shorten("a\nb", 10), "a b");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abcd", 4), "abcd");
    }

    #[test]
    fn json_fields_become_objects() {
        let t = pb::ExecutionTicketProto {
            ticket_id: "t".into(),
            parameters_json: r#"{"k":1}"#.into(),
            ..Default::default()
        };
        let v = ticket_json(&t);
        assert_eq!((v["ticket_id"].as_str(), v["parameters"]["k"].as_i64()), (Some("t"), Some(1)));
        assert!(v["sla_state"].is_null());
    }
}
