//! The execution ticket: every field of `execution-ticket.avsc`, plus the server's `version` and `updated_at`.
//!
//! A ticket is split in two: [`TicketSpec`], what the orchestrator asked for and what never changes, and the
//! lifecycle fields that only the status machine ([`crate::domain::status`]) moves. Idempotent create compares specs.
//! All timestamps are integer epoch milliseconds.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::enums::{
    Consistency, DeliveryMode, Durability, Priority, RiskBand, SecurityLevel, TaskType, TicketStatus,
};

/// Epoch milliseconds.
pub type Millis = i64;

/// Service-level agreement of one ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Sla {
    /// Absolute deadline, epoch ms.
    pub deadline: Millis,
    /// Per-attempt timeout in ms (> 0).
    pub timeout_ms: i64,
    /// Automatic retries allowed (≥ 0).
    pub max_retries: i32,
}

/// Quality of service asked for by the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Qos {
    pub delivery_mode: DeliveryMode,
    pub consistency: Consistency,
    pub durability: Durability,
}

/// The immutable part of a ticket: what was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TicketSpec {
    pub plan_id: String,
    pub intent_id: String,
    pub decision_id: String,
    pub correlation_id: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub task_id: String,
    pub task_type: TaskType,
    pub description: String,
    /// Ticket ids that must complete first.
    pub dependencies: Vec<String>,
    pub priority: Priority,
    pub risk_band: RiskBand,
    pub sla: Sla,
    pub qos: Qos,
    /// Task parameters (a JSON object).
    #[schema(value_type = Object)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    pub required_capabilities: Vec<String>,
    pub security_level: SecurityLevel,
    pub estimated_duration_ms: Option<i64>,
    /// Free-form context: any JSON value under each key, kept as sent. Where only strings fit (gRPC, Avro) a
    /// value that is not a string is given as its compact JSON text (`2` → `"2"`).
    #[schema(value_type = Object)]
    pub metadata: Metadata,
    pub schema_version: i32,
}

/// A whole ticket as stored and as answered by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ticket {
    pub ticket_id: String,
    #[serde(flatten)]
    pub spec: TicketSpec,
    pub status: TicketStatus,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub actual_duration_ms: Option<i64>,
    pub retry_count: i32,
    pub error_message: Option<String>,
    pub compensation_ticket_id: Option<String>,
    /// Optimistic-concurrency version: 1 at creation, +1 on every change.
    pub version: i64,
    /// Last change, epoch ms.
    pub updated_at: Millis,
    /// What the SLA engine has fired for this ticket, and its next SLA instant.
    #[serde(default)]
    pub sla_state: SlaState,
}

impl Ticket {
    /// Whether `other` is the same create request as the one that made `self` (idempotent create).
    /// Lifecycle fields are not compared, so a redelivered create still matches after the ticket moved on;
    /// `created_at` counts only when the client set it.
    pub fn same_request(&self, other: &Ticket, other_set_created_at: bool) -> bool {
        self.ticket_id == other.ticket_id
            && self.spec == other.spec
            && (!other_set_created_at || self.created_at == other.created_at)
    }
}

/// What the SLA engine has done for a ticket; stored with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct SlaState {
    /// Warning points already announced (or already past when the ticket arrived), in permille.
    pub warnings_fired: Vec<u32>,
    /// When the deadline breach was announced.
    pub breached_at: Option<Millis>,
    /// Start of the PENDING spell whose start-overdue alert fired.
    pub start_overdue_for: Option<Millis>,
    /// `started_at` of the attempt that timed out.
    pub timed_out_attempt: Option<Millis>,
    /// Start of the current PENDING spell.
    pub pending_since: Option<Millis>,
    /// The next SLA instant of this ticket (indexed in the store so passivated tickets need no actor).
    pub next_due_at: Option<Millis>,
    /// The PENDING spell (its `pending_since`) for which `ticket.ready` or `ticket.blocked` was announced.
    pub ready_for: Option<Millis>,
}

/// A ticket's `metadata`: any JSON value under each key, kept as the client sent it (strings are the common case:
/// the Avro schema and the gRPC message carry a `map<string, string>`).
///
/// Where a `map<string, string>` is required (gRPC answers, Avro), a value is written as [`Metadata::text`] gives
/// it: a string as it is, any other value (number, boolean, null, array, object) as its compact JSON text — so
/// `{"attempt": 2, "note": null, "tags": ["a"]}` becomes `{"attempt": "2", "note": "null", "tags": "[\"a\"]"}`.
/// Strings are never quoted, so existing string-only clients see exactly what they always did.
///
/// Two metadata are equal (idempotent create compares them) when they hold the same keys and equal values, numbers
/// compared by value: PostgreSQL's `jsonb` may give back `1e19` as `10000000000000000000`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(pub BTreeMap<String, serde_json::Value>);

impl Metadata {
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.get(key)
    }

    /// The value under `key` if it is a string.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(serde_json::Value::as_str)
    }

    /// The value under `key` as text: a string as it is, any other value as its compact JSON.
    pub fn text(&self, key: &str) -> Option<Cow<'_, str>> {
        self.0.get(key).map(text)
    }

    /// The value under `key` as an integer: a JSON integer (or a number with no fractional part), or a string
    /// holding one (surrounding spaces ignored).
    pub fn integer(&self, key: &str) -> Option<i64> {
        match self.0.get(key)? {
            serde_json::Value::Number(n) => n.as_i64().or_else(|| {
                let f = n.as_f64()?;
                (f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
            }),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// Set `key` to `value` (a string, or any JSON value).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) {
        self.0.insert(key.into(), value.into());
    }

    /// Every entry in the `map<string, string>` form (see [`Metadata`]).
    pub fn to_strings(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.0.iter().map(|(k, v)| (k.clone(), text(v).into_owned()))
    }

    /// The entries, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &serde_json::Value)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A metadata value as text: a string as it is, anything else as compact JSON.
fn text(value: &serde_json::Value) -> Cow<'_, str> {
    match value {
        serde_json::Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|((ka, va), (kb, vb))| ka == kb && same_json(va, vb))
    }
}

impl std::ops::Index<&str> for Metadata {
    type Output = serde_json::Value;

    /// The value under `key`; panics when there is none (as a map's index does).
    fn index(&self, key: &str) -> &serde_json::Value {
        &self.0[key]
    }
}

impl From<BTreeMap<String, String>> for Metadata {
    fn from(map: BTreeMap<String, String>) -> Self {
        Metadata(map.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect())
    }
}

impl<K: Into<String>, V: Into<serde_json::Value>, const N: usize> From<[(K, V); N]> for Metadata {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<K: Into<String>, V: Into<serde_json::Value>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        Metadata(entries.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

/// JSON equality with numbers compared by value: two integers exactly, an integer and a float (or two floats) as
/// floats. A store may change a number's form, never its value: `jsonb` writes `1e19` back as
/// `10000000000000000000`, which reads back as an integer. Iterative, so no value can make it recurse deeply.
pub fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    let mut pending = vec![(a, b)];
    while let Some((a, b)) = pending.pop() {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let same = match (x.is_f64(), y.is_f64()) {
                    (false, false) => x == y,
                    _ => x.as_f64() == y.as_f64(),
                };
                if !same {
                    return false;
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => pending.extend(x.iter().zip(y)),
            (Value::Object(x), Value::Object(y)) if x.len() == y.len() => {
                // Keys in any order (`jsonb` sorts them; serde_json here keeps them as written).
                for (k, vx) in x {
                    let Some(vy) = y.get(k) else { return false };
                    pending.push((vx, vy));
                }
            }
            (Value::Array(_) | Value::Object(_) | Value::Number(_), _) => return false,
            (x, y) if x != y => return false,
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metadata(v: serde_json::Value) -> Metadata {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn non_string_values_are_their_json_text_where_only_strings_fit() {
        let m = metadata(json!({"s": "plain", "n": 2, "f": 2.5, "b": false, "z": null, "o": {"a": [1, "x"]}}));
        let strings: BTreeMap<String, String> = m.to_strings().collect();
        let expected = json!({"s": "plain", "n": "2", "f": "2.5", "b": "false", "z": "null", "o": r#"{"a":[1,"x"]}"#});
        assert_eq!(serde_json::to_value(strings).unwrap(), expected);
        assert_eq!((m.str("s"), m.str("n")), (Some("plain"), None));
    }

    #[test]
    fn integers_come_from_numbers_or_strings() {
        let m = metadata(json!({"n": 30000, "f": 3e4, "s": " 45000 ", "half": 1.5, "bad": "soon", "o": {}}));
        assert_eq!((m.integer("n"), m.integer("f"), m.integer("s")), (Some(30_000), Some(30_000), Some(45_000)));
        assert_eq!((m.integer("half"), m.integer("bad"), m.integer("o"), m.integer("none")), (None, None, None, None));
    }

    #[test]
    fn equality_compares_numbers_by_value_and_keys_in_any_order() {
        let a = metadata(json!({"big": 1e19, "o": {"x": 1, "y": [2.0, "s"]}}));
        let b = metadata(json!({"big": 10_000_000_000_000_000_000_u64, "o": {"y": [2, "s"], "x": 1}}));
        assert_eq!(a, b);
        assert_ne!(a, metadata(json!({"big": 1e19, "o": {"x": 1, "y": [2.0, "t"]}})));
        assert_ne!(a, metadata(json!({"big": 1e19, "o": {"x": 1}})));
        assert_ne!(metadata(json!({"n": 1})), metadata(json!({"n": "1"})), "a number is not its text");
        assert_ne!(metadata(json!({"n": 1})), metadata(json!({"n": 2})));
        assert_ne!(metadata(json!({"a": null})), metadata(json!({"b": null})));
    }
}
