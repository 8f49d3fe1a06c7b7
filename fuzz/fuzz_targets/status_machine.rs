//! The status machine and the SLA engine, driven by arbitrary sequences of status changes, retries,
//! compensations and SLA rounds, from any ticket the validation accepts (any status, retry count up to
//! `i32::MAX`, the widest timestamps) and any SLA policy. Nothing may panic or overflow, and the machine's
//! promises hold after every step:
//! - a terminal status is never left; a change bumps the version by exactly one; `updated_at` never goes back;
//! - a refusal never lists the current status as allowed; retry_count never decreases;
//! - started_at ≤ completed_at whenever both are set;
//! - an SLA round leaves nothing due at or before its instant (running it again fires nothing).
#![no_main]

use actors::compensation::{compensation_ticket, CompensationRequest};
use actors::enums::{RequestedStatus, TicketStatus};
use actors::sla::{self, BreachAction, SlaPolicy};
use actors::status::{apply, Command, Outcome};
use actors::validation::{NewTicket, MAX_TIMESTAMP};
use actors::Ticket;
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

/// One step of a ticket's life.
#[derive(Debug, Arbitrary)]
enum Step {
    Set { to: u8, preempt: bool, duration: Option<i64>, at: u64 },
    ManualRetry { at: u64 },
    SystemRetry { at: u64 },
    SystemFail { at: u64 },
    Compensate { at: u64 },
    SlaRound { at: u64, heartbeat: Option<u64> },
}

/// The first ticket: what a create request may carry.
#[derive(Debug, Arbitrary)]
struct Start {
    status: u8,
    retry_count: u32,
    max_retries: u32,
    timeout_ms: u64,
    deadline: u64,
    created_at: u64,
    started_at: Option<u64>,
    heartbeat_timeout: Option<i64>,
}

#[derive(Debug, Arbitrary)]
struct Policy {
    warnings: Vec<f64>,
    fail_on_breach: bool,
    start_limits_ms: [i64; 4],
}

/// An instant the clock may show (epoch ms within the accepted range).
fn instant(x: u64) -> i64 {
    (x % (MAX_TIMESTAMP as u64 + 1)) as i64
}

fn status(x: u8) -> TicketStatus {
    TicketStatus::ALL[usize::from(x) % TicketStatus::ALL.len()]
}

/// The start ticket through the real validation, or None when the validation refuses it.
fn start(s: &Start) -> Option<Ticket> {
    let mut metadata = serde_json::Map::new();
    if let Some(h) = s.heartbeat_timeout {
        metadata.insert(sla::HEARTBEAT_TIMEOUT_KEY.into(), h.to_string().into());
    }
    let json = serde_json::json!({
        "ticket_id": "fuzz-1", "plan_id": "p", "intent_id": "i", "decision_id": "d", "task_id": "t",
        "task_type": "EXECUTE", "description": "fuzz", "priority": "HIGH", "risk_band": "low",
        "sla": {"deadline": instant(s.deadline), "timeout_ms": s.timeout_ms.min(i64::MAX as u64).max(1),
                "max_retries": s.max_retries.min(i32::MAX as u32)},
        "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
        "security_level": "INTERNAL", "status": status(s.status).as_str(),
        "retry_count": s.retry_count.min(i32::MAX as u32), "created_at": instant(s.created_at),
        "started_at": s.started_at.map(instant), "metadata": metadata,
    });
    let new: NewTicket = serde_json::from_value(json).expect("the fuzz ticket has the request's shape");
    new.validate(instant(s.created_at), || unreachable!("the id is given")).ok().map(|v| v.ticket)
}

fn check(before: &Ticket, after: &Ticket) {
    assert!(!before.status.is_terminal(), "left terminal {:?} for {:?}", before.status, after.status);
    assert_eq!(after.version, before.version + 1, "one version per change");
    assert!(after.updated_at >= before.updated_at, "updated_at went back");
    assert!(after.retry_count >= before.retry_count, "retry_count decreased");
    if let (Some(s), Some(c)) = (after.started_at, after.completed_at) {
        assert!(s <= c, "started_at {s} after completed_at {c}");
    }
}

fn run(u: &mut Unstructured) -> arbitrary::Result<()> {
    let Some(mut t) = start(&Start::arbitrary(u)?) else { return Ok(()) };
    let p = Policy::arbitrary(u)?;
    let policy = SlaPolicy {
        warning_fractions: p.warnings.into_iter().take(8).collect(),
        breach_action: if p.fail_on_breach { BreachAction::Fail } else { BreachAction::Alert },
        start_limits_ms: p.start_limits_ms,
        heartbeat_defaults_ms: Vec::new(),
    };
    let created = t.created_at;
    sla::refresh(None, &mut t, &policy, created);
    let mut steps = 0;
    while !u.is_empty() && steps < 64 {
        steps += 1;
        let step = Step::arbitrary(u)?;
        let (cmd, at) = match step {
            Step::SlaRound { at, heartbeat } => {
                let now = instant(at);
                if let Some((after, firings)) = sla::fire(&t, &policy, now, heartbeat.map(instant)) {
                    assert!(!firings.is_empty());
                    check(&t, &after);
                    assert!(sla::fire(&after, &policy, now, None).is_none(), "a second round at {now} fired again");
                    t = after;
                }
                continue;
            }
            Step::Set { to, preempt, duration, at } => {
                let to = if preempt { RequestedStatus::Preempted } else { RequestedStatus::Status(status(to)) };
                (Command::SetStatus { to, error_message: None, actual_duration_ms: duration.map(|d| d.max(0)) }, at)
            }
            Step::ManualRetry { at } => (Command::ManualRetry, at),
            Step::SystemRetry { at } => (Command::SystemRetry { error_message: "timed out".into() }, at),
            Step::SystemFail { at } => (Command::SystemFail { error_message: "breached".into() }, at),
            Step::Compensate { at } => {
                let req = CompensationRequest {
                    original_ticket_id: t.ticket_id.clone(),
                    reason: "fuzz".into(),
                    compensation_action: None,
                    parameters: None,
                };
                let comp = compensation_ticket(&t, &req, "fuzz-comp".into(), instant(at));
                assert!((0..=MAX_TIMESTAMP).contains(&comp.spec.sla.deadline), "deadline {}", comp.spec.sla.deadline);
                (Command::Compensate { compensation_ticket_id: comp.ticket_id }, at)
            }
        };
        let now = instant(at);
        match apply(&t, &cmd, now) {
            Ok(Outcome::Changed(mut next)) => {
                check(&t, &next);
                sla::refresh(Some(&t), &mut next, &policy, now);
                t = next;
            }
            Ok(Outcome::Unchanged) => {
                assert!(matches!(cmd, Command::SetStatus { to: RequestedStatus::Status(s), .. } if s == t.status));
            }
            Err(e) => {
                assert!(!e.allowed.contains(&t.status), "{e:?}");
                assert!(!e.detail.is_empty());
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
