//! Turning a client's create request into a valid [`Ticket`], or a [`ValidationError`] naming the field.
//!
//! This is the one validation every entry point (REST, gRPC, Kafka) goes through; the database's constraints
//! are only a backstop behind it.

use std::collections::HashSet;

use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

use crate::domain::enums::{Priority, RiskBand, SecurityLevel, TaskType, TicketStatus};
use crate::domain::model::{Metadata, Millis, Qos, Sla, Ticket, TicketSpec};

/// Longest accepted id (ticket, plan, intent, decision, task, correlation, trace, span, dependency).
pub const MAX_ID_LEN: usize = 255;
/// Longest accepted description, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 65_536;
/// Latest accepted timestamp (9999-12-31T23:59:59.999Z), so every timestamp fits every store.
pub const MAX_TIMESTAMP: Millis = 253_402_300_799_999;
/// Most dependencies or capabilities one ticket may list.
pub const MAX_LIST_LEN: usize = 1_000;
/// Longest accepted error message, in bytes.
pub const MAX_ERROR_MESSAGE_LEN: usize = 65_536;
/// Deepest accepted nesting of `parameters` (an object holding a scalar is depth 1). Every store, webhook
/// payload (`{"data": {"ticket": {"parameters": …}}}`) and JSON parser on the way (serde_json stops at 128)
/// must round-trip what is accepted, so the limit sits well inside theirs.
pub const MAX_JSON_DEPTH: usize = 32;
/// Largest accepted `parameters`, as compact JSON.
pub const MAX_PARAMETERS_BYTES: usize = 256 * 1024;
/// Largest accepted `metadata`: its keys and values together, in bytes, each value counted as it is written in
/// the `map<string, string>` form (a string's bytes, any other value's compact JSON; see [`Metadata`]). Values
/// are nested at most [`MAX_JSON_DEPTH`] deep, counting the `metadata` object itself, as `parameters`.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// A field that is missing or wrong; answered as 422 / INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError { field: field.into(), message: message.into() }
    }

    /// The same error, reported under another field name.
    pub fn with_field(self, field: impl Into<String>) -> Self {
        ValidationError { field: field.into(), ..self }
    }
}

/// A timestamp as a client may send it: epoch milliseconds (an integer) or an RFC 3339 string with a `Z` or an
/// offset, fractional seconds allowed (`2026-12-05T23:28:01Z`, `2026-12-05T20:28:01.250-03:00`; below the
/// millisecond is dropped). Answers always give epoch milliseconds.
pub struct TimestampInput;

impl utoipa::PartialSchema for TimestampInput {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
        let millis = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .maximum(Some(MAX_TIMESTAMP))
            .description(Some("Epoch milliseconds"));
        let text = ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339, with `Z` or an offset; fractional seconds allowed"))
            .examples(["2026-12-05T23:28:01Z"]);
        OneOfBuilder::new()
            .item(millis)
            .item(text)
            .description(Some("Epoch milliseconds or an RFC 3339 string; answers always give epoch milliseconds"))
            .into()
    }
}

impl ToSchema for TimestampInput {}

/// `deserialize_with` of an optional [`TimestampInput`]: absent or null → `None`, an integer as epoch
/// milliseconds, a string as RFC 3339. Anything else fails naming what is expected (the caller adds the field).
pub fn timestamp_input<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = Option<Millis>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("epoch milliseconds (an integer) or an RFC 3339 timestamp such as \"2026-12-05T23:28:01Z\"")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v).map(Some).map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_rfc3339(v).map(Some).ok_or_else(|| {
                E::custom(format!(
                    "{v:?} is not an RFC 3339 timestamp with a Z or an offset (such as \"2026-12-05T23:28:01Z\") \
                     nor epoch milliseconds"
                ))
            })
        }
    }
    d.deserialize_option(Visit)
}

/// An RFC 3339 timestamp (`Z` or an offset; fractional seconds, cut to the millisecond) as epoch milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}

/// SLA as sent by a client; every field optional so that a missing one gets a clear message.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct NewSla {
    #[serde(default, deserialize_with = "timestamp_input")]
    #[schema(value_type = Option<TimestampInput>)]
    pub deadline: Option<Millis>,
    pub timeout_ms: Option<i64>,
    pub max_retries: Option<i32>,
}

/// QoS as sent by a client.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct NewQos {
    pub delivery_mode: Option<crate::domain::enums::DeliveryMode>,
    pub consistency: Option<crate::domain::enums::Consistency>,
    pub durability: Option<crate::domain::enums::Durability>,
}

/// A create request: the Avro record's fields, lenient on form (optional where the schema has a default,
/// enums in any case, priority as a legacy integer) and strict on content ([`NewTicket::validate`]).
/// Unknown fields are ignored, as the original service did.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct NewTicket {
    /// Generated (UUID v4) when absent.
    pub ticket_id: Option<String>,
    pub plan_id: Option<String>,
    /// Required; may be empty (`""`: the integration library's fallback when a plan has none), kept as given.
    pub intent_id: Option<String>,
    pub decision_id: Option<String>,
    /// `""` counts as absent (stored as null).
    pub correlation_id: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub task_id: Option<String>,
    pub task_type: Option<TaskType>,
    pub description: Option<String>,
    pub dependencies: Option<Vec<String>>,
    /// Defaults to PENDING.
    pub status: Option<TicketStatus>,
    pub priority: Option<Priority>,
    pub risk_band: Option<RiskBand>,
    pub sla: Option<NewSla>,
    pub qos: Option<NewQos>,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    pub required_capabilities: Option<Vec<String>>,
    pub security_level: Option<SecurityLevel>,
    /// Defaults to the time the service receives the ticket.
    #[serde(default, deserialize_with = "timestamp_input")]
    #[schema(value_type = Option<TimestampInput>)]
    pub created_at: Option<Millis>,
    #[serde(default, deserialize_with = "timestamp_input")]
    #[schema(value_type = Option<TimestampInput>)]
    pub started_at: Option<Millis>,
    #[serde(default, deserialize_with = "timestamp_input")]
    #[schema(value_type = Option<TimestampInput>)]
    pub completed_at: Option<Millis>,
    pub estimated_duration_ms: Option<i64>,
    pub actual_duration_ms: Option<i64>,
    pub retry_count: Option<i32>,
    pub error_message: Option<String>,
    pub compensation_ticket_id: Option<String>,
    /// Any JSON value under each key, kept as sent. Where only strings fit (gRPC, Avro) a value that is not a
    /// string is given as its compact JSON text (`2` → `"2"`).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
    pub schema_version: Option<i32>,
}

/// A validated create: the ticket, and whether the client set `created_at` (it then counts for idempotency).
#[derive(Debug, Clone)]
pub struct ValidTicket {
    pub ticket: Ticket,
    pub created_at_given: bool,
}

/// Text every store can hold: PostgreSQL refuses U+0000 in `text` and `jsonb`, so it is refused here, for
/// both stores alike, rather than by the database.
pub fn storable(value: &str, field: &str) -> Result<(), ValidationError> {
    match value.contains('\0') {
        true => Err(ValidationError::new(field, "contains the NUL character (U+0000)")),
        false => Ok(()),
    }
}

/// Free text: storable and at most `max` bytes.
pub fn text(value: &str, field: &str, max: usize) -> Result<(), ValidationError> {
    storable(value, field)?;
    if value.len() > max {
        return Err(ValidationError::new(field, format!("longer than {max} bytes")));
    }
    Ok(())
}

/// Ticket ids that are also a fixed path under `/api/v1/tickets/` (the REST URL of such a ticket would be that
/// endpoint), refused on create.
pub const RESERVED_TICKET_IDS: &[&str] = &["compensation", "by-plans"];

/// A free-form JSON object: nested at most [`MAX_JSON_DEPTH`] deep, at most `max_bytes` as compact JSON, and
/// with no NUL in any key or string.
pub fn json_object(
    value: &serde_json::Map<String, serde_json::Value>,
    field: &str,
    max_bytes: usize,
) -> Result<(), ValidationError> {
    for (k, v) in value {
        storable(k, field)?;
        json_value(v, field)?;
    }
    if json_size(value) > max_bytes {
        return Err(ValidationError::new(field, format!("larger than {max_bytes} bytes as JSON")));
    }
    Ok(())
}

/// A value of a free-form JSON object (found at level 1, the object itself): no NUL in any key or string, and
/// nested at most [`MAX_JSON_DEPTH`] levels deep, counting the object.
fn json_value(value: &serde_json::Value, field: &str) -> Result<(), ValidationError> {
    use serde_json::Value;
    // Depth-first with an explicit stack: a hostile value must not be able to recurse here either. A container
    // found at level `depth` opens level `depth + 1`.
    let mut stack = vec![(value, 1)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::String(s) => storable(s, field)?,
            Value::Array(_) | Value::Object(_) if depth >= MAX_JSON_DEPTH => {
                return Err(ValidationError::new(field, format!("nested deeper than {MAX_JSON_DEPTH} levels")));
            }
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            Value::Object(map) => {
                for (k, v) in map {
                    storable(k, field)?;
                    stack.push((v, depth + 1));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Counts what is written to it (the size of a value's JSON without building it).
pub struct ByteCount(pub usize);

/// The size of `value` as compact JSON.
pub fn json_size(value: &impl serde::Serialize) -> usize {
    let mut size = ByteCount(0);
    // Writing to a counter cannot fail; a value that does not serialize counts what it wrote until then.
    let _ = serde_json::to_writer(&mut size, value);
    size.0
}

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn metadata(value: &Metadata) -> Result<(), ValidationError> {
    let mut size = 0;
    for (k, v) in value.iter() {
        storable(k, "metadata")?;
        match v {
            serde_json::Value::String(s) => {
                storable(s, &format!("metadata.{k}"))?;
                size += k.len() + s.len();
            }
            other => {
                json_value(other, &format!("metadata.{k}"))?;
                size += k.len() + json_size(other);
            }
        }
        if size > MAX_METADATA_BYTES {
            break; // said below; no need to measure the rest
        }
    }
    if size > MAX_METADATA_BYTES {
        return Err(ValidationError::new("metadata", format!("larger than {MAX_METADATA_BYTES} bytes")));
    }
    Ok(())
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, ValidationError> {
    value.ok_or_else(|| ValidationError::new(field, "field required"))
}

fn id(value: &str, field: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.chars().count() > MAX_ID_LEN {
        return Err(ValidationError::new(field, format!("longer than {MAX_ID_LEN} characters")));
    }
    storable(value, field)
}

fn required_id(value: Option<String>, field: &str) -> Result<String, ValidationError> {
    let value = required(value, field)?;
    id(&value, field)?;
    Ok(value)
}

fn optional_id(value: Option<String>, field: &str) -> Result<Option<String>, ValidationError> {
    if let Some(v) = &value {
        id(v, field)?;
    }
    Ok(value)
}

fn non_negative(value: Option<i64>, field: &str) -> Result<Option<i64>, ValidationError> {
    match value {
        Some(v) if v < 0 => Err(ValidationError::new(field, "must be ≥ 0")),
        v => Ok(v),
    }
}

fn timestamp(value: Option<Millis>, field: &str) -> Result<Option<Millis>, ValidationError> {
    match value {
        Some(v) if !(0..=MAX_TIMESTAMP).contains(&v) => Err(ValidationError::new(
            field,
            format!(
                "must be a timestamp between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z \
                 (epoch milliseconds 0 to {MAX_TIMESTAMP})"
            ),
        )),
        v => Ok(v),
    }
}

/// A ticket id is used in URL paths, so it is restricted to visible ASCII without `/ ? # %`.
pub fn validate_ticket_id(value: &str) -> Result<(), ValidationError> {
    id(value, "ticket_id")?;
    if let Some(c) = value.chars().find(|c| !c.is_ascii_graphic() || matches!(c, '/' | '?' | '#' | '%')) {
        return Err(ValidationError::new("ticket_id", format!("contains the character {c:?}")));
    }
    Ok(())
}

fn string_list(values: Option<Vec<String>>, field: &str) -> Result<Vec<String>, ValidationError> {
    let values = values.unwrap_or_default();
    if values.len() > MAX_LIST_LEN {
        return Err(ValidationError::new(field, format!("more than {MAX_LIST_LEN} entries")));
    }
    let mut seen = HashSet::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        id(v, &format!("{field}[{i}]"))?;
        if !seen.insert(v.as_str()) {
            return Err(ValidationError::new(field, format!("lists '{v}' twice")));
        }
    }
    Ok(values)
}

/// Most plan ids one `by-plans` query may name.
pub const MAX_PLAN_IDS: usize = 1_000;

/// The plan ids of a `by-plans` query: at most [`MAX_PLAN_IDS`], each storable and at most [`MAX_ID_LEN`]
/// characters (no longer one can be stored); repeats dropped, first order kept. An empty id matches nothing.
pub fn plan_id_list(ids: Vec<String>) -> Result<Vec<String>, ValidationError> {
    if ids.len() > MAX_PLAN_IDS {
        return Err(ValidationError::new("plan_ids", format!("more than {MAX_PLAN_IDS} entries ({})", ids.len())));
    }
    let mut seen = HashSet::with_capacity(ids.len());
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.into_iter().enumerate() {
        let field = || format!("plan_ids[{i}]");
        storable(&id, &field())?;
        if id.chars().count() > MAX_ID_LEN {
            return Err(ValidationError::new(field(), format!("longer than {MAX_ID_LEN} characters")));
        }
        if seen.insert(id.clone()) {
            out.push(id);
        }
    }
    Ok(out)
}

impl NewTicket {
    /// Check every field and build the ticket. `now` fills `created_at` and `updated_at`; `new_id` is used
    /// when the request has no `ticket_id`.
    pub fn validate(self, now: Millis, new_id: impl FnOnce() -> String) -> Result<ValidTicket, ValidationError> {
        let ticket_id = match self.ticket_id {
            Some(v) => v,
            None => new_id(),
        };
        validate_ticket_id(&ticket_id)?;
        if RESERVED_TICKET_IDS.contains(&ticket_id.as_str()) {
            return Err(ValidationError::new("ticket_id", format!("{ticket_id:?} is reserved (an API path)")));
        }
        let plan_id = required_id(self.plan_id, "plan_id")?;
        // The integration library's fallback sends `"intent_id": ""` for a plan without one (the original service
        // stored it): kept as given. Any other value is an id like the others.
        let intent_id = match self.intent_id {
            Some(v) if v.is_empty() => v,
            v => required_id(v, "intent_id")?,
        };
        let decision_id = required_id(self.decision_id, "decision_id")?;
        // … and `"correlation_id": ""`: no correlation id.
        let correlation_id = optional_id(self.correlation_id.filter(|v| !v.is_empty()), "correlation_id")?;
        let trace_id = optional_id(self.trace_id, "trace_id")?;
        let span_id = optional_id(self.span_id, "span_id")?;
        let task_id = required_id(self.task_id, "task_id")?;
        let task_type = required(self.task_type, "task_type")?;
        let description = required(self.description, "description")?;
        text(&description, "description", MAX_DESCRIPTION_LEN)?;
        let dependencies = string_list(self.dependencies, "dependencies")?;
        if dependencies.contains(&ticket_id) {
            return Err(ValidationError::new("dependencies", "a ticket cannot depend on itself"));
        }
        let priority = required(self.priority, "priority")?;
        let risk_band = required(self.risk_band, "risk_band")?;

        let sla = required(self.sla, "sla")?;
        let deadline = required(sla.deadline, "sla.deadline")?;
        timestamp(Some(deadline), "sla.deadline")?;
        let timeout_ms = required(sla.timeout_ms, "sla.timeout_ms")?;
        if timeout_ms <= 0 {
            return Err(ValidationError::new("sla.timeout_ms", "must be > 0"));
        }
        let max_retries = required(sla.max_retries, "sla.max_retries")?;
        if max_retries < 0 {
            return Err(ValidationError::new("sla.max_retries", "must be ≥ 0"));
        }

        let qos = required(self.qos, "qos")?;
        let qos = Qos {
            delivery_mode: required(qos.delivery_mode, "qos.delivery_mode")?,
            consistency: required(qos.consistency, "qos.consistency")?,
            durability: required(qos.durability, "qos.durability")?,
        };
        let required_capabilities = string_list(self.required_capabilities, "required_capabilities")?;
        let security_level = required(self.security_level, "security_level")?;

        let created_at_given = self.created_at.is_some();
        let created_at = timestamp(self.created_at, "created_at")?.unwrap_or(now);
        let started_at = timestamp(self.started_at, "started_at")?;
        let completed_at = timestamp(self.completed_at, "completed_at")?;
        if let (Some(s), Some(c)) = (started_at, completed_at) {
            if c < s {
                return Err(ValidationError::new("completed_at", "is before started_at"));
            }
        }
        let estimated_duration_ms = non_negative(self.estimated_duration_ms, "estimated_duration_ms")?;
        let actual_duration_ms = non_negative(self.actual_duration_ms, "actual_duration_ms")?;
        let retry_count = self.retry_count.unwrap_or(0);
        if retry_count < 0 {
            return Err(ValidationError::new("retry_count", "must be ≥ 0"));
        }
        let compensation_ticket_id = optional_id(self.compensation_ticket_id, "compensation_ticket_id")?;
        if let Some(m) = &self.error_message {
            text(m, "error_message", MAX_ERROR_MESSAGE_LEN)?;
        }
        let parameters = self.parameters.unwrap_or_default();
        json_object(&parameters, "parameters", MAX_PARAMETERS_BYTES)?;
        let metadata_map = self.metadata.unwrap_or_default();
        metadata(&metadata_map)?;
        let schema_version = self.schema_version.unwrap_or(1);
        if schema_version < 1 {
            return Err(ValidationError::new("schema_version", "must be ≥ 1"));
        }

        let ticket = Ticket {
            ticket_id,
            spec: TicketSpec {
                plan_id,
                intent_id,
                decision_id,
                correlation_id,
                trace_id,
                span_id,
                task_id,
                task_type,
                description,
                dependencies,
                priority,
                risk_band,
                sla: Sla { deadline, timeout_ms, max_retries },
                qos,
                parameters,
                required_capabilities,
                security_level,
                estimated_duration_ms,
                metadata: metadata_map,
                schema_version,
            },
            status: self.status.unwrap_or(TicketStatus::Pending),
            created_at,
            started_at,
            completed_at,
            actual_duration_ms,
            retry_count,
            error_message: self.error_message,
            compensation_ticket_id,
            version: 1,
            updated_at: now,
            sla_state: Default::default(),
        };
        Ok(ValidTicket { ticket, created_at_given })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn sample_json() -> serde_json::Value {
        json!({
            "ticket_id": "t-1", "plan_id": "p-1", "intent_id": "i-1", "decision_id": "d-1",
            "task_id": "task-1", "task_type": "build", "description": "compile",
            "priority": "high", "risk_band": "LOW",
            "sla": {"deadline": 1_900_000_000_000i64, "timeout_ms": 60_000, "max_retries": 2},
            "qos": {"delivery_mode": "at_least_once", "consistency": "strong", "durability": "persistent"},
            "security_level": "internal", "dependencies": []
        })
    }

    fn validate(v: serde_json::Value) -> Result<ValidTicket, ValidationError> {
        serde_json::from_value::<NewTicket>(v).unwrap().validate(1_000, || "generated".into())
    }

    #[test]
    fn a_complete_request_becomes_a_pending_ticket_with_defaults() {
        let t = validate(sample_json()).unwrap().ticket;
        assert_eq!(t.status, TicketStatus::Pending);
        assert_eq!((t.version, t.created_at, t.retry_count, t.spec.schema_version), (1, 1_000, 0, 1));
        assert_eq!(t.spec.task_type, TaskType::Build);
        let out = serde_json::to_value(&t).unwrap();
        assert_eq!(out["task_type"], "BUILD");
        assert_eq!(out["risk_band"], "low");
        assert_eq!(out["sla"]["timeout_ms"], 60_000);
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("/plan_id", serde_json::Value::Null, "plan_id"),
            ("/qos/consistency", serde_json::Value::Null, "qos.consistency"),
            ("/dependencies", json!(["t-1"]), "dependencies"),
            ("/sla/timeout_ms", json!(0), "sla.timeout_ms"),
            ("/sla/max_retries", json!(-1), "sla.max_retries"),
            ("/plan_id", json!("x".repeat(MAX_ID_LEN + 1)), "plan_id"),
            ("/ticket_id", json!("a/b"), "ticket_id"),
            ("/task_id", json!("  "), "task_id"),
            ("/ticket_id", json!("compensation"), "ticket_id"),
        ];
        for (pointer, value, field) in cases {
            let mut v = sample_json();
            *v.pointer_mut(pointer).unwrap() = value;
            let err = validate(v).unwrap_err();
            assert_eq!(err.field, field, "{pointer}: {err}");
        }
        let mut v = sample_json();
        v["started_at"] = json!(2_000);
        v["completed_at"] = json!(1_500);
        assert_eq!(validate(v).unwrap_err().field, "completed_at");
    }

    /// Nested `depth` levels deep, counting the `parameters` object itself: `{"a": [[…[1]…]]}`.
    fn nested(depth: usize) -> serde_json::Value {
        let mut v = json!(1);
        for _ in 1..depth {
            v = json!([v]);
        }
        json!({ "a": v })
    }

    #[test]
    fn what_a_store_cannot_hold_is_refused_naming_its_field() {
        let nul = "a\u{0}b";
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("/description", json!(nul), "description"),
            ("/plan_id", json!(nul), "plan_id"),
            ("/error_message", json!(nul), "error_message"),
            ("/error_message", json!("x".repeat(MAX_ERROR_MESSAGE_LEN + 1)), "error_message"),
            ("/metadata", json!({ "k": nul }), "metadata.k"),
            ("/metadata", json!({ nul: "v" }), "metadata"),
            ("/metadata", json!({ "k": "x".repeat(MAX_METADATA_BYTES) }), "metadata"),
            ("/parameters", json!({ "k": [{ "deep": nul }] }), "parameters"),
            ("/parameters", json!({ "k": { nul: 1 } }), "parameters"),
            ("/parameters", nested(MAX_JSON_DEPTH + 1), "parameters"),
            ("/parameters", json!({ "k": "x".repeat(MAX_PARAMETERS_BYTES) }), "parameters"),
        ];
        for (pointer, value, field) in cases {
            let mut v = sample_json();
            v.as_object_mut().unwrap().insert(pointer[1..].to_owned(), value);
            let err = validate(v).expect_err(pointer);
            assert_eq!(err.field, field, "{pointer}: {err}");
        }
        // The limits themselves are accepted.
        let mut v = sample_json();
        v["parameters"] = nested(MAX_JSON_DEPTH);
        v["metadata"] = json!({ "k": "x".repeat(MAX_METADATA_BYTES - 1) });
        v["error_message"] = json!("é".repeat(MAX_ERROR_MESSAGE_LEN / 2));
        validate(v).unwrap();
    }

    #[test]
    fn empty_intent_and_correlation_ids_are_accepted() {
        let mut v = sample_json();
        v["intent_id"] = json!("");
        v["correlation_id"] = json!("");
        let t = validate(v).unwrap().ticket;
        assert_eq!((t.spec.intent_id.as_str(), t.spec.correlation_id), ("", None));
        // Blank is not empty: still refused, as is a missing intent id.
        let mut v = sample_json();
        v["intent_id"] = json!("  ");
        assert_eq!(validate(v).unwrap_err().field, "intent_id");
        let mut v = sample_json();
        v.as_object_mut().unwrap().remove("intent_id");
        assert_eq!(validate(v).unwrap_err().field, "intent_id");
    }

    #[test]
    fn metadata_takes_any_json_value_within_the_limits() {
        let mut v = sample_json();
        v["metadata"] = json!({"policy_decisions": {"allow": true, "rules": [1, 2.5]}, "attempt": 2, "note": null});
        let t = validate(v).unwrap().ticket;
        assert_eq!(t.spec.metadata["attempt"], json!(2));
        assert_eq!(t.spec.metadata.text("policy_decisions").unwrap(), r#"{"allow":true,"rules":[1,2.5]}"#);
        assert_eq!(t.spec.metadata.text("note").unwrap(), "null");

        let nul = "a\u{0}b";
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({ "k": { "deep": [nul] } }), "metadata.k"),
            (json!({ "k": { nul: 1 } }), "metadata.k"),
            (json!({ "k": nested(MAX_JSON_DEPTH + 1)["a"] }), "metadata.k"),
            (json!({ "k": ["x".repeat(MAX_METADATA_BYTES)] }), "metadata"),
        ];
        for (metadata, field) in cases {
            let mut v = sample_json();
            v["metadata"] = metadata;
            assert_eq!(validate(v).expect_err(field).field, field);
        }
        // The limits: 32 levels counting the metadata object; 64 KiB counting each value as its text.
        let mut v = sample_json();
        v["metadata"] = json!({ "k": nested(MAX_JSON_DEPTH)["a"] });
        validate(v).unwrap();
        let mut v = sample_json();
        v["metadata"] = json!({ "k": "x".repeat(MAX_METADATA_BYTES - 2), "n": 1 }); // 1 + (max - 2) + 1 + 1 > max
        assert_eq!(validate(v).unwrap_err().field, "metadata");
        let mut v = sample_json();
        v["metadata"] = json!({ "k": "x".repeat(MAX_METADATA_BYTES - 3), "n": 1 });
        validate(v).unwrap();
    }

    #[test]
    fn timestamps_are_epoch_millis_or_rfc3339() {
        let mut v = sample_json();
        v["sla"]["deadline"] = json!("2026-12-05T23:28:01Z");
        v["created_at"] = json!("2026-12-05T20:28:01.250-03:00");
        v["started_at"] = json!("2026-12-05T23:28:01.123456789+00:00");
        v["completed_at"] = json!(1_796_513_281_200_i64);
        let t = validate(v).unwrap().ticket;
        assert_eq!(t.spec.sla.deadline, 1_796_513_281_000);
        assert_eq!(t.created_at, 1_796_513_281_250);
        assert_eq!(t.started_at, Some(1_796_513_281_123));
        assert_eq!(t.completed_at, Some(1_796_513_281_200));
        let out = serde_json::to_value(&t).unwrap();
        assert_eq!(out["sla"]["deadline"], 1_796_513_281_000_i64, "answered as epoch milliseconds");

        for (pointer, bad) in [
            ("/sla/deadline", json!("2026-12-05T23:28:01")),
            ("/sla/deadline", json!("2026-12-05")),
            ("/created_at", json!("yesterday")),
            ("/started_at", json!("1796599681000")),
            ("/completed_at", json!(1.5)),
            ("/created_at", json!(true)),
        ] {
            let mut v = sample_json();
            match pointer.strip_prefix("/sla/") {
                Some(key) => v["sla"][key] = bad.clone(),
                None => v[&pointer[1..]] = bad.clone(),
            }
            let text = v.to_string();
            let de = &mut serde_json::Deserializer::from_str(&text);
            let err = serde_path_to_error::deserialize::<_, NewTicket>(de).expect_err(&bad.to_string());
            assert_eq!(err.path().to_string(), pointer[1..].replace('/', "."), "{bad}");
        }
        let mut v = sample_json();
        v["created_at"] = json!("1969-12-31T23:59:59Z");
        assert_eq!(validate(v).unwrap_err().field, "created_at");
    }

    #[test]
    fn plan_id_lists_are_bounded_and_deduplicated() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(plan_id_list(ids(&["b", "a", "b", ""])).unwrap(), ids(&["b", "a", ""]));
        assert_eq!(plan_id_list(vec!["p".into(); MAX_PLAN_IDS]).unwrap(), ids(&["p"]));
        assert_eq!(plan_id_list(vec!["p".into(); MAX_PLAN_IDS + 1]).unwrap_err().field, "plan_ids");
        assert_eq!(plan_id_list(ids(&["ok", "a\u{0}"])).unwrap_err().field, "plan_ids[1]");
        assert_eq!(plan_id_list(vec!["x".repeat(MAX_ID_LEN + 1)]).unwrap_err().field, "plan_ids[0]");
    }

    #[test]
    fn missing_id_is_generated() {
        let mut v = sample_json();
        v.as_object_mut().unwrap().remove("ticket_id");
        assert_eq!(validate(v).unwrap().ticket.ticket_id, "generated");
    }
}
