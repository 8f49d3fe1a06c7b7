//! The integration tests of the service, one module per area, in ONE test binary: each binary links the whole
//! service, so eighteen of them cost eighteen links and as many copies on disk. Cargo runs the tests of a
//! binary as threads of one process, so nothing here may change process-wide state that another test sees
//! (the global tracing subscriber is installed once by `common`, and only as the plain JSON log; environment
//! variables are passed to child processes, never set on this one). The one test that must own its process
//! (OTLP export installs the process-global subscriber and turns span export on) is `tests/otel.rs`.

mod common;
mod webhook_support;

mod alerts;
mod api;
mod audit;
mod auth;
mod cluster;
mod compat;
mod console;
mod contract;
mod crash;
mod cross_toolchain;
mod grpc;
mod grpc_bad_input;
mod hardening;
mod hardening_transport;
mod k8s_manifests;
mod kafka;
mod kafka_events;
mod observability;
mod rate_limits;
mod retention;
mod store;
mod ticketctl;
mod ticketctl_webhooks;
mod tls;
mod webhook_alerts;
mod webhooks;
