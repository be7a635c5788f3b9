//! The inbox's own `INBOX_*` variables, read and checked here so every
//! service that runs an inbox takes the same names and ranges.

use infra::config::{ConfigErrors, parse_or};

use crate::{InboxConfig, MAX_MESSAGE_BYTES_CEILING};

/// Every variable the inbox reads: a service warns about other names with [`PREFIX`].
pub const VARIABLES: &[&str] = &["INBOX_MAX_MESSAGE_BYTES"];

/// The prefix of [`VARIABLES`].
pub const PREFIX: &str = "INBOX_";

impl InboxConfig {
    /// Applies the `INBOX_*` variables. Every problem is added to `problems`,
    /// named by its variable, for the service to report with its own.
    pub fn apply_env(&mut self, problems: &mut ConfigErrors) {
        let bytes = self.max_message_bytes;
        self.max_message_bytes = problems.check(parse_or("INBOX_MAX_MESSAGE_BYTES", bytes), bytes);
        self.check_variables(problems);
    }

    /// Adds to `problems` each setting an `INBOX_*` variable gives that is
    /// out of its range, named by the variable.
    pub fn check_variables(&self, problems: &mut ConfigErrors) {
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES_CEILING {
            problems.invalid("INBOX_MAX_MESSAGE_BYTES", format!("must be 1 to {MAX_MESSAGE_BYTES_CEILING} bytes"));
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    #[test]
    fn the_body_limit_is_refused_outside_its_range_by_its_variable() {
        let mut config = InboxConfig::new(SecretString::from("amqp://x"), "x", "q", vec!["k".into()]);
        for (bytes, refused) in
            [(0, true), (1, false), (MAX_MESSAGE_BYTES_CEILING, false), (MAX_MESSAGE_BYTES_CEILING + 1, true)]
        {
            config.max_message_bytes = bytes;
            let mut problems = ConfigErrors::default();
            config.check_variables(&mut problems);
            let printed: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
            let expected = format!(
                "environment variable INBOX_MAX_MESSAGE_BYTES is invalid: must be 1 to {MAX_MESSAGE_BYTES_CEILING} bytes"
            );
            assert_eq!(printed, if refused { vec![expected] } else { vec![] }, "{bytes} bytes");
        }
    }

    #[test]
    fn every_variable_has_the_prefix() {
        assert!(VARIABLES.iter().all(|name| name.starts_with(PREFIX)));
    }
}
