//! The status machine, as a pure function of (ticket, command, now).
//!
//! ```text
//! PENDING ──► RUNNING ──► COMPLETED | FAILED
//!    ▲           │ retry (budget) / PREEMPTED (free)
//!    └───────────┘
//! PENDING ──► COMPLETED                      (only the late result of the attempt that timed out, see below)
//! FAILED ──manual retry──► PENDING          (POST …/retry, even with the budget spent)
//! RUNNING | FAILED ──► COMPENSATING ──► COMPENSATED | FAILED
//! PENDING | RUNNING ──► CANCELLED
//! COMPLETED, CANCELLED, COMPENSATED are terminal.
//! ```
//! Asking for the status a ticket already has is a no-op. The original service allowed any move; the actor
//! calls [`apply`] and persists the result, so no front end carries its own copy of these rules.
//!
//! A late result: worker agents run an attempt under their own limit, and may report COMPLETED after the SLA
//! engine timed the attempt out and put the ticket back to PENDING for a retry. While no new attempt has started
//! ([`awaiting_late_result`]) that result stands — the work is done, running it again would waste it — and the
//! retry the timeout scheduled is taken back. Once another attempt runs, the late result is refused.

use crate::domain::enums::{RequestedStatus, TicketStatus};
use crate::domain::model::{Millis, Ticket};

/// What a client asks the machine to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    /// PATCH …/status: move to a status (or PREEMPTED). With `retry_if_failed` (a service caller), PENDING
    /// asked of a FAILED ticket is a [`Command::ManualRetry`]: the self-healing engine reallocates that way.
    SetStatus {
        to: RequestedStatus,
        error_message: Option<String>,
        actual_duration_ms: Option<i64>,
        retry_if_failed: bool,
    },
    /// POST …/retry: FAILED → PENDING even with the retry budget spent.
    ManualRetry,
    /// POST …/compensation: → COMPENSATING, linked to the compensation ticket.
    Compensate { compensation_ticket_id: String },
    /// SLA engine: a RUNNING attempt timed out and the retry budget lasts → PENDING, retry_count + 1.
    SystemRetry { error_message: String },
    /// SLA engine: a PENDING or RUNNING ticket fails (final timeout, or breach with the `fail` policy).
    SystemFail { error_message: String },
}

/// A move the machine refuses; answered as 409 with the statuses that are allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{detail}")]
pub struct IllegalTransition {
    pub detail: String,
    pub from: TicketStatus,
    pub to: String,
    pub allowed: Vec<TicketStatus>,
}

/// The result of a legal command.
#[derive(Debug, Clone, PartialEq)]
// The ticket is the payload; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// The ticket already had that status: nothing to persist, same version.
    Unchanged,
    /// The new ticket, version + 1.
    Changed(Ticket),
}

/// How much longer than the running attempt a reported `actual_duration_ms` may be and still count as its own
/// (the worker starts its clock before the service sees RUNNING). Longer: the result of an earlier attempt.
pub const LATE_RESULT_SLACK_MS: i64 = 1_000;

/// Whether `t` is PENDING because its attempt timed out, and no attempt has started since: that attempt's
/// result is still taken (see the module docs).
pub fn awaiting_late_result(t: &Ticket) -> bool {
    t.status == TicketStatus::Pending && t.started_at.is_some() && t.sla_state.timed_out_attempt == t.started_at
}

/// Statuses a PATCH may move `t` to (PENDING only while the automatic retry budget lasts).
pub fn allowed_targets(t: &Ticket) -> Vec<TicketStatus> {
    use TicketStatus::*;
    match t.status {
        Pending if awaiting_late_result(t) => vec![Running, Completed, Cancelled],
        Pending => vec![Running, Cancelled],
        Running if t.retry_count < t.spec.sla.max_retries => {
            vec![Pending, Completed, Failed, Compensating, Cancelled]
        }
        Running => vec![Completed, Failed, Compensating, Cancelled],
        Failed => vec![Compensating],
        Compensating => vec![Compensated, Failed],
        Completed | Cancelled | Compensated => vec![],
    }
}

/// `retry_count + 1`, refused at `i32::MAX`: a create request may set any non-negative retry count, and a
/// wrapped (or, in debug builds, panicking) counter would corrupt the ticket instead of answering 409.
fn next_retry(t: &Ticket, to: impl ToString) -> Result<i32, IllegalTransition> {
    t.retry_count.checked_add(1).ok_or_else(|| refuse(t, to, "the retry count is at its maximum"))
}

fn refuse(t: &Ticket, to: impl ToString, why: &str) -> IllegalTransition {
    let to = to.to_string();
    let allowed = allowed_targets(t);
    let detail = if why.is_empty() {
        format!("illegal status transition {} → {to}", t.status)
    } else {
        format!("illegal status transition {} → {to}: {why}", t.status)
    };
    IllegalTransition { detail, from: t.status, to, allowed }
}

/// Apply `cmd` to `t` at time `now` (epoch ms).
pub fn apply(t: &Ticket, cmd: &Command, now: Millis) -> Result<Outcome, IllegalTransition> {
    use TicketStatus::*;
    let mut next = t.clone();
    match cmd {
        Command::SetStatus { to, retry_if_failed: true, .. }
            if t.status == Failed && *to == RequestedStatus::Status(Pending) =>
        {
            return apply(t, &Command::ManualRetry, now);
        }
        Command::SetStatus { to, error_message, actual_duration_ms, .. } => {
            let to_status = match to {
                RequestedStatus::Preempted => {
                    if t.status != Running {
                        return Err(refuse(t, to, "only a RUNNING ticket can be preempted"));
                    }
                    Pending
                }
                RequestedStatus::Status(s) => *s,
            };
            if *to == RequestedStatus::Status(t.status) {
                return Ok(Outcome::Unchanged);
            }
            let legal = *to == RequestedStatus::Preempted || allowed_targets(t).contains(&to_status);
            if !legal {
                let why = match (t.status, to_status) {
                    (s, _) if s.is_terminal() => "the ticket is in a terminal status",
                    (Running, Pending) => "the retry budget is spent",
                    (Failed, Pending) => "use POST …/retry for a manual retry",
                    _ => "",
                };
                return Err(refuse(t, to, why));
            }
            if let (Running, Completed | Failed, Some(ran), Some(started)) =
                (t.status, to_status, actual_duration_ms, t.started_at)
            {
                // A result that took longer than the running attempt has run comes from an earlier attempt: the
                // one that timed out, whose worker finished after a new attempt had started.
                let earlier_timed_out = t.sla_state.timed_out_attempt.is_some_and(|at| at < started);
                if earlier_timed_out && *ran > now.saturating_sub(started).saturating_add(LATE_RESULT_SLACK_MS) {
                    return Err(refuse(t, to, "the result of an attempt that timed out; another attempt is running"));
                }
            }
            if let Some(msg) = error_message {
                next.error_message = Some(msg.clone());
            }
            match to_status {
                Running => {
                    next.started_at = Some(now.max(t.created_at));
                    next.completed_at = None;
                    next.actual_duration_ms = None;
                }
                Pending => {
                    if *to != RequestedStatus::Preempted {
                        next.retry_count = next_retry(t, to)?;
                    }
                    next.completed_at = None;
                    next.actual_duration_ms = None;
                }
                Completed if t.status == Pending => {
                    // The late result of the attempt that timed out: its work stands, and the retry the timeout
                    // scheduled is taken back (as is the timeout's error message, unless the worker sent one).
                    let done = t.started_at.map_or(now, |s| now.max(s));
                    next.completed_at = Some(done);
                    next.actual_duration_ms = actual_duration_ms.or_else(|| t.started_at.map(|s| done - s));
                    next.retry_count = t.retry_count.saturating_sub(1).max(0);
                    next.error_message = error_message.clone();
                }
                Completed | Failed | Cancelled | Compensated => {
                    let done = t.started_at.map_or(now, |s| now.max(s));
                    next.completed_at = Some(done);
                    next.actual_duration_ms = actual_duration_ms.or_else(|| t.started_at.map(|s| done - s));
                }
                Compensating => {}
            }
            next.status = to_status;
        }
        Command::ManualRetry => {
            if t.status != Failed {
                return Err(refuse(t, "PENDING", "only a FAILED ticket can be retried manually"));
            }
            next.retry_count = next_retry(t, "PENDING")?;
            next.status = Pending;
            next.completed_at = None;
            next.actual_duration_ms = None;
        }
        Command::SystemRetry { error_message } => {
            if t.status != Running || t.retry_count >= t.spec.sla.max_retries {
                return Err(refuse(t, "PENDING", "an automatic retry needs a RUNNING ticket with retry budget left"));
            }
            next.retry_count = next_retry(t, "PENDING")?;
            next.status = Pending;
            next.error_message = Some(error_message.clone());
            next.completed_at = None;
            next.actual_duration_ms = None;
        }
        Command::SystemFail { error_message } => {
            if !matches!(t.status, Pending | Running) {
                return Err(refuse(t, "FAILED", "only a PENDING or RUNNING ticket can be failed by the SLA engine"));
            }
            let done = t.started_at.map_or(now, |s| now.max(s));
            next.status = Failed;
            next.error_message = Some(error_message.clone());
            next.completed_at = Some(done);
            next.actual_duration_ms = t.started_at.map(|s| done - s);
        }
        Command::Compensate { compensation_ticket_id } => {
            if !matches!(t.status, Running | Failed) {
                return Err(refuse(t, "COMPENSATING", "only a RUNNING or FAILED ticket can be compensated"));
            }
            next.status = Compensating;
            next.compensation_ticket_id = Some(compensation_ticket_id.clone());
        }
    }
    next.version += 1;
    next.updated_at = now.max(t.updated_at);
    Ok(Outcome::Changed(next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::validation::{tests::sample_json, NewTicket};
    use proptest::prelude::*;
    use TicketStatus::*;

    fn ticket(max_retries: i32) -> Ticket {
        let mut v = sample_json();
        v["sla"]["max_retries"] = max_retries.into();
        serde_json::from_value::<NewTicket>(v).unwrap().validate(1_000, String::new).unwrap().ticket
    }

    fn set(to: TicketStatus) -> Command {
        Command::SetStatus {
            to: RequestedStatus::Status(to),
            error_message: None,
            actual_duration_ms: None,
            retry_if_failed: false,
        }
    }

    /// `t` after its running attempt timed out at `now` and was put back to PENDING (what the SLA engine does).
    fn timed_out(t: &Ticket, now: Millis) -> Ticket {
        let mut p = changed(t, Command::SystemRetry { error_message: "attempt 1 timed out after 3000 ms".into() }, now);
        p.sla_state.timed_out_attempt = p.started_at;
        p
    }

    #[test]
    fn the_late_result_of_a_timed_out_attempt_stands_until_another_attempt_starts() {
        let r = changed(&ticket(2), set(Running), 2_000);
        let p = timed_out(&r, 5_000);
        assert!(awaiting_late_result(&p));
        assert!(allowed_targets(&p).contains(&Completed));
        let done = changed(&p, set(Completed), 5_200);
        assert_eq!(done.status, Completed);
        assert_eq!(done.retry_count, 0, "the retry the timeout scheduled is taken back");
        assert_eq!(done.error_message, None, "the timeout's message is not the outcome");
        assert_eq!((done.completed_at, done.actual_duration_ms), (Some(5_200), Some(3_200)));
        // Only COMPLETED: a late FAILED changes nothing (the timeout already failed that attempt).
        assert!(apply(&p, &set(Failed), 5_200).is_err());

        // Once another attempt runs, a result that took longer than it has run is the old attempt's: refused.
        let r2 = changed(&p, set(Running), 5_100);
        assert!(!awaiting_late_result(&r2));
        let late = Command::SetStatus {
            to: RequestedStatus::Status(Completed),
            error_message: None,
            actual_duration_ms: Some(3_300),
            retry_if_failed: false,
        };
        let err = apply(&r2, &late, 5_300).unwrap_err();
        assert!(err.detail.contains("attempt that timed out"), "{err:?}");
        // The running attempt's own result (no duration, or one within what it ran) is taken.
        assert_eq!(changed(&r2, set(Completed), 5_300).status, Completed);
        let own = Command::SetStatus {
            to: RequestedStatus::Status(Completed),
            error_message: None,
            actual_duration_ms: Some(900),
            retry_if_failed: false,
        };
        assert_eq!(changed(&r2, own, 5_300).status, Completed);
    }

    #[test]
    fn a_preempted_or_never_timed_out_pending_ticket_takes_no_completion() {
        let r = changed(&ticket(2), set(Running), 2_000);
        let preempted = changed(
            &r,
            Command::SetStatus {
                to: RequestedStatus::Preempted,
                error_message: None,
                actual_duration_ms: None,
                retry_if_failed: false,
            },
            3_000,
        );
        assert!(!awaiting_late_result(&preempted));
        assert!(apply(&preempted, &set(Completed), 3_100).is_err());
        assert!(apply(&ticket(2), &set(Completed), 3_100).is_err());
    }

    #[test]
    fn pending_asked_of_a_failed_ticket_is_a_manual_retry_only_when_allowed() {
        let failed = changed(&changed(&ticket(0), set(Running), 2_000), set(Failed), 3_000);
        let err = apply(&failed, &set(Pending), 4_000).unwrap_err();
        assert!(err.detail.contains("POST …/retry"), "{err:?}");
        let reallocate = Command::SetStatus {
            to: RequestedStatus::Status(Pending),
            error_message: None,
            actual_duration_ms: None,
            retry_if_failed: true,
        };
        assert_eq!(apply(&failed, &reallocate, 4_000), apply(&failed, &Command::ManualRetry, 4_000));
        assert_eq!(changed(&failed, reallocate.clone(), 4_000).status, Pending);
        // Not a way around the machine for other statuses.
        let running = changed(&ticket(0), set(Running), 2_000);
        assert!(apply(&running, &reallocate, 4_000).is_err(), "RUNNING → PENDING needs retry budget");
    }

    fn changed(t: &Ticket, cmd: Command, now: Millis) -> Ticket {
        match apply(t, &cmd, now).unwrap() {
            Outcome::Changed(t) => t,
            Outcome::Unchanged => panic!("expected a change"),
        }
    }

    #[test]
    fn happy_path_sets_timestamps_and_duration() {
        let t = ticket(1);
        let running = changed(&t, set(Running), 2_000);
        assert_eq!((running.started_at, running.version), (Some(2_000), 2));
        let done = changed(&running, set(Completed), 5_000);
        assert_eq!((done.completed_at, done.actual_duration_ms, done.version), (Some(5_000), Some(3_000), 3));
        assert!(apply(&done, &set(Running), 6_000).is_err());
    }

    #[test]
    fn repeating_the_status_is_a_no_op() {
        let t = ticket(1);
        assert_eq!(apply(&t, &set(Pending), 2_000).unwrap(), Outcome::Unchanged);
    }

    #[test]
    fn automatic_retry_spends_the_budget_and_manual_retry_does_not_need_it() {
        let t = ticket(1);
        let r = changed(&t, set(Running), 2_000);
        let p = changed(&r, set(Pending), 3_000);
        assert_eq!(p.retry_count, 1);
        let r2 = changed(&p, set(Running), 4_000);
        let err = apply(&r2, &set(Pending), 5_000).unwrap_err();
        assert!(err.detail.contains("budget"), "{}", err.detail);
        assert!(!err.allowed.contains(&Pending));
        let preempted = apply(
            &r2,
            &Command::SetStatus {
                to: RequestedStatus::Preempted,
                error_message: None,
                actual_duration_ms: None,
                retry_if_failed: false,
            },
            5_000,
        )
        .unwrap();
        assert!(matches!(preempted, Outcome::Changed(ref t) if t.status == Pending && t.retry_count == 1));
        let failed = changed(&r2, set(Failed), 6_000);
        assert!(apply(&failed, &set(Pending), 7_000).is_err());
        let retried = changed(&failed, Command::ManualRetry, 7_000);
        assert_eq!((retried.status, retried.retry_count, retried.completed_at), (Pending, 2, None));
    }

    #[test]
    fn illegal_moves_list_what_is_allowed() {
        let t = ticket(0);
        let err = apply(&t, &set(Completed), 2_000).unwrap_err();
        assert_eq!((err.from, err.to.as_str(), err.allowed.clone()), (Pending, "COMPLETED", vec![Running, Cancelled]));
    }

    #[test]
    fn error_message_is_kept_unless_replaced() {
        let t = ticket(0);
        let r = changed(&t, set(Running), 2_000);
        let cmd = Command::SetStatus {
            to: RequestedStatus::Status(Failed),
            error_message: Some("boom".into()),
            actual_duration_ms: Some(42),
            retry_if_failed: false,
        };
        let f = changed(&r, cmd, 3_000);
        assert_eq!((f.error_message.as_deref(), f.actual_duration_ms), (Some("boom"), Some(42)));
        let c = changed(&f, Command::Compensate { compensation_ticket_id: "c".into() }, 4_000);
        let done = changed(&c, set(Compensated), 5_000);
        assert_eq!(done.error_message.as_deref(), Some("boom"));
        assert!(done.status.is_terminal());
    }

    #[test]
    fn a_retry_at_the_largest_retry_count_is_refused_not_overflowed() {
        let mut failed = ticket(i32::MAX);
        failed.status = Failed;
        failed.retry_count = i32::MAX;
        let err = apply(&failed, &Command::ManualRetry, 2_000).unwrap_err();
        assert!(err.detail.contains("maximum"), "{}", err.detail);
        let mut running = failed.clone();
        running.status = Running;
        running.retry_count = i32::MAX - 1;
        let pending = changed(&running, set(Pending), 2_000);
        assert_eq!(pending.retry_count, i32::MAX);
        let again = changed(&pending, set(Running), 3_000);
        assert!(apply(&again, &set(Pending), 4_000).is_err());
        assert!(apply(&again, &Command::SystemRetry { error_message: "t".into() }, 4_000).is_err());
    }

    fn any_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            8 => prop::sample::select(TicketStatus::ALL.to_vec()).prop_map(set),
            2 => Just(Command::SetStatus { to: RequestedStatus::Preempted, error_message: None, actual_duration_ms: None, retry_if_failed: false }),
            1 => Just(Command::ManualRetry),
            1 => Just(Command::Compensate { compensation_ticket_id: "comp".into() }),
            2 => Just(Command::SystemRetry { error_message: "timed out".into() }),
            1 => Just(Command::SystemFail { error_message: "breached".into() }),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold_for_any_sequence(
            max_retries in 0i32..4,
            steps in prop::collection::vec((any_command(), 0i64..10_000), 0..60),
        ) {
            let mut t = ticket(max_retries);
            let mut manual_retries = 0;
            for (cmd, now) in steps {
                let before = t.clone();
                match apply(&t, &cmd, now) {
                    Ok(Outcome::Changed(next)) => {
                        prop_assert!(!before.status.is_terminal(), "left terminal {:?} via {:?}", before.status, cmd);
                        prop_assert_eq!(next.version, before.version + 1);
                        prop_assert!(next.updated_at >= before.updated_at);
                        if cmd == Command::ManualRetry { manual_retries += 1; }
                        t = next;
                    }
                    Ok(Outcome::Unchanged) => {}
                    Err(e) => prop_assert!(!e.allowed.contains(&t.status)),
                }
                if let (Some(s), Some(c)) = (t.started_at, t.completed_at) {
                    prop_assert!(s <= c, "started_at {} after completed_at {}", s, c);
                }
                if let Some(s) = t.started_at { prop_assert!(s >= t.created_at); }
                prop_assert!(t.retry_count <= max_retries + manual_retries,
                    "retry_count {} exceeds budget {} + manual {}", t.retry_count, max_retries, manual_retries);
            }
        }
    }
}
