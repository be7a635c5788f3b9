//! What every Pulse binary does with a command line clap refused or answered.

use std::process::ExitCode;

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
