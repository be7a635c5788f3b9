//! The three-node RabbitMQ cluster of `build-support/scripts/rabbitmq-cluster.sh`,
//! brought up for a test and always taken down again: the guard runs `down`
//! when it drops, after a failed assertion too.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

/// A running cluster; `down` when dropped.
pub(crate) struct Cluster {
    /// One AMQP URL per node, comma-separated, as `up` printed them.
    pub(crate) urls: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../build-support/scripts/rabbitmq-cluster.sh")
}

/// Runs the script with `args`; panics, with its output, unless it succeeds.
fn run(args: &[&str]) -> Output {
    let output = Command::new("bash").arg(script()).args(args).output().expect("run rabbitmq-cluster.sh");
    assert!(
        output.status.success(),
        "rabbitmq-cluster.sh {}: {}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Cluster {
    /// `up`: starts the three nodes (a fresh cluster: any left over is taken down first).
    pub(crate) async fn up() -> Self {
        tokio::task::spawn_blocking(|| {
            let _ = Command::new("bash").arg(script()).arg("down").output();
            let output = run(&["up"]);
            let stdout = String::from_utf8_lossy(&output.stdout);
            let urls = stdout.lines().last().expect("up prints the URLs last").trim().to_owned();
            assert_eq!(urls.split(',').count(), 3, "one URL per node: {urls}");
            Self { urls }
        })
        .await
        .expect("cluster task")
    }

    /// Node `n` (1-3) stopped hard: its Erlang VM SIGKILLed.
    pub(crate) async fn kill(&self, n: u8) {
        let n = n.to_string();
        tokio::task::spawn_blocking(move || run(&["kill", &n])).await.expect("cluster task");
    }

    /// Node `n` started again; returns once it runs (it rejoins with its data).
    pub(crate) async fn start(&self, n: u8) {
        let n = n.to_string();
        tokio::task::spawn_blocking(move || run(&["start", &n])).await.expect("cluster task");
    }

    /// The node (`pulse-N@host`) leading `queue` in the default vhost.
    pub(crate) async fn leader(&self, queue: &str) -> String {
        let queue = queue.to_owned();
        let output = tokio::task::spawn_blocking(move || run(&["leader", &queue])).await.expect("cluster task");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Moves the leader of `queue` (default vhost) to another node; returns the new leader.
    pub(crate) async fn move_leader(&self, queue: &str) -> String {
        let queue = queue.to_owned();
        let output = tokio::task::spawn_blocking(move || run(&["move-leader", &queue])).await.expect("cluster task");
        String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or_default().trim().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Blocking on a thread of its own: Drop may run inside the test's runtime.
        let down = std::thread::spawn(|| Command::new("bash").arg(script()).arg("down").output());
        let _ = down.join();
    }
}
