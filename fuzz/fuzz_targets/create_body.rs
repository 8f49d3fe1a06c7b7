//! A REST create body: any bytes, parsed the way `POST /api/v1/tickets` parses them (serde_path_to_error, so
//! the error names the field), then validated. Whatever the bytes: a ticket or an error with a message, never
//! a panic. A ticket the validation accepts keeps its promises (ids of 1–255 characters, timestamps within
//! 0..=MAX_TIMESTAMP, timeout > 0, retry counts ≥ 0), survives a JSON round trip unchanged (it is stored and
//! answered as JSON), and its SLA schedule and compensation ticket compute without overflow.
#![no_main]

use actors::compensation::{compensation_ticket, CompensationRequest};
use actors::sla::{self, SlaPolicy};
use actors::validation::{NewTicket, MAX_ID_LEN, MAX_TIMESTAMP};
use actors::Ticket;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_700_000_000_000;

fn parse(body: &[u8]) -> Result<NewTicket, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

fn id_ok(id: &str) -> bool {
    !id.trim().is_empty() && id.chars().count() <= MAX_ID_LEN
}

fn check(t: &Ticket) {
    let s = &t.spec;
    for id in [&t.ticket_id, &s.plan_id, &s.intent_id, &s.decision_id, &s.task_id] {
        assert!(id_ok(id), "id {id:?} accepted");
    }
    assert!(s.dependencies.iter().chain(&s.required_capabilities).all(|d| id_ok(d)));
    assert!(!s.dependencies.contains(&t.ticket_id), "a ticket depends on itself");
    for ts in [Some(s.sla.deadline), Some(t.created_at), t.started_at, t.completed_at].into_iter().flatten() {
        assert!((0..=MAX_TIMESTAMP).contains(&ts), "timestamp {ts} accepted");
    }
    assert!(s.sla.timeout_ms > 0 && s.sla.max_retries >= 0 && t.retry_count >= 0 && s.schema_version >= 1);
    assert!(t.actual_duration_ms.unwrap_or(0) >= 0 && s.estimated_duration_ms.unwrap_or(0) >= 0);
}

fuzz_target!(|data: &[u8]| {
    let new = match parse(data) {
        Ok(new) => new,
        Err(message) => {
            assert!(!message.is_empty());
            return;
        }
    };
    let mut t = match new.validate(NOW, || "generated".into()) {
        Ok(valid) => valid.ticket,
        Err(e) => {
            assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
            return;
        }
    };
    check(&t);
    let json = serde_json::to_string(&t).expect("a ticket serializes");
    let mut back: Ticket = serde_json::from_str(&json).expect("a ticket reads back");
    // Free-form parameters are left out: serde_json (without `float_roundtrip`) may read a float back
    // one ulp off, which is the JSON library's documented trade-off, not the ticket's.
    back.spec.parameters = t.spec.parameters.clone();
    assert_eq!(back, t, "JSON round trip");
    let policy = SlaPolicy::default();
    sla::refresh(None, &mut t, &policy, NOW);
    let _ = sla::fire(&t, &policy, MAX_TIMESTAMP, Some(t.created_at));
    let req = CompensationRequest {
        original_ticket_id: t.ticket_id.clone(),
        reason: "fuzz".into(),
        compensation_action: None,
        parameters: None,
    };
    let comp = compensation_ticket(&t, &req, "fuzz-comp".into(), NOW);
    assert!((0..=MAX_TIMESTAMP).contains(&comp.spec.sla.deadline));
});
