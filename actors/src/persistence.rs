//! Group commit: one actor funnels the writes of every ticket actor into few transactions.
//!
//! Each [`Persist`] waits in a queue; whenever fewer than `max_in_flight` transactions are running, the actor
//! takes everything queued (up to `max_batch` units) into one [`TicketStore::commit`]. Under load the queue
//! fills while transactions run, so batches grow by themselves and one fsync serves many callers; at rest each
//! write commits alone, without waiting for a timer. A caller is answered only after its transaction
//! committed, so an acknowledged write is durable.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::metrics::ActorMetrics;
use crate::store::{StoreError, TicketStore, UnitConflict, Write, WriteUnit};

/// Why a unit was not persisted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Conflict(#[from] UnitConflict),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Persist one unit; answered after COMMIT.
#[derive(Message)]
#[rtype(result = "Result<(), PersistError>")]
pub struct Persist(pub WriteUnit);

type Reply = oneshot::Sender<Result<(), PersistError>>;

/// See the module docs.
pub struct PersistenceActor {
    store: Arc<dyn TicketStore>,
    metrics: ActorMetrics,
    queue: Vec<(WriteUnit, Reply)>,
    in_flight: usize,
    max_in_flight: usize,
    max_batch: usize,
}

impl PersistenceActor {
    pub fn new(store: Arc<dyn TicketStore>, metrics: ActorMetrics, max_in_flight: usize, max_batch: usize) -> Self {
        PersistenceActor {
            store,
            metrics,
            queue: Vec::new(),
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
            max_batch: max_batch.max(1),
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        while self.in_flight < self.max_in_flight && !self.queue.is_empty() {
            let n = self.queue.len().min(self.max_batch);
            let (units, replies): (Vec<WriteUnit>, Vec<Reply>) = self.queue.drain(..n).unzip();
            self.in_flight += 1;
            let store = Arc::clone(&self.store);
            let started = Instant::now();
            let fut = async move {
                let result = store.commit(&units).await;
                (units, result)
            };
            ctx.spawn(fut.into_actor(self).map(move |(units, result), act, ctx| {
                act.in_flight -= 1;
                act.metrics.batch_size.observe(units.len() as f64);
                act.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
                match result {
                    Ok(outcomes) => {
                        for ((unit, outcome), reply) in units.iter().zip(outcomes).zip(replies) {
                            if outcome.is_ok() {
                                let inserts = unit.0.iter().filter(|w| matches!(w, Write::Insert(_))).count();
                                act.metrics.persisted.inc_by(inserts as u64);
                            }
                            let _ = reply.send(outcome.map_err(PersistError::from));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, units = units.len(), "group commit failed");
                        for reply in replies {
                            let _ = reply.send(Err(e.clone().into()));
                        }
                    }
                }
                act.flush(ctx);
            }));
        }
    }
}

impl Actor for PersistenceActor {
    type Context = Context<Self>;
}

impl Handler<Persist> for PersistenceActor {
    type Result = ResponseFuture<Result<(), PersistError>>;

    fn handle(&mut self, msg: Persist, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.queue.push((msg.0, tx));
        self.flush(ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| Err(StoreError::Unavailable("persistence actor stopped".into()).into()))
        })
    }
}
