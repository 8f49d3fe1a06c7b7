//! The one change pipeline. Whoever commits a change of a ticket — its actor, or its shard for a ticket
//! without a live actor (a create, an SLA firing) — builds a [`Change`] and calls [`Change::commit`]:
//!
//! 1. [`Change::new`] joins to the ticket's writes one audit record per event and one webhook delivery per
//!    matching subscription, so the change, its audit trail and its deliveries commit in one transaction (a
//!    crash can neither lose nor invent one), and lists what must happen after the commit as data
//!    ([`Effect`]): metrics, the readiness check of a finished ticket's dependents, the events to watchers.
//! 2. [`Change::commit`] sends the unit to the ticket's persistence actor (always the same one, so a ticket's
//!    writes stay in order) and, once it is committed, publishes a ticket actor's new state for reads
//!    ([`crate::system::snapshots`]) and applies the effects in order. Nothing is announced for a change that
//!    did not commit.
//!
//! The builders of the changes both committers make are here too: [`creation`], [`sla_firing`].

use std::sync::Arc;

use actix::prelude::*;

use crate::domain::enums::TicketStatus;
use crate::domain::events::{EventKind, TicketEvent};
use crate::domain::history::AuditEvent;
use crate::domain::model::{Millis, Ticket};
use crate::domain::sla;
use crate::domain::subscription::deliveries_for;
use crate::domain::validation::ValidTicket;
use crate::ports::store::{UnitError, Write, WriteUnit};
use crate::system::env::Env;
use crate::system::persistence::{persist, PersistenceActor};
use crate::system::routing::slot_of;

/// SLA bookkeeping to record once a firing round is committed: (kind, priority, task type, lateness ms).
pub(crate) type SlaRecord = Vec<(&'static str, &'static str, &'static str, Millis)>;

/// Something to do once a change is committed (and only then).
#[derive(Debug)]
pub(crate) enum Effect {
    /// An SLA rule fired: count it, and how late it fired.
    SlaFired { kind: &'static str, priority: &'static str, task_type: &'static str, lateness_ms: Millis },
    /// A webhook delivery was written: count it.
    DeliveryEnqueued { event_type: String, subscription: String },
    /// A ticket finished: its dependents may be ready (or blocked) now; the router checks them, in the trace
    /// of `span`.
    CheckDependents { ticket_id: String, span: tracing::Span },
    /// Announce an event to watchers.
    Publish(TicketEvent),
}

/// The effects of one change, in the order they are applied.
#[derive(Debug, Default)]
pub(crate) struct Effects(Vec<Effect>);

impl Effects {
    /// Apply every effect, in order. Call only once the change is committed.
    pub(crate) fn apply(self, env: &Env) {
        for effect in self.0 {
            match effect {
                Effect::SlaFired { kind, priority, task_type, lateness_ms } => {
                    env.metrics.sla_events.with_label_values(&[kind, priority, task_type]).inc();
                    env.metrics.sla_lateness.observe(lateness_ms.max(0) as f64 / 1000.0);
                }
                Effect::DeliveryEnqueued { event_type, subscription } => {
                    env.metrics.webhooks.enqueued.with_label_values(&[&event_type, &subscription]).inc();
                }
                Effect::CheckDependents { ticket_id, span } => {
                    let _ = env.readiness.send((ticket_id, span));
                }
                Effect::Publish(event) => env.events.publish(event),
            }
        }
    }
}

/// A change of one ticket, ready to commit: its unit of writes and what to do once it is committed.
#[derive(Debug)]
pub(crate) struct Change {
    ticket_id: String,
    unit: WriteUnit,
    effects: Effects,
    /// The ticket's state once committed, published to [`Env::snapshots`] before the effects (a ticket
    /// actor's change; a shard's change of a ticket without an actor has none).
    snapshot: Option<Arc<Ticket>>,
}

impl Change {
    /// The change of ticket `ticket_id` made of `unit` (its own writes: an insert, an update, or both tickets of
    /// a compensation) and `events` (with the SLA firings that made them, for the metrics). Audit records and
    /// deliveries carry `traceparent`; the dependents' check joins `span`.
    pub(crate) fn new(
        env: &Env,
        ticket_id: &str,
        mut unit: WriteUnit,
        events: Vec<TicketEvent>,
        sla: SlaRecord,
        traceparent: Option<String>,
        span: &tracing::Span,
    ) -> Change {
        unit.0.extend(events.iter().map(|e| Write::Audit(AuditEvent::of(e, traceparent.clone()))));
        let mut effects: Vec<Effect> = sla
            .into_iter()
            .map(|(kind, priority, task_type, lateness_ms)| Effect::SlaFired { kind, priority, task_type, lateness_ms })
            .collect();
        let subscriptions = env.webhooks.snapshot();
        for e in &events {
            for mut d in deliveries_for(e, &subscriptions) {
                d.traceparent = traceparent.clone();
                let subscription = d.subscription_id.clone().unwrap_or_else(|| "metadata.webhook_url".into());
                effects.push(Effect::DeliveryEnqueued { event_type: d.event_type.clone(), subscription });
                unit.0.push(Write::Delivery(d));
            }
        }
        for e in events {
            let finished =
                matches!(e.ticket.status, TicketStatus::Completed | TicketStatus::Failed | TicketStatus::Cancelled);
            if finished && e.from.is_some_and(|f| f != e.ticket.status) {
                effects.push(Effect::CheckDependents { ticket_id: e.ticket.ticket_id.clone(), span: span.clone() });
            }
            effects.push(Effect::Publish(e));
        }
        Change { ticket_id: ticket_id.to_owned(), unit, effects: Effects(effects), snapshot: None }
    }

    /// Once committed, publish `ticket` as its live snapshot (before the events go out).
    pub(crate) fn publishing(mut self, ticket: Arc<Ticket>) -> Change {
        self.snapshot = Some(ticket);
        self
    }

    /// Commit the unit through the ticket's persistence actor, in `span`; once committed, apply the effects.
    /// A failed commit hands them back unapplied: a conflict may yet turn out to be this very change, committed
    /// by an attempt whose answer was lost (the caller reads the row and decides).
    pub(crate) async fn commit(self, env: &Env, span: tracing::Span) -> Result<(), (UnitError, Effects)> {
        let Change { ticket_id, unit, effects, snapshot } = self;
        match persist(writer_of(env, &ticket_id), unit, span).await {
            Ok(()) => {
                if let Some(t) = &snapshot {
                    env.snapshots.publish(t);
                }
                effects.apply(env);
                Ok(())
            }
            Err(e) => Err((e, effects)),
        }
    }
}

/// The persistence actor that writes ticket `id` (always the same one, so a ticket's writes stay in order).
fn writer_of<'a>(env: &'a Env, id: &str) -> &'a Addr<PersistenceActor> {
    &env.persistence[slot_of(id, env.persistence.len())]
}

/// A validated new ticket as it is inserted, and its events: `ticket.created`, and `ticket.ready` when it
/// is PENDING without dependencies. (Ticket actors and shards both
/// commit it.)
pub(crate) fn creation(env: &Env, valid: ValidTicket, requested_by: &Arc<str>) -> (Ticket, Vec<TicketEvent>) {
    let now = env.clock.now_ms();
    let mut t = valid.ticket;
    sla::refresh(None, &mut t, &env.sla, now);
    t.sla_state.ready_for = None;
    if t.spec.sla.deadline <= now && matches!(t.status, TicketStatus::Pending | TicketStatus::Running) {
        tracing::warn!(ticket_id = %t.ticket_id, deadline = t.spec.sla.deadline, "ticket created past its deadline");
    }
    let mut events = vec![event_of(EventKind::Created, &t, None, requested_by)];
    events.extend(ready_without_dependencies(env, &mut t));
    (t, events)
}

pub(crate) fn event_of(
    kind: EventKind,
    ticket: &Ticket,
    from: Option<&Ticket>,
    requested_by: &Arc<str>,
) -> TicketEvent {
    TicketEvent {
        kind,
        ticket: Arc::new(ticket.clone()),
        from: from.map(|f| f.status),
        actor: Arc::clone(requested_by),
        at: ticket.updated_at,
        details: serde_json::Value::Null,
    }
}

/// A PENDING ticket without dependencies is ready as soon as its spell begins: mark it announced and
/// return the `ticket.ready` event, to commit with the change that made it PENDING.
pub(crate) fn ready_without_dependencies(env: &Env, t: &mut Ticket) -> Option<TicketEvent> {
    if !needs_announcement(t) || !t.spec.dependencies.is_empty() {
        return None;
    }
    t.sla_state.ready_for = t.sla_state.pending_since;
    let mut event = event_of(EventKind::Ready, t, None, &Arc::from("system"));
    event.at = env.clock.now_ms();
    Some(event)
}

/// What firing the SLA rules of `t` that are due now commits: the ticket after, its events, and what to record
/// in the metrics once committed. None when nothing is due. (Ticket actors and shards both commit
/// it.)
pub(crate) fn sla_firing(
    env: &Env,
    t: &Ticket,
    heartbeat: Option<Millis>,
) -> Option<(Ticket, Vec<TicketEvent>, SlaRecord)> {
    let now = env.clock.now_ms();
    let (mut next, firings) = sla::fire(t, &env.sla, now, heartbeat)?;
    let system: Arc<str> = Arc::from(sla::SLA_ACTOR);
    let mut events = Vec::with_capacity(firings.len() + 1);
    let mut record = Vec::with_capacity(firings.len());
    for f in firings {
        tracing::debug!(ticket_id = %t.ticket_id, event = f.event.as_str(), due = f.due, late_ms = now - f.due, "SLA rule fired");
        record.push((f.kind.label(), t.spec.priority.as_str(), t.spec.task_type.as_str(), now - f.due));
        events.push(TicketEvent {
            kind: f.event,
            ticket: Arc::new(f.ticket),
            from: Some(f.from),
            actor: Arc::clone(&system),
            at: now,
            details: f.details,
        });
    }
    events.extend(ready_without_dependencies(env, &mut next));
    Some((next, events, record))
}

/// Not yet announced ready or blocked for the current PENDING spell.
fn needs_announcement(t: &Ticket) -> bool {
    t.status == TicketStatus::Pending && t.sla_state.ready_for != t.sla_state.pending_since
}

/// A PENDING ticket with dependencies whose readiness was not announced for this spell.
pub(crate) fn needs_ready_check(t: &Ticket) -> bool {
    needs_announcement(t) && !t.spec.dependencies.is_empty()
}
