//! The committed state of every live ticket, for reads that need not queue behind the ticket's writes.
//!
//! A ticket actor is the only writer of its ticket: it publishes its ticket here as soon as a change commits
//! (before the change's events go out, so a watcher that reads after an event sees at least that change), and
//! withdraws it when it stops. A read of a live ticket is then a map lookup on the caller's thread, instead of
//! two actor hops that wait behind the ticket's pending writes. Each entry is the actor's own `Arc`, so a live
//! ticket is held once.
//!
//! An entry is only ever a committed state, and the newest one this process committed: it is replaced in
//! commit order by the one actor that owns the ticket. In cluster mode the router reads it only while this
//! replica serves the ticket's shard, and the shard forgets the entries of shards it hands off.

use std::sync::Arc;

use dashmap::DashMap;

use crate::domain::model::Ticket;

/// See the module docs.
#[derive(Default)]
pub struct Snapshots(DashMap<String, Arc<Ticket>>);

impl Snapshots {
    /// The last committed state of ticket `id`, if a live actor holds it.
    pub fn get(&self, id: &str) -> Option<Arc<Ticket>> {
        self.0.get(id).map(|e| Arc::clone(e.value()))
    }

    /// `ticket` is its ticket's newest committed state.
    pub(crate) fn publish(&self, ticket: &Arc<Ticket>) {
        match self.0.get_mut(ticket.ticket_id.as_str()) {
            Some(mut entry) => *entry = Arc::clone(ticket),
            None => {
                self.0.insert(ticket.ticket_id.clone(), Arc::clone(ticket));
            }
        }
    }

    /// The actor that published `ticket` stops: remove it, unless a newer actor has published since.
    pub(crate) fn withdraw(&self, ticket: &Arc<Ticket>) {
        self.0.remove_if(ticket.ticket_id.as_str(), |_, held| Arc::ptr_eq(held, ticket));
    }

    /// Forget ticket `id` whoever published it (its shard moved away, or its actor died).
    pub(crate) fn forget(&self, id: &str) {
        self.0.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::validation::{tests::sample_json, NewTicket};

    fn ticket(id: &str, version: i64) -> Arc<Ticket> {
        let mut v = sample_json();
        v["ticket_id"] = id.into();
        let mut t = serde_json::from_value::<NewTicket>(v).unwrap().validate(1_000, String::new).unwrap().ticket;
        t.version = version;
        Arc::new(t)
    }

    #[test]
    fn a_stopping_actor_withdraws_only_what_it_published() {
        let s = Snapshots::default();
        let old = ticket("t-1", 1);
        s.publish(&old);
        let newer = ticket("t-1", 2);
        s.publish(&newer);
        assert_eq!(s.get("t-1").map(|t| t.version), Some(2));
        s.withdraw(&old);
        assert_eq!(s.get("t-1").map(|t| t.version), Some(2), "a newer actor's entry stays");
        s.withdraw(&newer);
        assert!(s.get("t-1").is_none());
        s.publish(&old);
        s.forget("t-1");
        assert!(s.get("t-1").is_none());
    }
}
