//! Structured JSON logs on stdout, filtered by LOG_LEVEL (a level such as `info`, or a full `EnvFilter`).

use tracing_subscriber::EnvFilter;

/// Install the global subscriber (once; later calls are ignored so tests can call it freely).
pub fn init(log_level: &str) {
    let filter = EnvFilter::try_new(log_level.to_lowercase()).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().json().flatten_event(true).with_env_filter(filter).try_init();
}
