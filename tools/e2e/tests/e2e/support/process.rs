//! The real `orders`, `notifications`, `payments` and `inventory` binaries as child processes.
//!
//! Each runs with a cleared environment plus what the test sets, on a port
//! picked for it (kept across restarts, so clients reconnect to the same
//! address), its output kept in memory (printed live with `TEST_LOG`, and the
//! tail printed when the test fails). Children are killed when dropped.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
};

use super::{api, scratch::Scratch};

/// How long a process may take to start (create and migrate its database, bind, connect).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd process may take to finish its in-flight work.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Orders,
    Notifications,
    Payments,
    Inventory,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Self::Orders => "orders",
            Self::Notifications => "notifications",
            Self::Payments => "payments",
            Self::Inventory => "inventory",
        }
    }

    fn addr_var(self) -> &'static str {
        match self {
            Self::Orders => "ORDERS_GRPC_ADDR",
            Self::Notifications => "NOTIFICATIONS_GRPC_ADDR",
            Self::Payments => "PAYMENTS_GRPC_ADDR",
            Self::Inventory => "INVENTORY_GRPC_ADDR",
        }
    }
}

/// What to run, before it runs: the binary and its environment.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    kind: Kind,
    env: BTreeMap<String, String>,
}

impl Spec {
    /// Orders (API and relay in one process unless `ORDERS_ROLE` is set) with
    /// short relay intervals, on the test's database and vhost, without the
    /// saga (no payments to answer it): its orders end at CREATED, with their
    /// OrderCreated event, as `SAGA_ENABLED=false` documents.
    pub(crate) fn orders(scratch: &Scratch) -> Self {
        Self { kind: Kind::Orders, env: BTreeMap::new() }
            .env("SAGA_ENABLED", "false")
            .env("ORDERS_DATABASE_URL", &scratch.orders_db_url())
            .env("AMQP_URL", &scratch.amqp_url())
            .env("ORDERS_METRICS_ADDR", "127.0.0.1:0")
            .env("ORDERS_DB_MAX_CONNECTIONS", "8")
            .env("OUTBOX_POLL_INTERVAL_MS", "200")
            .env("OUTBOX_BACKOFF_MAX_MS", "1000")
    }

    /// Notifications with short retry tiers, on the test's database and vhost.
    pub(crate) fn notifications(scratch: &Scratch) -> Self {
        Self { kind: Kind::Notifications, env: BTreeMap::new() }
            .env("NOTIFICATIONS_DATABASE_URL", &scratch.notifications_db_url())
            .env("AMQP_URL", &scratch.amqp_url())
            .env("NOTIFICATIONS_METRICS_ADDR", "127.0.0.1:0")
            .env("NOTIFICATIONS_DB_MAX_CONNECTIONS", "4")
            .env("NOTIFICATIONS_RETRY_DELAYS_MS", "200,1000")
    }

    /// Payments with short retry tiers and a fast relay, on the test's database and vhost.
    pub(crate) fn payments(scratch: &Scratch) -> Self {
        Self { kind: Kind::Payments, env: BTreeMap::new() }
            .env("PAYMENTS_DATABASE_URL", &scratch.payments_db_url())
            .env("AMQP_URL", &scratch.amqp_url())
            .env("PAYMENTS_METRICS_ADDR", "127.0.0.1:0")
            .env("PAYMENTS_DB_MAX_CONNECTIONS", "6")
            .env("OUTBOX_POLL_INTERVAL_MS", "200")
            .env("OUTBOX_BACKOFF_MAX_MS", "1000")
    }

    /// Inventory with a fast relay, on the test's database and vhost.
    pub(crate) fn inventory(scratch: &Scratch) -> Self {
        Self { kind: Kind::Inventory, env: BTreeMap::new() }
            .env("INVENTORY_DATABASE_URL", &scratch.inventory_db_url())
            .env("AMQP_URL", &scratch.amqp_url())
            .env("INVENTORY_METRICS_ADDR", "127.0.0.1:0")
            .env("INVENTORY_DB_MAX_CONNECTIONS", "6")
            .env("OUTBOX_POLL_INTERVAL_MS", "200")
            .env("OUTBOX_BACKOFF_MAX_MS", "1000")
    }

    pub(crate) fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// The health names that must be SERVING before the process counts as
    /// started: the server's, and the relay's or the consumer's (its broker
    /// connection, so the queue exists before anything is published).
    fn ready_names(&self) -> Vec<&'static str> {
        match self.kind {
            Kind::Orders if self.env.get("ORDERS_ROLE").is_some_and(|r| r == "api") => vec![""],
            // With the saga, its reply consumer too: the participants' replies need its queue.
            Kind::Orders if self.env.get("SAGA_ENABLED").is_some_and(|on| on == "true") => {
                vec!["", "pulse.orders.v1.OutboxRelay", "pulse.orders.v1.SagaConsumer"]
            }
            Kind::Orders => vec!["", "pulse.orders.v1.OutboxRelay"],
            Kind::Notifications => vec!["", "pulse.notifications.v1.Consumer"],
            Kind::Payments => vec!["", "pulse.payments.v1.Consumer", "pulse.payments.v1.OutboxRelay"],
            Kind::Inventory => vec!["", "pulse.inventory.v1.Consumer", "pulse.inventory.v1.OutboxRelay"],
        }
    }

    /// Starts the process and waits until it is ready.
    pub(crate) async fn start(self) -> Service {
        let mut service = Service { spec: self, port: free_port(), child: None, log: Arc::default(), starts: 0 };
        service.start().await;
        service
    }
}

pub(crate) struct Service {
    spec: Spec,
    port: u16,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    starts: u32,
}

impl Service {
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id of the running child.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).expect("the process is running")
    }

    /// How many times the process was started (1 + restarts).
    pub(crate) fn starts(&self) -> u32 {
        self.starts
    }

    /// True while the child has not exited.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Starts (again) and waits until the ready names are SERVING; a port
    /// taken in the meantime by someone else is replaced by a fresh one.
    pub(crate) async fn start(&mut self) {
        assert!(!self.is_running(), "{} is already running", self.name());
        for attempt in 1..=3 {
            self.spawn();
            match self.wait_ready().await {
                Ok(()) => return,
                Err(status) if attempt < 3 && self.log_contains("cannot bind") => {
                    self.note(&format!("exited with {status} (port {} taken), trying another port", self.port));
                    self.port = free_port();
                }
                Err(status) => {
                    panic!("{} did not start ({status}); its output:\n{}", self.name(), self.log_tail(60))
                }
            }
        }
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub(crate) async fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait_exit(STOP_TIMEOUT).await
    }

    /// Sends `kill <signal>` to the child (`-TERM`, `-KILL`); returns at once.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let status = std::process::Command::new("kill").args([signal, &pid]).status().expect("kill runs");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// SIGKILL, and waits for the exit.
    pub(crate) async fn kill(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("the process was started");
        child.start_kill().expect("SIGKILL");
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// Waits for the child to exit, or panics after `within`.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("the process was started");
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => status.expect("wait for the child"),
            Err(_) => panic!("{} still running after {within:?}; its output:\n{}", self.name(), self.log_tail(40)),
        }
    }

    /// The last `lines` lines the process printed (all its starts).
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let log = self.log.lock().expect("log lock");
        log[log.len().saturating_sub(lines)..].join("\n")
    }

    fn name(&self) -> &'static str {
        self.spec.kind.binary()
    }

    fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().expect("log lock").iter().any(|line| line.contains(needle))
    }

    fn note(&self, line: &str) {
        self.log.lock().expect("log lock").push(format!("[e2e] {line}"));
    }

    fn spawn(&mut self) {
        let binary = binary_path(self.spec.kind.binary());
        let mut command = Command::new(&binary);
        // Only what we set: a developer's own ORDERS_*, AMQP_URL or OTEL_* must not leak in.
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command
            .env("RUST_LOG", std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info,sqlx=warn,lapin=warn".into()))
            .env(self.spec.kind.addr_var(), self.addr().to_string())
            .envs(&self.spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap_or_else(|err| panic!("cannot run {}: {err}", binary.display()));
        self.starts += 1;
        let prefix = format!("{}#{}", self.name(), self.starts);
        self.note(&format!("started {prefix} (pid {}) on {}", child.id().unwrap_or(0), self.addr()));
        collect(child.stdout.take().expect("piped stdout"), prefix.clone(), Arc::clone(&self.log));
        collect(child.stderr.take().expect("piped stderr"), prefix, Arc::clone(&self.log));
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let names = self.spec.ready_names();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                return Err(status);
            }
            let mut all_serving = true;
            for name in &names {
                all_serving &= api::health(self.addr(), name).await == Some(api::SERVING);
            }
            if all_serving {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{} not SERVING on {} for {names:?} after {START_TIMEOUT:?}; its output:\n{}",
                    self.name(),
                    self.addr(),
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- last lines of {} ----\n{}", self.name(), self.log_tail(40));
        }
    }
}

/// Reads the child's output line by line into `log`.
fn collect(stream: impl AsyncRead + Unpin + Send + 'static, prefix: String, log: Arc<Mutex<Vec<String>>>) {
    let live = std::env::var_os("TEST_LOG").is_some();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if live {
                eprintln!("[{prefix}] {line}");
            }
            log.lock().expect("log lock").push(format!("[{prefix}] {line}"));
        }
    });
}

/// A port that was free a moment ago (the process retries on another if it is not).
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// `$PULSE_BIN_DIR/<name>`, else the binary beside this test's profile
/// directory: the test runs as `<target>/debug/deps/e2e-<hash>`, the
/// workspace's binaries are in `<target>/debug/`.
pub(crate) fn binary_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("PULSE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test's own path");
            let deps = exe.parent().expect("the test binary is in a directory");
            let profile = if deps.ends_with("deps") { deps.parent().expect("deps has a parent") } else { deps };
            profile.to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` \
         (build-support/scripts/test.sh does), or point PULSE_BIN_DIR at them",
        path.display()
    );
    path
}
