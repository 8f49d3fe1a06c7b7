//! Shard supervisors: each owns the ticket actors whose id hashes to it, and their SLA wake-up index.
//!
//! A shard spawns a ticket's actor on first use (the actor loads itself from the store), forwards requests to
//! it, restarts it from the stored state when it dies mid-request (that request gets an error, nothing else is
//! lost: the store holds every acknowledged write), and passivates actors that stayed idle. Because the shard
//! counts each actor's requests in flight, it only passivates an actor whose mailbox is empty, so two actors
//! for one ticket never live at once.
//!
//! The wake-up index (an ordered set of `(due, ticket_id)`) holds the next SLA instant of the shard's tickets
//! that are due within the horizon, live or passivated: every actor answer says when its ticket next needs it,
//! and the router's loader adds what the store says is due soon. The shard is ticked when the index's earliest
//! instant is due ([`WakeTimer`]; an idle shard sleeps). On each tick the shard sends `SlaTick` to every
//! due ticket that has a live actor (the actor decides what, if anything, fires) and fires the passivated ones
//! itself from one store read per chunk (`Shard::fire_cold`).
//!
//! A create for a ticket without a live actor (nearly every create) is also committed by the shard itself,
//! without an actor (`Shard::create_cold`); the ticket gets one when a later request needs it, started from the
//! committed copy the shard keeps for a while ([`crate::system::fresh`]) or else from the store.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::domain::model::{Millis, Ticket};
use crate::domain::sla;
use crate::domain::validation::ValidTicket;
use crate::ports::store::{detached, StoreError, UnitError, Write, WriteUnit};
use crate::ports::trace::ticket_traceparent;
use crate::system::change::{creation, needs_ready_check, sla_firing, Change};
use crate::system::env::Env;
use crate::system::error::TicketError;
use crate::system::fresh::Fresh;
use crate::system::ownership::vshard_of;
use crate::system::ticket_actor::{
    create_met, handle_span, Answer, Answered, Created, ReplyTo, Request, TicketActor, TicketMsg, TicketReply,
};
use crate::system::wake_timer::WakeTimer;
use futures::FutureExt as _;

/// A request routed to the ticket `id`; answered on the reply channel the request carries. (Channels rather
/// than actix response futures throughout: an actor's context polls every pending response future on each
/// wake-up, which makes thousands of requests in flight quadratic.)
#[derive(Message)]
#[rtype(result = "()")]
pub struct Route {
    pub id: String,
    pub envelope: Envelope,
}

/// A request and what travels with it to the ticket actor.
pub struct Envelope {
    pub req: Request,
    /// Who asks (a token subject, `kafka`, `system`, `sla`).
    pub requested_by: Arc<str>,
    /// The caller's span (the ticket actor's work is its child).
    pub span: tracing::Span,
    /// Told [`TicketError::ActorFailed`] when the ticket actor dies with the request (a panic: the request's
    /// reply channel then closes unanswered), once the shard has restarted the actor — so the caller's next
    /// request meets the new one. None when nobody waits.
    pub died: Option<oneshot::Sender<TicketError>>,
}

impl Envelope {
    /// One of the system's own requests: no caller's span, nobody told if the actor dies.
    fn internal(req: Request, requested_by: &str) -> Self {
        Envelope { req, requested_by: Arc::from(requested_by), span: tracing::Span::none(), died: None }
    }
}

/// A ticket actor answered (or died): bookkeeping, then the reply goes to the caller.
#[derive(Message)]
#[rtype(result = "()")]
struct Done {
    id: String,
    addr: Addr<TicketActor>,
    is_tick: bool,
    result: Result<TicketReply, MailboxError>,
    died: Option<oneshot::Sender<TicketError>>,
}

/// Passivate idle actors now (the shard also does it on its own timer).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Sweep;

/// Fire the SLA instants that are due now; answers how many tickets were woken, once they all answered.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Tick;

/// Tickets due now that had no live actor, read from the store in one query: their due rules are fired here,
/// without starting an actor per ticket (see [`Shard::fire_cold`]).
#[derive(Message)]
#[rtype(result = "Vec<Handled>")]
struct Cold(Vec<Ticket>);

/// Resolves when a cold ticket's tick was handled (what it came to is the shard's business: [`ColdFired`]).
type Handled = futures::future::BoxFuture<'static, ()>;

/// A cold ticket's firing was committed (or not): re-arm it and let the requests that waited for it through.
#[derive(Message)]
#[rtype(result = "()")]
struct ColdFired {
    id: String,
    /// The ticket's next instant after a commit, or why it was not committed.
    outcome: Result<Option<Millis>, UnitError>,
    /// The committed ticket needs its dependencies looked at (a retry made it PENDING again).
    check_ready: bool,
}

/// A ticket created without an actor was committed (or not): arm its SLA instant (`wake`: `Some(None)` none,
/// `None` leave the index as it is) and let the requests that waited for it through.
#[derive(Message)]
#[rtype(result = "()")]
struct ColdCreated {
    id: String,
    /// The committed ticket, kept for its first request ([`Fresh`]), and when it was committed (taken before the
    /// caller is answered: the copy ages from then, however late this message is handled).
    created: Option<(Arc<Ticket>, Millis)>,
    wake: Option<Option<Millis>>,
    /// The new ticket has dependencies: look whether they already decided its readiness.
    check_ready: bool,
}

/// This replica no longer serves these virtual shards: stop their actors and forget their SLA instants now
/// (the new owner loads them). Commits already under way are fenced by the store.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Release(pub Arc<[u16]>);

/// Arm these (ticket, due) pairs, unless the index already has an earlier instant for the ticket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Arm(pub Vec<(String, Millis)>);

struct Entry {
    addr: Addr<TicketActor>,
    in_flight: u32,
    last_used: Millis,
    /// Started only by SLA ticks or readiness checks: passivated again as soon as they are answered, so a
    /// burst of due timers does not leave a crowd of idle actors behind (each holds its ticket in
    /// memory). A ticket's next request loads it again; its SLA instant stays in the wake-up index.
    transient: bool,
}

/// Timing of a shard.
#[derive(Debug, Clone)]
pub struct ShardTiming {
    pub idle_ms: i64,
    pub sweep_every: Duration,
    pub tick_every: Duration,
    /// Only instants within this many ms are kept in the index; the loader brings later ones in time.
    pub horizon_ms: i64,
    /// How many shards share [`crate::system::fresh::TOTAL`].
    pub shards: usize,
}

/// See the module docs.
pub struct Shard {
    env: Arc<Env>,
    entries: HashMap<String, Entry>,
    timing: ShardTiming,
    wake: BTreeSet<(Millis, String)>,
    due_of: HashMap<String, Millis>,
    /// SLA ticks sent and not yet answered: a burst of due timers is worked off at most `MAX_WAKING` at a
    /// time (the rest stay at the head of the index), so it cannot pile up a burst of actors in memory.
    waking: usize,
    /// Tickets being fired or created without an actor, with the requests that arrived for them meanwhile:
    /// the shard is the ticket's writer until that is committed, so those wait (and then load the committed
    /// state).
    firing: HashMap<String, Vec<Envelope>>,
    /// Tickets just created without an actor: the first request for one starts its actor from this copy.
    fresh: Fresh,
    /// The index's earliest instant, for the task that ticks the shard when it is due.
    timer: Arc<WakeTimer>,
}

/// After a failed SLA tick (store down), try that ticket again this much later.
const SLA_RETRY_MS: i64 = 1_000;

/// Most SLA ticks one shard has in flight.
const MAX_WAKING: usize = 1_024;

/// Counts SLA ticks that will not reach the ticket actors (their tickets vanished, or could not be read).
#[derive(Message)]
#[rtype(result = "()")]
struct Woken(usize);

impl Shard {
    pub fn new(env: Arc<Env>, timing: ShardTiming) -> Self {
        let shards = timing.shards;
        Shard {
            env,
            entries: HashMap::new(),
            timing,
            wake: BTreeSet::new(),
            due_of: HashMap::new(),
            waking: 0,
            firing: HashMap::new(),
            fresh: Fresh::new(shards),
            timer: Arc::default(),
        }
    }

    /// Start `id`'s actor: from `committed` if the shard holds its committed state, else from the store.
    fn spawn(&self, id: &str, committed: Option<Arc<Ticket>>) -> Addr<TicketActor> {
        self.env.metrics.live.inc();
        let env = Arc::clone(&self.env);
        match committed {
            Some(t) => TicketActor::starting_from(env, t).start(),
            None => TicketActor::new(id.to_owned(), env).start(),
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(entry) = self.entries.remove(id) {
            self.env.metrics.live.dec();
            let span = tracing::Span::none();
            entry.addr.do_send(TicketMsg { req: Request::Passivate, requested_by: Arc::from("system"), span });
        }
    }

    fn sweep(&mut self) -> usize {
        let now = self.env.clock.now_ms();
        let idle: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.in_flight == 0 && now - e.last_used >= self.timing.idle_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &idle {
            self.remove(id);
        }
        self.fresh.expire(now, self.timing.idle_ms);
        self.env.metrics.passivated.inc_by(idle.len() as u64);
        idle.len()
    }

    fn unarm(&mut self, id: &str) {
        if let Some(old) = self.due_of.remove(id) {
            self.wake.remove(&(old, id.to_owned()));
            self.env.metrics.sla_armed.dec();
        }
    }

    fn arm(&mut self, id: &str, due: Millis) {
        if due >= self.env.clock.now_ms().saturating_add(self.timing.horizon_ms) {
            return;
        }
        self.wake.insert((due, id.to_owned()));
        self.due_of.insert(id.to_owned(), due);
        self.env.metrics.sla_armed.inc();
        self.timer.armed(due);
    }

    /// The actor's word on its next instant replaces whatever the index had.
    fn set_wake(&mut self, id: &str, due: Option<Millis>) {
        self.unarm(id);
        if let Some(due) = due {
            self.arm(id, due);
        }
    }

    /// Keep the earlier of the index's instant and `due` (a loaded instant may be stale, never too early).
    fn arm_min(&mut self, id: &str, due: Millis) {
        if self.due_of.get(id).is_some_and(|d| *d <= due) {
            return;
        }
        self.unarm(id);
        self.arm(id, due);
    }

    fn pop_due(&mut self) -> Vec<String> {
        let now = self.env.clock.now_ms();
        let mut due = Vec::new();
        let mut later = Vec::new();
        while let Some((at, _)) = self.wake.first() {
            if *at > now || self.waking + due.len() >= MAX_WAKING {
                break;
            }
            let (_, id) = self.wake.pop_first().expect("checked above");
            self.due_of.remove(&id);
            self.env.metrics.sla_armed.dec();
            // A shard that moved to another replica is that replica's to fire (it loaded the instant); one whose lease
            // lapsed here for a moment (still held, perhaps back at the same epoch) fires once it is served again.
            let shard = vshard_of(&id);
            if self.env.ownership.is_local(shard) {
                due.push(id);
            } else if self.env.ownership.held(shard) {
                later.push(id);
            }
        }
        for id in later {
            self.arm(&id, now + SLA_RETRY_MS);
        }
        due
    }

    fn forward(&mut self, id: String, envelope: Envelope, ctx: &mut Context<Self>) {
        if !self.env.ownership.is_local(vshard_of(&id)) {
            // Another replica serves the ticket now (or nobody, for a moment): the router asks again there. Its
            // actor here, if any, is being dropped (`Release`) and must not answer from memory.
            if matches!(envelope.req, Request::SlaTick(_)) {
                self.waking -= 1;
            }
            let moved = TicketError::NotOwner(format!("{} no longer serves ticket {id}", self.env.ownership.member()));
            envelope.req.fail(moved).deliver.send();
            return;
        }
        if let Some(parked) = self.firing.get_mut(&id) {
            parked.push(envelope);
            return;
        }
        let live = self.entries.get(&id).is_some_and(|e| e.addr.connected());
        let Envelope { req, requested_by, span, died } = envelope;
        let req = match req {
            Request::Create(valid, reply) if !live => {
                return self.create_cold(id, valid, requested_by, reply, span, ctx)
            }
            other => other,
        };
        let now = self.env.clock.now_ms();
        let is_tick = matches!(req, Request::SlaTick(_));
        let transient = is_tick || matches!(req, Request::CheckReady(_));
        if !live {
            let committed = self.fresh.take(&id);
            let addr = self.spawn(&id, committed);
            let entry = Entry { addr, in_flight: 0, last_used: now, transient };
            if self.entries.insert(id.clone(), entry).is_some() {
                // Its actor died without the shard noticing (no request was in flight): count the restart.
                self.env.metrics.live.dec();
                self.env.metrics.restarts.inc();
            }
        }
        let entry = self.entries.get_mut(&id).expect("inserted above");
        entry.in_flight += 1;
        entry.last_used = now;
        entry.transient &= transient;
        let addr = entry.addr.clone();
        let me = ctx.address();
        // A task of its own per request, woken only by its own answer.
        actix::spawn(async move {
            let result = addr.send(TicketMsg { req, requested_by, span }).await;
            me.do_send(Done { id, addr, is_tick, result, died });
        });
    }

    fn done(&mut self, Done { id, addr, is_tick, result, died }: Done) {
        if is_tick {
            self.waking -= 1;
        }
        let current = self.entries.get_mut(&id).filter(|e| e.addr == addr);
        match result {
            Ok(TicketReply { answer: Answer { answered, deliver }, wake, terminal }) => {
                if let Some(e) = current {
                    e.in_flight -= 1;
                    // An actor for a ticket that does not exist (or could not be loaded), that is finished for
                    // good, or woken only for its SLA instant, is not kept.
                    let useless =
                        e.transient || terminal || matches!(answered, Answered::NotFound | Answered::StoreFailed);
                    if useless && e.in_flight == 0 {
                        self.remove(&id);
                    }
                }
                if let Some(due) = wake {
                    self.set_wake(&id, due);
                }
                if is_tick && answered == Answered::StoreFailed {
                    // The due instant is still due: come back after a pause rather than every tick.
                    let retry = self.env.clock.now_ms() + SLA_RETRY_MS;
                    self.set_wake(&id, Some(retry));
                }
                deliver.send();
            }
            Err(_) => {
                // The actor died (a panic while handling a message). Restart it from the store.
                if current.is_some() {
                    tracing::error!(ticket_id = %id, "ticket actor died; restarting it from the stored state");
                    // A dead actor withdraws nothing; its successor publishes what it loads.
                    self.env.snapshots.forget(&id);
                    self.env.metrics.restarts.inc();
                    let addr = self.spawn(&id, None);
                    self.env.metrics.live.dec();
                    let now = self.env.clock.now_ms();
                    self.entries.insert(id.clone(), Entry { addr, in_flight: 0, last_used: now, transient: false });
                }
                if is_tick {
                    let retry = self.env.clock.now_ms() + SLA_RETRY_MS;
                    self.set_wake(&id, Some(retry));
                }
                if let Some(died) = died {
                    let _ = died.send(TicketError::ActorFailed(id));
                }
            }
        }
    }

    /// Create a ticket that has no live actor without starting one: the shard commits the insert itself (the
    /// same row, events and deliveries an actor would commit). An actor per new ticket cost a start, four
    /// messages and a stop per create — most of the service's share of a bulk ingest — for a ticket that is
    /// usually not touched again soon. Requests for the ticket wait until the insert is committed
    /// ([`Shard::firing`]); an id already stored makes the insert conflict, and the stored row decides the
    /// answer ([`create_met`]).
    fn create_cold(
        &mut self,
        id: String,
        valid: ValidTicket,
        requested_by: Arc<str>,
        reply: ReplyTo<Created>,
        parent: tracing::Span,
        ctx: &mut Context<Self>,
    ) {
        let span = if self.env.spans {
            handle_span(&parent, &id, "create", &requested_by, Some(&valid.ticket.spec))
        } else {
            tracing::Span::none()
        };
        let (t, events) = span.in_scope(|| creation(&self.env, valid, &requested_by));
        let traceparent = (self.env.traceparent)(&span).or_else(|| ticket_traceparent(t.spec.trace_id.as_deref()));
        let unit = WriteUnit(vec![Write::Insert(t.clone())]);
        let change = Change::new(&self.env, &id, unit, events, Vec::new(), traceparent, &span);
        self.firing.insert(id.clone(), Vec::new());
        let (env, me) = (Arc::clone(&self.env), ctx.address());
        actix::spawn(async move {
            let (answer, wake, check_ready, created) = match change.commit(&env, span).await {
                Ok(()) => {
                    let wake = Some(sla::next_due(&t, &env.sla, None));
                    let check_ready = needs_ready_check(&t);
                    let t = Arc::new(t);
                    let kept = (Arc::clone(&t), env.clock.now_ms());
                    (Ok(Created { ticket: t, created: true }), wake, check_ready, Some(kept))
                }
                Err((UnitError::Conflict(_), _)) => {
                    let stored = {
                        let (store, id) = (Arc::clone(&env.store), id.clone());
                        detached(async move { store.get(&id).await }).await
                    };
                    let answer = match stored {
                        Ok(Some(stored)) => create_met(&t, stored),
                        // Deleted between the insert and the read: nothing to report but the conflict.
                        Ok(None) => Err(TicketError::Store(StoreError::Unavailable(format!(
                            "ticket {id} conflicted on insert and then vanished; retry"
                        )))),
                        Err(e) => Err(e.into()),
                    };
                    (answer, None, false, None)
                }
                Err((UnitError::Store(e), _)) => (Err(e.into()), None, false, None),
            };
            // The shard learns the outcome before the caller is answered (a next request then finds no wait).
            me.do_send(ColdCreated { id, created, wake, check_ready });
            let _ = reply.send(answer);
        });
    }

    /// Route an SLA tick to `id`; the receiver says when it was handled.
    fn tick_one(&mut self, id: String, ctx: &mut Context<Self>) -> oneshot::Receiver<Result<Ticket, TicketError>> {
        let (reply, answer) = oneshot::channel();
        // A timer firing starts a trace of its own.
        self.forward(id, Envelope::internal(Request::SlaTick(reply), sla::SLA_ACTOR), ctx);
        answer
    }

    /// Fire what is due of a ticket read from the store, without starting its actor: the shard commits the
    /// firing itself (the same change, events and deliveries a ticket actor would commit). Waking a
    /// passivated ticket through an actor costs an actor start, four messages and its memory per ticket —
    /// most of the service's share of a burst of due timers. Requests for the ticket wait until the firing is
    /// committed ([`Shard::firing`]); the row's version guards against any other writer.
    fn fire_cold(&mut self, t: Ticket, ctx: &mut Context<Self>) -> Handled {
        let id = t.ticket_id.clone();
        // The firing changes the ticket, whichever way it goes from here: a copy kept since its create is stale.
        self.fresh.take(&id);
        // A request may have started an actor meanwhile: then it fires (the read copy may be stale).
        if self.entries.get(&id).is_some_and(|e| e.addr.connected()) || self.firing.contains_key(&id) {
            return Box::pin(self.tick_one(id, ctx).map(|_| ()));
        }
        let (handled, answer) = oneshot::channel::<()>();
        let answer: Handled = Box::pin(answer.map(|_| ()));
        let span = if self.env.spans {
            tracing::info_span!("ticket.handle", ticket_id = %id, request = "sla_tick", actor = sla::SLA_ACTOR)
        } else {
            tracing::Span::none()
        };
        let Some((next, events, record)) = span.in_scope(|| sla_firing(&self.env, &t, None)) else {
            // Nothing due after all (the indexed instant was stale): keep the ticket's own next instant.
            self.waking -= 1;
            self.set_wake(&id, sla::next_due(&t, &self.env.sla, None));
            return Box::pin(futures::future::ready(()));
        };
        let traceparent = (self.env.traceparent)(&span).or_else(|| ticket_traceparent(next.spec.trace_id.as_deref()));
        let unit = WriteUnit(vec![Write::Update { ticket: next.clone(), expected_version: t.version }]);
        let change = Change::new(&self.env, &id, unit, events, record, traceparent, &span);
        self.firing.insert(id.clone(), Vec::new());
        let (env, me) = (Arc::clone(&self.env), ctx.address());
        actix::spawn(async move {
            let outcome = change.commit(&env, span).await.map_err(|(e, _)| e);
            let check_ready = outcome.is_ok() && needs_ready_check(&next);
            let outcome = outcome.map(|()| next.sla_state.next_due_at);
            // The shard learns the outcome before whoever waits for the tick is told it was handled.
            me.do_send(ColdFired { id, outcome, check_ready });
            let _ = handled.send(());
        });
        answer
    }
}

impl Shard {
    /// A cold commit of `id` (a create or an SLA firing without an actor) ended: the requests parked meanwhile
    /// go on, in their order, and a PENDING ticket with dependencies is checked for readiness.
    fn cold_commit_ended(&mut self, id: String, check_ready: bool, ctx: &mut Context<Self>) {
        for envelope in self.firing.remove(&id).unwrap_or_default() {
            self.forward(id.clone(), envelope, ctx);
        }
        if check_ready {
            let (reply, _) = oneshot::channel();
            self.forward(id, Envelope::internal(Request::CheckReady(reply), "system"), ctx);
        }
    }
}

impl Actor for Shard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Bounded by the router's in-flight counter, not by actix (whose limit would park senders instead).
        ctx.set_mailbox_capacity(1 << 24);
        ctx.run_interval(self.timing.sweep_every, |shard, _| {
            shard.sweep();
        });
        // Ticked when the index's earliest instant is due (not polled: an idle shard sleeps).
        let (timer, clock, me) = (Arc::clone(&self.timer), Arc::clone(&self.env.clock), ctx.address());
        actix::spawn(timer.run(clock, self.timing.tick_every, move || {
            me.do_send(Tick);
            me.connected()
        }));
    }
}

impl Handler<Sweep> for Shard {
    type Result = usize;
    fn handle(&mut self, _: Sweep, _: &mut Context<Self>) -> usize {
        self.sweep()
    }
}

impl Handler<Release> for Shard {
    type Result = usize;
    fn handle(&mut self, Release(shards): Release, _: &mut Context<Self>) -> usize {
        let gone = |id: &str| shards.contains(&vshard_of(id));
        let actors: Vec<String> = self.entries.keys().filter(|id| gone(id)).cloned().collect();
        for id in &actors {
            // At once, not when the actor gets to stop: the next owner may change the ticket any moment now.
            self.env.snapshots.forget(id);
            self.remove(id);
        }
        self.fresh.retain(|id| !gone(id));
        let timers: Vec<String> = self.due_of.keys().filter(|id| gone(id)).cloned().collect();
        for id in &timers {
            self.unarm(id);
        }
        actors.len()
    }
}

impl Handler<Arm> for Shard {
    type Result = ();
    fn handle(&mut self, Arm(due): Arm, _: &mut Context<Self>) {
        for (id, at) in due {
            self.arm_min(&id, at);
        }
    }
}

/// Due tickets without a live actor are read from the store in chunks of this many.
const WAKE_CHUNK: usize = 500;

impl Handler<Tick> for Shard {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) -> Self::Result {
        let due = self.pop_due();
        // What is left; instants armed from here on move it earlier themselves.
        self.timer.reset(self.wake.first().map(|(at, _)| *at));
        let n = due.len();
        self.waking += n;
        let me = ctx.address();
        let (live, cold): (Vec<String>, Vec<String>) =
            due.into_iter().partition(|id| self.entries.get(id).is_some_and(|e| e.addr.connected()));
        let mut handled: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
        for id in live {
            let answer = self.tick_one(id, ctx);
            handled.push(Box::pin(answer.map(|_| ())));
        }
        // Passivated tickets: one query per chunk instead of one per ticket, and no actor per ticket.
        for chunk in cold.chunks(WAKE_CHUNK) {
            let (store, me, ids, clock) =
                (Arc::clone(&self.env.store), me.clone(), chunk.to_vec(), Arc::clone(&self.env.clock));
            handled.push(Box::pin(async move {
                let found = {
                    let (store, ids) = (Arc::clone(&store), ids.clone());
                    detached(async move { store.get_many(&ids).await }).await
                };
                match found {
                    Ok(tickets) => {
                        let missing = ids.len() - tickets.len();
                        let _ = me.send(Woken(missing)).await;
                        if let Ok(answers) = me.send(Cold(tickets)).await {
                            futures::future::join_all(answers).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, tickets = ids.len(), "could not wake due tickets; retrying");
                        let retry = clock.now_ms() + SLA_RETRY_MS;
                        let _ = me.send(Woken(ids.len())).await;
                        let _ = me.send(Arm(ids.into_iter().map(|id| (id, retry)).collect())).await;
                    }
                }
            }));
        }
        Box::pin(async move {
            futures::future::join_all(handled).await;
            n
        })
    }
}

impl Handler<Woken> for Shard {
    type Result = ();
    fn handle(&mut self, Woken(n): Woken, _: &mut Context<Self>) {
        self.waking -= n;
    }
}

impl Handler<Cold> for Shard {
    type Result = MessageResult<Cold>;

    fn handle(&mut self, Cold(tickets): Cold, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(tickets.into_iter().map(|t| self.fire_cold(t, ctx)).collect())
    }
}

impl Handler<ColdFired> for Shard {
    type Result = ();

    fn handle(&mut self, ColdFired { id, outcome, check_ready }: ColdFired, ctx: &mut Context<Self>) {
        self.waking -= 1;
        let now = self.env.clock.now_ms();
        match outcome {
            Ok(due) => self.set_wake(&id, due),
            // Written meanwhile by another process: fire again from what it wrote.
            Err(UnitError::Conflict(c)) => {
                tracing::warn!(ticket_id = %id, conflict = %c, "SLA firing met a newer version; firing again");
                self.set_wake(&id, Some(now));
            }
            Err(UnitError::Store(e)) => {
                tracing::warn!(ticket_id = %id, error = %e, "SLA firing not committed; retrying");
                self.set_wake(&id, Some(now + SLA_RETRY_MS));
            }
        }
        self.cold_commit_ended(id, check_ready, ctx);
    }
}

impl Handler<ColdCreated> for Shard {
    type Result = ();

    fn handle(&mut self, ColdCreated { id, created, wake, check_ready }: ColdCreated, ctx: &mut Context<Self>) {
        // Kept before the requests that waited are let through, so they start from it too. (Still served here:
        // a hand-off meanwhile has failed the commit, or is dropping what the shard keeps.)
        if let Some((t, at)) = created.filter(|_| self.env.ownership.is_local(vshard_of(&id))) {
            self.fresh.insert(t, at);
        }
        if let Some(due) = wake {
            self.set_wake(&id, due);
        }
        self.cold_commit_ended(id, check_ready, ctx);
    }
}

impl Handler<Route> for Shard {
    type Result = ();

    fn handle(&mut self, Route { id, envelope }: Route, ctx: &mut Context<Self>) {
        self.forward(id, envelope, ctx);
    }
}

impl Handler<Done> for Shard {
    type Result = ();

    fn handle(&mut self, done: Done, _: &mut Context<Self>) {
        self.done(done);
    }
}
