//! The inbox's own `INBOX_*` variables, read and checked here so every
//! service that runs an inbox takes the same names and ranges, and the
//! consumer settings each service reads under its own prefix
//! (`<PREFIX>_EXCHANGE`, `_QUEUE_PREFIX`, `_PREFETCH`, `_BATCH_SIZE`, `_MAX_ATTEMPTS`).

use infra::config::{ConfigErrors, parse_or, secret_urls_or, var_or};
use secrecy::SecretString;

use crate::{InboxConfig, MAX_MESSAGE_BYTES_CEILING};

/// Every variable the inbox reads: a service warns about other names with [`PREFIX`].
pub const VARIABLES: &[&str] = &["INBOX_MAX_MESSAGE_BYTES"];

/// The prefix of [`VARIABLES`].
pub const PREFIX: &str = "INBOX_";

impl InboxConfig {
    /// A service's consumer: the broker `AMQP_URL` (default the local
    /// RabbitMQ; a problem is added to `problems`), the exchange
    /// `<prefix>_EXCHANGE` (default `default_exchange`), the main queue
    /// `queue(<prefix>_QUEUE_PREFIX)` (prefix default `pulse`) bound with
    /// `routing_keys`, the broker connection named `connection_name`. Prefix
    /// without its underscore: `PAYMENTS`.
    pub fn for_service(
        prefix: &str,
        connection_name: &str,
        default_exchange: &str,
        queue: impl FnOnce(&str) -> String,
        routing_keys: Vec<String>,
        problems: &mut ConfigErrors,
    ) -> Self {
        let amqp_url = problems
            .check(secret_urls_or("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"), SecretString::default());
        let exchange = var_or(&format!("{prefix}_EXCHANGE"), default_exchange);
        let queue = queue(&var_or(&format!("{prefix}_QUEUE_PREFIX"), "pulse"));
        let mut config = Self::new(amqp_url, exchange, queue, routing_keys);
        config.connection_name = connection_name.to_owned();
        config
    }

    /// Applies `<prefix>_PREFETCH`, `<prefix>_BATCH_SIZE`, `<prefix>_MAX_ATTEMPTS`
    /// and the `INBOX_*` variables, then checks the whole (on what the variables
    /// gave only: a bad variable is named already). Every problem is added to `problems`.
    pub fn apply_service_env(&mut self, prefix: &str, problems: &mut ConfigErrors) {
        let p = &mut *problems;
        self.prefetch = p.check(parse_or(&format!("{prefix}_PREFETCH"), self.prefetch), self.prefetch);
        self.batch_size = p.check(parse_or(&format!("{prefix}_BATCH_SIZE"), self.batch_size), self.batch_size);
        self.max_attempts = p.check(parse_or(&format!("{prefix}_MAX_ATTEMPTS"), self.max_attempts), self.max_attempts);
        self.apply_env(p);
        if let (true, Err(reason)) = (p.0.is_empty(), self.validate()) {
            p.invalid(&format!("{prefix}_* consumer settings"), reason);
        }
    }

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
