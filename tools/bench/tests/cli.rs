//! The real `bench` binary's command line: help that names every flag and
//! phase, `--version`, and a typo refused by name (exit 2) instead of a run
//! in another mode or of other phases.

use std::process::{Command, Output};

/// Runs `bench` with `args` against servers that do not answer, so that a
/// command line taken for a run fails fast instead of measuring.
fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .env("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:1")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .expect("bench runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_names_every_flag_and_phase_and_version_names_the_binary() {
    let out = bench(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for word in [
        "--quick",
        "--smoke",
        "--json <PATH>",
        "--only <PHASE,...>",
        "--pipeline-rate <N>",
        "--cluster",
        "--version",
        "create_order",
        "relay_on",
        "end_to_end",
        "drain",
        "pipeline",
        "BENCH_POSTGRES_URL",
        "exit status",
    ] {
        assert!(help.contains(word), "{word} missing from {help}");
    }
    let out = bench(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), format!("bench {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_typo_is_a_usage_error_that_names_it() {
    for (args, named) in [
        (&["--smok"][..], "'--smok'"),
        (&["--quick", "--jsn", "b.json"], "'--jsn'"),
        (&["--only", "drian"], "'drian'"),
        (&["--only", "drain,piepline"], "'piepline'"),
        (&["--pipeline-rate", "0"], "'0'"),
        (&["--quick", "--smoke"], "'--smoke'"),
        (&["--json"], "'--json <PATH>'"),
        (&["quick"], "'quick'"),
    ] {
        let out = bench(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {named} not named in {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing ran: {}", text(&out.stdout));
    }
}
