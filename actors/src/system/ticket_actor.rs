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
use tokio::sync::oneshot;

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

/// Where the reply to a request goes: a channel typed by the request, so a caller gets exactly the reply its
/// request has (a create its [`Created`], a compensation its [`Compensated`], the rest the ticket).
pub type ReplyTo<T> = oneshot::Sender<Result<T, TicketError>>;

/// A request for one ticket, with the channel its reply goes to.
#[derive(Debug)]
// The ticket is the payload; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Request {
    Get(ReplyTo<Ticket>),
    Create(ValidTicket, ReplyTo<Created>),
    /// A status-machine command; `expected_version` is the client's If-Match; `details` go into the details
    /// of the event the change records.
    Apply {
        cmd: Command,
        expected_version: Option<i64>,
        details: Option<serde_json::Value>,
        reply: ReplyTo<Ticket>,
    },
    Compensate(CompensationRequest, ReplyTo<Compensated>),
    /// A worker's liveness signal for a RUNNING ticket.
    Heartbeat(ReplyTo<Ticket>),
    /// A worker's progress report for a RUNNING ticket (announced to watchers, not stored).
    Progress {
        progress: f64,
        message: Option<String>,
        reply: ReplyTo<Ticket>,
    },
    /// Fire whatever SLA rule is due now (sent by the shard's wake-up index).
    SlaTick(ReplyTo<Ticket>),
    /// Announce `ticket.ready` / `ticket.blocked` if the dependencies decided it (sent after a dependency
    /// finished, and after a PENDING spell with dependencies began).
    CheckReady(ReplyTo<Ticket>),
    /// Stop (sent by the shard only when nothing else is queued). Nobody waits for it.
    Passivate,
}

impl Request {
    /// A short name for spans and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Get(_) => "get",
            Request::Create(..) => "create",
            Request::Apply { .. } => "apply",
            Request::Compensate(..) => "compensate",
            Request::Heartbeat(_) => "heartbeat",
            Request::Progress { .. } => "progress",
            Request::SlaTick(_) => "sla_tick",
            Request::CheckReady(_) => "check_ready",
            Request::Passivate => "passivate",
        }
    }

    /// Answer the request with `err`, whatever it asked.
    pub(crate) fn fail(self, err: TicketError) -> Answer {
        let answered = Answered::of_error(&err);
        let deliver = match self {
            Request::Get(tx)
            | Request::Apply { reply: tx, .. }
            | Request::Heartbeat(tx)
            | Request::Progress { reply: tx, .. }
            | Request::SlaTick(tx)
            | Request::CheckReady(tx) => Deliver::new(tx, Err(err)),
            Request::Create(_, tx) => Deliver::new(tx, Err(err)),
            Request::Compensate(_, tx) => Deliver::new(tx, Err(err)),
            Request::Passivate => Deliver::nobody(),
        };
        Answer { answered, deliver }
    }
}

/// The reply to a create: the ticket, and whether this request created it (false: the same ticket was already
/// there, an idempotent repeat).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Created {
    /// Shared with the shard's fresh copy of a new ticket ([`crate::system::fresh`]), so neither is a copy.
    pub ticket: Arc<Ticket>,
    pub created: bool,
}

/// The reply to a compensation request: the original ticket (now COMPENSATING) and its compensation ticket;
/// `created` is false when the ticket was already being compensated (idempotent repeat).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Compensated {
    pub original: Ticket,
    pub compensation: Ticket,
    pub created: bool,
}

/// What the shard needs to know of a reply (the reply itself goes to the caller): whether the actor is worth
/// keeping, and whether an SLA tick must be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Ok,
    /// The ticket does not exist.
    NotFound,
    /// The store failed (the request may succeed later).
    StoreFailed,
    /// Refused for any other reason (illegal transition, version mismatch, …).
    Refused,
}

impl Answered {
    fn of<T>(result: &Result<T, TicketError>) -> Self {
        result.as_ref().err().map_or(Answered::Ok, Answered::of_error)
    }

    fn of_error(err: &TicketError) -> Self {
        match err {
            TicketError::NotFound(_) => Answered::NotFound,
            TicketError::Store(_) => Answered::StoreFailed,
            _ => Answered::Refused,
        }
    }
}

/// A reply ready to go to its caller. The shard sends it once it has done its own bookkeeping for the answer,
/// so a caller's next request finds the shard up to date.
pub struct Deliver(Option<Box<dyn FnOnce() + Send>>);

impl Deliver {
    fn new<T: Send + 'static>(tx: ReplyTo<T>, result: Result<T, TicketError>) -> Self {
        Deliver(Some(Box::new(move || {
            // The caller may have gone (a client that hung up): nothing to do then.
            let _ = tx.send(result);
        })))
    }

    fn nobody() -> Self {
        Deliver(None)
    }

    /// Send the reply to its caller.
    pub fn send(self) {
        if let Some(send) = self.0 {
            send();
        }
    }
}

/// How a request ended: what the shard needs to know, and the reply for the caller.
pub struct Answer {
    pub answered: Answered,
    pub deliver: Deliver,
}

/// An answer and the ticket's next SLA instant: `Some(None)` no timer, `None` unknown (keep what you have).
pub struct TicketReply {
    pub answer: Answer,
    pub wake: Option<Option<Millis>>,
    /// The ticket is in a terminal status: nothing will change it again, so its actor is not kept (a later
    /// read loads the stored row — which retention may have deleted meanwhile).
    pub terminal: bool,
}

/// Message envelope for [`TicketActor`]: the request and who makes it (for events and the audit trail).
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
    /// The last committed state, shared with [`Env::snapshots`] (reads of a live ticket are served there).
    Live(Arc<Ticket>),
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

/// The work on one request, ending in its typed result.
type Step<T> = ResponseActFuture<TicketActor, Result<T, TicketError>>;

fn ready<T: 'static>(result: Result<T, TicketError>) -> Step<T> {
    Box::pin(fut::ready(result))
}

/// The work on one request, ending in its [`Answer`].
type Handled = ResponseActFuture<TicketActor, Answer>;

/// Once `step` ends, its result is the reply on `tx`.
fn answer<T: Send + 'static>(step: Step<T>, tx: ReplyTo<T>) -> Handled {
    Box::pin(
        step.map(move |result, _, _| Answer { answered: Answered::of(&result), deliver: Deliver::new(tx, result) }),
    )
}

/// A create's answer when its insert met a stored row of the same id ([`create_met`]); other writes have none.
type OnTaken<T> = Option<fn(T, Ticket) -> Result<T, TicketError>>;

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

    /// An actor that starts from `ticket`, its committed state, instead of reading it from the store (a ticket
    /// its shard has just created: [`crate::system::fresh`]).
    pub fn starting_from(env: Arc<Env>, ticket: Arc<Ticket>) -> Self {
        TicketActor { state: State::Live(ticket.clone()), ..TicketActor::new(ticket.ticket_id.clone(), env) }
    }

    /// The next instant this ticket needs the actor, as far as the actor knows.
    fn wake(&self) -> Option<Option<Millis>> {
        match &self.state {
            State::Live(t) => Some(sla::next_due(t, &self.env.sla, self.last_heartbeat)),
            State::Absent => Some(None),
            State::Loading | State::LoadFailed(_) => None,
        }
    }

    /// Persist `unit`; on success the actor's ticket becomes `next` and the request's result is `reply`. A
    /// conflict means another process wrote the row: reload it so the actor again holds the committed state
    /// (a create whose id is taken is answered by `on_taken` from the stored row).
    ///
    /// It goes through the one change pipeline ([`Change`]): the events' audit records and deliveries join the
    /// unit, and their effects are applied once it is committed.
    fn persist<T: 'static>(
        &self,
        unit: WriteUnit,
        next: Ticket,
        reply: T,
        events: Vec<TicketEvent>,
        sla: SlaRecord,
        on_taken: OnTaken<T>,
    ) -> Step<T> {
        // The request's trace when spans are exported, else the ticket's own (its create request's trace id).
        let traceparent = self.traceparent.clone().or_else(|| ticket_traceparent(next.spec.trace_id.as_deref()));
        let next = Arc::new(next);
        let change =
            Change::new(&self.env, &self.id, unit, events, sla, traceparent, &self.span).publishing(Arc::clone(&next));
        let env = Arc::clone(&self.env);
        let id = self.id.clone();
        let unit_span = self.span.clone();
        let fut = async move {
            match change.commit(&env, unit_span).await {
                Ok(()) => (Ok(reply), Some(next)),
                Err((UnitError::Conflict(c), effects)) => {
                    tracing::warn!(ticket_id = %id, conflict = %c, "write conflict; reloading the ticket");
                    let reload = {
                        let (store, id) = (Arc::clone(&env.store), id.clone());
                        detached(async move { store.get(&id).await }).await
                    };
                    match reload {
                        // Our own update, committed by an attempt whose answer was lost: success. (A create that
                        // meets its id is a repeat, answered below as such.)
                        Ok(Some(stored)) if stored == *next && on_taken.is_none() => {
                            env.snapshots.publish(&next);
                            effects.apply(&env);
                            (Ok(reply), Some(next))
                        }
                        Ok(Some(stored)) => {
                            let stored = Arc::new(stored);
                            env.snapshots.publish(&stored);
                            if let (Some(on_taken), UnitConflict::AlreadyExists(_)) = (on_taken, &c) {
                                return (on_taken(reply, Ticket::clone(&stored)), Some(stored));
                            }
                            let err = TicketError::VersionMismatch {
                                ticket_id: id,
                                expected: next.version - 1,
                                actual: stored.version,
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
        Box::pin(fut.into_actor(self).map(|(result, state), act, ctx| {
            if state.as_deref().is_some_and(needs_ready_check) {
                act.check_ready_later(ctx);
            }
            if let Some(t) = state {
                if let State::Live(old) = &act.state {
                    if t.status != TicketStatus::Running || t.started_at != old.started_at {
                        act.last_heartbeat = None;
                    }
                }
                act.state = State::Live(t);
            }
            result
        }))
    }

    /// Look at the dependencies after this request (a message to itself: nobody waits for its reply).
    fn check_ready_later(&self, ctx: &mut Context<Self>) {
        let (reply, _) = oneshot::channel();
        let span = self.span.clone();
        ctx.address().do_send(TicketMsg { req: Request::CheckReady(reply), requested_by: Arc::from("system"), span });
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
    fn check_ready(&self, t: &Ticket) -> Step<Ticket> {
        if !needs_ready_check(t) {
            return ready(Ok(t.clone()));
        }
        let store = Arc::clone(&self.env.store);
        let deps = t.spec.dependencies.clone();
        let fut = detached(async move { store.get_many(&deps).await });
        Box::pin(fut.into_actor(self).then(|found, act, _| {
            let State::Live(t) = &act.state else { return ready(Err(TicketError::NotFound(act.id.clone()))) };
            let t = Ticket::clone(t);
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
                return ready(Ok(t));
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
            act.persist(unit, next.clone(), next, vec![event], Vec::new(), None)
        }))
    }

    fn create(&self, valid: ValidTicket, requested_by: &Arc<str>) -> Step<Created> {
        let (t, events) = creation(&self.env, valid, requested_by);
        let unit = WriteUnit(vec![Write::Insert(t.clone())]);
        let reply = Created { ticket: Arc::new(t.clone()), created: true };
        self.persist(unit, t, reply, events, Vec::new(), Some(|attempt, stored| create_met(&attempt.ticket, stored)))
    }

    fn apply(
        &self,
        t: &Ticket,
        cmd: Command,
        expected_version: Option<i64>,
        details: Option<serde_json::Value>,
        requested_by: &Arc<str>,
    ) -> Step<Ticket> {
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
            Ok(Outcome::Unchanged) => ready(Ok(t.clone())),
            Ok(Outcome::Changed(mut next)) => {
                sla::refresh(Some(t), &mut next, &self.env.sla, now);
                let mut event = self.event(TicketEvent::status_kind(t, &next), &next, Some(t), requested_by);
                if status::awaiting_late_result(t) && next.status == TicketStatus::Completed {
                    event.details = sla::late_result(t, &self.env.sla, now);
                    tracing::info!(ticket_id = %t.ticket_id, details = %event.details, "late result of a timed-out attempt taken");
                }
                if let Some(details) = details {
                    merge_details(&mut event.details, details);
                }
                let mut events = vec![event];
                events.extend(self.ready_without_dependencies(&mut next));
                let unit = WriteUnit(vec![Write::Update { ticket: next.clone(), expected_version: t.version }]);
                self.persist(unit, next.clone(), next, events, Vec::new(), None)
            }
        }
    }

    fn compensate(&self, t: &Ticket, req: CompensationRequest, requested_by: &Arc<str>) -> Step<Compensated> {
        let compensating = matches!(t.status, TicketStatus::Compensating | TicketStatus::Compensated);
        if let Some(existing) = t.compensation_ticket_id.clone().filter(|_| compensating) {
            // Already compensated or compensating: answer with the existing compensation ticket (idempotent).
            let env = Arc::clone(&self.env);
            let original = t.clone();
            let fut = detached(async move {
                match env.store.get(&existing).await {
                    Ok(Some(compensation)) => Ok(Compensated { original, compensation, created: false }),
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
                let reply = Compensated { original: next.clone(), compensation: comp, created: true };
                self.persist(unit, next, reply, events, Vec::new(), None)
            }
        }
    }

    /// Fire the SLA rules that are due, as one committed change.
    fn sla_tick(&self, t: &Ticket) -> Step<Ticket> {
        let Some((next, events, record)) = sla_firing(&self.env, t, self.last_heartbeat) else {
            return ready(Ok(t.clone()));
        };
        let unit = WriteUnit(vec![Write::Update { ticket: next.clone(), expected_version: t.version }]);
        self.persist(unit, next.clone(), next, events, record, None)
    }

    fn dispatch(&mut self, req: Request, requested_by: Arc<str>, ctx: &mut Context<Self>) -> Handled {
        let answer_now = |answer: Answer| -> Handled { Box::pin(fut::ready(answer)) };
        match (&self.state, req) {
            (_, Request::Passivate) => {
                ctx.stop();
                answer_now(Answer { answered: Answered::Ok, deliver: Deliver::nobody() })
            }
            (State::Loading, req) => {
                answer_now(req.fail(StoreError::Unavailable("ticket still loading".into()).into()))
            }
            (State::LoadFailed(e), req) => answer_now(req.fail(e.clone().into())),
            (State::Absent, Request::Create(valid, tx)) => answer(self.create(valid, &requested_by), tx),
            (State::Absent, req) => answer_now(req.fail(TicketError::NotFound(self.id.clone()))),
            (State::Live(t), Request::Get(tx)) => answer(ready(Ok(Ticket::clone(t))), tx),
            (State::Live(t), Request::Create(valid, tx)) => {
                let result = if t.same_request(&valid.ticket, valid.created_at_given) {
                    Ok(Created { ticket: Arc::clone(t), created: false })
                } else {
                    Err(TicketError::AlreadyExists(Box::new(Ticket::clone(t))))
                };
                answer(ready(result), tx)
            }
            (State::Live(t), Request::Apply { cmd, expected_version, details, reply }) => {
                let t = Arc::clone(t);
                answer(self.apply(&t, cmd, expected_version, details, &requested_by), reply)
            }
            (State::Live(t), Request::Compensate(req, tx)) => {
                let t = Arc::clone(t);
                answer(self.compensate(&t, req, &requested_by), tx)
            }
            (State::Live(t), Request::SlaTick(tx)) => {
                let t = Arc::clone(t);
                answer(self.sla_tick(&t), tx)
            }
            (State::Live(t), Request::CheckReady(tx)) => {
                let t = Arc::clone(t);
                answer(self.check_ready(&t), tx)
            }
            (State::Live(t), req @ (Request::Heartbeat(_) | Request::Progress { .. }))
                if t.status != TicketStatus::Running =>
            {
                answer_now(
                    req.fail(
                        IllegalTransition {
                            detail: format!(
                                "ticket {} is {}, not RUNNING: heartbeats and progress are for running tickets",
                                t.ticket_id, t.status
                            ),
                            from: t.status,
                            to: "RUNNING".into(),
                            allowed: status::allowed_targets(t),
                        }
                        .into(),
                    ),
                )
            }
            (State::Live(t), Request::Heartbeat(tx)) => {
                let step = ready(Ok(Ticket::clone(t)));
                self.last_heartbeat = Some(self.env.clock.now_ms());
                answer(step, tx)
            }
            (State::Live(t), Request::Progress { progress, message, reply }) => {
                let now = self.env.clock.now_ms();
                let mut event = self.event(EventKind::Progress, t, Some(t), &requested_by);
                event.at = now;
                event.details = serde_json::json!({ "progress": progress, "message": message });
                self.env.events.publish(event);
                let step = ready(Ok(Ticket::clone(t)));
                self.last_heartbeat = Some(now);
                answer(step, reply)
            }
        }
    }
}

impl Actor for TicketActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let State::Live(t) = &self.state {
            // Started from a committed copy: readers find it as they would after a load.
            self.env.snapshots.publish(t);
            return;
        }
        if !matches!(self.state, State::Loading) {
            return;
        }
        let (loader, id) = (self.env.loader.clone(), self.id.clone());
        let load = async move { loader.load(id).await }.boxed();
        ctx.wait(load.into_actor(self).map(|loaded, act, _| {
            act.state = match loaded {
                Ok(Some(t)) => {
                    let t = Arc::new(t);
                    act.env.snapshots.publish(&t);
                    State::Live(t)
                }
                Ok(None) => State::Absent,
                Err(e) => {
                    tracing::warn!(ticket_id = %act.id, error = %e, "could not load ticket");
                    State::LoadFailed(e)
                }
            };
        }));
    }

    /// Passivated, dropped with its shard, or idle after a one-off wake: reads go through a new actor (or the
    /// store) from here on.
    fn stopped(&mut self, _: &mut Context<Self>) {
        if let State::Live(t) = &self.state {
            self.env.snapshots.withdraw(t);
        }
    }
}

impl Handler<TicketMsg> for TicketActor {
    type Result = AtomicResponse<Self, TicketReply>;

    fn handle(&mut self, TicketMsg { req, requested_by, span }: TicketMsg, ctx: &mut Context<Self>) -> Self::Result {
        // Reads and passivation get no span of their own (they change nothing and are the most frequent).
        self.span = match &req {
            Request::Get(_) | Request::Passivate => tracing::Span::none(),
            _ if !self.env.spans => tracing::Span::none(),
            other => {
                let spec = match (other, &self.state) {
                    (Request::Create(valid, _), _) => Some(&valid.ticket.spec),
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
            let terminal = matches!(&act.state, State::Live(t) if t.status.is_terminal());
            TicketReply { answer, wake: act.wake(), terminal }
        });
        AtomicResponse::new(Box::pin(InSpan { span, fut: step }))
    }
}

/// Add the fields of the object `more` to the event details `into` (Null or an object).
fn merge_details(into: &mut serde_json::Value, more: serde_json::Value) {
    match (into, more) {
        (serde_json::Value::Object(into), serde_json::Value::Object(more)) => into.extend(more),
        (into, more) => *into = more,
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
pub(crate) fn create_met(attempted: &Ticket, stored: Ticket) -> Result<Created, TicketError> {
    if stored.same_request(attempted, false) {
        Ok(Created { ticket: Arc::new(stored), created: false })
    } else {
        Err(TicketError::AlreadyExists(Box::new(stored)))
    }
}
