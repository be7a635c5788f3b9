//! Test-only helpers: a TCP fault proxy on 127.0.0.1 that can cut every
//! connection to Postgres or RabbitMQ and refuse new ones until restored (or
//! swallow the server's replies, so a request is carried out but its answer
//! lost), and the addresses of the local services the tests run against.

pub mod consumer;
pub mod pki;
pub mod schema;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

/// `AMQP_URL`, or the local broker.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// `DATABASE_URL` (the server `#[sqlx::test]` uses), or the local Postgres.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A name no other test uses, for queues and exchanges.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// A TCP proxy on 127.0.0.1 in front of `upstream`. While cut, it drops every
/// open connection and closes new ones at once, like a dead server. While
/// muted, it passes what clients send but drops what the server answers.
pub struct FaultProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    muted: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    stop: CancellationToken,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fault proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cut = Arc::new(AtomicBool::new(false));
        let muted = Arc::new(AtomicBool::new(false));
        let generation = watch::Sender::new(0u64);
        let stop = CancellationToken::new();
        let (cut_flag, generations, stopped) = (Arc::clone(&cut), generation.clone(), stop.clone());
        let muted_flag = Arc::clone(&muted);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { continue };
                if cut_flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cuts = generations.subscribe();
                let stopped = stopped.clone();
                let muted = Arc::clone(&muted_flag);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let never_muted = Arc::new(AtomicBool::new(false));
                    let both = futures::future::join(
                        forward(client_read, server_write, never_muted),
                        forward(server_read, client_write, muted),
                    );
                    tokio::select! {
                        _ = both => {}
                        _ = cuts.changed() => {}
                        _ = stopped.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, cut, muted, generation, stop }
    }

    /// The address clients should dial instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// From now on, drops what the server sends on every connection (open or
    /// new) instead of passing it on, until [`Self::reset`]: the server does
    /// what it is asked and nobody hears its answer.
    pub fn mute(&self) {
        self.muted.store(true, Ordering::SeqCst);
    }

    /// Drops every open connection, as a server's end would, and lets later
    /// ones through unmuted.
    pub fn reset(&self) {
        self.generation.send_modify(|g| *g += 1);
        self.muted.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` (dropping the bytes while `muted`) until `from`
/// ends, then ends `to`.
async fn forward(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, muted: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !muted.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `url` with its host and port replaced by `addr` (to route it through a proxy).
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("url has a scheme");
    let (credentials, after) = match rest.rsplit_once('@') {
        Some((credentials, after)) => (format!("{credentials}@"), after),
        None => (String::new(), rest),
    };
    let path = after.find('/').map_or("", |i| &after[i..]);
    format!("{scheme}://{credentials}{addr}{path}")
}

/// A lapin connection to the test broker.
pub async fn amqp_connection() -> lapin::Connection {
    lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.expect("connect to RabbitMQ")
}

/// A server-named, exclusive queue bound to `exchange` with `routing_key`
/// (the exchange is declared durable/topic if missing), consumed with auto-ack.
pub async fn subscribe(conn: &lapin::Connection, exchange: &str, routing_key: &str) -> lapin::Consumer {
    use lapin::{
        ExchangeKind,
        options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
        types::{FieldTable, ShortString},
    };
    let channel = conn.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            ShortString::from(exchange),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
    let queue = channel
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
    channel
        .queue_bind(
            queue.name().clone(),
            ShortString::from(exchange),
            ShortString::from(routing_key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind queue");
    channel
        .basic_consume(
            queue.name().clone(),
            ShortString::from(""),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("consume")
}

/// Deliveries from `consumer` until `count` arrived or `within` passed.
pub async fn receive(
    consumer: &mut lapin::Consumer,
    count: usize,
    within: std::time::Duration,
) -> Vec<lapin::message::Delivery> {
    use futures::StreamExt;
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while received.len() < count {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(delivery))) => received.push(delivery),
            Ok(Some(Err(err))) => panic!("consumer failed: {err}"),
            Ok(None) | Err(_) => break,
        }
    }
    received
}

/// Deletes an exchange a test declared (best effort).
pub async fn delete_exchange(conn: &lapin::Connection, exchange: &str) {
    if let Ok(channel) = conn.create_channel().await {
        let _ = channel
            .exchange_delete(
                lapin::types::ShortString::from(exchange),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// Polls `check` every 50 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits until `flag` (a service's "connected" watch) reads `want`, failing
/// the test after `within`. False when the service dropped the flag first.
#[must_use = "false means the service went away before the flag read `want`"]
pub async fn wait_for_flag(
    flag: &mut tokio::sync::watch::Receiver<bool>,
    want: bool,
    within: std::time::Duration,
) -> bool {
    tokio::time::timeout(within, flag.wait_for(|value| *value == want))
        .await
        .unwrap_or_else(|_| panic!("the flag never became {want} within {within:?}"))
        .is_ok()
}

/// The socket address a service URL points at (`localhost` resolves to 127.0.0.1).
pub fn socket_addr_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host_port = rest.split(['/', '?']).next().expect("url has a host");
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().unwrap_or_else(|_| panic!("{url:?} does not name an IP address and port"))
}

/// The grpcurl binary: `$GRPCURL`, else `$PULSE_TOOLS/bin/grpcurl` (default
/// `/var/cache/pulse-tools`, where `build-support/scripts/ensure-tools.sh`
/// installs it), else `grpcurl` on the PATH.
pub fn grpcurl() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("GRPCURL") {
        return path.into();
    }
    let tools = std::env::var("PULSE_TOOLS").unwrap_or_else(|_| "/var/cache/pulse-tools".to_owned());
    let installed = std::path::Path::new(&tools).join("bin/grpcurl");
    if installed.exists() {
        return installed;
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("grpcurl")).find(|p| p.exists()))
        .expect("grpcurl not found: run build-support/scripts/ensure-tools.sh or set GRPCURL")
}

/// `GET /metrics` over plain HTTP/1.1; the body, after checking the status is 200.
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("metrics endpoint accepts");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).expect("metrics are text");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The sum of the samples of `name` carrying every label in `labels`; None when there is none.
pub fn metric_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
        if series_name != name || !labels.iter().all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\""))) {
            continue;
        }
        *found.get_or_insert(0.0) += value.parse::<f64>().expect("a numeric sample");
    }
    found
}

/// Runs `command` (a service binary) until every line in `ready` has appeared
/// in its output (or `within` has passed, or it exited), then sends it
/// SIGTERM and waits for its exit. Its exit status, everything it wrote to
/// stdout and stderr, and whether it got ready.
pub async fn run_until_ready_then_terminate(
    mut command: tokio::process::Command,
    ready: &[&str],
    within: std::time::Duration,
) -> (std::process::ExitStatus, String, bool) {
    use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let printed = Arc::new(std::sync::Mutex::new(String::new()));
    fn collect(
        stream: impl AsyncRead + Unpin + Send + 'static,
        into: Arc<std::sync::Mutex<String>>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut printed = into.lock().unwrap();
                printed.push_str(&line);
                printed.push('\n');
            }
        })
    }
    let readers = [
        collect(child.stdout.take().expect("piped"), printed.clone()),
        collect(child.stderr.take().expect("piped"), printed.clone()),
    ];
    let deadline = tokio::time::Instant::now() + within;
    let mut got_ready = false;
    while tokio::time::Instant::now() < deadline {
        if ready.iter().all(|line| printed.lock().unwrap().contains(line)) {
            got_ready = true;
            break;
        }
        if child.try_wait().expect("the child can be polled").is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    }
    let status = match tokio::time::timeout(within, child.wait()).await {
        Ok(status) => status.expect("the child can be waited for"),
        Err(_) => {
            child.start_kill().expect("SIGKILL");
            child.wait().await.expect("the child can be waited for")
        }
    };
    for reader in readers {
        let _ = reader.await;
    }
    let printed = printed.lock().unwrap().clone();
    (status, printed, got_ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_replaces_host_and_port_only() {
        let addr: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        assert_eq!(via("amqp://guest:guest@localhost:5672/%2f", addr), "amqp://guest:guest@127.0.0.1:6000/%2f");
        assert_eq!(via("postgres://postgres@127.0.0.1:5432/db?x=1", addr), "postgres://postgres@127.0.0.1:6000/db?x=1");
        assert_eq!(via("amqp://h:1", addr), "amqp://127.0.0.1:6000");
    }
}
