//! Ticket events: what ticket actors announce after each committed change, for watchers (gRPC WatchTickets)
//! and, later, webhooks, SLA alerting and the audit trail.
//!
//! A `tokio::sync::broadcast` channel: publishing never waits for a subscriber, so a slow watcher can only fall
//! behind (and be told so with `Lagged`), never slow a ticket down.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::domain::enums::TicketStatus;
use crate::domain::model::{Millis, Ticket};

/// What happened to a ticket: the kind of its events, and so of their audit records, Kafka messages and webhooks,
/// where it is written as text (`ticket.created`, …: [`EventKind::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Created,
    /// Every dependency COMPLETED (or none): a worker may take it.
    Ready,
    /// A dependency ended without completing.
    Blocked,
    Started,
    Completed,
    Failed,
    /// Back to PENDING for another attempt.
    Retry,
    /// Back to PENDING without using an attempt.
    Preempted,
    Cancelled,
    Compensating,
    Compensated,
    SlaWarning,
    SlaBreached,
    /// An attempt timed out and the status machine could not act on it.
    SlaTimeout,
    StartOverdue,
    /// A worker's progress report (watchers and the audit trail only).
    Progress,
    /// A worker's result for an attempt that had already timed out (watchers and the audit trail only).
    LateResultRefused,
}

impl EventKind {
    /// Every kind; the webhook-subscribable ones first, in the order `GET /webhooks/event-types` lists them.
    pub const ALL: [EventKind; 17] = {
        use EventKind::*;
        [
            Created,
            Ready,
            Blocked,
            Started,
            Completed,
            Failed,
            Retry,
            Preempted,
            Cancelled,
            Compensating,
            Compensated,
            SlaWarning,
            SlaBreached,
            SlaTimeout,
            StartOverdue,
            Progress,
            LateResultRefused,
        ]
    };

    /// How many of [`EventKind::ALL`] (the first ones) a webhook subscription may ask for.
    pub const SUBSCRIBABLE: usize = 15;

    pub const fn as_str(self) -> &'static str {
        use EventKind::*;
        match self {
            Created => "ticket.created",
            Ready => "ticket.ready",
            Blocked => "ticket.blocked",
            Started => "ticket.started",
            Completed => "ticket.completed",
            Failed => "ticket.failed",
            Retry => "ticket.retry",
            Preempted => "ticket.preempted",
            Cancelled => "ticket.cancelled",
            Compensating => "ticket.compensating",
            Compensated => "ticket.compensated",
            SlaWarning => "ticket.sla_warning",
            SlaBreached => "ticket.sla_breached",
            SlaTimeout => "ticket.sla_timeout",
            StartOverdue => "ticket.start_overdue",
            Progress => "ticket.progress",
            LateResultRefused => "ticket.late_result_refused",
        }
    }

    /// The names of the subscribable kinds (a constant, for `EVENT_TYPES`).
    pub const fn subscribable_names() -> [&'static str; Self::SUBSCRIBABLE] {
        let mut names = [""; Self::SUBSCRIBABLE];
        let mut i = 0;
        while i < Self::SUBSCRIBABLE {
            names[i] = Self::ALL[i].as_str();
            i += 1;
        }
        names
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
}

#[cfg(test)]
mod tests {
    use super::EventKind;

    #[test]
    fn every_kind_has_its_own_name_and_only_watcher_kinds_are_not_subscribable() {
        let names: std::collections::HashSet<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        assert!(names.iter().all(|n| n.starts_with("ticket.")));
        let watcher_only = &EventKind::ALL[EventKind::SUBSCRIBABLE..];
        assert_eq!(watcher_only, [EventKind::Progress, EventKind::LateResultRefused]);
    }
}
