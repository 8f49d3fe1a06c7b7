//! The closed vocabularies of a ticket (task type, priority, status, …).
//!
//! Every enum is parsed case-insensitively (clients of the original service sent `pending`, `Pending` and
//! `PENDING` alike) and always written back in its canonical spelling, which is the Avro schema's symbol.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that is not one of an enum's symbols; the message lists the accepted ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} '{value}': expected one of {}", expected.join(", "))]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static [&'static str],
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident as $kind:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every symbol, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Their spellings, in the same order.
            pub const SYMBOLS: &'static [&'static str] = &[$($text),+];

            /// The canonical spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let trimmed = s.trim();
                $(if trimmed.eq_ignore_ascii_case($text) { return Ok($name::$variant); })+
                Err(UnknownVariant { kind: $kind, value: s.to_owned(), expected: Self::SYMBOLS })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some(Self::SYMBOLS.iter().copied()))
                    .description(Some(concat!($kind, " (accepted case-insensitively)")))
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

/// Enums whose JSON form is only a string.
macro_rules! deserialize_from_str {
    ($($name:ident),+) => {$(
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}

string_enum!(
    /// What kind of work a ticket is.
    TaskType as "task_type" {
        Build => "BUILD", Deploy => "DEPLOY", Test => "TEST", Validate => "VALIDATE",
        Execute => "EXECUTE", Compensate => "COMPENSATE", Query => "QUERY", Transform => "TRANSFORM",
    }
);
string_enum!(
    /// Execution priority. Also accepts the legacy integer scale (see [`Priority::from_legacy`]).
    Priority as "priority" { Low => "LOW", Normal => "NORMAL", High => "HIGH", Critical => "CRITICAL" }
);
string_enum!(
    /// Risk band inherited from the cognitive plan (lower-case symbols, as in the schema).
    RiskBand as "risk_band" { Low => "low", Medium => "medium", High => "high", Critical => "critical" }
);
string_enum!(
    /// Security level required to execute the ticket.
    SecurityLevel as "security_level" {
        Public => "PUBLIC", Internal => "INTERNAL", Confidential => "CONFIDENTIAL", Restricted => "RESTRICTED",
    }
);
string_enum!(
    /// QoS delivery guarantee.
    DeliveryMode as "delivery_mode" {
        AtMostOnce => "AT_MOST_ONCE", AtLeastOnce => "AT_LEAST_ONCE", ExactlyOnce => "EXACTLY_ONCE",
    }
);
string_enum!(
    /// QoS consistency level.
    Consistency as "consistency" { Eventual => "EVENTUAL", Strong => "STRONG" }
);
string_enum!(
    /// QoS durability.
    Durability as "durability" { Transient => "TRANSIENT", Persistent => "PERSISTENT" }
);
string_enum!(
    /// Where a ticket is in its life; see [`crate::domain::status`] for the allowed moves.
    TicketStatus as "status" {
        Pending => "PENDING", Running => "RUNNING", Completed => "COMPLETED", Failed => "FAILED",
        Compensating => "COMPENSATING", Compensated => "COMPENSATED", Cancelled => "CANCELLED",
    }
);

string_enum!(
    /// What happened to a ticket: the kind of its events, and so of their audit records, Kafka messages and
    /// webhooks. `Ready`: every dependency COMPLETED (or none); `Blocked`: one ended without completing;
    /// `Retry`: back to PENDING for another attempt; `Preempted`: back without using one; `SlaTimeout`: an
    /// attempt timed out and the status machine could not act on it. The last two, `Progress` (a worker's
    /// report) and `LateResultRefused` (a result for an attempt that had timed out), are for watchers and the
    /// audit trail only: webhook subscriptions cannot ask for them (see `EVENT_TYPES`).
    EventKind as "event kind" {
        Created => "ticket.created", Ready => "ticket.ready", Blocked => "ticket.blocked",
        Started => "ticket.started", Completed => "ticket.completed", Failed => "ticket.failed",
        Retry => "ticket.retry", Preempted => "ticket.preempted", Cancelled => "ticket.cancelled",
        Compensating => "ticket.compensating", Compensated => "ticket.compensated",
        SlaWarning => "ticket.sla_warning", SlaBreached => "ticket.sla_breached", SlaTimeout => "ticket.sla_timeout",
        StartOverdue => "ticket.start_overdue",
        Progress => "ticket.progress", LateResultRefused => "ticket.late_result_refused",
    }
);
deserialize_from_str!(TaskType, RiskBand, SecurityLevel, DeliveryMode, Consistency, Durability, TicketStatus);

impl TicketStatus {
    /// No transition leaves a terminal status.
    pub fn is_terminal(self) -> bool {
        matches!(self, TicketStatus::Completed | TicketStatus::Cancelled | TicketStatus::Compensated)
    }
}

impl Priority {
    /// The original service's integer priorities: 1–2 LOW, 3–5 NORMAL, 6–8 HIGH, ≥9 CRITICAL.
    pub fn from_legacy(n: i64) -> Result<Self, String> {
        match n {
            i64::MIN..=0 => Err(format!("priority {n} is out of range: use 1–10 or LOW, NORMAL, HIGH, CRITICAL")),
            1..=2 => Ok(Priority::Low),
            3..=5 => Ok(Priority::Normal),
            6..=8 => Ok(Priority::High),
            _ => Ok(Priority::Critical),
        }
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Priority;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one of LOW, NORMAL, HIGH, CRITICAL or a legacy integer 1–10")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Priority, E> {
                match v.trim().parse::<i64>() {
                    Ok(n) => Priority::from_legacy(n).map_err(E::custom),
                    Err(_) => v.parse().map_err(E::custom),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Priority, E> {
                Priority::from_legacy(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Priority, E> {
                Priority::from_legacy(i64::try_from(v).unwrap_or(i64::MAX)).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A status a client may ask for: any [`TicketStatus`], or `PREEMPTED` (a worker giving a RUNNING ticket back
/// without spending the retry budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedStatus {
    Status(TicketStatus),
    Preempted,
}

impl RequestedStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestedStatus::Status(s) => s.as_str(),
            RequestedStatus::Preempted => "PREEMPTED",
        }
    }

    /// What a worker reports about its own work (with a ticket-scoped token): it started, finished, failed, or
    /// gives the ticket back. Compensation, cancellation and sending a ticket back to PENDING are the
    /// orchestrator's decisions, taken with a service token.
    pub fn is_worker_report(self) -> bool {
        use TicketStatus::*;
        matches!(self, RequestedStatus::Preempted | RequestedStatus::Status(Running | Completed | Failed))
    }
}

impl FromStr for RequestedStatus {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("PREEMPTED") {
            return Ok(RequestedStatus::Preempted);
        }
        s.parse().map(RequestedStatus::Status).map_err(|_| UnknownVariant {
            kind: "status",
            value: s.to_owned(),
            expected: &[
                "PENDING",
                "RUNNING",
                "COMPLETED",
                "FAILED",
                "COMPENSATING",
                "COMPENSATED",
                "CANCELLED",
                "PREEMPTED",
            ],
        })
    }
}

impl fmt::Display for RequestedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestedStatus::Status(s) => s.fmt(f),
            RequestedStatus::Preempted => f.write_str("PREEMPTED"),
        }
    }
}

deserialize_from_str!(RequestedStatus);

/// As it is asked for: the status's name, or `PREEMPTED` (read back by [`FromStr`]).
impl Serialize for RequestedStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_parse_case_insensitively_and_print_canonically() {
        assert_eq!("build".parse::<TaskType>().unwrap(), TaskType::Build);
        assert_eq!("HIGH".parse::<RiskBand>().unwrap().as_str(), "high");
        let json = serde_json::to_string(&"pending".parse::<TicketStatus>().unwrap()).unwrap();
        assert_eq!(json, "\"PENDING\"");
        let err = "SOON".parse::<TicketStatus>().unwrap_err().to_string();
        assert!(err.contains("status") && err.contains("COMPENSATED"), "{err}");
    }

    #[test]
    fn priority_accepts_legacy_integers() {
        let p = |v: serde_json::Value| serde_json::from_value::<Priority>(v);
        assert_eq!(p(serde_json::json!(1)).unwrap(), Priority::Low);
        assert_eq!(p(serde_json::json!(5)).unwrap(), Priority::Normal);
        assert_eq!(p(serde_json::json!(8)).unwrap(), Priority::High);
        assert_eq!(p(serde_json::json!(9)).unwrap(), Priority::Critical);
        assert_eq!(p(serde_json::json!("7")).unwrap(), Priority::High);
        assert_eq!(p(serde_json::json!("critical")).unwrap(), Priority::Critical);
        assert!(p(serde_json::json!(0)).is_err());
        assert!(p(serde_json::json!("urgent")).is_err());
    }

    #[test]
    fn preempted_is_a_request_not_a_status() {
        assert_eq!("preempted".parse::<RequestedStatus>().unwrap(), RequestedStatus::Preempted);
        assert!("PREEMPTED".parse::<TicketStatus>().is_err());
    }
}
