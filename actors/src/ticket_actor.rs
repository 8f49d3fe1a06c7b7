//! One actor per live ticket: the only writer of that ticket in this process.
//!
//! The actor loads its ticket when it starts (`ctx.wait`, so no message sees a half-loaded state), applies
//! commands through the pure status machine, and persists every change through the
//! [`PersistenceActor`](crate::persistence::PersistenceActor) before it answers and before it takes the next
//! message (`AtomicResponse`): its in-memory ticket is always the last committed one.

use std::sync::Arc;

use actix::prelude::*;
use futures::future::FutureExt;

use crate::clock::Clock;
use crate::compensation::{compensation_ticket, CompensationRequest};
use crate::enums::TicketStatus;
use crate::error::TicketError;
use crate::events::{EventBus, TicketEvent};
use crate::metrics::ActorMetrics;
use crate::model::Ticket;
use crate::persistence::{Persist, PersistenceActor};
use crate::status::{self, Command, IllegalTransition, Outcome};
use crate::store::{StoreError, TicketStore, UnitConflict, UnitError, Write, WriteUnit};
use crate::validation::ValidTicket;

/// What every ticket actor shares.
pub struct Env {
    pub store: Arc<dyn TicketStore>,
    pub persistence: Addr<PersistenceActor>,
    pub clock: Arc<dyn Clock>,
    pub metrics: ActorMetrics,
    pub events: EventBus,
}

/// A request for one ticket.
#[derive(Debug, Clone)]
// The ticket is the payload; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Request {
    Get,
    Create(ValidTicket),
    /// A status-machine command; `expected_version` is the client's If-Match.
    Apply {
        cmd: Command,
        expected_version: Option<i64>,
    },
    Compensate(CompensationRequest),
    /// A worker's liveness signal for a RUNNING ticket.
    Heartbeat,
    /// A worker's progress report for a RUNNING ticket (announced to watchers, not stored).
    Progress {
        progress: f64,
        message: Option<String>,
    },
    /// Stop (sent by the shard only when nothing else is queued).
    Passivate,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone)]
// The ticket is the payload; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    Ticket(Ticket),
    Created {
        ticket: Ticket,
        created: bool,
    },
    /// `created` is false when the ticket was already being compensated (idempotent repeat).
    Compensated {
        original: Ticket,
        compensation: Ticket,
        created: bool,
    },
    Stopped,
}

/// Message envelope for [`TicketActor`]: the request and who makes it (for events and, later, the audit trail).
#[derive(Message)]
#[rtype(result = "Result<Reply, TicketError>")]
pub struct TicketMsg {
    pub req: Request,
    pub actor: Arc<str>,
}

// The ticket is the payload; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum State {
    Loading,
    Absent,
    Live(Ticket),
    LoadFailed(StoreError),
}

/// See the module docs.
pub struct TicketActor {
    id: String,
    state: State,
    env: Arc<Env>,
}

type Answer = Result<Reply, TicketError>;

impl TicketActor {
    pub fn new(id: String, env: Arc<Env>) -> Self {
        TicketActor { id, state: State::Loading, env }
    }

    /// Persist `unit`; on success the actor's ticket becomes `next` and `events` are published. A conflict
    /// means another process wrote the row: reload it so the actor again holds the committed state.
    fn persist(
        &self,
        unit: WriteUnit,
        next: Ticket,
        reply: Answer,
        events: Vec<TicketEvent>,
    ) -> AtomicResponse<Self, Answer> {
        let env = Arc::clone(&self.env);
        let id = self.id.clone();
        let publish = move |env: &Env| events.into_iter().for_each(|e| env.events.publish(e));
        let fut = async move {
            match env.persistence.send(Persist(unit)).await {
                Ok(Ok(())) => {
                    publish(&env);
                    (reply, Some(next))
                }
                Ok(Err(UnitError::Conflict(c))) => {
                    tracing::warn!(ticket_id = %id, conflict = %c, "write conflict; reloading the ticket");
                    match env.store.get(&id).await {
                        // Our own write, committed by an attempt whose answer was lost: success.
                        Ok(Some(stored)) if stored == next => {
                            publish(&env);
                            (reply, Some(stored))
                        }
                        Ok(Some(stored)) => {
                            let err = match (&reply, c) {
                                (Ok(Reply::Created { ticket, .. }), UnitConflict::AlreadyExists(_)) => {
                                    if stored.same_request(ticket, false) {
                                        let answer = Ok(Reply::Created { ticket: stored.clone(), created: false });
                                        return (answer, Some(stored));
                                    }
                                    TicketError::AlreadyExists(Box::new(stored.clone()))
                                }
                                _ => TicketError::VersionMismatch {
                                    ticket_id: id,
                                    expected: next.version - 1,
                                    actual: stored.version,
                                },
                            };
                            (Err(err), Some(stored))
                        }
                        Ok(None) => (Err(TicketError::NotFound(id)), None),
                        Err(e) => (Err(e.into()), None),
                    }
                }
                Ok(Err(UnitError::Store(e))) => (Err(e.into()), None),
                Err(_) => (Err(StoreError::Unavailable("persistence actor unreachable".into()).into()), None),
            }
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(|(answer, state), act, _| {
            if let Some(t) = state {
                act.state = State::Live(t);
            }
            answer
        })))
    }

    fn event(&self, kind: &'static str, ticket: &Ticket, from: Option<&Ticket>, actor: &Arc<str>) -> TicketEvent {
        TicketEvent {
            kind,
            ticket: Arc::new(ticket.clone()),
            from: from.map(|f| f.status),
            actor: Arc::clone(actor),
            at: ticket.updated_at,
            details: serde_json::Value::Null,
        }
    }

    fn apply(
        &self,
        t: &Ticket,
        cmd: Command,
        expected_version: Option<i64>,
        actor: &Arc<str>,
    ) -> AtomicResponse<Self, Answer> {
        if let Some(expected) = expected_version.filter(|v| *v != t.version) {
            let err = TicketError::VersionMismatch { ticket_id: t.ticket_id.clone(), expected, actual: t.version };
            return ready(Err(err));
        }
        match status::apply(t, &cmd, self.env.clock.now_ms()) {
            Err(e) => ready(Err(e.into())),
            Ok(Outcome::Unchanged) => ready(Ok(Reply::Ticket(t.clone()))),
            Ok(Outcome::Changed(next)) => {
                let unit = WriteUnit(vec![Write::Update { ticket: next.clone(), expected_version: t.version }]);
                let event = self.event(TicketEvent::status_kind(t, &next), &next, Some(t), actor);
                self.persist(unit, next.clone(), Ok(Reply::Ticket(next)), vec![event])
            }
        }
    }

    fn compensate(&self, t: &Ticket, req: CompensationRequest, actor: &Arc<str>) -> AtomicResponse<Self, Answer> {
        let compensating = matches!(t.status, TicketStatus::Compensating | TicketStatus::Compensated);
        if let Some(existing) = t.compensation_ticket_id.clone().filter(|_| compensating) {
            // Already compensated or compensating: answer with the existing compensation ticket (idempotent).
            let env = Arc::clone(&self.env);
            let original = t.clone();
            let fut = async move {
                match env.store.get(&existing).await {
                    Ok(Some(compensation)) => Ok(Reply::Compensated { original, compensation, created: false }),
                    Ok(None) => Err(TicketError::NotFound(existing)),
                    Err(e) => Err(e.into()),
                }
            };
            return AtomicResponse::new(Box::pin(fut.into_actor(self)));
        }
        let now = self.env.clock.now_ms();
        let comp = compensation_ticket(t, &req, uuid::Uuid::new_v4().to_string(), now);
        let cmd = Command::Compensate { compensation_ticket_id: comp.ticket_id.clone() };
        match status::apply(t, &cmd, now) {
            Err(e) => ready(Err(e.into())),
            Ok(Outcome::Unchanged) => unreachable!("compensation always changes the ticket"),
            Ok(Outcome::Changed(next)) => {
                let unit = WriteUnit(vec![
                    Write::Insert(comp.clone()),
                    Write::Update { ticket: next.clone(), expected_version: t.version },
                ]);
                let events = vec![
                    self.event("ticket.created", &comp, None, actor),
                    self.event(TicketEvent::status_kind(t, &next), &next, Some(t), actor),
                ];
                let reply = Ok(Reply::Compensated { original: next.clone(), compensation: comp, created: true });
                self.persist(unit, next, reply, events)
            }
        }
    }
}

fn ready(answer: Answer) -> AtomicResponse<TicketActor, Answer> {
    AtomicResponse::new(Box::pin(actix::fut::ready(answer)))
}

impl Actor for TicketActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.env.store);
        let id = self.id.clone();
        let load = async move { store.get(&id).await }.boxed();
        ctx.wait(load.into_actor(self).map(|loaded, act, _| {
            act.state = match loaded {
                Ok(Some(t)) => State::Live(t),
                Ok(None) => State::Absent,
                Err(e) => {
                    tracing::warn!(ticket_id = %act.id, error = %e, "could not load ticket");
                    State::LoadFailed(e)
                }
            };
        }));
    }
}

impl Handler<TicketMsg> for TicketActor {
    type Result = AtomicResponse<Self, Answer>;

    fn handle(&mut self, TicketMsg { req, actor }: TicketMsg, ctx: &mut Context<Self>) -> Self::Result {
        if let Request::Passivate = req {
            ctx.stop();
            return ready(Ok(Reply::Stopped));
        }
        match (&self.state, req) {
            (State::Loading, _) => ready(Err(StoreError::Unavailable("ticket still loading".into()).into())),
            (State::LoadFailed(e), _) => ready(Err(e.clone().into())),
            (State::Absent, Request::Create(valid)) => {
                let t = valid.ticket;
                let unit = WriteUnit(vec![Write::Insert(t.clone())]);
                let event = self.event("ticket.created", &t, None, &actor);
                self.persist(unit, t.clone(), Ok(Reply::Created { ticket: t, created: true }), vec![event])
            }
            (State::Absent, _) => ready(Err(TicketError::NotFound(self.id.clone()))),
            (State::Live(t), Request::Get) => ready(Ok(Reply::Ticket(t.clone()))),
            (State::Live(t), Request::Create(valid)) => {
                if t.same_request(&valid.ticket, valid.created_at_given) {
                    ready(Ok(Reply::Created { ticket: t.clone(), created: false }))
                } else {
                    ready(Err(TicketError::AlreadyExists(Box::new(t.clone()))))
                }
            }
            (State::Live(t), Request::Apply { cmd, expected_version }) => {
                let t = t.clone();
                self.apply(&t, cmd, expected_version, &actor)
            }
            (State::Live(t), Request::Compensate(req)) => {
                let t = t.clone();
                self.compensate(&t, req, &actor)
            }
            (State::Live(t), Request::Heartbeat | Request::Progress { .. }) if t.status != TicketStatus::Running => {
                ready(Err(IllegalTransition {
                    detail: format!(
                        "ticket {} is {}, not RUNNING: heartbeats and progress are for running tickets",
                        t.ticket_id, t.status
                    ),
                    from: t.status,
                    to: "RUNNING".into(),
                    allowed: crate::status::allowed_targets(t),
                }
                .into()))
            }
            (State::Live(t), Request::Heartbeat) => ready(Ok(Reply::Ticket(t.clone()))),
            (State::Live(t), Request::Progress { progress, message }) => {
                let mut event = self.event("ticket.progress", t, Some(t), &actor);
                event.at = self.env.clock.now_ms();
                event.details = serde_json::json!({ "progress": progress, "message": message });
                self.env.events.publish(event);
                ready(Ok(Reply::Ticket(t.clone())))
            }
            (_, Request::Passivate) => unreachable!("handled above"),
        }
    }
}
