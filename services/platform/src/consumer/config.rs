//! The settings every consumer service reads under its own prefix (without
//! its underscore, e.g. `PAYMENTS`):
//!
//! | variable | default |
//! |---|---|
//! | `<PREFIX>_GRPC_ADDR` / `<PREFIX>_METRICS_ADDR` | the service's ports |
//! | `<PREFIX>_DATABASE_URL` (or `_FILE`) | `postgres://postgres:postgres@localhost:5432/pulse_<prefix>` |
//! | `<PREFIX>_DB_MAX_CONNECTIONS` / `_MIN_CONNECTIONS` / `_ACQUIRE_TIMEOUT_MS` | `32` / `4` / `3000` |
//! | `<PREFIX>_TLS_CERT_FILE` / `_KEY_FILE` / `_CLIENT_CA_FILE` | unset (plaintext) |
//! | `<PREFIX>_ADMIN_CLIENT_NAMES` | empty (no client certificate is an admin credential) |

use std::{net::SocketAddr, time::Duration};

use infra::{
    config::{ConfigErrors, addr_or, names_or_none, secret_url_or},
    pg::PoolSettings,
};
use secrecy::SecretString;

use crate::tls::ServerTls;

/// Ports, database, health probe, TLS and the console's client names.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Port 0 binds an ephemeral port (see [`super::App::grpc_addr`]).
    pub grpc_addr: SocketAddr,
    /// `GET /metrics` (Prometheus text); port 0 binds an ephemeral port.
    pub metrics_addr: SocketAddr,
    /// The service's database, created at start when missing.
    pub database_url: SecretString,
    /// How the pool is sized.
    pub pool: PoolSettings,
    /// How often the health check probes the database.
    pub health_interval: Duration,
    /// TLS on the gRPC port (`<PREFIX>_TLS_*`); None serves plaintext.
    pub tls: Option<ServerTls>,
    /// With mutual TLS, the client certificate names (subject common name or
    /// DNS subject alternative name) the dead-letter console also accepts as a credential.
    pub admin_client_names: Vec<String>,
}

impl ServerConfig {
    /// The settings the `<prefix>_*` variables give, `grpc_addr` and
    /// `metrics_addr` the default ports; every problem is added to `problems`.
    pub fn from_env(prefix: &str, grpc_addr: &str, metrics_addr: &str, problems: &mut ConfigErrors) -> Self {
        let p = problems;
        let any_port = SocketAddr::from(([0, 0, 0, 0], 0));
        let database = format!("postgres://postgres:postgres@localhost:5432/pulse_{}", prefix.to_lowercase());
        Self {
            grpc_addr: p.check(addr_or(&format!("{prefix}_GRPC_ADDR"), grpc_addr), any_port),
            metrics_addr: p.check(addr_or(&format!("{prefix}_METRICS_ADDR"), metrics_addr), any_port),
            database_url: p.check(secret_url_or(&format!("{prefix}_DATABASE_URL"), &database), SecretString::default()),
            pool: PoolSettings::from_env(prefix, p),
            health_interval: Duration::from_secs(1),
            tls: p.check(ServerTls::from_env(prefix), None),
            admin_client_names: names_or_none(&format!("{prefix}_ADMIN_CLIENT_NAMES")),
        }
    }
}
