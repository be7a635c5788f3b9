//! A RabbitMQ node of the test's own, from the installed broker, for what the
//! shared node must not be reconfigured for (a TLS listener): its own node
//! name, ports, data and log directories, no plugins. It runs as the broker's
//! user (sharing its Erlang cookie, so `rabbitmqctl -n` reaches it) when the
//! test runs as root. Dropping it stops the node and removes its directory.

use std::{path::PathBuf, process::Command, time::Duration};

use testkit::pki::Pki;

use super::{
    postgres::{is_root, run},
    process::free_port,
};

pub(crate) struct OwnRabbit {
    /// `rabbitmq-server` (through runuser), reaped when the node stops.
    server: std::process::Child,
    dir: PathBuf,
    node: String,
    port: u16,
}

impl OwnRabbit {
    /// A node whose only AMQP listener is TLS on 127.0.0.1, with a server
    /// certificate for `localhost` from `pki`; waits until it accepts work.
    pub(crate) fn start_with_tls(pki: &Pki) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("pulse-rabbit-{id}"));
        std::fs::create_dir_all(dir.join("log")).expect("create the node directory");
        let server = pki.server("rabbitmq");
        let port = free_port();
        let config = format!(
            "listeners.tcp = none\nlisteners.ssl.1 = 127.0.0.1:{port}\nloopback_users = none\n\
             ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
             ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
            pki.ca_file().display(),
            server.cert_file.display(),
            server.key_file.display()
        );
        std::fs::write(dir.join("rabbitmq.conf"), config).expect("write the node's configuration");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("write the plugin list");
        if let Some(user) = broker_user() {
            for path in [dir.as_path(), pki.dir()] {
                run(Command::new("chown").args(["-R", &user]).arg(path));
            }
        }
        let node = format!("pulse-tls-{}@{}", &id[..8], node_host());
        let dist_port = free_port();
        let mut command = as_broker("rabbitmq-server");
        command
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", free_port().to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let server = command.spawn().expect("start rabbitmq-server");
        let node = Self { server, dir, node, port };
        // await_startup fails at once while the node is not up to answer it.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !node.ctl(&["-q", "await_startup"]) {
            assert!(std::time::Instant::now() < deadline, "the node did not start; its log:\n{}", node.log());
            std::thread::sleep(Duration::from_millis(500));
        }
        node
    }

    /// An `amqps://` URL for the default vhost, by the name the certificate carries.
    pub(crate) fn url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.port)
    }

    fn ctl(&self, args: &[&str]) -> bool {
        as_broker("rabbitmqctl").args(["-n", &self.node]).args(args).output().is_ok_and(|out| out.status.success())
    }

    fn log(&self) -> String {
        std::fs::read_dir(self.dir.join("log"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        if !self.ctl(&["-q", "stop"]) {
            let _ = Command::new("pkill").args(["-f", &self.node]).status();
        }
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The broker's user when we are root (its HOME holds the Erlang cookie).
fn broker_user() -> Option<String> {
    let exists = Command::new("id").arg("rabbitmq").output().is_ok_and(|out| out.status.success());
    (is_root() && exists).then(|| "rabbitmq".to_owned())
}

/// `tool` (from the broker's sbin) as the broker's user with its HOME, or as we are.
fn as_broker(tool: &str) -> Command {
    let program = ["/usr/lib/rabbitmq/bin", "/usr/sbin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(tool))
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(tool));
    match broker_user() {
        Some(user) => {
            let mut command = Command::new("runuser");
            let home = Command::new("getent")
                .args(["passwd", &user])
                .output()
                .ok()
                .and_then(|out| String::from_utf8_lossy(&out.stdout).split(':').nth(5).map(str::to_owned))
                .unwrap_or_else(|| "/var/lib/rabbitmq".to_owned());
            command.args(["-u", &user, "--", "env", &format!("HOME={home}")]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// The short host name Erlang's node names use, when it resolves.
fn node_host() -> String {
    let host =
        Command::new("hostname").arg("-s").output().map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    match host {
        Ok(host)
            if !host.is_empty()
                && Command::new("getent").args(["hosts", &host]).output().is_ok_and(|o| o.status.success()) =>
        {
            host
        }
        _ => "localhost".to_owned(),
    }
}
