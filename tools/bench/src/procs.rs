//! The services under test, run as real processes from the same build as the bench.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

pub(crate) struct Service {
    pub(crate) name: &'static str,
    pub(crate) addr: SocketAddr,
    child: Child,
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?.parent().context("bench has a directory")?.to_path_buf();
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p orders -p notifications -p payments -p inventory -p bench`",
            path.display()
        );
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Service {
    /// Starts `name` (a Pulse binary) with `env`, on free ports, and
    /// waits until its health check answers SERVING.
    pub(crate) async fn start(name: &'static str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let prefix = name.to_uppercase();
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("pulse-bench-{name}.log")))?;
        let mut command = Command::new(binary(name)?);
        command
            .env(format!("{prefix}_GRPC_ADDR"), addr.to_string())
            .env(format!("{prefix}_METRICS_ADDR"), format!("127.0.0.1:{}", free_port()?))
            .env("RUST_LOG", std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().with_context(|| format!("cannot start {name}"))?;
        let service = Self { name, addr, child };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if platform::grpc::probe(addr, "").await.unwrap_or(false) {
                return Ok(service);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{name} did not become SERVING within 30 s (see {}/pulse-bench-{name}.log)",
            std::env::temp_dir().display()
        )
    }

    /// Peak resident set size so far, in MiB (VmHWM).
    pub(crate) fn peak_rss_mib(&self) -> f64 {
        let Some(pid) = self.child.id() else { return 0.0 };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// SIGTERM, then wait for a clean exit.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await?;
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        if !status.success() {
            bail!("{} exited with {status} after SIGTERM", self.name);
        }
        Ok(())
    }
}
