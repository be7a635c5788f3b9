//! Logging: JSON lines by default (one object per line, with the fields of
//! every enclosing span, so the correlation id rides on each line), a human
//! format with `LOG_FORMAT=pretty`, filtered by `RUST_LOG`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Flushes telemetry when dropped; keep it alive for the life of `main`.
#[must_use = "telemetry is flushed when the guard is dropped"]
pub struct Guard {
    _private: (),
}

/// Installs the global subscriber for `service`. Safe to call more than once
/// (tests): later calls leave the first subscriber in place.
pub fn init(service: &'static str) -> Guard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn,h2=warn,tower=warn,hyper=warn"));
    let pretty = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("pretty"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if pretty {
        registry.with(fmt::layer().with_target(false)).try_init()
    } else {
        registry.with(fmt::layer().json().flatten_event(true).with_current_span(true).with_span_list(false)).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
    Guard { _private: () }
}

/// For test binaries: logs only when `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var("TEST_LOG").is_ok() {
        let _ = init("test");
    }
}
