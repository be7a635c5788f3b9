//! What every Pulse binary does with a command line clap refused or answered,
//! the commands the consumer services share, and the exit status of a run.

use std::{net::SocketAddr, process::ExitCode};

/// Help and version go to stdout (exit 0); a usage error goes to stderr,
/// naming what was wrong (exit 2, the exit status of a bad configuration too).
/// "usage:" in lower case, as in every other text the binaries print.
pub fn finish(err: &clap::Error) -> ExitCode {
    let text = err.render().to_string().replacen("Usage:", "usage:", 1);
    if err.use_stderr() {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    ExitCode::from(err.exit_code() as u8)
}

/// A binary's `main`: parses the command line as `C` (help, version and usage
/// errors answered by [`finish`]), sets up telemetry under `name`, runs `run`
/// and turns its result into the exit status ([`exit_code`]).
pub async fn run_binary<C, Fut>(name: &'static str, run: impl FnOnce(C) -> Fut) -> ExitCode
where
    C: clap::Parser,
    Fut: Future<Output = anyhow::Result<ExitCode>>,
{
    let cli = match C::try_parse() {
        Ok(cli) => cli,
        Err(err) => return finish(&err),
    };
    let _telemetry = telemetry::init(name);
    exit_code(name, run(cli).await)
}

/// The commands every consumer service's binary has; no command serves.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Serve the gRPC API and run the consumer (and the outbox relay, where there is one): the default
    Serve,
    /// Move dead letters (the first N) back to the main queue
    ReplayDlq {
        /// Move at most N
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// Ask the local gRPC health service; exit 0 when SERVING
    Healthcheck,
}

/// The exit status of a binary named `name` that ran to `result`: its own code
/// when it ran; 2 for an invalid configuration, every problem printed on stderr;
/// 1 for any other failure, logged and printed. Plain text on stderr: there may
/// be no log pipeline to read yet.
pub fn exit_code(name: &str, result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => match err.downcast_ref::<infra::config::ConfigErrors>() {
            Some(problems) => {
                eprintln!("{name}: {problems}");
                ExitCode::from(2)
            }
            None => {
                tracing::error!(error = format!("{err:#}"), "{name} failed");
                eprintln!("{name}: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `healthcheck`: asks the gRPC health service listening on `grpc_addr`'s port
/// of this host; success when it answers SERVING.
pub async fn healthcheck(grpc_addr: SocketAddr) -> ExitCode {
    // The server listens on the configured port of every interface; ask it locally.
    let addr = SocketAddr::from(([127, 0, 0, 1], grpc_addr.port()));
    if crate::grpc::probe(addr, "").await.unwrap_or(false) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
