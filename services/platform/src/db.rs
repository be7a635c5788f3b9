//! Database start-up: create the service's database when it is missing, open a
//! pool, apply the service's migrations.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use infra::pg::PoolSettings;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    ConnectOptions, Connection, PgConnection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Connection options from a URL, with statement logging turned down (every
/// query at INFO would drown the service's own lines).
pub fn connect_options(url: &SecretString) -> anyhow::Result<PgConnectOptions> {
    let url = SecretString::from(without_unknown_parameters(url.expose_secret()));
    let options = PgConnectOptions::from_str(url.expose_secret())
        .map_err(|err| anyhow::anyhow!("database url is invalid: {}", infra::redact::redact_url(&err.to_string())))?;
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
    let pool = connect(url, settings).await?;
    migrator.run(&pool).await.context("cannot apply migrations")?;
    Ok(pool)
}

/// Runs `migrator` on `conn`. Among the versions the database lists as
/// applied, only `retired` ones (migrations that moved out of the service,
/// e.g. into a library's own schema) may be missing from `migrator`; any other
/// still refuses the start, as it would without them.
pub async fn migrate_tolerating(
    conn: &mut PgConnection,
    mut migrator: Migrator,
    retired: &[i64],
) -> anyhow::Result<()> {
    let history: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&mut *conn).await?;
    if history {
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations").fetch_all(&mut *conn).await?;
        let unknown: Vec<i64> = applied
            .into_iter()
            .filter(|version| !retired.contains(version) && !migrator.iter().any(|m| m.version == *version))
            .collect();
        if !unknown.is_empty() {
            anyhow::bail!("the database has migrations this release does not know: {unknown:?}");
        }
    }
    migrator.set_ignore_missing(true);
    migrator.run(conn).await.context("cannot apply migrations")?;
    Ok(())
}

/// Creates the database if needed and opens a pool, for a service that
/// applies libraries' schemas before its own migrations.
pub async fn connect(url: &SecretString, settings: &PoolSettings) -> anyhow::Result<PgPool> {
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
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

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
