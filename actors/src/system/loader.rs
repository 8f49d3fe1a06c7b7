//! Tickets read for actors as they start, many in one store call.
//!
//! A ticket actor that starts reads its ticket first (unless its shard kept the ticket since creating it:
//! [`crate::system::fresh`]), and the first request for a passivated ticket starts one. Under load hundreds
//! start at once, and one `get` each cost a round trip and a statement each (a seventh of a status update's CPU,
//! `ticket-bench crud --perf-dir`). The loader takes every read that queued while the last store call ran and
//! makes one `get_many` of them; alone, a read goes out at once.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::domain::model::Ticket;
use crate::ports::store::{StoreError, TicketStore};

type Loaded = Result<Option<Ticket>, StoreError>;

/// At most this many tickets are read in one store call.
const BATCH: usize = 256;

/// The handle actors read through (cheap to clone).
#[derive(Clone)]
pub struct Loader(mpsc::UnboundedSender<(String, oneshot::Sender<Loaded>)>);

impl Loader {
    /// Start the loading task on the current runtime.
    pub fn start(store: Arc<dyn TicketStore>) -> Loader {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, oneshot::Sender<Loaded>)>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                load_batch(&*store, &mut batch).await;
            }
        });
        Loader(tx)
    }

    /// The ticket as last committed (`None`: not stored).
    pub async fn load(&self, id: String) -> Loaded {
        let (reply, answer) = oneshot::channel();
        if self.0.send((id, reply)).is_err() {
            return Err(StoreError::Unavailable("the ticket loader stopped".into()));
        }
        answer.await.unwrap_or_else(|_| Err(StoreError::Unavailable("the ticket loader stopped".into())))
    }
}

/// Answer every read of `batch` (and empty it).
async fn load_batch(store: &dyn TicketStore, batch: &mut Vec<(String, oneshot::Sender<Loaded>)>) {
    if batch.len() == 1 {
        let (id, reply) = batch.remove(0);
        let _ = reply.send(store.get(&id).await);
        return;
    }
    let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
    match store.get_many(&ids).await {
        Ok(found) => {
            let mut found: HashMap<String, Ticket> = found.into_iter().map(|t| (t.ticket_id.clone(), t)).collect();
            // How many reads of each id are still to answer: the last one takes the ticket, earlier ones a copy
            // (two actors of one ticket start together only after one died).
            let mut left: HashMap<&str, usize> = HashMap::new();
            for id in &ids {
                *left.entry(id.as_str()).or_default() += 1;
            }
            for (id, reply) in batch.drain(..) {
                let n = left.get_mut(id.as_str()).expect("counted above");
                *n -= 1;
                let ticket = if *n == 0 { found.remove(&id) } else { found.get(&id).cloned() };
                let _ = reply.send(Ok(ticket));
            }
        }
        // A row that does not decode fails only its own ticket's read, as a single read would.
        Err(StoreError::Corrupt(_)) => {
            for (id, reply) in batch.drain(..) {
                let _ = reply.send(store.get(&id).await);
            }
        }
        Err(e) => {
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
