//! Tickets a shard has just created without an actor, kept for their first request.
//!
//! A create commits without starting the ticket's actor (`Shard::create_cold`), and the first request after it —
//! usually a worker's RUNNING, seconds later — started an actor that read the ticket back from the store: a
//! round trip, two thread hops through the loader and a row decoded, for a row this process had just written.
//! The shard now keeps the committed copy of its newest creates, and an actor started for one of them begins
//! from that copy.
//!
//! An entry is a committed state that nothing has changed since: the shard is its ticket's only writer, and it
//! drops the entry whenever it writes the ticket another way (an SLA firing from the store's copy) or stops
//! serving the ticket's virtual shard (cluster hand-off), as it does with live actors. Entries are bounded in
//! number ([`TOTAL`] over all shards, whatever `ACTOR_SHARDS` is) and in age (the shard's passivation delay).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::domain::model::{Millis, Ticket};

/// Most tickets all shards together keep: each keeps its share.
pub const TOTAL: usize = 16_384;

/// See the module docs.
pub struct Fresh {
    /// This shard's share of [`TOTAL`].
    most: usize,
    tickets: HashMap<String, (Millis, Arc<Ticket>)>,
    /// Insertion order, for the bounds; an id taken or dropped meanwhile is skipped when it comes up.
    order: VecDeque<(Millis, String)>,
}

impl Fresh {
    /// Keeps at most `TOTAL / shards` tickets (at least one).
    pub fn new(shards: usize) -> Self {
        Fresh { most: (TOTAL / shards.max(1)).max(1), tickets: HashMap::new(), order: VecDeque::new() }
    }

    /// `ticket` was just committed (at `at`) by its shard. Stamps arrive about in commit order; one that comes a
    /// little out of order is only dropped a little late.
    pub fn insert(&mut self, ticket: Arc<Ticket>, at: Millis) {
        self.order.push_back((at, ticket.ticket_id.clone()));
        self.tickets.insert(ticket.ticket_id.clone(), (at, ticket));
        while self.order.len() > self.most {
            self.pop_oldest();
        }
    }

    /// The committed copy of `id`, if kept; it is no longer kept (its actor holds it from now on).
    pub fn take(&mut self, id: &str) -> Option<Arc<Ticket>> {
        self.tickets.remove(id).map(|(_, t)| t)
    }

    /// Drop what was kept longer than `max_age` ms.
    pub fn expire(&mut self, now: Millis, max_age: Millis) {
        while self.order.front().is_some_and(|(at, _)| now - at >= max_age) {
            self.pop_oldest();
        }
    }

    /// Keep only the tickets `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.tickets.retain(|id, _| keep(id));
        self.order.retain(|(_, id)| keep(id));
    }

    fn pop_oldest(&mut self) {
        if let Some((at, id)) = self.order.pop_front() {
            // Only the entry this position was made for: the id may have been taken and created again since.
            if self.tickets.get(&id).is_some_and(|(kept_at, _)| *kept_at == at) {
                self.tickets.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::validation::{tests::sample_json, NewTicket};

    fn ticket(id: &str) -> Arc<Ticket> {
        let mut v = sample_json();
        v["ticket_id"] = id.into();
        Arc::new(serde_json::from_value::<NewTicket>(v).unwrap().validate(1_000, String::new).unwrap().ticket)
    }

    #[test]
    fn kept_until_taken_outnumbered_or_too_old() {
        let mut f = Fresh::new(16);
        let most = TOTAL / 16;
        f.insert(ticket("a"), 0);
        f.insert(ticket("b"), 10);
        assert_eq!(f.take("a").unwrap().ticket_id, "a");
        assert!(f.take("a").is_none(), "taken once");
        f.expire(100, 90);
        assert!(f.tickets.is_empty(), "b was kept 90 ms");
        for i in 0..most + 5 {
            f.insert(ticket(&format!("t{i}")), 200);
        }
        assert_eq!(f.tickets.len(), most);
        assert!(f.take("t0").is_none() && f.take(&format!("t{}", most + 4)).is_some(), "the oldest go first");
    }

    /// A ticket taken and kept again is not dropped by its first entry's place in the order.
    #[test]
    fn a_stale_position_does_not_drop_a_newer_entry() {
        let mut f = Fresh::new(1);
        f.insert(ticket("a"), 0);
        f.take("a");
        f.insert(ticket("a"), 50);
        f.expire(60, 30);
        assert!(f.take("a").is_some(), "kept 10 ms only");
        f.insert(ticket("b"), 70);
        f.retain(|id| id != "b");
        assert!(f.tickets.is_empty());
    }
}
