//! Masking credentials in URLs before they reach a log line or an error.

use crate::amqp;

/// [`redact_url`] of each URL of a comma-separated list, joined by commas: a
/// list read as one URL would leave the later passwords in its path.
pub fn redact_urls(list: &str) -> String {
    amqp::addresses(list).into_iter().map(redact_url).collect::<Vec<_>>().join(",")
}

/// What a masked credential reads as in a log line.
pub const MASK: &str = "***";

/// `url` with every credential the Postgres and AMQP URL parsers accept
/// replaced by [`MASK`], for log lines and errors: the userinfo password and
/// the value of every query parameter whose name reads as a credential
/// (`password`, `sslpassword`, `sslkey`, tokens, secrets; see
/// [`is_credential_parameter`]). The fragment is masked too: no parser reads
/// it, so it can only be a mistake. Anything that does not parse as a URL is
/// not shown at all. The one masking function: every URL that may reach a log
/// line or an error goes through it.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<unparsable url>".to_owned();
    };
    if parsed.password().is_some() {
        // Fails only for URLs that cannot have a password, which then have none.
        let _ = parsed.set_password(Some(MASK));
    }
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    if pairs.iter().any(|(key, _)| is_credential_parameter(key)) {
        parsed.query_pairs_mut().clear().extend_pairs(pairs.iter().map(|(key, value)| {
            let value = if is_credential_parameter(key) { MASK } else { value.as_str() };
            (key.as_str(), value)
        }));
    }
    if parsed.fragment().is_some() {
        parsed.set_fragment(Some(MASK));
    }
    parsed.to_string()
}

/// Whether a URL query parameter carries a credential: its name (in any case,
/// with or without `-` and `_`) mentions a password, key, secret, token or
/// credential. Wider than what the parsers read today, so that a parameter a
/// later parser learns (libpq's `sslpassword`, say) is masked already.
pub fn is_credential_parameter(key: &str) -> bool {
    let key: String = key.chars().filter(|c| c.is_alphanumeric()).collect::<String>().to_lowercase();
    ["pass", "pwd", "secret", "token", "key", "credential"].iter().any(|word| key.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[test]
    fn redact_url_hides_the_password_only() {
        assert_eq!(
            redact_url("postgres://postgres:s3cret@localhost:5432/pulse"),
            "postgres://postgres:***@localhost:5432/pulse"
        );
        assert_eq!(redact_url("amqp://localhost:5672/%2f"), "amqp://localhost:5672/%2f");
        assert_eq!(
            redact_url("amqp://guest:guest@localhost:5672/%2f?heartbeat=30&auth_mechanism=plain"),
            "amqp://guest:***@localhost:5672/%2f?heartbeat=30&auth_mechanism=plain"
        );
        assert!(!redact_url("not a url s3cret").contains("s3cret"));
    }

    #[test]
    fn redact_urls_masks_every_password_of_a_list() {
        assert_eq!(
            redact_urls("amqp://guest:s3cret@127.0.0.1:5701/%2f, amqp://guest:s3cret@127.0.0.1:5702/%2f"),
            "amqp://guest:***@127.0.0.1:5701/%2f,amqp://guest:***@127.0.0.1:5702/%2f"
        );
    }

    #[test]
    fn redact_url_hides_credentials_in_the_query() {
        for (url, shown) in [
            ("postgres://h/db?password=s3cret", "postgres://h/db?password=***"),
            (
                "postgres://h/db?user=u&password=s3cret&sslmode=disable",
                "postgres://h/db?user=u&password=***&sslmode=disable",
            ),
            ("postgres://h/db?sslpassword=s3cret", "postgres://h/db?sslpassword=***"),
            ("postgres://h/db?sslkey=%2Fs3cret.key&ssl-key=s3cret", "postgres://h/db?sslkey=***&ssl-key=***"),
            ("postgres://h/db?PASSWORD=s3cret", "postgres://h/db?PASSWORD=***"),
            ("postgres://h/db?pass%77ord=s3cret", "postgres://h/db?password=***"),
            ("postgres://u:s3cret@h/db?password=s3cret#s3cret", "postgres://u:***@h/db?password=***#***"),
            (
                "postgres://h/db?application_name=a&options=-c%20x%3D1",
                "postgres://h/db?application_name=a&options=-c%20x%3D1",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    /// A password of these characters, percent-encoded where a URL needs it.
    fn secret() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!$&'()*+,;=:@/?#%\\ ~é-]{6,24}".prop_map(|raw| format!("Zq{raw}9"))
    }

    fn encoded(raw: &str) -> String {
        url::form_urlencoded::byte_serialize(raw.as_bytes()).collect()
    }

    fn shows(redacted: &str, secret: &str) -> bool {
        redacted.contains(secret) || redacted.contains(&encoded(secret)) || {
            let decoded: String = url::form_urlencoded::parse(redacted.as_bytes())
                .flat_map(|(k, v)| [k.into_owned(), v.into_owned()])
                .collect::<Vec<_>>()
                .join("\n");
            decoded.contains(secret)
        }
    }

    proptest! {
        #[test]
        fn no_credential_form_survives(
            secret in secret(),
            scheme in prop::sample::select(vec!["postgres", "postgresql", "amqp", "amqps"]),
            key in prop::sample::select(vec!["password", "sslpassword", "sslkey", "ssl-key", "Password", "auth_token"]),
            in_userinfo in any::<bool>(),
            before in prop::sample::select(vec!["", "user=u&", "sslmode=disable&heartbeat=5&"]),
        ) {
            let userinfo = if in_userinfo { format!("u:{}@", encoded(&secret)) } else { "u@".to_owned() };
            let url = format!("{scheme}://{userinfo}db.example:5432/pulse?{before}{key}={}", encoded(&secret));
            prop_assume!(url::Url::parse(&url).is_ok());
            let redacted = redact_url(&url);
            prop_assert!(!shows(&redacted, &secret), "{} shows {:?} in {}", url, secret, redacted);
            prop_assert!(redacted.contains("db.example:5432/pulse"), "{}", redacted);
        }

        #[test]
        fn never_shows_what_does_not_parse(raw in "\\PC{0,60}") {
            prop_assume!(url::Url::parse(&raw).is_err());
            prop_assert_eq!(redact_url(&raw), "<unparsable url>");
        }

        #[test]
        fn leaves_urls_without_credentials_as_they_parse(
            host in "[a-z]{1,12}",
            db in "[a-z_]{1,12}",
            mode in prop::sample::select(vec!["disable", "prefer", "require"]),
        ) {
            let url = format!("postgres://postgres@{host}:5432/{db}?sslmode={mode}");
            prop_assert_eq!(redact_url(&url), url::Url::parse(&url).unwrap().to_string());
        }
    }
}
