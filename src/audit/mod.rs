//! Audit sinks: where the [`OutboxShipper`](actors::shipper::OutboxShipper) ships the outbox. MongoDB when
//! `MONGODB_URI` is set; without it the store's own outbox table is the audit log (the history endpoints read
//! it either way).

pub mod mongo;
