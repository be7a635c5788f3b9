//! Service binaries and tools run as child processes, and what they expose.

use std::sync::Arc;

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
