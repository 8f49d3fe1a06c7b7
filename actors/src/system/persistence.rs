//! Group commit: one actor funnels the writes of every ticket actor into few transactions.
//!
//! Each [`Persist`] waits in a queue; whenever fewer than `max_in_flight` transactions are running, the actor
//! takes everything queued (up to `max_batch` units) into one [`Tickets::commit`]. Under load the queue
//! fills while transactions run, so batches grow by themselves and one fsync serves many callers; at rest each
//! write commits alone, without waiting for a timer. A caller is answered only after its transaction
//! committed, so an acknowledged write is durable. With several writers, their small commits take turns
//! ([`CommitTurn`]), so a steady stream of writes is grouped as by one writer.
//!
//! In cluster mode every unit is fenced: it carries the epoch of this replica's lease on its ticket's shard
//! (read from the [`ShardTable`] as the batch is taken), and the store commits it only if that lease is still
//! held at that epoch, checked inside the same transaction. A unit whose shard is no longer served here fails
//! at once with [`StoreError::NotOwner`]; the router then asks the new owner.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::ports::store::{Fence, StoreError, Tickets, UnitError, Write, WriteUnit};
use crate::system::commit_turn::{CommitTurn, OnTurn, YourTurn};
use crate::system::metrics::ActorMetrics;
use crate::system::ownership::{vshard_of, ShardTable};

/// Where a [`Persist`] is answered.
pub type CommitAck = oneshot::Sender<Result<(), UnitError>>;

/// Persist one unit; `reply` is answered after COMMIT. (A channel rather than an actix response future: the
/// actor's context polls every pending response future on each wake-up, which would make a deep queue
/// quadratic.)
#[derive(Message)]
#[rtype(result = "()")]
pub struct Persist {
    pub unit: WriteUnit,
    pub reply: CommitAck,
    /// The span of the work that made the unit: the transaction's span links to it.
    pub span: tracing::Span,
}

/// Persist `unit` through `writer`; the answer after COMMIT. `span` is the work that made it.
pub async fn persist(writer: &Addr<PersistenceActor>, unit: WriteUnit, span: tracing::Span) -> Result<(), UnitError> {
    let (reply, answer) = oneshot::channel();
    writer.do_send(Persist { unit, reply, span });
    answer.await.unwrap_or_else(|_| Err(StoreError::Unavailable("persistence actor stopped".into()).into()))
}

/// See the module docs.
pub struct PersistenceActor {
    store: Arc<dyn Tickets>,
    ownership: Arc<ShardTable>,
    metrics: ActorMetrics,
    queue: Vec<(WriteUnit, CommitAck, tracing::Span)>,
    in_flight: usize,
    max_in_flight: usize,
    max_batch: usize,
    /// The turn this writer shares with the others, and its index among them (none when it is the only one).
    turn: Option<(Arc<CommitTurn>, usize)>,
}

impl PersistenceActor {
    pub fn new(
        store: Arc<dyn Tickets>,
        metrics: ActorMetrics,
        ownership: Arc<ShardTable>,
        max_in_flight: usize,
        max_batch: usize,
    ) -> Self {
        PersistenceActor {
            store,
            ownership,
            metrics,
            queue: Vec::new(),
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
            max_batch: max_batch.max(1),
            turn: None,
        }
    }

    /// This writer is number `index` of those sharing `turn` for their small commits.
    pub fn sharing(mut self, turn: Arc<CommitTurn>, index: usize) -> Self {
        self.turn = Some((turn, index));
        self
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        while self.in_flight < self.max_in_flight && !self.queue.is_empty() {
            let n = self.queue.len().min(self.max_batch);
            // Whether this commit runs on the shared turn: a small one waits for it (a `YourTurn` comes), a
            // large one takes it only if it is free. Held until the commit ends.
            let on_turn: Option<OnTurn> = match &self.turn {
                None => None,
                Some((turn, me)) if turn.is_small(n) => {
                    let Some(held) = turn.take_or_wait(*me, || ctx.address().recipient()) else { break };
                    Some(held)
                }
                Some((turn, me)) => turn.try_take(*me),
            };
            // One span per transaction, linked to the span of every unit it carries (a batch serves many
            // traces, so it is the child of none of them).
            let span = tracing::info_span!("store.commit", units = n);
            let mut units = Vec::with_capacity(n);
            let mut replies = Vec::with_capacity(n);
            let mut fences = Vec::with_capacity(n);
            let clustered = self.ownership.is_clustered();
            for (unit, reply, from) in self.queue.drain(..n) {
                if clustered {
                    let shard = unit.home().map(vshard_of);
                    match shard.map(|s| (s, self.ownership.local_epoch(s))) {
                        Some((s, None)) => {
                            let why = format!("{} does not serve shard {s}", self.ownership.member());
                            let _ = reply.send(Err(StoreError::NotOwner(why).into()));
                            continue;
                        }
                        Some((s, Some(epoch))) => fences.push(Some((s, epoch))),
                        None => fences.push(None),
                    }
                }
                span.follows_from(&from);
                units.push(unit);
                replies.push(reply);
            }
            if units.is_empty() {
                continue;
            }
            let fence = clustered.then(|| Fence { member: self.ownership.member().to_owned(), shards: fences });
            self.in_flight += 1;
            let store = Arc::clone(&self.store);
            let started = Instant::now();
            let fut = crate::ports::store::detached(
                async move {
                    let outcomes = store.commit(&units, fence.as_ref()).await;
                    (units, outcomes)
                }
                .instrument(span),
            );
            ctx.spawn(fut.into_actor(self).map(move |(units, outcomes), act, ctx| {
                act.in_flight -= 1;
                drop(on_turn);
                act.metrics.batch_size.observe(units.len() as f64);
                act.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
                debug_assert_eq!(outcomes.len(), units.len());
                for ((unit, outcome), reply) in units.iter().zip(outcomes).zip(replies) {
                    if outcome.is_ok() {
                        let inserts = unit.0.iter().filter(|w| matches!(w, Write::Insert(_))).count();
                        act.metrics.persisted.inc_by(inserts as u64);
                    }
                    let _ = reply.send(outcome);
                }
                act.flush(ctx);
            }));
        }
    }
}

impl Actor for PersistenceActor {
    type Context = Context<Self>;
}

impl Handler<YourTurn> for PersistenceActor {
    type Result = ();

    /// The turn was handed to this writer: commit what is queued, or pass the turn on if nothing could start
    /// (the only way this writer can hold the turn without a commit on it).
    fn handle(&mut self, _: YourTurn, ctx: &mut Context<Self>) {
        self.flush(ctx);
        if let Some((turn, me)) = &self.turn {
            turn.pass_if_unused(*me);
        }
    }
}

impl Handler<Persist> for PersistenceActor {
    type Result = ();

    fn handle(&mut self, Persist { unit, reply, span }: Persist, ctx: &mut Context<Self>) {
        self.queue.push((unit, reply, span));
        self.flush(ctx);
    }
}
