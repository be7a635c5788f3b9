//! Sending one webhook delivery: the pinned body and headers, signed, to an
//! address that passed the private-network guard, over hyper's pooled client
//! (HTTP/1.1, TLS by rustls with the webpki roots).

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, StatusCode,
    body::Incoming,
    header::{HeaderMap, RETRY_AFTER},
};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, dns::Name},
    },
    rt::TokioExecutor,
};

use super::{
    Outcome,
    claim::Claimed,
    secret::{self, SecretKey},
};

/// The longest Retry-After honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The most of an answer's body read; past it, the connection is closed.
const MAX_DRAINED: usize = 64 * 1024;
const USER_AGENT: &str = concat!("pulse-notifications/", env!("CARGO_PKG_VERSION"));

type Connector = HttpsConnector<HttpConnector<GuardedResolver>>;

/// Sends webhooks; one client (and its connection pools) per dispatcher.
pub(crate) struct WebhookSender {
    client: Client<Connector, Full<Bytes>>,
    /// For a whole attempt: connecting, sending, the answer and its body
    /// (whose head alone decides the outcome).
    timeout: Duration,
    allow_private: bool,
    key: Option<SecretKey>,
}

impl WebhookSender {
    pub(crate) fn new(timeout: Duration, allow_private: bool, key: Option<SecretKey>) -> anyhow::Result<Self> {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self { client, timeout, allow_private, key })
    }

    pub(crate) async fn send(&self, delivery: &Claimed, traceparent: &str) -> Outcome {
        let Some(url) = delivery.url.as_deref() else { return Outcome::failed(None, "the endpoint has no URL") };
        let parsed = match url::Url::parse(url) {
            Ok(parsed) => parsed,
            Err(err) => return Outcome::failed(None, format!("the endpoint's URL does not parse: {err}")),
        };
        // An address in the URL itself is never resolved, so it is checked here.
        if let Some(ip) = literal_ip(&parsed)
            && !self.allow_private
            && is_private(ip)
        {
            return Outcome::failed(None, refused(ip));
        }
        let secrets = match self.secrets(delivery) {
            Ok(secrets) => secrets,
            Err(err) => return Outcome::retry(None, format!("{err:#}"), None),
        };
        let body = delivery.body();
        let id = delivery.delivery_id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let request = Request::post(parsed.as_str())
            .header("content-type", "application/json")
            .header("user-agent", USER_AGENT)
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", secret::signature_header(&secrets, &id, timestamp, body.as_bytes()))
            .header("x-correlation-id", &delivery.correlation_id)
            .header("traceparent", traceparent)
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(request) => request,
            Err(err) => return Outcome::failed(None, format!("the request cannot be built: {err}")),
        };
        // One deadline for the attempt. The answer's head decides the outcome:
        // a body still arriving at the deadline is cut off, never a retry.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                return match private_refusal(&err) {
                    Some(reason) => Outcome::failed(None, reason),
                    None => Outcome::retry(None, describe(&err), None),
                };
            }
            Err(_) => return Outcome::retry(None, format!("timed out: no answer within {:?}", self.timeout), None),
        };
        let outcome = classify(response.status(), response.headers());
        let _ = tokio::time::timeout_at(deadline, drain(response.into_body())).await;
        outcome
    }

    /// The live secrets: the current one, and the previous one until its window ends.
    fn secrets(&self, delivery: &Claimed) -> anyhow::Result<Vec<String>> {
        let key = self.key.as_ref().ok_or_else(|| anyhow::anyhow!("DELIVERY_SECRET_KEY is not set"))?;
        let mut secrets = Vec::with_capacity(2);
        if let Some(sealed) = &delivery.secret {
            secrets.push(key.decrypt(sealed)?);
        }
        if let (Some(sealed), Some(until)) = (&delivery.previous_secret, delivery.previous_secret_expires_at)
            && until > chrono::Utc::now()
        {
            secrets.push(key.decrypt(sealed)?);
        }
        Ok(secrets)
    }
}

/// Reads what is left of an answer's body, up to [`MAX_DRAINED`], so that its
/// connection serves the next attempt instead of being closed (a new one, and
/// its TLS handshake, for every delivery). What the body says does not matter.
async fn drain(mut body: Incoming) {
    let mut read = 0;
    while read <= MAX_DRAINED {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(_)) | None => return,
        }
    }
}

/// What an answer means: 2xx delivered; 408, 429 and 5xx retried (Retry-After
/// honoured on 429 and 503); any other status failed at once.
fn classify(status: StatusCode, headers: &HeaderMap) -> Outcome {
    let code = Some(status.as_u16());
    if status.is_success() {
        return Outcome::Delivered { status_code: code };
    }
    let error = format!("the endpoint answered {status}");
    match status.as_u16() {
        429 | 503 => Outcome::retry(code, error, retry_after(headers)),
        408 | 500..=599 => Outcome::retry(code, error, None),
        _ => Outcome::failed(code, error),
    }
}

/// Retry-After as seconds or an HTTP date, at most [`MAX_RETRY_AFTER`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match raw.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

fn describe(err: &hyper_util::client::legacy::Error) -> String {
    let what = if err.is_connect() { "cannot connect" } else { "request failed" };
    let mut text = format!("{what}: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// Loopback, private, link-local, unique-local, unspecified, and the like
/// (shared, benchmarking, multicast, broadcast; IPv4-mapped IPv6 as its IPv4).
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

fn refused(ip: IpAddr) -> String {
    format!(
        "refused: the endpoint resolves to {ip}, a loopback, private or link-local address (DELIVERY_ALLOW_PRIVATE_NETWORKS is off)"
    )
}

/// The resolver's refusal, carried through hyper's error.
#[derive(Debug)]
struct PrivateAddress(String);

impl std::fmt::Display for PrivateAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PrivateAddress {}

fn private_refusal(err: &hyper_util::client::legacy::Error) -> Option<String> {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<PrivateAddress>() {
            return Some(refusal.0.clone());
        }
        source = cause.source();
    }
    None
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resolves names and, unless private networks are allowed, refuses any
/// answer with a private address. The connector connects to the addresses
/// returned here, the ones checked: a second lookup cannot swap them (DNS rebinding).
#[derive(Debug, Clone, Copy)]
struct GuardedResolver {
    allow_private: bool,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if !allow_private && let Some(private) = addrs.iter().find(|addr| is_private(addr.ip())) {
                return Err(Box::new(PrivateAddress(refused(private.ip()))) as BoxError);
            }
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn statuses_classify() {
        let none = HeaderMap::new();
        assert!(matches!(classify(StatusCode::NO_CONTENT, &none), Outcome::Delivered { .. }));
        for retried in [408, 429, 500, 502, 503] {
            assert!(
                matches!(classify(StatusCode::from_u16(retried).unwrap(), &none), Outcome::Retry { .. }),
                "{retried}"
            );
        }
        for failed in [400, 401, 404, 410, 422] {
            assert!(
                matches!(classify(StatusCode::from_u16(failed).unwrap(), &none), Outcome::Failed { .. }),
                "{failed}"
            );
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, "99999999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        headers.insert(RETRY_AFTER, later.parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120), "{wait:?}");
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}
