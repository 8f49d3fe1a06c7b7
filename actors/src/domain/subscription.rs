//! Worker pools' webhook subscriptions, the deliveries a committed event causes, and the records of a
//! delivery attempt: data and pure rules. Sending them is [`crate::system::webhooks::WebhookActor`]'s.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::enums::{Priority, TaskType};
use crate::domain::events::{EventKind, TicketEvent};
use crate::domain::history::AuditEvent;
use crate::domain::model::{Millis, Ticket};

/// The event types a subscription may ask for: every [`EventKind`] but the last two, which are for watchers and
/// the audit trail only.
pub const EVENT_TYPES: &[&str] = EventKind::SYMBOLS.split_at(EventKind::SYMBOLS.len() - 2).0;

/// A worker pool's subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Subscription {
    pub id: String,
    pub url: String,
    /// Event types delivered (see [`EVENT_TYPES`]).
    pub events: Vec<String>,
    /// Only tickets of these task types (empty: any).
    #[serde(default)]
    pub task_types: Vec<TaskType>,
    /// The pool's capabilities: a ticket matches when its required capabilities are a subset (None: any).
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// Only tickets of at least this priority.
    #[serde(default)]
    pub min_priority: Option<Priority>,
    /// Only tickets of this plan.
    #[serde(default)]
    pub plan_id: Option<String>,
    /// Signing secret (`whsec_` + base64). Never shown after creation or rotation.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub secret: String,
    /// The secret before the last rotation, still signing (beside the new one) until `previous_secret_until`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub previous_secret: Option<String>,
    #[serde(default)]
    pub previous_secret_until: Option<Millis>,
    /// Paused by its owner: deliveries wait.
    #[serde(default)]
    pub paused: bool,
    /// Disabled by the service (410 Gone, or failing for too long): deliveries wait until it is resumed.
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// Failed attempts in a row, and since when.
    #[serde(default)]
    pub consecutive_failures: i32,
    #[serde(default)]
    pub failing_since: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Subscription {
    /// Whether event `kind` of ticket `t` is for this subscription.
    pub fn matches(&self, kind: EventKind, t: &Ticket) -> bool {
        self.events.iter().any(|e| e == kind.as_str())
            && (self.task_types.is_empty() || self.task_types.contains(&t.spec.task_type))
            && self.min_priority.is_none_or(|p| t.spec.priority >= p)
            && self.plan_id.as_ref().is_none_or(|p| *p == t.spec.plan_id)
            && self
                .capabilities
                .as_ref()
                .is_none_or(|caps| t.spec.required_capabilities.iter().all(|c| caps.contains(c)))
    }

    /// Deliveries may be sent now.
    pub fn active(&self) -> bool {
        !self.paused && self.disabled_reason.is_none()
    }

    /// The secrets that sign a delivery sent at `now` (the new one first).
    pub fn signing_secrets(&self, now: Millis) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(old), Some(until)) = (&self.previous_secret, self.previous_secret_until) {
            if now < until {
                secrets.push(old);
            }
        }
        secrets
    }

    /// The subscription as shown to its owner: no secrets.
    pub fn redacted(&self) -> Subscription {
        Subscription { secret: String::new(), previous_secret: None, ..self.clone() }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    /// Every scheduled attempt failed, or the endpoint is gone.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One event for one endpoint: the outbox row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// Also the `webhook-id` header: the same on every attempt.
    pub id: String,
    /// None for the legacy per-ticket `metadata.webhook_url` target.
    pub subscription_id: Option<String>,
    pub url: String,
    pub event_type: String,
    pub ticket_id: String,
    /// When the event happened.
    pub at: Millis,
    /// `{"ticket": …, "details": …}`: the committed ticket and the event's facts.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<Millis>,
    pub created_at: Millis,
    pub delivered_at: Option<Millis>,
    /// W3C `traceparent` of the work that caused the event: the attempt's span joins that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Delivery {
    /// A pending delivery of `event` to `url`, due now.
    pub fn new(event: &TicketEvent, subscription_id: Option<String>, url: String) -> Delivery {
        let ticket = serde_json::to_value(&*event.ticket).unwrap_or(serde_json::Value::Null);
        let mut data = serde_json::json!({ "ticket": ticket });
        if !event.details.is_null() {
            data["details"] = event.details.clone();
        }
        Delivery {
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            subscription_id,
            url,
            event_type: event.kind.as_str().to_owned(),
            ticket_id: event.ticket.ticket_id.clone(),
            at: event.at,
            data,
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_status: None,
            last_error: None,
            next_attempt_at: Some(event.at),
            created_at: event.at,
            delivered_at: None,
            traceparent: None,
        }
    }
}

/// The deliveries a committed event causes: one per matching active-or-paused subscription, plus the legacy
/// `metadata.webhook_url` target for `ticket.created`.
pub fn deliveries_for(event: &TicketEvent, subscriptions: &[Subscription]) -> Vec<Delivery> {
    let mut out: Vec<Delivery> = subscriptions
        .iter()
        .filter(|s| s.matches(event.kind, &event.ticket))
        .map(|s| Delivery::new(event, Some(s.id.clone()), s.url.clone()))
        .collect();
    if event.kind == EventKind::Created {
        if let Some(url) = event.ticket.spec.metadata.str("webhook_url").filter(|u| !u.trim().is_empty()) {
            out.push(Delivery::new(event, None, url.trim().to_owned()));
        }
    }
    out
}

/// The result of an attempt, to record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<Millis>,
    pub delivered_at: Option<Millis>,
    /// The audit record of the attempt (`webhook.delivered` / `webhook.failed` / `webhook.disabled`).
    pub audit: Vec<AuditEvent>,
    /// Subscription health after the attempt: (id, consecutive failures, failing since, disabled reason).
    pub health: Option<(String, i32, Option<Millis>, Option<String>)>,
}

/// One subscription's share of a claim: up to `limit` of its due deliveries. `subscription_id` None stands for
/// the legacy `metadata.webhook_url` targets, which have no subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimBudget {
    pub subscription_id: Option<String>,
    pub limit: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(events: &[&str]) -> Subscription {
        Subscription {
            id: "s".into(),
            url: "http://127.0.0.1/hook".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            task_types: Vec::new(),
            capabilities: None,
            min_priority: None,
            plan_id: None,
            secret: "whsec_x".into(),
            previous_secret: Some("whsec_old".into()),
            previous_secret_until: Some(1_000),
            paused: false,
            disabled_reason: None,
            consecutive_failures: 0,
            failing_since: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn filters_select_the_pool_s_tickets() {
        let json = crate::domain::validation::tests::sample_json();
        let new = serde_json::from_value::<crate::domain::validation::NewTicket>(json).unwrap();
        let mut t = new.validate(1_000, String::new).unwrap().ticket;
        t.spec.required_capabilities = vec!["gpu".into()];
        t.spec.priority = Priority::High;
        let mut s = sub(&["ticket.ready"]);
        assert!(s.matches(EventKind::Ready, &t));
        assert!(!s.matches(EventKind::Created, &t), "only the subscribed events");
        s.capabilities = Some(vec!["cpu".into()]);
        assert!(!s.matches(EventKind::Ready, &t), "the pool lacks a required capability");
        s.capabilities = Some(vec!["cpu".into(), "gpu".into()]);
        assert!(s.matches(EventKind::Ready, &t), "required ⊆ pool");
        s.min_priority = Some(Priority::Critical);
        assert!(!s.matches(EventKind::Ready, &t));
        s.min_priority = Some(Priority::Normal);
        s.task_types = vec![TaskType::Deploy];
        assert_eq!(s.matches(EventKind::Ready, &t), t.spec.task_type == TaskType::Deploy);
    }

    #[test]
    fn the_old_secret_signs_only_during_the_overlap() {
        let s = sub(&[]);
        assert_eq!(s.signing_secrets(999), ["whsec_x", "whsec_old"]);
        assert_eq!(s.signing_secrets(1_000), ["whsec_x"]);
        assert!(s.redacted().secret.is_empty() && s.redacted().previous_secret.is_none());
    }

    #[test]
    fn the_event_types_are_the_published_list() {
        // `GET /api/v1/webhooks/event-types` and stored subscriptions depend on these names and this order.
        let published: &[&str] = &[
            "ticket.created",
            "ticket.ready",
            "ticket.blocked",
            "ticket.started",
            "ticket.completed",
            "ticket.failed",
            "ticket.retry",
            "ticket.preempted",
            "ticket.cancelled",
            "ticket.compensating",
            "ticket.compensated",
            "ticket.sla_warning",
            "ticket.sla_breached",
            "ticket.sla_timeout",
            "ticket.start_overdue",
        ];
        assert_eq!(EVENT_TYPES, published);
        // Only the watcher kinds are left out.
        let left_out = &EventKind::ALL[EVENT_TYPES.len()..];
        assert_eq!(left_out, [EventKind::Progress, EventKind::LateResultRefused]);
    }
}
