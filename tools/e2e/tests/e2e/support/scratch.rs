//! A test's own RabbitMQ virtual host and database names, removed when the test ends.
//!
//! Other tests publish to `pulse.events` on the default vhost all the time; a
//! vhost per test keeps their messages (and ours) apart, so every count a test
//! asserts is its own.

use std::{process::Command, time::Duration};

use sqlx::{Connection, PgConnection, PgPool, postgres::PgPoolOptions};

pub(crate) struct Scratch {
    pub(crate) vhost: String,
    pub(crate) orders_db: String,
    pub(crate) notifications_db: String,
    pub(crate) payments_db: String,
    pub(crate) inventory_db: String,
}

impl Scratch {
    /// Creates the vhost (guest may use it); the services create their databases.
    pub(crate) async fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let vhost = format!("pulse-e2e-{id}");
        let scratch = Self {
            orders_db: format!("pulse_e2e_{id}_orders"),
            notifications_db: format!("pulse_e2e_{id}_notifications"),
            payments_db: format!("pulse_e2e_{id}_payments"),
            inventory_db: format!("pulse_e2e_{id}_inventory"),
            vhost,
        };
        let vhost = scratch.vhost.clone();
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(&["add_vhost", &vhost]);
            rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        })
        .await
        .expect("rabbitmqctl task");
        scratch
    }

    /// The broker URL for this test's vhost.
    pub(crate) fn amqp_url(&self) -> String {
        with_path(&testkit::amqp_url(), &self.vhost)
    }

    pub(crate) fn orders_db_url(&self) -> String {
        with_path(&testkit::database_url(), &self.orders_db)
    }

    pub(crate) fn notifications_db_url(&self) -> String {
        with_path(&testkit::database_url(), &self.notifications_db)
    }

    pub(crate) fn payments_db_url(&self) -> String {
        with_path(&testkit::database_url(), &self.payments_db)
    }

    pub(crate) fn inventory_db_url(&self) -> String {
        with_path(&testkit::database_url(), &self.inventory_db)
    }

    /// A small pool on the orders database (the service must have created it).
    pub(crate) async fn orders_pool(&self) -> PgPool {
        pool(&self.orders_db_url()).await
    }

    pub(crate) async fn notifications_pool(&self) -> PgPool {
        pool(&self.notifications_db_url()).await
    }

    /// A lapin connection to this test's vhost.
    pub(crate) async fn amqp(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect to the test's vhost")
    }
}

impl Drop for Scratch {
    /// Best effort, also after a failed assertion: the processes are gone or
    /// going (their handles drop first), so the databases are dropped WITH (FORCE).
    fn drop(&mut self) {
        let vhost = self.vhost.clone();
        let databases = [
            self.orders_db.clone(),
            self.notifications_db.clone(),
            self.payments_db.clone(),
            self.inventory_db.clone(),
        ];
        let server = testkit::database_url();
        // Blocking work on a thread of its own: Drop may run inside the test's runtime.
        let cleanup = std::thread::spawn(move || {
            let _ = try_rabbitmqctl(&["delete_vhost", &vhost]);
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async {
                let Ok(Ok(mut conn)) =
                    tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&server)).await
                else {
                    return;
                };
                for database in databases {
                    let sql = format!(r#"DROP DATABASE IF EXISTS "{database}" WITH (FORCE)"#);
                    let _ = tokio::time::timeout(Duration::from_secs(10), sqlx::query(&sql).execute(&mut conn)).await;
                }
                let _ = conn.close().await;
            });
        });
        let _ = cleanup.join();
    }
}

pub(crate) async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .unwrap_or_else(|err| panic!("connect to {url}: {err}"))
}

/// `url` with its path (database or vhost) replaced by `path`.
fn with_path(url: &str, path: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("url has a scheme");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}/{path}")
}

/// `rabbitmqctl` (root is needed to reach the node: directly, else through `sudo -n`).
fn rabbitmqctl(args: &[&str]) {
    if let Err(err) = try_rabbitmqctl(args) {
        panic!(
            "rabbitmqctl {}: {err} (the e2e tests make a RabbitMQ vhost per test; run them as root)",
            args.join(" ")
        );
    }
}

fn try_rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let program = std::env::var("PULSE_RABBITMQCTL").ok().unwrap_or_else(|| {
        let on_path = std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("rabbitmqctl")).find(|p| p.exists()));
        on_path.map_or_else(|| "/usr/sbin/rabbitmqctl".to_owned(), |p| p.display().to_string())
    });
    let run = |mut command: Command| -> Result<(), String> {
        let output = command.output().map_err(|err| err.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()))
        }
    };
    let mut direct = Command::new(&program);
    direct.args(args);
    run(direct).or_else(|first| {
        let mut sudo = Command::new("sudo");
        sudo.arg("-n").arg(&program).args(args);
        run(sudo).map_err(|_| first)
    })
}

#[cfg(test)]
mod tests {
    use super::with_path;

    #[test]
    fn paths_are_replaced() {
        assert_eq!(with_path("amqp://guest:guest@127.0.0.1:5672/%2f", "v"), "amqp://guest:guest@127.0.0.1:5672/v");
        assert_eq!(with_path("amqp://127.0.0.1:5672", "v"), "amqp://127.0.0.1:5672/v");
        assert_eq!(with_path("postgres://postgres@h:5432/postgres?x=1", "db"), "postgres://postgres@h:5432/db");
    }
}
