//! Reading configuration from the environment, with developer-friendly
//! defaults and errors that name the variable.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: String, reason: String },
}

/// Every problem a configuration has, so that one start-up shows them all
/// (fixing one variable at a time against a crash loop is a slow way to learn
/// of the next). Each reads as a line of plain text.
#[derive(Debug, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.0.len();
        write!(f, "invalid configuration ({count} problem{}):", if count == 1 { "" } else { "s" })?;
        for problem in &self.0 {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// The value, or `fallback` (never used: the configuration is then refused) with the problem noted.
    pub fn check<T>(&mut self, result: Result<T, ConfigError>, fallback: T) -> T {
        result.unwrap_or_else(|err| {
            self.0.push(err);
            fallback
        })
    }

    /// Notes a problem with the variable `name`.
    pub fn invalid(&mut self, name: &str, reason: impl Into<String>) {
        self.0.push(ConfigError::Invalid { name: name.to_owned(), reason: reason.into() });
    }

    /// `value` when no problem was noted, every problem otherwise.
    pub fn or_value<T>(self, value: T) -> Result<T, Self> {
        if self.0.is_empty() { Ok(value) } else { Err(self) }
    }
}

/// The names among `names` that start with one of `prefixes` but are not in
/// `known`, sorted, each with the known name it most likely misspells.
fn unknown_among<'k>(
    names: impl Iterator<Item = String>,
    prefixes: &[&str],
    known: &[&'k str],
) -> Vec<(String, Option<&'k str>)> {
    let mut unknown: Vec<(String, Option<&'k str>)> = names
        .filter(|name| prefixes.iter().any(|prefix| name.starts_with(prefix)) && !known.contains(&name.as_str()))
        .map(|name| {
            let near = known
                .iter()
                .map(|candidate| (edit_distance(&name, candidate), *candidate))
                .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 8))
                .min()
                .map(|(_, candidate)| candidate);
            (name, near)
        })
        .collect();
    unknown.sort();
    unknown
}

/// Logs a warning naming each variable of this process's environment that
/// starts with one of `prefixes` but is not in `known` (with the known name it
/// most likely misspells). Nothing reads such a variable: a typo in a name
/// would otherwise leave the default in force without a word.
/// A name in `renamed` (old, new) is pointed to its new name.
pub fn warn_unknown_variables(prefixes: &[&str], known: &[&str], renamed: &[(&str, &str)]) {
    let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    for (name, near) in unknown_among(names, prefixes, known) {
        let near = renamed.iter().find(|(old, _)| *old == name).map(|(_, new)| *new).or(near);
        match near {
            Some(near) => {
                tracing::warn!(variable = %name, did_you_mean = %near, "unknown variable {name} ignored; did you mean {near}?")
            }
            None => tracing::warn!(variable = %name, "unknown variable {name} ignored"),
        }
    }
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
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

/// The comma-separated names in `name` (default none), surrounding blanks
/// and empty entries dropped.
pub fn names_or_none(name: &str) -> Vec<String> {
    var_or(name, "").split(',').map(str::trim).filter(|name| !name.is_empty()).map(str::to_owned).collect()
}

/// A secret given in a file named by `<name>_FILE` (the container
/// convention: a mounted Secret), its trailing line end dropped; None when
/// that variable is unset. Setting both `<name>` and `<name>_FILE` is refused.
pub fn secret_from_file(name: &str) -> Result<Option<SecretString>, ConfigError> {
    let file_var = format!("{name}_FILE");
    let Some(path) = std::env::var_os(&file_var).filter(|path| !path.is_empty()) else { return Ok(None) };
    if std::env::var_os(name).is_some_and(|value| !value.is_empty()) {
        return Err(ConfigError::Invalid { name: file_var, reason: format!("set {name} or {name}_FILE, not both") });
    }
    let text = std::fs::read_to_string(&path).map_err(|err| ConfigError::Invalid {
        name: file_var.clone(),
        reason: format!("cannot read {}: {err}", std::path::Path::new(&path).display()),
    })?;
    let value = text.strip_suffix('\n').map_or(text.as_str(), |line| line.strip_suffix('\r').unwrap_or(line));
    if value.trim().is_empty() {
        return Err(ConfigError::Invalid { name: file_var, reason: "the file is empty".into() });
    }
    Ok(Some(SecretString::from(value.to_owned())))
}

/// A URL carrying credentials, from `<name>` or the file `<name>_FILE` names:
/// kept secret so it never reaches a log line.
pub fn secret_url_or(name: &str, default: &str) -> Result<SecretString, ConfigError> {
    let value = match secret_from_file(name)? {
        Some(secret) => secret.expose_secret().to_owned(),
        None => var_or(name, default),
    };
    url::Url::parse(&value)
        .map_err(|err| ConfigError::Invalid { name: name.to_owned(), reason: format!("not a URL ({err})") })?;
    Ok(SecretString::from(value))
}

/// Like [`secret_url_or`] for a list of URLs separated by commas (the nodes
/// of one RabbitMQ cluster, see [`crate::amqp`]): each must parse, and one at least be given.
pub fn secret_urls_or(name: &str, default: &str) -> Result<SecretString, ConfigError> {
    let value = match secret_from_file(name)? {
        Some(secret) => secret.expose_secret().to_owned(),
        None => var_or(name, default),
    };
    let urls = crate::amqp::addresses(&value);
    if urls.is_empty() {
        return Err(ConfigError::Invalid { name: name.to_owned(), reason: "no URL given".into() });
    }
    for (i, url) in urls.iter().enumerate() {
        url::Url::parse(url).map_err(|err| ConfigError::Invalid {
            name: name.to_owned(),
            reason: format!("URL {} of {} is not a URL ({err})", i + 1, urls.len()),
        })?;
    }
    Ok(SecretString::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_found_with_the_known_name_they_misspell() {
        let known = ["ORDERS_DB_WRITERS", "OUTBOX_BATCH_SIZE", "ORDERS_ROLE"];
        let names = ["ORDERS_DB_WRITER", "OUTBOX_BATCHSIZE", "ORDERS_ROLE", "ORDERS_NOTHING_LIKE_IT", "PATH", "OUTBOX"];
        let found = unknown_among(names.iter().map(|n| n.to_string()), &["ORDERS_", "OUTBOX_"], &known);
        assert_eq!(
            found,
            [
                ("ORDERS_DB_WRITER".to_owned(), Some("ORDERS_DB_WRITERS")),
                ("ORDERS_NOTHING_LIKE_IT".to_owned(), None),
                ("OUTBOX_BATCHSIZE".to_owned(), Some("OUTBOX_BATCH_SIZE")),
            ]
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let mut problems = ConfigErrors::default();
        assert_eq!(problems.check(Ok(1), 0), 1);
        assert_eq!(problems.check(Err(ConfigError::Invalid { name: "A".into(), reason: "bad".into() }), 0), 0);
        problems.invalid("B", "worse");
        let text = problems.or_value(()).unwrap_err().to_string();
        assert_eq!(
            text,
            "invalid configuration (2 problems):\n  environment variable A is invalid: bad\n  environment variable B is invalid: worse"
        );
    }
}
