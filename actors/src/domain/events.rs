//! Ticket events: what ticket actors announce after each committed change, for watchers (gRPC WatchTickets)
//! and, later, webhooks, SLA alerting and the audit trail.
//!
//! A `tokio::sync::broadcast` channel: publishing never waits for a subscriber, so a slow watcher can only fall
//! behind (and be told so with `Lagged`), never slow a ticket down.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::domain::enums::TicketStatus;
use crate::domain::model::{Millis, Ticket};

pub use crate::domain::enums::EventKind;

/// One thing that happened to a ticket.
#[derive(Debug, Clone)]
pub struct TicketEvent {
    pub kind: EventKind,
    /// The ticket after the change.
    pub ticket: Arc<Ticket>,
    /// The status before the change (None for a create).
    pub from: Option<TicketStatus>,
    /// Who caused it: a token subject, `kafka`, `system`.
    pub actor: Arc<str>,
    pub at: Millis,
    /// Extra facts (progress, message); `Null` when none.
    pub details: serde_json::Value,
}

impl TicketEvent {
    /// The event name for a committed change `before → after`.
    pub fn status_kind(before: &Ticket, after: &Ticket) -> EventKind {
        use TicketStatus::*;
        match after.status {
            Running => EventKind::Started,
            Completed => EventKind::Completed,
            Failed => EventKind::Failed,
            Pending if after.retry_count == before.retry_count => EventKind::Preempted,
            Pending => EventKind::Retry,
            Cancelled => EventKind::Cancelled,
            Compensating => EventKind::Compensating,
            Compensated => EventKind::Compensated,
        }
    }
}

/// The publish side; cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<TicketEvent>,
}

impl EventBus {
    /// `capacity`: events a subscriber may fall behind before it is told it lagged.
    pub fn new(capacity: usize) -> Self {
        EventBus { tx: broadcast::channel(capacity.max(16)).0 }
    }

    pub fn publish(&self, event: TicketEvent) {
        // No subscriber is not an error.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<TicketEvent> {
        self.tx.subscribe()
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::EventKind;

    #[test]
    fn every_kind_has_its_own_name() {
        let names: std::collections::HashSet<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        assert!(names.iter().all(|n| n.starts_with("ticket.")));
    }
}
