//! The outbox reads its `OUTBOX_*` variables itself and reports every problem
//! at once. Each case runs this test binary again with its own environment
//! (the variables are process-wide).

use std::process::Command;

use infra::config::ConfigErrors;
use outbox::{OutboxSettings, RelayConfig};
use secrecy::SecretString;

const CHILD: &str = "OUTBOX_TEST_CHILD";

/// In the child: the settings the environment gives, printed one per line.
fn print_settings() {
    let mut problems = ConfigErrors::default();
    let relay = RelayConfig::new(SecretString::from("amqp://x"), "app", vec!["events".into()]);
    let settings = OutboxSettings::from_env(relay, &mut problems);
    for problem in &problems.0 {
        println!("problem: {problem}");
    }
    println!("batch_size: {}", settings.relay.batch_size);
    println!("notify_channel: {:?}", settings.relay.notify_channel);
    println!("doorbell: {:?}", settings.doorbell_interval);
}

/// Runs `test` in a child process with `env` (and no other `OUTBOX_*` variable); its printed lines.
fn run_child(test: &str, env: &[(&str, &str)]) -> Vec<String> {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", test, "--nocapture"]).env(CHILD, "1");
    for name in outbox::config::VARIABLES {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout.lines().filter(|line| line.contains(": ") && !line.starts_with("test ")).map(str::to_owned).collect()
}

#[test]
fn bad_variables_are_all_reported_at_once_by_name() {
    if std::env::var_os(CHILD).is_some() {
        return print_settings();
    }
    let env = [("OUTBOX_BATCH_SIZE", "0"), ("OUTBOX_GATHER_MS", "5000"), ("OUTBOX_POLL_INTERVAL_MS", "soon")];
    let printed = run_child("bad_variables_are_all_reported_at_once_by_name", &env);
    let problems: Vec<&String> = printed.iter().filter(|line| line.starts_with("problem: ")).collect();
    assert_eq!(problems.len(), 3, "{printed:#?}");
    for name in ["OUTBOX_BATCH_SIZE", "OUTBOX_GATHER_MS", "OUTBOX_POLL_INTERVAL_MS"] {
        let line = format!("problem: environment variable {name} is invalid: ");
        assert!(problems.iter().any(|p| p.starts_with(&line)), "{name}: {printed:#?}");
    }
}

#[test]
fn good_variables_set_the_relay_and_the_doorbell() {
    if std::env::var_os(CHILD).is_some() {
        return print_settings();
    }
    let env = [("OUTBOX_BATCH_SIZE", "500"), ("OUTBOX_NOTIFY_CHANNEL", " "), ("OUTBOX_DOORBELL_INTERVAL_MS", "5")];
    let printed = run_child("good_variables_set_the_relay_and_the_doorbell", &env);
    assert_eq!(printed, ["batch_size: 500", "notify_channel: None", "doorbell: 5ms"]);
}
