//! A PostgreSQL server of the test's own, from the installed binaries, for
//! faults the shared server must not suffer (a real restart): its own data
//! directory, port and socket directory, trust authentication, no fsync.
//! Dropping it stops the server and removes the directory.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::process::free_port;

pub(crate) struct OwnPostgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    /// Server settings beyond the port and socket (`-c name=value ...`).
    settings: String,
}

impl OwnPostgres {
    /// Initialises and starts a server; panics with its log if it does not come up.
    pub(crate) fn start() -> Self {
        Self::start_with(None)
    }

    /// The same, accepting TLS (`ssl=on`) with this certificate and key (PEM).
    pub(crate) fn start_with_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Self {
        let bin = newest_bin_dir();
        let dir = std::env::temp_dir().join(format!("pulse-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the data directory");
        let mut settings = String::from("-c fsync=off -c max_connections=60");
        if let Some((cert, key)) = tls {
            let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::write(&cert_file, cert).expect("write the server certificate");
            std::fs::write(&key_file, key).expect("write the server key");
            // Postgres refuses a key others can read.
            run(Command::new("chmod").arg("600").arg(&key_file));
            settings +=
                &format!(" -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", cert_file.display(), key_file.display());
        }
        if is_root() {
            // initdb and postgres refuse to run as root.
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir));
        }
        let server = Self { dir, port: free_port(), bin, settings };
        server.as_owner("initdb", &["-D", &server.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        server.pg_ctl(&["start"]);
        server
    }

    /// A URL for `database` on this server.
    pub(crate) fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server (`fast`: every session is ended, as in a real
    /// restart) and starts it again; returns once it accepts connections.
    pub(crate) fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]);
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn pg_ctl(&self, action: &[&str]) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} {}",
            self.port,
            self.dir.display(),
            self.settings
        );
        let (data, log) = (self.data(), self.dir.join("server.log").display().to_string());
        let mut args = vec!["-D", data.as_str(), "-l", log.as_str(), "-o", options.as_str(), "-w", "-t", "60"];
        args.extend_from_slice(action);
        self.as_owner("pg_ctl", &args);
    }

    fn as_owner(&self, tool: &str, args: &[&str]) {
        let output = owner_command(&self.bin.join(tool)).args(args).current_dir(&self.dir).output();
        let output = output.expect("run a Postgres tool");
        if !output.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            panic!(
                "{tool} {args:?} failed: {}\n{}\nserver log:\n{log}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = owner_command(&self.bin.join("pg_ctl")).args(["-D", &data, "-m", "immediate", "-w", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `program` as the data directory's owner: `postgres` when we are root
/// (initdb and postgres refuse to run as root), else ourselves.
fn owner_command(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Whether the tests run as root (the servers then run as their own users).
pub(crate) fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs `command`, failing the test unless it succeeds.
pub(crate) fn run(command: &mut Command) {
    let status = command.status().expect("run a command");
    assert!(status.success(), "{command:?} failed: {status}");
}

/// The `bin` directory of the newest installed PostgreSQL (Debian's layout).
fn newest_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql")
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL server binary").1
}
