//! A real SMTP server for tests: aiosmtpd (from the tools' venv, see
//! [`python`]) on a free port of 127.0.0.1, keeping each mail in a Maildir.
//! A recipient starting with `reject` is refused for good (550), one starting
//! with `busy` for now (451).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The venv's Python (`$PULSE_TOOLS/venv/bin/python`), where
/// `build-support/scripts/ensure-tools.sh` installs aiosmtpd and standardwebhooks.
pub fn python() -> PathBuf {
    let tools = std::env::var("PULSE_TOOLS").unwrap_or_else(|_| "/var/cache/pulse-tools".to_owned());
    let python = std::path::Path::new(&tools).join("venv/bin/python");
    assert!(python.exists(), "{} not found: run build-support/scripts/ensure-tools.sh", python.display());
    python
}

const SERVER: &str = r#"
import mailbox, sys, time
from aiosmtpd.controller import Controller

class Handler:
    def __init__(self, path):
        self.box = mailbox.Maildir(path, create=True)
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith('reject'):
            return '550 5.1.1 mailbox unavailable'
        if address.startswith('busy'):
            return '451 4.3.0 try again later'
        envelope.rcpt_tos.append(address)
        return '250 OK'
    async def handle_DATA(self, server, session, envelope):
        self.box.add(envelope.original_content)
        return '250 Message accepted for delivery'

controller = Controller(Handler(sys.argv[1]), hostname='127.0.0.1', port=int(sys.argv[2]))
controller.start()
print('ready', flush=True)
while True:
    time.sleep(3600)
"#;

/// The server; killed when dropped.
pub struct SmtpServer {
    addr: SocketAddr,
    maildir: tempdir::Dir,
    _child: Child,
}

mod tempdir {
    /// A directory removed when dropped.
    pub(super) struct Dir(pub(super) std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl SmtpServer {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("pulse-smtp-{}", uuid::Uuid::new_v4()));
        let mut child = Command::new(python())
            .arg("-c")
            .arg(SERVER)
            .arg(&dir)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start aiosmtpd");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        assert!(matches!(ready, Ok(Ok(Some(ref line))) if line == "ready"), "aiosmtpd did not start: {ready:?}");
        Self { addr: SocketAddr::from(([127, 0, 0, 1], port)), maildir: tempdir::Dir(dir), _child: child }
    }

    /// `smtp://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Every mail received so far, as its raw text.
    pub fn mails(&self) -> Vec<String> {
        let new = self.maildir.0.join("new");
        let mut mails: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(&new)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| {
                        let modified = entry.metadata().ok()?.modified().ok()?;
                        Some((modified, std::fs::read_to_string(entry.path()).ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        mails.sort();
        mails.into_iter().map(|(_, mail)| mail).collect()
    }

    /// Waits up to `within` for at least `n` mails.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let mails = self.mails();
            if mails.len() >= n || Instant::now() >= deadline {
                return mails;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
