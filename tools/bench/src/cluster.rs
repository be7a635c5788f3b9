//! The local three-node RabbitMQ cluster of build-support/scripts/rabbitmq-cluster.sh,
//! taken down again when its guard drops (after a failed phase too).

use std::{path::PathBuf, process::Command};

use anyhow::Context;

pub(crate) struct Cluster {
    /// One AMQP URL per node, comma-separated.
    pub(crate) urls: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../build-support/scripts/rabbitmq-cluster.sh")
}

impl Cluster {
    /// `up`; its last line is the URLs.
    pub(crate) fn up() -> anyhow::Result<Self> {
        eprintln!("bench: starting a three-node RabbitMQ cluster");
        let output = Command::new("bash").arg(script()).arg("up").output().context("run rabbitmq-cluster.sh")?;
        anyhow::ensure!(
            output.status.success(),
            "rabbitmq-cluster.sh up: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let urls = stdout.lines().last().unwrap_or_default().trim().to_owned();
        anyhow::ensure!(urls.split(',').count() == 3, "rabbitmq-cluster.sh up printed no three URLs: {urls:?}");
        Ok(Self { urls })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("down").output();
    }
}
