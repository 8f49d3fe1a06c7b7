//! SLA rules, as pure functions of (ticket, policy, now): what is due when, and what firing it does.
//!
//! Vocabulary (Temporal's timeouts, ServiceNow-style warnings):
//! - **attempt timeout** — `sla.timeout_ms` × the policy's `attempt_timeout_factor` (1.5 by default: the
//!   workers' own limit) after the attempt started (RUNNING): back to PENDING while the retry budget lasts
//!   (`ticket.retry`), else FAILED (`ticket.failed`). The timed-out attempt's result is still taken while no
//!   new attempt has started (see [`crate::domain::status`]);
//! - **heartbeat timeout** — a RUNNING ticket whose worker sent heartbeats and then went silent longer than its
//!   heartbeat timeout (metadata `heartbeat_timeout_ms`, or a default by task type): same as an attempt timeout;
//! - **schedule-to-start** — PENDING longer than the limit for its priority: `ticket.start_overdue`, once per
//!   PENDING spell;
//! - **deadline** — `sla.deadline`: `ticket.sla_breached` once; with `SLA_BREACH_ACTION=fail` also FAILED;
//! - **warnings** — at fractions of created_at→deadline: `ticket.sla_warning`, each once.
//!
//! What fired is recorded in [`SlaState`], persisted with the ticket, so nothing fires twice across restarts;
//! nothing fires before its instant, because [`fire`] is only ever asked about instants ≤ now. Deadline and
//! warnings concern work in flight (PENDING, RUNNING); other statuses make them moot.

use serde_json::json;

use crate::domain::enums::{Priority, TaskType, TicketStatus};
use crate::domain::events::{EventKind, TicketEvent};
use crate::domain::model::{Millis, Ticket};
use crate::domain::status::{self, Command, Outcome};

/// Metadata key that sets a ticket's heartbeat timeout (ms).
pub const HEARTBEAT_TIMEOUT_KEY: &str = "heartbeat_timeout_ms";

/// What happens at the deadline besides the `ticket.sla_breached` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreachAction {
    Alert,
    Fail,
}

/// The configurable part of the rules.
#[derive(Debug, Clone)]
pub struct SlaPolicy {
    /// Warning points as fractions of created_at→deadline, in (0, 1).
    pub warning_fractions: Vec<f64>,
    pub breach_action: BreachAction,
    /// Schedule-to-start limit (ms) for LOW, NORMAL, HIGH, CRITICAL.
    pub start_limits_ms: [i64; 4],
    /// Heartbeat timeout (ms) by task type, for tickets whose metadata does not set one.
    pub heartbeat_defaults_ms: Vec<(TaskType, i64)>,
    /// An attempt times out after `sla.timeout_ms` × this. Worker agents run each attempt under their own
    /// limit of 1.5 × `timeout_ms` and report what they finished within it, so the default matches theirs.
    pub attempt_timeout_factor: f64,
}

impl Default for SlaPolicy {
    fn default() -> Self {
        SlaPolicy {
            warning_fractions: vec![0.5, 0.75, 0.9],
            breach_action: BreachAction::Alert,
            start_limits_ms: [3_600_000, 600_000, 120_000, 30_000],
            heartbeat_defaults_ms: Vec::new(),
            attempt_timeout_factor: DEFAULT_ATTEMPT_TIMEOUT_FACTOR,
        }
    }
}

/// See [`SlaPolicy::attempt_timeout_factor`].
pub const DEFAULT_ATTEMPT_TIMEOUT_FACTOR: f64 = 1.5;

impl SlaPolicy {
    fn start_limit(&self, p: Priority) -> i64 {
        self.start_limits_ms[p as usize]
    }

    /// How long an attempt of `t` may run: `sla.timeout_ms` × the factor, in whole ms (a float cast saturates,
    /// so no stored `timeout_ms` overflows it).
    pub fn attempt_timeout_ms(&self, t: &Ticket) -> i64 {
        ((t.spec.sla.timeout_ms as f64) * self.attempt_timeout_factor).round() as i64
    }

    /// The heartbeat timeout of `t`, if it has one.
    pub fn heartbeat_timeout(&self, t: &Ticket) -> Option<i64> {
        let from_metadata = t.spec.metadata.integer(HEARTBEAT_TIMEOUT_KEY);
        from_metadata
            .or_else(|| self.heartbeat_defaults_ms.iter().find(|(k, _)| *k == t.spec.task_type).map(|(_, v)| *v))
            .filter(|v| *v > 0)
    }
}

/// Who the SLA engine's changes are recorded as (the `actor` of their events and audit records).
pub const SLA_ACTOR: &str = "sla";

// Stored with the ticket, so it lives in the model; re-exported here, beside the rules that fill it in.
pub use crate::domain::model::SlaState;

/// One kind of SLA instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SlaKind {
    Warning(u32),
    Breach,
    StartOverdue,
    AttemptTimeout,
    HeartbeatTimeout,
}

impl SlaKind {
    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            SlaKind::Warning(_) => "warning",
            SlaKind::Breach => "breach",
            SlaKind::StartOverdue => "start_overdue",
            SlaKind::AttemptTimeout => "attempt_timeout",
            SlaKind::HeartbeatTimeout => "heartbeat_timeout",
        }
    }
}

/// One SLA rule that fired: the event to announce.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub kind: SlaKind,
    /// When it was due (lateness = fire time − due).
    pub due: Millis,
    pub event: EventKind,
    pub details: serde_json::Value,
    /// The ticket right after this firing (for the event).
    pub ticket: Ticket,
    /// The status before this firing.
    pub from: TicketStatus,
}

fn in_flight(t: &Ticket) -> bool {
    matches!(t.status, TicketStatus::Pending | TicketStatus::Running)
}

fn permille(f: f64) -> u32 {
    (f * 1000.0).round() as u32
}

/// The instant of warning point `pm` (permille of created_at→deadline), in i128 so that no stored pair of
/// timestamps can overflow it; the result lies between created_at and deadline.
fn warning_at(t: &Ticket, pm: u32) -> Millis {
    let (created, deadline) = (i128::from(t.created_at), i128::from(t.spec.sla.deadline));
    let at = created + ((deadline - created) * i128::from(pm) + 999) / 1000;
    Millis::try_from(at).unwrap_or(Millis::MAX)
}

/// Every pending SLA instant of `t`. `heartbeat` is the last heartbeat of the current attempt, if any.
pub fn schedule(t: &Ticket, p: &SlaPolicy, heartbeat: Option<Millis>) -> Vec<(Millis, SlaKind)> {
    let mut due = Vec::new();
    let s = &t.sla_state;
    if in_flight(t) {
        if t.spec.sla.deadline > t.created_at {
            for f in &p.warning_fractions {
                let pm = permille(*f);
                if (1..1000).contains(&pm) && !s.warnings_fired.contains(&pm) {
                    due.push((warning_at(t, pm), SlaKind::Warning(pm)));
                }
            }
        }
        if s.breached_at.is_none() {
            due.push((t.spec.sla.deadline, SlaKind::Breach));
        }
    }
    match t.status {
        TicketStatus::Pending => {
            if let Some(since) = s.pending_since.filter(|since| s.start_overdue_for != Some(*since)) {
                due.push((since.saturating_add(p.start_limit(t.spec.priority)), SlaKind::StartOverdue));
            }
        }
        TicketStatus::Running => {
            if let Some(started) = t.started_at.filter(|st| s.timed_out_attempt != Some(*st)) {
                due.push((started.saturating_add(p.attempt_timeout_ms(t)), SlaKind::AttemptTimeout));
                if let (Some(beat), Some(limit)) = (heartbeat, p.heartbeat_timeout(t)) {
                    due.push((beat.saturating_add(limit), SlaKind::HeartbeatTimeout));
                }
            }
        }
        _ => {}
    }
    due
}

/// The earliest pending SLA instant.
pub fn next_due(t: &Ticket, p: &SlaPolicy, heartbeat: Option<Millis>) -> Option<Millis> {
    schedule(t, p, heartbeat).into_iter().map(|(at, _)| at).min()
}

/// Bring the bookkeeping of `next` up to date after a change from `before` (None for a new ticket) at `now`:
/// the PENDING spell, and the persisted next instant. Warning points already past when a ticket arrives are
/// marked as passed (a ticket created late gets its breach, not a burst of stale warnings).
pub fn refresh(before: Option<&Ticket>, next: &mut Ticket, p: &SlaPolicy, now: Millis) {
    let was_pending = before.is_some_and(|b| b.status == TicketStatus::Pending);
    next.sla_state.pending_since = match next.status {
        TicketStatus::Pending if was_pending => before.and_then(|b| b.sla_state.pending_since),
        TicketStatus::Pending if before.is_none() => Some(next.created_at.min(now)),
        TicketStatus::Pending => Some(now),
        _ => None,
    };
    if before.is_none() && next.spec.sla.deadline > next.created_at {
        for f in &p.warning_fractions {
            let pm = permille(*f);
            if (1..1000).contains(&pm) && warning_at(next, pm) <= now && !next.sla_state.warnings_fired.contains(&pm) {
                next.sla_state.warnings_fired.push(pm);
            }
        }
    }
    next.sla_state.next_due_at = next_due(next, p, None);
}

/// The number of the current attempt, in i64: `retry_count` may be `i32::MAX` (a create request may set it),
/// and the SLA engine must still describe the timeout rather than overflow.
fn attempt_number(t: &Ticket) -> i64 {
    i64::from(t.retry_count) + 1
}

fn timeout_command(t: &Ticket, kind: SlaKind, limit: Option<i64>) -> Command {
    let attempt = attempt_number(t);
    let what = match kind {
        SlaKind::HeartbeatTimeout => {
            format!("attempt {attempt} lost its heartbeat for more than {} ms", limit.unwrap_or_default())
        }
        _ => format!("attempt {attempt} timed out after {} ms", limit.unwrap_or_default()),
    };
    if t.retry_count < t.spec.sla.max_retries {
        Command::SystemRetry { error_message: what }
    } else {
        Command::SystemFail { error_message: format!("timed out after {attempt} attempts ({what})") }
    }
}

/// What the history records of a late result taken ([`status::awaiting_late_result`]): the attempt that timed
/// out (its number is the retry count its timeout raised), when it timed out, and how late the result came.
pub fn late_result(t: &Ticket, p: &SlaPolicy, now: Millis) -> serde_json::Value {
    let timed_out_at = t.started_at.map(|s| s.saturating_add(p.attempt_timeout_ms(t)));
    json!({"late_result": {"attempt": t.retry_count, "timed_out_at": timed_out_at,
        "late_ms": timed_out_at.map(|at| now.saturating_sub(at))}})
}

/// Fire everything due at `now`, earliest first. Returns the ticket after all firings (version bumped once per
/// state-changing firing, plus once for pure bookkeeping) and the firings, or None when nothing is due.
pub fn fire(t: &Ticket, p: &SlaPolicy, now: Millis, heartbeat: Option<Millis>) -> Option<(Ticket, Vec<Firing>)> {
    let mut cur = t.clone();
    let mut firings = Vec::new();
    let mut heartbeat = heartbeat;
    while let Some((due, kind)) = schedule(&cur, p, heartbeat)
        .into_iter()
        .filter(|(at, _)| *at <= now)
        .min_by_key(|(at, k)| (*at, matches!(k, SlaKind::Breach)))
    {
        let from = cur.status;
        let before = cur.clone();
        let (event, details, cmd) = match kind {
            SlaKind::Warning(pm) => {
                cur.sla_state.warnings_fired.push(pm);
                let remaining = cur.spec.sla.deadline - now;
                let details = json!({"fraction": f64::from(pm) / 1000.0, "remaining_ms": remaining, "due_at": due});
                (Some(EventKind::SlaWarning), details, None)
            }
            SlaKind::Breach => {
                cur.sla_state.breached_at = Some(now);
                let details = json!({"deadline": cur.spec.sla.deadline, "late_ms": now - cur.spec.sla.deadline,
                    "action": if p.breach_action == BreachAction::Fail { "fail" } else { "alert" }});
                let cmd = (p.breach_action == BreachAction::Fail).then(|| Command::SystemFail {
                    error_message: format!("SLA deadline {} breached", cur.spec.sla.deadline),
                });
                (Some(EventKind::SlaBreached), details, cmd)
            }
            SlaKind::StartOverdue => {
                cur.sla_state.start_overdue_for = cur.sla_state.pending_since;
                let limit = p.start_limit(cur.spec.priority);
                let details = json!({"pending_since": cur.sla_state.pending_since, "limit_ms": limit});
                (Some(EventKind::StartOverdue), details, None)
            }
            SlaKind::AttemptTimeout | SlaKind::HeartbeatTimeout => {
                cur.sla_state.timed_out_attempt = cur.started_at;
                let limit = match kind {
                    SlaKind::HeartbeatTimeout => p.heartbeat_timeout(&cur),
                    _ => Some(p.attempt_timeout_ms(&cur)),
                };
                let cmd = timeout_command(&cur, kind, limit);
                let details = json!({"reason": kind.label(), "attempt": attempt_number(&cur), "timeout_ms": limit});
                heartbeat = None;
                (None, details, Some(cmd))
            }
        };
        let mut event = event;
        if let Some(cmd) = cmd {
            match status::apply(&cur, &cmd, now) {
                Ok(Outcome::Changed(mut next)) => {
                    next.version = cur.version; // one version bump for the whole firing round, below
                    event = event.or(Some(TicketEvent::status_kind(&before, &next)));
                    cur = next;
                    refresh(Some(&before), &mut cur, p, now);
                }
                // The machine refuses (e.g. fail-on-breach of a ticket that is not in flight): alert only.
                Ok(Outcome::Unchanged) | Err(_) => {
                    event = event.or(Some(EventKind::SlaTimeout));
                }
            }
        }
        // Every branch names its event or has a command whose outcome does.
        let event = event.unwrap_or(EventKind::SlaTimeout);
        firings.push(Firing { kind, due, event, details, ticket: cur.clone(), from });
    }
    if firings.is_empty() {
        return None;
    }
    cur.version = t.version + 1;
    cur.updated_at = now.max(t.updated_at);
    cur.sla_state.next_due_at = next_due(&cur, p, None);
    for f in &mut firings {
        f.ticket.version = cur.version;
        f.ticket.updated_at = cur.updated_at;
        f.ticket.sla_state.next_due_at = cur.sla_state.next_due_at;
    }
    Some((cur, firings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::validation::{tests::sample_json, NewTicket};

    fn running(retry_count: i32, max_retries: i32) -> Ticket {
        let mut v = sample_json();
        v["sla"]["max_retries"] = max_retries.into();
        v["sla"]["timeout_ms"] = 1_000.into();
        let mut t = serde_json::from_value::<NewTicket>(v).unwrap().validate(1_000, String::new).unwrap().ticket;
        t.status = TicketStatus::Running;
        t.started_at = Some(2_000);
        t.retry_count = retry_count;
        t
    }

    #[test]
    fn a_timeout_at_the_largest_retry_count_fails_the_ticket_without_overflow() {
        let t = running(i32::MAX, i32::MAX);
        let p = SlaPolicy::default();
        let due = 2_000 + p.attempt_timeout_ms(&t);
        let (after, firings) = fire(&t, &p, due, None).expect("the attempt timeout is due");
        assert_eq!(after.status, TicketStatus::Failed);
        let timeout = firings.iter().find(|f| f.kind == SlaKind::AttemptTimeout).unwrap();
        assert_eq!(timeout.details["attempt"], 2_147_483_648i64);
        assert!(after.error_message.unwrap().contains("after 2147483648 attempts"));
    }

    #[test]
    fn an_attempt_runs_for_timeout_ms_times_the_factor() {
        let t = running(0, 1);
        let default = SlaPolicy::default();
        assert_eq!(default.attempt_timeout_ms(&t), 1_500, "the workers' own limit: 1.5 × timeout_ms");
        assert!(fire(&t, &default, 3_499, None).is_none(), "never early");
        let (after, firings) = fire(&t, &default, 3_500, None).expect("due at 1.5 × timeout_ms");
        assert_eq!(after.status, TicketStatus::Pending);
        assert_eq!(firings[0].details["timeout_ms"], 1_500);
        assert_eq!(after.error_message.as_deref(), Some("attempt 1 timed out after 1500 ms"));
        let exact = SlaPolicy { attempt_timeout_factor: 1.0, ..SlaPolicy::default() };
        assert!(fire(&t, &exact, 3_000, None).is_some(), "factor 1: at timeout_ms");
        let mut huge = running(0, 1);
        huge.spec.sla.timeout_ms = i64::MAX;
        assert_eq!(default.attempt_timeout_ms(&huge), i64::MAX, "saturates");
    }

    #[test]
    fn warnings_of_the_widest_window_stay_inside_it() {
        let mut t = running(0, 0);
        t.created_at = 0;
        t.spec.sla.deadline = Millis::MAX;
        let at = warning_at(&t, 999);
        assert!(at > Millis::MAX / 1000 * 998 && at < Millis::MAX, "99.9 % of the way: {at}");
        assert!(!schedule(&t, &SlaPolicy::default(), None).is_empty());
    }
}
