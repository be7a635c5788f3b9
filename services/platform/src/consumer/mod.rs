//! The kit of the services that consume through the [`inbox`] (and reply
//! through the [`outbox`]): their database with the libraries' schemas, the
//! gRPC router with health, reflection and the dead-letter console, the
//! consumer, the relay, and the health names that follow them, all handed to
//! the run loop ([`crate::run::Service`]). A service adds its own API and handler:
//!
//! 1. [`Kit::start`] logs the start, creates and migrates the database ([`Schemas`])
//!    from the settings every such service reads alike ([`ServerConfig`]);
//! 2. the service builds its handler on [`Kit::registry`] and its API on [`Kit::pool`];
//! 3. [`Kit::serve`] binds the ports and returns the [`App`] to run.
//!
//! [`run`] answers the commands every consumer service's binary shares ([`crate::cli::Command`]).

mod app;
mod config;

use std::{net::SocketAddr, path::Path, process::ExitCode};

use anyhow::Context;
use inbox::{InboxConfig, admin};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgPool, migrate::Migrator, postgres::PgConnectOptions};
use telemetry::metrics::Registry;

pub use app::App;
pub use config::ServerConfig;

use crate::{cli::Command, tls::ServerTls};

/// What names a consumer service.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The binary's name (`payments`): log lines, the metrics resource, the run loop.
    pub name: &'static str,
    /// The prefix of its variables, without the underscore (`PAYMENTS`), as warnings name them.
    pub prefix: &'static str,
    /// Its gRPC service; this name and `""` follow the database.
    pub service_name: &'static str,
    /// The encoded `FileDescriptorSet` reflection describes that service from.
    pub descriptor_set: &'static [u8],
    /// The health name that follows the consumer's broker connection.
    pub consumer_health_name: &'static str,
    /// The health name of the outbox relay, for a service that runs one.
    pub relay_health_name: &'static str,
}

/// The schemas a consumer service's database carries: the outbox's (when it
/// replies through one), the inbox's, then its own migrations.
#[derive(Debug)]
pub struct Schemas {
    /// Whether the outbox's schema is applied.
    pub outbox: bool,
    /// The service's own migrations (`sqlx::migrate!`).
    pub migrator: Migrator,
    /// Versions the database may list that moved out of `migrator` (see [`crate::db::migrate_tolerating`]).
    pub retired: &'static [i64],
}

/// Brings `pool`'s database to the current `schemas`.
pub async fn migrate(pool: &PgPool, schemas: Schemas) -> anyhow::Result<()> {
    // One connection for all of them: a second would stay open in the pool.
    let mut conn = pool.acquire().await.context("cannot connect to the database")?;
    if schemas.outbox {
        outbox::schema::apply(&mut conn).await.context("cannot apply the outbox schema")?;
    }
    inbox::schema::apply(&mut conn).await.context("cannot apply the inbox schema")?;
    crate::db::migrate_tolerating(&mut conn, schemas.migrator, schemas.retired).await
}

/// The database opened, migrated and measured; the ports not bound yet.
pub struct Kit {
    spec: Spec,
    server: ServerConfig,
    inbox: InboxConfig,
    pool: PgPool,
    db_options: PgConnectOptions,
    registry: Registry,
}

impl Kit {
    /// Logs the start, creates the database if needed, opens a pool and
    /// applies `schemas`; `inbox` is the consumer [`Kit::serve`] runs.
    pub async fn start(
        spec: Spec,
        server: &ServerConfig,
        inbox: &InboxConfig,
        schemas: Schemas,
    ) -> anyhow::Result<Self> {
        tracing::info!(
            database = %infra::redact::redact_urls(server.database_url.expose_secret()),
            broker = %infra::redact::redact_url(inbox.amqp_url.expose_secret()),
            queue = %inbox.queue,
            "starting {}", spec.name
        );
        let pool = crate::db::connect(&server.database_url, &server.pool).await?;
        migrate(&pool, schemas).await?;
        let db_options = crate::db::connect_options(&server.database_url)?;
        let registry = Registry::new();
        telemetry::metrics::target_info(&registry, &telemetry::resource(spec.name));
        Ok(Self { spec, server: server.clone(), inbox: inbox.clone(), pool, db_options, registry })
    }

    /// The service's pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Where the service's own metrics go.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The console's bearer token in the file `path` (named by the variable
/// `variable`), surrounding whitespace removed. The error names the file, never its content.
pub fn read_admin_token(variable: &str, path: &Path) -> anyhow::Result<SecretString> {
    let raw = std::fs::read_to_string(path)
        .map_err(|err| anyhow::anyhow!("cannot read {variable} {}: {err}", path.display()))?;
    let token = raw.trim();
    anyhow::ensure!(!token.is_empty(), "{variable} {} is empty", path.display());
    Ok(SecretString::from(token.to_owned()))
}

/// Moves up to `limit` (all when None) dead letters back to the consumer's
/// main queue, with their dead-letter headers removed and attempts reset.
pub async fn replay_dead_letters(inbox: &InboxConfig, limit: Option<u64>) -> anyhow::Result<u64> {
    inbox::replay_dead_letters(&inbox.amqp_url, &inbox.topology(), limit).await
}

/// Runs `command` for a service whose consumer is `inbox` and whose gRPC
/// port is `grpc_addr`; `app` is awaited only to serve.
pub async fn run(
    command: Command,
    inbox: &InboxConfig,
    grpc_addr: SocketAddr,
    app: impl Future<Output = anyhow::Result<App>>,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => app.await?.run_until_stopped(crate::shutdown::on_signal()).await?,
        Command::ReplayDlq { limit } => {
            let moved = replay_dead_letters(inbox, limit).await?;
            println!("replayed {moved} message(s) from {}.dlq to {}", inbox.queue, inbox.queue);
        }
        Command::Healthcheck => return Ok(crate::cli::healthcheck(grpc_addr).await),
    }
    Ok(ExitCode::SUCCESS)
}

/// The dead-letter console's credentials: the token, and the client names
/// (which need mutual TLS to mean anything); a warning for each half missing.
fn admin_auth(spec: &Spec, server: &ServerConfig, token: Option<SecretString>) -> admin::BearerAuth {
    let prefix = spec.prefix;
    if token.is_none() && server.admin_client_names.is_empty() {
        tracing::warn!("no {prefix}_ADMIN_TOKEN_FILE: the dead-letter console refuses every call");
    }
    if !server.admin_client_names.is_empty() && !server.tls.as_ref().is_some_and(ServerTls::is_mutual) {
        tracing::warn!(
            "{prefix}_ADMIN_CLIENT_NAMES is set without mutual TLS ({prefix}_TLS_CLIENT_CA_FILE): no client certificate is verified, so none is accepted"
        );
    }
    admin::BearerAuth::new(token).with_client_names(server.admin_client_names.clone())
}
