//! Postgres connection primitives: how a pool is sized (and read from a
//! service's variables), and what an error
//! says about the connection it came on.

use std::time::Duration;

use crate::config::{ConfigErrors, millis_or, parse_or};

/// How a service sizes its pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// Connections kept open while idle (at most `max_connections`): a burst
    /// after a quiet spell must not wait for new connections to be set up,
    /// which on a busy server takes tens of milliseconds each.
    pub min_connections: u32,
    /// How long a request waits for a connection before it is answered UNAVAILABLE.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self { max_connections: 32, min_connections: 4, acquire_timeout: Duration::from_secs(3) }
    }
}

impl PoolSettings {
    /// The settings `<prefix>_DB_MAX_CONNECTIONS`, `<prefix>_DB_MIN_CONNECTIONS`
    /// and `<prefix>_DB_ACQUIRE_TIMEOUT_MS` give (prefix without its underscore:
    /// `PAYMENTS`), the defaults for those unset; every problem is added to `problems`.
    pub fn from_env(prefix: &str, problems: &mut ConfigErrors) -> Self {
        let defaults = Self::default();
        let (max, min, timeout) = (defaults.max_connections, defaults.min_connections, defaults.acquire_timeout);
        Self {
            max_connections: problems.check(parse_or(&format!("{prefix}_DB_MAX_CONNECTIONS"), max), max),
            min_connections: problems.check(parse_or(&format!("{prefix}_DB_MIN_CONNECTIONS"), min), min),
            acquire_timeout: problems.check(millis_or(&format!("{prefix}_DB_ACQUIRE_TIMEOUT_MS"), timeout), timeout),
        }
    }
}

/// Whether an error means the connection it came on is dead: the server ended
/// its session (`57P01` admin_shutdown on a restart or `pg_terminate_backend`,
/// `57P02` crash_shutdown, `57P03` cannot_connect_now, a class `08` connection
/// exception) or the exchange broke off (I/O, TLS, an unexpected message, the
/// socket's end). Such a connection must not serve another statement.
pub fn is_session_gone(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| matches!(code.as_ref(), "57P01" | "57P02" | "57P03") || code.starts_with("08"))
        }
        _ => false,
    }
}

/// Whether an error means the database could not be reached (as opposed to a
/// query it rejected).
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => true,
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P03" | "53300" | "08000" | "08003" | "08006"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_exchange_means_the_session_is_gone_and_a_busy_pool_does_not() {
        assert!(is_session_gone(&sqlx::Error::Io(std::io::ErrorKind::UnexpectedEof.into())));
        assert!(is_session_gone(&sqlx::Error::Protocol("unexpected message".into())));
        assert!(is_session_gone(&sqlx::Error::WorkerCrashed));
        // The pool's own verdicts say nothing about a connection.
        assert!(!is_session_gone(&sqlx::Error::PoolTimedOut));
        assert!(!is_session_gone(&sqlx::Error::PoolClosed));
        assert!(!is_session_gone(&sqlx::Error::RowNotFound));
    }
}
