//! What every ticket actor, shard and change shares: the store, the persistence actors, the clock, metrics,
//! the event bus, the SLA policy, the webhook registry and the readiness channel.

use std::sync::Arc;

use actix::prelude::*;

use crate::domain::events::EventBus;
use crate::domain::sla::SlaPolicy;
use crate::ports::clock::Clock;
use crate::ports::forward::Forwarder;
use crate::ports::store::TicketStore;
use crate::ports::trace::TraceHook;
use crate::system::metrics::ActorMetrics;
use crate::system::ownership::ShardTable;
use crate::system::persistence::PersistenceActor;
use crate::system::snapshots::Snapshots;
use crate::system::webhooks::WebhookRegistry;

/// What every ticket actor shares.
pub struct Env {
    pub store: Arc<dyn TicketStore>,
    /// The persistence actors; ticket `id` uses the one [`crate::system::routing::slot_of`] picks.
    pub persistence: Vec<Addr<PersistenceActor>>,
    pub clock: Arc<dyn Clock>,
    pub metrics: ActorMetrics,
    pub events: EventBus,
    pub sla: SlaPolicy,
    /// Subscriptions matched against every committed event (deliveries join the change's unit).
    pub webhooks: WebhookRegistry,
    /// Ids of tickets whose dependents may have just become ready or blocked (the router checks them), with
    /// the span of the change, so the dependents' announcements join its trace.
    pub readiness: tokio::sync::mpsc::UnboundedSender<(String, tracing::Span)>,
    /// The W3C `traceparent` of a span (None when spans are not exported); see [`TraceHook`].
    pub traceparent: TraceHook,
    /// Whether the actors open spans of their own (`ticket.handle`): only while spans are exported — a span
    /// per request costs a sizeable share of a create when nobody reads it.
    pub spans: bool,
    /// Which replica serves each virtual shard (everything local on one process); commits are fenced by it.
    pub ownership: Arc<ShardTable>,
    /// How requests for another replica's shards reach it.
    pub forwarder: Arc<dyn Forwarder>,
    /// The committed state of every live ticket, published by its actor (reads skip the actor).
    pub snapshots: Snapshots,
    /// How starting actors read their tickets (many in one store call).
    pub loader: crate::system::loader::Loader,
}
