//! Reading configuration from the environment, with developer-friendly
//! defaults and errors that name the variable.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use secrecy::SecretString;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: String, reason: String },
}

/// The variable's value, or `default` when it is unset or empty.
pub fn var_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => default.to_owned(),
    }
}

/// Parses the variable with `FromStr`, or `default` when it is unset.
pub fn parse_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .map_err(|err: T::Err| ConfigError::Invalid { name: name.to_owned(), reason: err.to_string() }),
        _ => Ok(default),
    }
}

/// A socket address such as `0.0.0.0:50051`; port 0 asks for an ephemeral port.
pub fn addr_or(name: &str, default: &str) -> Result<SocketAddr, ConfigError> {
    parse_or(name, default.parse().expect("default address is valid"))
}

/// A duration in milliseconds.
pub fn millis_or(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    parse_or(name, default.as_millis() as u64).map(Duration::from_millis)
}

/// A duration in milliseconds of at most `max`: a wait that longer would stall the work it batches.
pub fn millis_up_to_or(name: &str, default: Duration, max: Duration) -> Result<Duration, ConfigError> {
    let value = millis_or(name, default)?;
    if value > max {
        return Err(ConfigError::Invalid {
            name: name.to_owned(),
            reason: format!("must be 0 to {}", max.as_millis()),
        });
    }
    Ok(value)
}

/// A rate a second: a finite number, 0 or more.
pub fn rate_or(name: &str, default: f64) -> Result<f64, ConfigError> {
    let value: f64 = parse_or(name, default)?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(ConfigError::Invalid {
            name: name.to_owned(),
            reason: "must be a number a second, 0 or more".into(),
        });
    }
    Ok(value)
}

/// A boolean written as `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off`.
pub fn bool_or(name: &str, default: bool) -> Result<bool, ConfigError> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            other => Err(ConfigError::Invalid {
                name: name.to_owned(),
                reason: format!("expected true or false, got {other:?}"),
            }),
        },
        _ => Ok(default),
    }
}

/// A URL carrying credentials: kept secret so it never reaches a log line.
pub fn secret_url_or(name: &str, default: &str) -> Result<SecretString, ConfigError> {
    let value = var_or(name, default);
    url::Url::parse(&value)
        .map_err(|err| ConfigError::Invalid { name: name.to_owned(), reason: format!("not a URL ({err})") })?;
    Ok(SecretString::from(value))
}

/// `url` with its password replaced by `***`, for log lines.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparsable url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_the_password_only() {
        assert_eq!(
            redact_url("postgres://postgres:s3cret@localhost:5432/pulse"),
            "postgres://postgres:***@localhost:5432/pulse"
        );
        assert_eq!(redact_url("amqp://localhost:5672/%2f"), "amqp://localhost:5672/%2f");
        assert!(!redact_url("not a url s3cret").contains("s3cret"));
    }
}
