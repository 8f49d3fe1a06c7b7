//! One actor per live ticket: the only writer of that ticket in this process.
//!
//! The actor loads its ticket when it starts (`ctx.wait`, so no message sees a half-loaded state), applies
//! commands through the pure status machine and SLA rules, and persists every change through the
//! [`PersistenceActor`](crate::system::persistence::PersistenceActor) before it answers and before it takes the next
//! message (`AtomicResponse`): its in-memory ticket is always the last committed one. Every answer carries the
//! ticket's next SLA instant (`wake`), which the shard keeps in its wake-up index.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use actix::prelude::*;
use futures::future::FutureExt;

use crate::domain::compensation::{compensation_ticket, CompensationRequest};
use crate::domain::enums::{RequestedStatus, TicketStatus};
use crate::domain::events::{EventKind, TicketEvent};
use crate::domain::model::{Millis, Ticket};
use crate::domain::sla::{self};
use crate::domain::status::{self, Command, IllegalTransition, Outcome};
use crate::domain::validation::ValidTicket;
use crate::ports::store::{detached, StoreError, UnitConflict, UnitError, Write, WriteUnit};
use crate::ports::trace::ticket_traceparent;
use crate::system::change::{
    creation, event_of, needs_ready_check, ready_without_dependencies, sla_firing, Change, SlaRecord,
};
use crate::system::env::Env;
use crate::system::error::TicketError;

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
    /// Fire whatever SLA rule is due now (sent by the shard's wake-up index).
    SlaTick,
    /// Announce `ticket.ready` / `ticket.blocked` if the dependencies decided it (sent after a dependency
    /// finished, and after a PENDING spell with dependencies began).
    CheckReady,
    /// Stop (sent by the shard only when nothing else is queued).
    Passivate,
}

impl Request {
    /// A short name for spans and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Get => "get",
            Request::Create(_) => "create",
            Request::Apply { .. } => "apply",
            Request::Compensate(_) => "compensate",
            Request::Heartbeat => "heartbeat",
            Request::Progress { .. } => "progress",
            Request::SlaTick => "sla_tick",
            Request::CheckReady => "check_ready",
            Request::Passivate => "passivate",
        }
    }
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

/// An answer and the ticket's next SLA instant: `Some(None)` no timer, `None` unknown (keep what you have).
pub struct TicketReply {
    pub answer: ReplyResult,
    pub wake: Option<Option<Millis>>,
}

/// Message envelope for [`TicketActor`]: the request and who makes it (for events and, later, the audit trail).
#[derive(Message)]
#[rtype(result = "TicketReply")]
pub struct TicketMsg {
    pub req: Request,
    pub requested_by: Arc<str>,
    /// The caller's span: the actor's work on the request is its child.
    pub span: tracing::Span,
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
    /// Last heartbeat of the current attempt (memory only: heartbeat timeouts do not survive a restart).
    last_heartbeat: Option<Millis>,
    /// The span of the request being handled and its `traceparent` (requests are handled one at a time).
    span: tracing::Span,
    traceparent: Option<String>,
}

/// What a ticket request comes to: its [`Reply`], or why not.
pub type ReplyResult = Result<Reply, TicketError>;
type Step = ResponseActFuture<TicketActor, ReplyResult>;

fn ready(answer: ReplyResult) -> Step {
    Box::pin(fut::ready(answer))
}

impl TicketActor {
    pub fn new(id: String, env: Arc<Env>) -> Self {
        TicketActor {
            id,
            state: State::Loading,
            env,
            last_heartbeat: None,
            span: tracing::Span::none(),
            traceparent: None,
        }
    }

    /// The next instant this ticket needs the actor, as far as the actor knows.
    fn wake(&self) -> Option<Option<Millis>> {
        match &self.state {
            State::Live(t) => Some(sla::next_due(t, &self.env.sla, self.last_heartbeat)),
            State::Absent => Some(None),
            State::Loading | State::LoadFailed(_) => None,
        }
    }

    /// Persist `unit`; on success the actor's ticket becomes `next` and `events` are published. A conflict
    /// means another process wrote the row: reload it so the actor again holds the committed state.
    ///
    /// It goes through the one change pipeline ([`Change`]): the events' audit records and deliveries join the
    /// unit, and their effects are applied once it is committed.
    fn persist(
        &self,
        unit: WriteUnit,
        next: Ticket,
        reply: ReplyResult,
        events: Vec<TicketEvent>,
        sla: SlaRecord,
    ) -> Step {
        // The request's trace when spans are exported, else the ticket's own (its create request's trace id).
        let traceparent = self.traceparent.clone().or_else(|| ticket_traceparent(next.spec.trace_id.as_deref()));
        let change = Change::new(&self.env, &self.id, unit, events, sla, traceparent, &self.span);
        let env = Arc::clone(&self.env);
        let id = self.id.clone();
        let unit_span = self.span.clone();
        let fut = async move {
            match change.commit(&env, unit_span).await {
                Ok(()) => (reply, Some(next)),
                Err((UnitError::Conflict(c), effects)) => {
                    tracing::warn!(ticket_id = %id, conflict = %c, "write conflict; reloading the ticket");
                    let reload = {
                        let (store, id) = (Arc::clone(&env.store), id.clone());
                        detached(async move { store.get(&id).await }).await
                    };
                    match reload {
                        // Our own update, committed by an attempt whose answer was lost: success. (A create that
                        // meets its id is a repeat, answered below as such.)
                        Ok(Some(stored)) if stored == next && !matches!(reply, Ok(Reply::Created { .. })) => {
                            effects.apply(&env);
                            (reply, Some(stored))
                        }
                        Ok(Some(stored)) => {
                            let err = match (&reply, c) {
                                (Ok(Reply::Created { ticket, .. }), UnitConflict::AlreadyExists(_)) => {
                                    return (create_met(ticket, stored.clone()), Some(stored));
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
                Err((UnitError::Store(e), _)) => (Err(e.into()), None),
            }
        };
        Box::pin(fut.into_actor(self).map(|(answer, state), act, ctx| {
            if state.as_ref().is_some_and(needs_ready_check) {
                let span = act.span.clone();
                ctx.address().do_send(TicketMsg { req: Request::CheckReady, requested_by: Arc::from("system"), span });
            }
            if let Some(t) = state {
                if let State::Live(old) = &act.state {
                    if t.status != TicketStatus::Running || t.started_at != old.started_at {
                        act.last_heartbeat = None;
                    }
                }
                act.state = State::Live(t);
            }
            answer
        }))
    }

    fn event(&self, kind: EventKind, ticket: &Ticket, from: Option<&Ticket>, requested_by: &Arc<str>) -> TicketEvent {
        event_of(kind, ticket, from, requested_by)
    }

    fn ready_without_dependencies(&self, t: &mut Ticket) -> Option<TicketEvent> {
        ready_without_dependencies(&self.env, t)
    }

    /// Look at the dependencies of a PENDING ticket: all COMPLETED → `ticket.ready`; one FAILED, CANCELLED
    /// or compensated → `ticket.blocked`; otherwise nothing yet. The announcement is recorded in the ticket's
    /// `sla_state` (without a new version: the ticket itself did not change) so it is made once per spell.
    fn check_ready(&self, t: &Ticket) -> Step {
        if !needs_ready_check(t) {
            return ready(Ok(Reply::Ticket(t.clone())));
        }
        let store = Arc::clone(&self.env.store);
        let deps = t.spec.dependencies.clone();
        let fut = detached(async move { store.get_many(&deps).await });
        Box::pin(fut.into_actor(self).then(|found, act, _| {
            let State::Live(t) = &act.state else { return ready(Err(TicketError::NotFound(act.id.clone()))) };
            let t = t.clone();
            let found = match found {
                Ok(found) => found,
                Err(e) => return ready(Err(e.into())),
            };
            use TicketStatus::*;
            let blocked: Vec<&Ticket> =
                found.iter().filter(|d| matches!(d.status, Failed | Cancelled | Compensating | Compensated)).collect();
            let done = found.iter().filter(|d| d.status == Completed).count();
            let kind = if !blocked.is_empty() {
                EventKind::Blocked
            } else if done == t.spec.dependencies.len() {
                EventKind::Ready
            } else {
                return ready(Ok(Reply::Ticket(t)));
            };
            let mut next = t.clone();
            next.sla_state.ready_for = next.sla_state.pending_since;
            let mut event = act.event(kind, &next, None, &Arc::from("system"));
            event.at = act.env.clock.now_ms();
            if !blocked.is_empty() {
                let by: Vec<serde_json::Value> = blocked
                    .iter()
                    .map(|d| serde_json::json!({"ticket_id": d.ticket_id, "status": d.status.as_str()}))
                    .collect();
                event.details = serde_json::json!({ "blocked_by": by });
            }
            let unit = WriteUnit(vec![Write::Update { ticket: next.clone(), expected_version: t.version }]);
            act.persist(unit, next.clone(), Ok(Reply::Ticket(next)), vec![event], Vec::new())
        }))
    }

    fn create(&self, valid: ValidTicket, requested_by: &Arc<str>) -> Step {
        let (t, events) = creation(&self.env, valid, requested_by);
        let unit = WriteUnit(vec![Write::Insert(t.clone())]);
        self.persist(unit, t.clone(), Ok(Reply::Created { ticket: t, created: true }), events, Vec::new())
    }

    fn apply(&self, t: &Ticket, cmd: Command, expected_version: Option<i64>, requested_by: &Arc<str>) -> Step {
        if let Some(expected) = expected_version.filter(|v| *v != t.version) {
            let err = TicketError::VersionMismatch { ticket_id: t.ticket_id.clone(), expected, actual: t.version };
            return ready(Err(err));
        }
        let now = self.env.clock.now_ms();
        match status::apply(t, &cmd, now) {
            Err(e) => {
                let result_of_attempt = matches!(
                    cmd,
                    Command::SetStatus {
                        to: RequestedStatus::Status(TicketStatus::Completed | TicketStatus::Failed),
                        ..
                    }
                );
                if result_of_attempt && t.sla_state.timed_out_attempt.is_some() {
                    // A worker reports the result of an attempt the SLA engine already gave up on: refuse, record.
                    tracing::warn!(ticket_id = %t.ticket_id, status = %t.status, actor = %requested_by, "late result refused");
                    let mut event = self.event(EventKind::LateResultRefused, t, Some(t), requested_by);
                    event.at = now;
                    event.details = serde_json::json!({ "requested": e.to });
                    self.env.events.publish(event);
                }
                ready(Err(e.into()))
            }
            Ok(Outcome::Unchanged) => ready(Ok(Reply::Ticket(t.clone()))),
            Ok(Outcome::Changed(mut next)) => {
                sla::refresh(Some(t), &mut next, &self.env.sla, now);
                let mut events = vec![self.event(TicketEvent::status_kind(t, &next), &next, Some(t), requested_by)];
                events.extend(self.ready_without_dependencies(&mut next));
                let unit = WriteUnit(vec![Write::Update { ticket: next.clone(), expected_version: t.version }]);
                self.persist(unit, next.clone(), Ok(Reply::Ticket(next)), events, Vec::new())
            }
        }
    }

    fn compensate(&self, t: &Ticket, req: CompensationRequest, requested_by: &Arc<str>) -> Step {
        let compensating = matches!(t.status, TicketStatus::Compensating | TicketStatus::Compensated);
        if let Some(existing) = t.compensation_ticket_id.clone().filter(|_| compensating) {
            // Already compensated or compensating: answer with the existing compensation ticket (idempotent).
            let env = Arc::clone(&self.env);
            let original = t.clone();
            let fut = detached(async move {
                match env.store.get(&existing).await {
                    Ok(Some(compensation)) => Ok(Reply::Compensated { original, compensation, created: false }),
                    Ok(None) => Err(TicketError::NotFound(existing)),
                    Err(e) => Err(e.into()),
                }
            });
            return Box::pin(fut.into_actor(self));
        }
        let now = self.env.clock.now_ms();
        let mut comp = compensation_ticket(t, &req, uuid::Uuid::new_v4().to_string(), now);
        sla::refresh(None, &mut comp, &self.env.sla, now);
        let cmd = Command::Compensate { compensation_ticket_id: comp.ticket_id.clone() };
        match status::apply(t, &cmd, now) {
            Err(e) => ready(Err(e.into())),
            Ok(Outcome::Unchanged) => unreachable!("compensation always changes the ticket"),
            Ok(Outcome::Changed(mut next)) => {
                sla::refresh(Some(t), &mut next, &self.env.sla, now);
                let unit = WriteUnit(vec![
                    Write::Insert(comp.clone()),
                    Write::Update { ticket: next.clone(), expected_version: t.version },
                ]);
                let events = vec![
                    self.event(EventKind::Created, &comp, None, requested_by),
                    self.event(TicketEvent::status_kind(t, &next), &next, Some(t), requested_by),
                ];
                let reply = Ok(Reply::Compensated { original: next.clone(), compensation: comp, created: true });
                self.persist(unit, next, reply, events, Vec::new())
            }
        }
    }

    /// Fire the SLA rules that are due, as one committed change.
    fn sla_tick(&self, t: &Ticket) -> Step {
        let Some((next, events, record)) = sla_firing(&self.env, t, self.last_heartbeat) else {
            return ready(Ok(Reply::Ticket(t.clone())));
        };
        let unit = WriteUnit(vec![Write::Update { ticket: next.clone(), expected_version: t.version }]);
        self.persist(unit, next.clone(), Ok(Reply::Ticket(next)), events, record)
    }

    fn dispatch(&mut self, req: Request, requested_by: Arc<str>, ctx: &mut Context<Self>) -> Step {
        if let Request::Passivate = req {
            ctx.stop();
            return ready(Ok(Reply::Stopped));
        }
        match (&self.state, req) {
            (State::Loading, _) => ready(Err(StoreError::Unavailable("ticket still loading".into()).into())),
            (State::LoadFailed(e), _) => ready(Err(e.clone().into())),
            (State::Absent, Request::Create(valid)) => self.create(valid, &requested_by),
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
                self.apply(&t, cmd, expected_version, &requested_by)
            }
            (State::Live(t), Request::Compensate(req)) => {
                let t = t.clone();
                self.compensate(&t, req, &requested_by)
            }
            (State::Live(t), Request::SlaTick) => {
                let t = t.clone();
                self.sla_tick(&t)
            }
            (State::Live(t), Request::CheckReady) => {
                let t = t.clone();
                self.check_ready(&t)
            }
            (State::Live(t), Request::Heartbeat | Request::Progress { .. }) if t.status != TicketStatus::Running => {
                ready(Err(IllegalTransition {
                    detail: format!(
                        "ticket {} is {}, not RUNNING: heartbeats and progress are for running tickets",
                        t.ticket_id, t.status
                    ),
                    from: t.status,
                    to: "RUNNING".into(),
                    allowed: status::allowed_targets(t),
                }
                .into()))
            }
            (State::Live(t), Request::Heartbeat) => {
                let answer = Ok(Reply::Ticket(t.clone()));
                self.last_heartbeat = Some(self.env.clock.now_ms());
                ready(answer)
            }
            (State::Live(t), Request::Progress { progress, message }) => {
                let now = self.env.clock.now_ms();
                let mut event = self.event(EventKind::Progress, t, Some(t), &requested_by);
                event.at = now;
                event.details = serde_json::json!({ "progress": progress, "message": message });
                self.env.events.publish(event);
                let answer = Ok(Reply::Ticket(t.clone()));
                self.last_heartbeat = Some(now);
                ready(answer)
            }
            (_, Request::Passivate) => unreachable!("handled above"),
        }
    }
}

impl Actor for TicketActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.state, State::Loading) {
            return;
        }
        let store = Arc::clone(&self.env.store);
        let id = self.id.clone();
        let load = detached(async move { store.get(&id).await }).boxed();
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
    type Result = AtomicResponse<Self, TicketReply>;

    fn handle(&mut self, TicketMsg { req, requested_by, span }: TicketMsg, ctx: &mut Context<Self>) -> Self::Result {
        // Reads and passivation get no span of their own (they change nothing and are the most frequent).
        self.span = match &req {
            Request::Get | Request::Passivate => tracing::Span::none(),
            _ if !self.env.spans => tracing::Span::none(),
            other => {
                let spec = match (other, &self.state) {
                    (Request::Create(valid), _) => Some(&valid.ticket.spec),
                    (_, State::Live(t)) => Some(&t.spec),
                    _ => None,
                };
                handle_span(&span, &self.id, other.name(), &requested_by, spec)
            }
        };
        self.traceparent = (self.env.traceparent)(&self.span);
        let span = self.span.clone();
        let step = span.in_scope(|| self.dispatch(req, requested_by, ctx));
        let step = step.map(|answer, act, _| {
            // Done: the span ends when the last handle goes (a long-lived actor must not keep it open).
            act.span = tracing::Span::none();
            act.traceparent = None;
            TicketReply { answer, wake: act.wake() }
        });
        AtomicResponse::new(Box::pin(InSpan { span, fut: step }))
    }
}

/// An actor future polled inside a span (tracing's `Instrument` is for std futures): what the actor logs
/// while it handles a request belongs to the request's span.
struct InSpan<F> {
    span: tracing::Span,
    fut: F,
}

impl<A: Actor, F: ActorFuture<A> + Unpin> ActorFuture<A> for InSpan<F> {
    type Output = F::Output;

    fn poll(
        mut self: Pin<&mut Self>,
        act: &mut A,
        ctx: &mut A::Context,
        task: &mut std::task::Context<'_>,
    ) -> Poll<Self::Output> {
        let this = &mut *self;
        let _entered = this.span.enter();
        Pin::new(&mut this.fut).poll(act, ctx, task)
    }
}

/// The span of one request's handling (`ticket.handle`), a child of the caller's.
pub(crate) fn handle_span(
    parent: &tracing::Span,
    id: &str,
    request: &'static str,
    requested_by: &str,
    spec: Option<&crate::domain::model::TicketSpec>,
) -> tracing::Span {
    let span = tracing::info_span!(
        parent: parent,
        "ticket.handle",
        ticket_id = %id,
        request,
        actor = %requested_by,
        plan_id = tracing::field::Empty,
        intent_id = tracing::field::Empty,
    );
    if let Some(spec) = spec {
        span.record("plan_id", spec.plan_id.as_str()).record("intent_id", spec.intent_id.as_str());
    }
    span
}

/// The answer to a create whose insert met a stored ticket of the same id: the same request again is an
/// idempotent success (the stored ticket, `created: false`); a different ticket is `AlreadyExists`.
pub(crate) fn create_met(attempted: &Ticket, stored: Ticket) -> ReplyResult {
    if stored.same_request(attempted, false) {
        Ok(Reply::Created { ticket: stored, created: false })
    } else {
        Err(TicketError::AlreadyExists(Box::new(stored)))
    }
}
