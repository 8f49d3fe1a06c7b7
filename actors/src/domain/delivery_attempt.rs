//! The rules of one delivery attempt, as a pure function: [`on_attempt`] turns what an attempt gave into the
//! record to store — delivered, retried later (when, with jitter, never sooner than the receiver asked), or
//! failed for good — with the subscription's health after it and the attempt's audit records. The deliverer
//! ([`crate::system::webhooks::WebhookActor`]) keeps only its own bookkeeping: queues, breakers, metrics.

use std::time::Duration;

use serde_json::json;

use crate::domain::history::AuditEvent;
use crate::domain::model::Millis;
use crate::domain::subscription::{AttemptRecord, Delivery, DeliveryStatus, Subscription};

/// What one attempt gave.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// The HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// Why it failed (transport error, refused address, non-2xx).
    pub error: Option<String>,
    /// The receiver's `Retry-After` (429 and 503 answers), as a wait from now.
    pub retry_after: Option<Duration>,
    /// How long the attempt took, from sending to the answer or the failure (the deliverer measures it).
    pub latency: Option<Duration>,
}

impl SendOutcome {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// 429 Too Many Requests: the receiver is up and asks for fewer requests.
    pub fn throttled(&self) -> bool {
        self.status == Some(429)
    }
}

/// What the attempt rules take from the deliverer's configuration.
#[derive(Debug, Clone, Copy)]
pub struct AttemptRules<'a> {
    /// Pause before attempt n+1 after attempt n failed; its length is the number of retries.
    pub schedule: &'a [Duration],
    /// The longest wait a receiver's `Retry-After` can impose on one attempt.
    pub retry_after_max: Duration,
    /// A subscription failing this many times in a row, for at least `disable_window`, is disabled.
    pub disable_after: i32,
    pub disable_window: Duration,
}

impl AttemptRules<'_> {
    /// The receiver's `Retry-After`, bounded by `retry_after_max` and by the schedule's longest step: a receiver
    /// may slow its deliveries down, not park them beyond what the schedule itself would wait.
    pub fn hold(&self, outcome: &SendOutcome) -> Option<Duration> {
        let longest = self.schedule.iter().max().copied().unwrap_or_default();
        outcome.retry_after.map(|d| d.min(self.retry_after_max).min(longest))
    }
}

/// The record of the attempt of `d` that gave `outcome` at `now`; `subscription` is `d`'s (None for a ticket's
/// own `metadata.webhook_url`). `jitter` (any value) places a retry within ±10 % of its scheduled pause.
///
/// - Delivered: no retry; a failing subscription's failure count starts again.
/// - 410 Gone: no retry, and the subscription is disabled.
/// - 429: a retry no sooner than the bounded `Retry-After`; the subscription's health is left alone
///   (rate limiting is not failing). The attempt still counts against the schedule.
/// - Any other failure: a retry while the schedule lasts, else failed for good; the subscription's failure
///   count grows, and it is disabled after `disable_after` failures spread over at least `disable_window`.
pub fn on_attempt(
    d: &Delivery,
    subscription: Option<&Subscription>,
    outcome: &SendOutcome,
    now: Millis,
    rules: &AttemptRules<'_>,
    jitter: u64,
) -> AttemptRecord {
    let attempts = d.attempts + 1;
    let mut details = json!({
        "delivery_id": d.id, "subscription_id": d.subscription_id, "event_type": d.event_type,
        "attempt": attempts, "http_status": outcome.status, "error": outcome.error,
        "latency_ms": outcome.latency.map(|l| l.as_millis() as u64),
    });
    if outcome.ok() {
        let health = subscription
            .filter(|s| s.consecutive_failures > 0)
            .map(|s| (s.id.clone(), 0, None, s.disabled_reason.clone()));
        return AttemptRecord {
            delivery_id: d.id.clone(),
            status: DeliveryStatus::Delivered,
            attempts,
            last_status: outcome.status.map(i32::from),
            last_error: None,
            next_attempt_at: None,
            delivered_at: Some(now),
            audit: vec![audit_event(d, "webhook.delivered", now, details)],
            health,
        };
    }
    let gone = outcome.status == Some(410);
    let throttled = outcome.throttled();
    let hold = rules.hold(outcome);
    let retries_left = (attempts as usize) <= rules.schedule.len() && !gone;
    let next_attempt_at = retries_left.then(|| {
        let pause = rules.schedule[attempts as usize - 1].as_millis() as i64;
        // ±10 % jitter, so retries of a burst do not arrive as a burst again.
        let spread = (pause / 10).max(1);
        let scheduled = now + pause - spread + (jitter % (2 * spread as u64 + 1)) as i64;
        // Never sooner than the receiver asked (Retry-After), never sooner than the schedule.
        scheduled.max(now + hold.map_or(0, |h| h.as_millis() as i64))
    });
    let mut health = None;
    let mut audit = Vec::new();
    if let Some(s) = subscription.filter(|_| !throttled) {
        let failures = s.consecutive_failures + 1;
        let since = s.failing_since.unwrap_or(now);
        let reason = if gone {
            Some("the endpoint answered 410 Gone".to_owned())
        } else if failures >= rules.disable_after && now - since >= rules.disable_window.as_millis() as i64 {
            Some(format!("{failures} consecutive failures since {since}"))
        } else {
            s.disabled_reason.clone()
        };
        if reason.is_some() && s.disabled_reason.is_none() {
            audit.push(audit_event(d, "webhook.disabled", now, json!({"subscription_id": s.id, "reason": reason})));
        }
        health = Some((s.id.clone(), failures, Some(since), reason));
    }
    details["next_attempt_at"] = json!(next_attempt_at);
    audit.insert(0, audit_event(d, "webhook.failed", now, details));
    AttemptRecord {
        delivery_id: d.id.clone(),
        status: if next_attempt_at.is_some() { DeliveryStatus::Pending } else { DeliveryStatus::Failed },
        attempts,
        last_status: outcome.status.map(i32::from),
        last_error: outcome.error.clone(),
        next_attempt_at,
        delivered_at: None,
        audit,
        health,
    }
}

fn audit_event(d: &Delivery, kind: &str, now: Millis, details: serde_json::Value) -> AuditEvent {
    AuditEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        ticket_id: d.ticket_id.clone(),
        kind: kind.to_owned(),
        from_status: None,
        to_status: None,
        version: None,
        actor: "webhooks".into(),
        at: now,
        details,
        traceparent: d.traceparent.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const NOW: Millis = 1_000_000;

    fn rules(schedule: &[Duration]) -> AttemptRules<'_> {
        AttemptRules { schedule, retry_after_max: 3600 * S, disable_after: 3, disable_window: 10 * S }
    }

    fn delivery(attempts: i32) -> Delivery {
        Delivery {
            id: "msg_1".into(),
            subscription_id: Some("wh_1".into()),
            url: "https://pool.example/hook".into(),
            event_type: "ticket.ready".into(),
            ticket_id: "t-1".into(),
            at: 0,
            data: json!({}),
            status: DeliveryStatus::Pending,
            attempts,
            last_status: None,
            last_error: None,
            next_attempt_at: Some(0),
            created_at: 0,
            delivered_at: None,
            traceparent: None,
        }
    }

    fn subscription(failures: i32, since: Option<Millis>) -> Subscription {
        let mut s: Subscription = serde_json::from_value(json!({
            "id": "wh_1", "url": "https://pool.example/hook", "events": ["ticket.ready"],
            "created_at": 0, "updated_at": 0,
        }))
        .unwrap();
        (s.consecutive_failures, s.failing_since) = (failures, since);
        s
    }

    fn answer(status: Option<u16>, retry_after: Option<Duration>) -> SendOutcome {
        let error = status.is_none_or(|s| !(200..300).contains(&s)).then(|| "refused".to_owned());
        SendOutcome { status, error, retry_after, latency: Some(Duration::from_millis(12)) }
    }

    fn kinds(r: &AttemptRecord) -> Vec<&str> {
        r.audit.iter().map(|a| a.kind.as_str()).collect()
    }

    #[test]
    fn a_delivered_attempt_ends_the_delivery_and_the_failure_count() {
        let schedule = [5 * S];
        let r = on_attempt(
            &delivery(2),
            Some(&subscription(2, Some(1))),
            &answer(Some(204), None),
            NOW,
            &rules(&schedule),
            0,
        );
        assert_eq!(
            (r.status, r.attempts, r.delivered_at, r.next_attempt_at),
            (DeliveryStatus::Delivered, 3, Some(NOW), None)
        );
        assert_eq!(r.health, Some(("wh_1".into(), 0, None, None)));
        assert_eq!(kinds(&r), ["webhook.delivered"]);
        let details = &r.audit[0].details;
        assert_eq!((details["attempt"].as_i64(), details["http_status"].as_i64()), (Some(3), Some(204)));
        assert_eq!(details["latency_ms"], 12, "the attempt's latency is on its record");
        let healthy =
            on_attempt(&delivery(0), Some(&subscription(0, None)), &answer(Some(200), None), NOW, &rules(&schedule), 0);
        assert_eq!(healthy.health, None, "nothing to record for a healthy subscription");
    }

    #[test]
    fn a_failure_is_retried_on_schedule_with_jitter_then_fails_for_good() {
        let schedule = [10 * S, 100 * S];
        let r = rules(&schedule);
        for jitter in [0, 1, 999, u64::MAX] {
            let first = on_attempt(&delivery(0), None, &answer(Some(500), None), NOW, &r, jitter);
            let at = first.next_attempt_at.unwrap() - NOW;
            assert!((9_000..=11_000).contains(&at), "{at} ms is not 10 s ± 10 %");
            assert_eq!(
                (first.status, first.last_status, first.health.clone()),
                (DeliveryStatus::Pending, Some(500), None)
            );
        }
        let second = on_attempt(&delivery(1), None, &answer(None, None), NOW, &r, 0);
        assert!((90_000..=110_000).contains(&(second.next_attempt_at.unwrap() - NOW)));
        let last = on_attempt(&delivery(2), None, &answer(Some(503), None), NOW, &r, 0);
        assert_eq!((last.status, last.next_attempt_at), (DeliveryStatus::Failed, None), "the schedule is spent");
        assert_eq!(kinds(&last), ["webhook.failed"]);
        assert_eq!(last.audit[0].details["next_attempt_at"], serde_json::Value::Null);
    }

    #[test]
    fn gone_disables_at_once_and_repeated_failures_only_over_the_window() {
        let schedule = [10 * S];
        let r = rules(&schedule);
        let gone = on_attempt(&delivery(0), Some(&subscription(0, None)), &answer(Some(410), None), NOW, &r, 0);
        assert_eq!((gone.status, gone.next_attempt_at), (DeliveryStatus::Failed, None));
        assert_eq!(gone.health.as_ref().unwrap().3.as_deref(), Some("the endpoint answered 410 Gone"));
        assert_eq!(kinds(&gone), ["webhook.failed", "webhook.disabled"]);
        // The third failure in a row, but within the window: counted, not disabled.
        let soon =
            on_attempt(&delivery(0), Some(&subscription(2, Some(NOW - 5_000))), &answer(Some(500), None), NOW, &r, 0);
        assert_eq!(soon.health, Some(("wh_1".into(), 3, Some(NOW - 5_000), None)));
        // The same over the whole window: disabled, and said once.
        let late =
            on_attempt(&delivery(0), Some(&subscription(2, Some(NOW - 10_000))), &answer(Some(500), None), NOW, &r, 0);
        assert!(late.health.as_ref().unwrap().3.is_some());
        assert_eq!(kinds(&late), ["webhook.failed", "webhook.disabled"]);
        // Already disabled: a further failure is counted, not announced again.
        let mut already = subscription(1, Some(NOW - 1));
        already.disabled_reason = Some("earlier".into());
        let again = on_attempt(&delivery(0), Some(&already), &answer(Some(500), None), NOW, &r, 0);
        assert_eq!(kinds(&again), ["webhook.failed"]);
        assert_eq!(again.health.unwrap().3.as_deref(), Some("earlier"));
    }

    #[test]
    fn too_many_requests_waits_as_asked_within_bounds_and_leaves_health_alone() {
        let schedule = [10 * S, 60 * S];
        let r = rules(&schedule);
        let s = subscription(1, Some(NOW - 1));
        let asked = on_attempt(&delivery(0), Some(&s), &answer(Some(429), Some(30 * S)), NOW, &r, 0);
        assert_eq!(asked.next_attempt_at, Some(NOW + 30_000), "later than the schedule's 10 s: the receiver's 30 s");
        assert_eq!(asked.health, None, "rate limiting is not failing");
        // A Retry-After beyond the schedule's longest step is cut to it.
        let greedy = on_attempt(&delivery(0), Some(&s), &answer(Some(429), Some(7200 * S)), NOW, &r, 0);
        assert_eq!(greedy.next_attempt_at, Some(NOW + 60_000));
        assert_eq!(r.hold(&answer(Some(429), Some(7200 * S))), Some(60 * S));
        // It still counts against the schedule.
        let spent = on_attempt(&delivery(2), Some(&s), &answer(Some(429), Some(S)), NOW, &r, 0);
        assert_eq!(spent.status, DeliveryStatus::Failed);
    }
}
