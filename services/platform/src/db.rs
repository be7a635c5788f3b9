//! Database start-up: create the service's database when it is missing, open a
//! pool, apply the service's migrations.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    ConnectOptions, Connection, PgConnection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

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

/// Connection options from a URL, with statement logging turned down (every
/// query at INFO would drown the service's own lines).
pub fn connect_options(url: &SecretString) -> anyhow::Result<PgConnectOptions> {
    let url = SecretString::from(without_unknown_parameters(url.expose_secret()));
    let options = PgConnectOptions::from_str(url.expose_secret())
        .map_err(|err| anyhow::anyhow!("database url is invalid: {}", crate::config::redact_url(&err.to_string())))?;
    Ok(options
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1)))
}

/// The query parameters sqlx's Postgres URL parser reads (`options[...]` too).
const KNOWN_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// `url` without the query parameters sqlx does not read: sqlx logs the value
/// of each one it ignores, and a libpq-only `sslpassword` would reach the log
/// in clear. They are named (never their values) in a warning instead.
fn without_unknown_parameters(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else { return url.to_owned() };
    let (known, unknown): (Vec<_>, Vec<_>) = parsed
        .query_pairs()
        .into_owned()
        .partition(|(key, _)| KNOWN_PARAMETERS.contains(&key.as_str()) || key.starts_with("options["));
    if unknown.is_empty() {
        return url.to_owned();
    }
    let ignored: Vec<&str> = unknown.iter().map(|(key, _)| key.as_str()).collect();
    tracing::warn!(parameters = ?ignored, "ignoring database url parameters the driver does not support");
    if known.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(known);
    }
    parsed.to_string()
}

/// Creates the database named in `options` unless it exists. Safe to race
/// with other replicas doing the same. The database itself is tried first:
/// on managed Postgres the service's role often may not connect to the
/// `postgres` maintenance database, which is only needed to create it.
pub async fn create_database_if_missing(options: &PgConnectOptions) -> anyhow::Result<()> {
    match PgConnection::connect_with(options).await {
        Ok(conn) => {
            conn.close().await.ok();
            return Ok(());
        }
        // invalid_catalog_name: the database does not exist yet.
        Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("3D000") => {}
        Err(err) => return Err(err).context("cannot connect to the database"),
    }
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .with_context(|| format!("cannot connect to the postgres maintenance database to create database {name}"))?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        let statement = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&statement).execute(&mut admin).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another replica created it between our check and our CREATE.
            Err(sqlx::Error::Database(err)) if matches!(err.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(err) => return Err(err).context("cannot create the database"),
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// Creates the database if needed, opens a pool and applies `migrator`.
pub async fn connect_and_migrate(
    url: &SecretString,
    settings: &PoolSettings,
    migrator: &Migrator,
) -> anyhow::Result<PgPool> {
    let options = connect_options(url)?;
    create_database_if_missing(&options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(settings.min_connections.min(settings.max_connections))
        .acquire_timeout(settings.acquire_timeout)
        // A failed query already tells us a connection is broken; pinging on
        // every checkout would add a round trip to every request.
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .context("cannot connect to the database")?;
    migrator.run(&pool).await.context("cannot apply migrations")?;
    Ok(pool)
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

    #[test]
    fn parameters_the_driver_ignores_are_dropped_before_it_can_log_them() {
        assert_eq!(
            without_unknown_parameters("postgres://h/db?user=u&sslpassword=s3cret&password=pw&options[x]=1"),
            "postgres://h/db?user=u&password=pw&options%5Bx%5D=1"
        );
        assert_eq!(without_unknown_parameters("postgres://h/db?sslpassword=s3cret"), "postgres://h/db");
        assert_eq!(
            without_unknown_parameters("postgres://u:p@h/db?sslmode=disable"),
            "postgres://u:p@h/db?sslmode=disable"
        );
        let options = connect_options(&SecretString::from("postgres://u@h/db?sslpassword=s3cret&password=pw")).unwrap();
        assert_eq!(options.get_username(), "u");
        assert_eq!(options.get_database(), Some("db"));
    }
}
