//! The delivery channels' settings (`DELIVERY_*`, `SMTP_*`).

use std::time::Duration;

use base64::Engine as _;
use infra::config::{ConfigErrors, bool_or, var_or};
use secrecy::{ExposeSecret, SecretString};

use super::secret::SecretKey;

/// The variables read here (unprefixed, beside notifications' own).
pub const VARIABLES: &[&str] = &[
    "DELIVERY_ENABLED",
    "DELIVERY_SECRET_KEY",
    "DELIVERY_SECRET_KEY_FILE",
    "DELIVERY_RETRY_SCHEDULE",
    "DELIVERY_DISABLE_AFTER",
    "DELIVERY_ALLOW_PRIVATE_NETWORKS",
    "DELIVERY_TIMEOUT",
    "DELIVERY_ENDPOINT_CONCURRENCY",
    "DELIVERY_CONCURRENCY",
    "DELIVERY_SECRET_ROTATION_WINDOW",
    "SMTP_URL",
    "SMTP_FROM",
];

/// How notifications are delivered to webhook endpoints and email addresses.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Run the dispatcher in this replica.
    pub enabled: bool,
    /// Encrypts webhook secrets; None refuses creating or rotating a webhook endpoint.
    pub secret_key: Option<SecretKey>,
    /// Delays before attempts 2..n (n = len + 1), each with ±20 % jitter.
    pub retry_schedule: Vec<Duration>,
    /// An endpoint failing continuously this long is disabled.
    pub disable_after: Duration,
    /// Allow loopback, private and link-local targets.
    pub allow_private_networks: bool,
    /// One attempt's timeout (connect and answer).
    pub timeout: Duration,
    /// Attempts in flight per endpoint.
    pub endpoint_concurrency: usize,
    /// Attempts in flight per replica.
    pub concurrency: usize,
    /// How long the previous secret keeps signing after a rotation.
    pub rotation_window: Duration,
    /// The SMTP server (lettre's URL form).
    pub smtp_url: SecretString,
    /// The From of every mail.
    pub smtp_from: String,
    /// Consecutive failures after which an endpoint's circuit opens.
    pub breaker_threshold: u32,
    /// How long an open circuit holds an endpoint's deliveries before a probe.
    pub breaker_cooldown: Duration,
    /// The slow safety poll besides LISTEN and the timer.
    pub poll_interval: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            secret_key: None,
            retry_schedule: parse_schedule(DEFAULT_SCHEDULE).expect("the default schedule parses"),
            disable_after: Duration::from_secs(5 * 86_400),
            allow_private_networks: false,
            timeout: Duration::from_secs(10),
            endpoint_concurrency: 4,
            concurrency: 64,
            rotation_window: Duration::from_secs(24 * 3600),
            smtp_url: SecretString::from(DEFAULT_SMTP_URL.to_owned()),
            smtp_from: DEFAULT_SMTP_FROM.to_owned(),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
        }
    }
}

const DEFAULT_SCHEDULE: &str = "5s,30s,2m,10m,1h,6h";
const DEFAULT_SMTP_URL: &str = "smtp://localhost:1025";
const DEFAULT_SMTP_FROM: &str = "Pulse <pulse@localhost>";

impl DeliveryConfig {
    /// Reads the variables, noting each problem in `p`.
    pub fn from_env(p: &mut ConfigErrors) -> Self {
        let d = Self::default();
        let duration = |p: &mut ConfigErrors, name: &str, default: Duration| match std::env::var(name) {
            Ok(raw) if !raw.trim().is_empty() => parse_duration(&raw).unwrap_or_else(|reason| {
                p.invalid(name, reason);
                default
            }),
            _ => default,
        };
        let count = |p: &mut ConfigErrors, name: &str, default: usize| match std::env::var(name) {
            Ok(raw) if !raw.trim().is_empty() => match raw.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    p.invalid(name, format!("must be a whole number, 1 or more, got {:?}", raw.trim()));
                    default
                }
            },
            _ => default,
        };
        let schedule = parse_schedule(&var_or("DELIVERY_RETRY_SCHEDULE", DEFAULT_SCHEDULE)).unwrap_or_else(|reason| {
            p.invalid("DELIVERY_RETRY_SCHEDULE", reason);
            d.retry_schedule.clone()
        });
        let smtp_url = var_or("SMTP_URL", DEFAULT_SMTP_URL);
        if let Err(err) = url::Url::parse(&smtp_url) {
            p.invalid("SMTP_URL", format!("not a URL ({err})"));
        }
        let smtp_from = var_or("SMTP_FROM", DEFAULT_SMTP_FROM);
        if smtp_from.parse::<lettre::message::Mailbox>().is_err() {
            p.invalid("SMTP_FROM", format!("not a mailbox such as \"Pulse <pulse@example.com>\", got {smtp_from:?}"));
        }
        Self {
            enabled: p.check(bool_or("DELIVERY_ENABLED", true), true),
            secret_key: secret_key_from_env(p),
            retry_schedule: schedule,
            disable_after: duration(p, "DELIVERY_DISABLE_AFTER", d.disable_after),
            allow_private_networks: p.check(bool_or("DELIVERY_ALLOW_PRIVATE_NETWORKS", false), false),
            timeout: duration(p, "DELIVERY_TIMEOUT", d.timeout),
            endpoint_concurrency: count(p, "DELIVERY_ENDPOINT_CONCURRENCY", d.endpoint_concurrency),
            concurrency: count(p, "DELIVERY_CONCURRENCY", d.concurrency),
            rotation_window: duration(p, "DELIVERY_SECRET_ROTATION_WINDOW", d.rotation_window),
            smtp_url: SecretString::from(smtp_url),
            smtp_from,
            ..d
        }
    }

    /// Attempts a delivery gets before it is FAILED.
    pub fn max_attempts(&self) -> u32 {
        self.retry_schedule.len() as u32 + 1
    }
}

/// DELIVERY_SECRET_KEY_FILE (which wins) or DELIVERY_SECRET_KEY.
fn secret_key_from_env(p: &mut ConfigErrors) -> Option<SecretKey> {
    let (name, raw) = match std::env::var_os("DELIVERY_SECRET_KEY_FILE").filter(|v| !v.is_empty()) {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => ("DELIVERY_SECRET_KEY_FILE", SecretString::from(text.trim().to_owned())),
            Err(err) => {
                let path = std::path::Path::new(&path).display().to_string();
                p.invalid("DELIVERY_SECRET_KEY_FILE", format!("cannot read {path}: {err}"));
                return None;
            }
        },
        None => match std::env::var("DELIVERY_SECRET_KEY") {
            Ok(raw) if !raw.trim().is_empty() => ("DELIVERY_SECRET_KEY", SecretString::from(raw.trim().to_owned())),
            _ => return None,
        },
    };
    match SecretKey::from_base64(raw.expose_secret()) {
        Ok(key) => Some(key),
        Err(reason) => {
            p.invalid(name, reason);
            None
        }
    }
}

/// A duration such as `500ms`, `5s`, `2m`, `1h` or `5d`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let bad = || format!("{raw:?} is not a duration such as 500ms, 5s, 2m, 1h or 5d");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(millis).map(Duration::from_millis).ok_or_else(bad)
}

/// A comma-separated list of durations, each more than zero.
pub fn parse_schedule(raw: &str) -> Result<Vec<Duration>, String> {
    raw.split(',')
        .map(|part| {
            let delay = parse_duration(part)?;
            if delay.is_zero() { Err("a retry delay must be more than 0".to_owned()) } else { Ok(delay) }
        })
        .collect()
}

/// Checks a base64 key is 32 bytes.
pub(crate) fn decode_key(raw: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .map_err(|_| "must be base64 of 32 random bytes (openssl rand -base64 32)".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("must be base64 of 32 random bytes, got {} bytes", bytes.len()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration(" 2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(6 * 3600));
        assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(5 * 86_400));
        for bad in ["", "5", "s", "1.5s", "-1s", "5 s", "5w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_default_schedule_makes_seven_attempts() {
        let config = DeliveryConfig::default();
        assert_eq!(config.retry_schedule[0], Duration::from_secs(5));
        assert_eq!(config.max_attempts(), 7);
        assert!(parse_schedule("1s,0s").is_err());
        assert!(parse_schedule("1s,,2s").is_err());
    }

    #[test]
    fn keys_are_32_bytes_of_base64() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(decode_key(&key).unwrap(), [7u8; 32]);
        assert!(decode_key("c2hvcnQ=").unwrap_err().contains("got 5 bytes"));
        assert!(decode_key("not base64!").is_err());
    }

    proptest! {
        #[test]
        fn durations_round_trip(n in 0u64..1_000_000, unit in prop::sample::select(vec!["ms", "s", "m", "h", "d"])) {
            let parsed = parse_duration(&format!("{n}{unit}")).unwrap();
            let per = match unit { "ms" => 1, "s" => 1000, "m" => 60_000, "h" => 3_600_000, _ => 86_400_000 };
            prop_assert_eq!(parsed, Duration::from_millis(n * per));
        }
    }
}
