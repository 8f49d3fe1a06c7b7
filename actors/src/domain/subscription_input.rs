//! What a client sends to create or change a webhook subscription, and the checks that make the result
//! storable. Everything here needs no network: the address check (DNS) is the service's, done before.
//! Kept apart from the front end so the fuzz target (`fuzz/fuzz_targets/subscription_body.rs`) runs the same
//! code the REST API does.

use serde::Deserialize;
use utoipa::ToSchema;

use crate::domain::enums::{Priority, TaskType};
use crate::domain::model::Millis;
use crate::domain::subscription::{Subscription, EVENT_TYPES};
use crate::domain::validation::{storable, text, ValidationError, MAX_ID_LEN, MAX_LIST_LEN};

/// Longest accepted subscription URL, in bytes.
pub const MAX_URL_LEN: usize = 2_048;

/// A new subscription.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewSubscription {
    pub url: String,
    /// Event types (at least one): see GET /api/v1/webhooks/event-types.
    pub events: Vec<String>,
    #[serde(default)]
    pub task_types: Vec<TaskType>,
    /// The pool's capabilities: a ticket matches when its required capabilities are a subset.
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    #[serde(default)]
    pub min_priority: Option<Priority>,
    #[serde(default)]
    pub plan_id: Option<String>,
}

/// A change to a subscription; absent fields stay as they are. `paused: false` also re-enables a
/// subscription the service disabled.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SubscriptionPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub task_types: Option<Vec<TaskType>>,
    pub capabilities: Option<Option<Vec<String>>>,
    pub min_priority: Option<Option<Priority>>,
    pub plan_id: Option<Option<String>>,
    pub paused: Option<bool>,
}

impl NewSubscription {
    /// The subscription this request creates, with its id and signing secret, if it is valid and storable.
    pub fn into_subscription(self, id: String, secret: String, now: Millis) -> Result<Subscription, ValidationError> {
        check_events(&self.events)?;
        let subscription = Subscription {
            id,
            url: self.url,
            events: self.events,
            task_types: self.task_types,
            capabilities: self.capabilities,
            min_priority: self.min_priority,
            plan_id: self.plan_id.filter(|p| !p.is_empty()),
            secret,
            previous_secret: None,
            previous_secret_until: None,
            paused: false,
            disabled_reason: None,
            consecutive_failures: 0,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        check_storable(&subscription)?;
        Ok(subscription)
    }
}

impl SubscriptionPatch {
    /// `s` with this change applied, if the result is valid and storable; `s` itself is left alone.
    pub fn apply(self, s: &Subscription, now: Millis) -> Result<Subscription, ValidationError> {
        let mut s = s.clone();
        if let Some(url) = self.url {
            s.url = url;
        }
        if let Some(events) = self.events {
            check_events(&events)?;
            s.events = events;
        }
        if let Some(v) = self.task_types {
            s.task_types = v;
        }
        if let Some(v) = self.capabilities {
            s.capabilities = v;
        }
        if let Some(v) = self.min_priority {
            s.min_priority = v;
        }
        if let Some(v) = self.plan_id {
            s.plan_id = v.filter(|p| !p.is_empty());
        }
        if let Some(paused) = self.paused {
            s.paused = paused;
            if !paused {
                // Resuming also lifts a disable by the service and starts its failure count afresh.
                s.disabled_reason = None;
                s.consecutive_failures = 0;
                s.failing_since = None;
            }
        }
        s.updated_at = now;
        check_storable(&s)?;
        Ok(s)
    }
}

fn check_events(events: &[String]) -> Result<(), ValidationError> {
    if events.is_empty() {
        return Err(ValidationError::new("events", "at least one event type"));
    }
    if events.len() > EVENT_TYPES.len() * 4 {
        return Err(ValidationError::new("events", format!("more than {} entries", EVENT_TYPES.len() * 4)));
    }
    match events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
        Some(bad) => Err(ValidationError::new(
            "events",
            format!("unknown event type {bad:?}; known: {}", EVENT_TYPES.join(", ")),
        )),
        None => Ok(()),
    }
}

/// What a subscription stores is storable (no NUL: PostgreSQL's `jsonb` refuses it) and bounded, like a ticket.
fn check_storable(s: &Subscription) -> Result<(), ValidationError> {
    text(&s.url, "url", MAX_URL_LEN)?;
    if let Some(plan) = &s.plan_id {
        text(plan, "plan_id", MAX_ID_LEN)?;
    }
    let capabilities = s.capabilities.as_deref().unwrap_or_default();
    if capabilities.len() > MAX_LIST_LEN {
        return Err(ValidationError::new("capabilities", format!("more than {MAX_LIST_LEN} entries")));
    }
    for (i, c) in capabilities.iter().enumerate() {
        text(c, &format!("capabilities[{i}]"), MAX_ID_LEN)?;
    }
    if s.task_types.len() > MAX_LIST_LEN {
        return Err(ValidationError::new("task_types", format!("more than {MAX_LIST_LEN} entries")));
    }
    for e in &s.events {
        storable(e, "events")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(body: serde_json::Value) -> Result<Subscription, ValidationError> {
        let n: NewSubscription = serde_json::from_value(body).unwrap();
        n.into_subscription("wh_1".into(), "whsec_x".into(), 5)
    }

    #[test]
    fn a_subscription_needs_known_events_and_storable_text() {
        let ok = new(serde_json::json!({"url": "https://pool.example/hook", "events": ["ticket.completed"]})).unwrap();
        assert_eq!((ok.created_at, ok.plan_id, ok.paused), (5, None, false));
        let field = |b| new(b).unwrap_err().field;
        assert_eq!(field(serde_json::json!({"url": "https://x", "events": []})), "events");
        assert_eq!(field(serde_json::json!({"url": "https://x", "events": ["ticket.nope"]})), "events");
        assert_eq!(field(serde_json::json!({"url": "https://x\u{0}", "events": ["ticket.completed"]})), "url");
        assert_eq!(
            field(serde_json::json!({"url": "https://x", "events": ["ticket.completed"], "capabilities": ["a\u{0}"]})),
            "capabilities[0]"
        );
    }

    #[test]
    fn a_refused_patch_leaves_the_subscription_as_it_was() {
        let s = new(serde_json::json!({"url": "https://x", "events": ["ticket.completed"]})).unwrap();
        let patch: SubscriptionPatch =
            serde_json::from_value(serde_json::json!({"url": "https://y", "plan_id": "p\u{0}"})).unwrap();
        assert_eq!(patch.apply(&s, 9).unwrap_err().field, "plan_id");
        let resume: SubscriptionPatch = serde_json::from_value(serde_json::json!({"paused": false})).unwrap();
        let disabled = Subscription { disabled_reason: Some("410".into()), consecutive_failures: 3, ..s.clone() };
        let resumed = resume.apply(&disabled, 9).unwrap();
        assert_eq!((resumed.disabled_reason, resumed.consecutive_failures, resumed.updated_at), (None, 0, 9));
    }
}
