//! The execution ticket supervisor service: configuration, store adapters, the REST front end, token minting,
//! authentication, the gRPC front end and metrics around the actor system of the `actors` crate. See `docs/ARCHITECTURE.md`.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod grpc;
pub mod http;
pub mod kafka;
pub mod log_fields;
pub mod metrics;
pub mod otel;
pub mod ratelimit;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tracecontext;
pub mod webhooks;
