//! The actor system's integration tests, one module per area, in one test binary (one link instead of three).
//! Each test runs its own actix system on an in-memory store and a manual clock, and nothing here sets
//! process-wide state, so the tests share a process safely.

// The shared harness stays in tests/common (it is not a test binary of its own: no main.rs there).
#[path = "../common/mod.rs"]
mod common;

mod actor_system;
mod outbox;
mod retention;
mod sla;
