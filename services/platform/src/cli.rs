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
    run_parsed(name, C::try_parse(), run).await
}

/// What names a consumer service's binary on its command line.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// The binary's name (`payments`), also its telemetry service name.
    pub name: &'static str,
    /// The one line `--help` starts with.
    pub about: &'static str,
    /// What `--help` ends with: the variables, the exit statuses.
    pub after_help: &'static str,
}

/// The `main` of a consumer service's binary: the commands of [`Command`]
/// (none serves) under `binary`'s name and help, then as [`run_binary`].
pub async fn run_consumer_binary<Fut>(binary: Binary, run: impl FnOnce(Command) -> Fut) -> ExitCode
where
    Fut: Future<Output = anyhow::Result<ExitCode>>,
{
    let usage = format!("{} [serve | replay-dlq [--limit N] | healthcheck | --help | --version]", binary.name);
    let cli = <Command as clap::Subcommand>::augment_subcommands(
        clap::Command::new(binary.name)
            .version(env!("CARGO_PKG_VERSION"))
            .about(binary.about)
            .override_usage(usage)
            .after_help(binary.after_help),
    );
    let parsed = cli.try_get_matches().and_then(|matches| match matches.subcommand_name() {
        Some(_) => <Command as clap::FromArgMatches>::from_arg_matches(&matches),
        None => Ok(Command::Serve),
    });
    run_parsed(binary.name, parsed, run).await
}

async fn run_parsed<C, Fut>(name: &'static str, parsed: Result<C, clap::Error>, run: impl FnOnce(C) -> Fut) -> ExitCode
where
    Fut: Future<Output = anyhow::Result<ExitCode>>,
{
    let cli = match parsed {
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
