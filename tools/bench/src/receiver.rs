//! The bench's webhook receiver, an HTTP server on 127.0.0.1 that answers
//! every POST 200 at once and records when each arrived, and the plain HTTP
//! client the dispatcher is compared with, posting to the same receiver.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
};
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use uuid::Uuid;

/// Where the dispatcher posts; the plain client posts to [`PLAIN_PATH`].
const WEBHOOK_PATH: &str = "/webhook";
const PLAIN_PATH: &str = "/plain";

/// One request the receiver answered.
#[derive(Clone)]
pub(crate) struct Arrival {
    pub(crate) at: DateTime<Utc>,
    /// Sent by the plain client, not by notifications.
    pub(crate) plain: bool,
    pub(crate) webhook_id: String,
    /// The body's `data.order_id`.
    pub(crate) order_id: Option<Uuid>,
    /// Carries `webhook-timestamp` and a `v1,` signature.
    pub(crate) signed: bool,
    body: Bytes,
    headers: HeaderMap,
}

type Arrivals = Arc<Mutex<Vec<Arrival>>>;

pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    arrivals: Arrivals,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let arrivals = Arrivals::default();
        let app = Router::new().fallback(receive).with_state(Arc::clone(&arrivals));
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("bench: the webhook receiver stopped: {err}");
            }
        });
        Ok(Self { addr, arrivals, server })
    }

    /// The URL of the bench's webhook endpoint.
    pub(crate) fn url(&self) -> String {
        format!("http://{}{WEBHOOK_PATH}", self.addr)
    }

    /// How many requests have arrived so far: a mark for [`Self::since`].
    pub(crate) fn len(&self) -> usize {
        self.arrivals.lock().expect("arrivals").len()
    }

    /// The requests that arrived after `mark`.
    pub(crate) fn since(&self, mark: usize) -> Vec<Arrival> {
        self.arrivals.lock().expect("arrivals")[mark..].to_vec()
    }

    /// Waits until a webhook about each of `ids` arrived after `mark`. Each
    /// look reads only what arrived since the last, under the lock, copying
    /// nothing: the bench must not take the CPU the dispatcher it measures needs.
    pub(crate) async fn wait_for(&self, ids: &[Uuid], mark: usize, limit: Duration) -> anyhow::Result<()> {
        let since = Instant::now();
        let mut missing: HashSet<Uuid> = ids.iter().copied().collect();
        let mut read = mark;
        loop {
            {
                let arrivals = self.arrivals.lock().expect("arrivals");
                for arrival in arrivals[read..].iter().filter(|a| !a.plain) {
                    if let Some(order_id) = arrival.order_id {
                        missing.remove(&order_id);
                    }
                }
                read = arrivals.len();
            }
            if missing.is_empty() {
                return Ok(());
            }
            if since.elapsed() > limit {
                anyhow::bail!("{} of {} orders' webhooks did not arrive within {limit:?}", missing.len(), ids.len());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(arrivals): State<Arrivals>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = Utc::now();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let order_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|event| event["data"]["order_id"].as_str().and_then(|id| id.parse().ok()));
    let arrival = Arrival {
        at,
        plain: uri.path() == PLAIN_PATH,
        webhook_id: header("webhook-id").to_owned(),
        order_id,
        signed: !header("webhook-timestamp").is_empty() && header("webhook-signature").starts_with("v1,"),
        body,
        headers,
    };
    arrivals.lock().expect("arrivals").push(arrival);
    StatusCode::OK
}

/// The first webhook of each order among `arrivals`, by order id.
pub(crate) fn first_by_order(arrivals: &[Arrival]) -> HashMap<Uuid, &Arrival> {
    let mut first: HashMap<Uuid, &Arrival> = HashMap::new();
    for arrival in arrivals.iter().filter(|a| !a.plain) {
        if let Some(order_id) = arrival.order_id {
            first
                .entry(order_id)
                .and_modify(|seen| *seen = if arrival.at < seen.at { arrival } else { seen })
                .or_insert(arrival);
        }
    }
    first
}

/// Requests a second from the first arrival to the last (`n - 1` intervals).
pub(crate) fn rate<'a>(arrivals: impl Iterator<Item = &'a Arrival>) -> f64 {
    let times: Vec<DateTime<Utc>> = arrivals.map(|a| a.at).collect();
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else { return 0.0 };
    let span = (*last - *first).num_microseconds().unwrap_or(0) as f64 / 1e6;
    if span > 0.0 { (times.len() - 1) as f64 / span } else { 0.0 }
}

/// Posts each of `requests` (bodies and headers as notifications sent them)
/// again to the receiver's plain path, `concurrency` at a time over kept-alive
/// connections, as a plain HTTP client would; returns how many were not
/// answered 2xx.
pub(crate) async fn post_plain(addr: SocketAddr, requests: Vec<Arrival>, concurrency: usize) -> anyhow::Result<u64> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let requests = Arc::new(requests);
    let (next, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
    let uri: axum::http::Uri = format!("http://{addr}{PLAIN_PATH}").parse()?;
    let workers = (0..concurrency).map(|_| {
        let (client, requests, next, failed, uri) =
            (client.clone(), Arc::clone(&requests), Arc::clone(&next), Arc::clone(&failed), uri.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(original) = requests.get(i) else { return Ok::<_, anyhow::Error>(()) };
                let mut request = axum::http::Request::post(uri.clone()).body(Full::new(original.body.clone()))?;
                for name in [
                    "content-type",
                    "webhook-id",
                    "webhook-timestamp",
                    "webhook-signature",
                    "x-correlation-id",
                    "traceparent",
                    "user-agent",
                ] {
                    if let Some(value) = original.headers.get(name) {
                        request.headers_mut().insert(name, value.clone());
                    }
                }
                let response = client.request(request).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker??;
    }
    Ok(failed.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(at_ms: i64, order_id: Uuid, webhook_id: &str) -> Arrival {
        let body = format!(r#"{{"type":"order.created","data":{{"order_id":"{order_id}"}}}}"#);
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", webhook_id.parse().expect("a header value"));
        headers.insert("content-type", "application/json".parse().expect("a header value"));
        Arrival {
            at: DateTime::from_timestamp_millis(at_ms).expect("a time"),
            plain: false,
            webhook_id: webhook_id.to_owned(),
            order_id: Some(order_id),
            signed: true,
            body: Bytes::from(body),
            headers,
        }
    }

    #[test]
    fn the_first_arrival_of_each_order_counts_and_the_rate_spans_first_to_last() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let arrivals =
            [arrival(1_000, a, "d-a"), arrival(1_200, b, "d-b"), arrival(900, a, "d-a"), arrival(1_500, b, "d-b")];
        let first = first_by_order(&arrivals);
        assert_eq!((first[&a].at.timestamp_millis(), first[&b].at.timestamp_millis()), (900, 1_200));
        // Three intervals over 0.6 s.
        assert!((rate(arrivals.iter()) - 5.0).abs() < 1e-9);
        assert_eq!(rate(arrivals[..1].iter()), 0.0);
    }

    #[tokio::test]
    async fn the_plain_client_posts_every_request_once_and_the_receiver_records_it() {
        let receiver = Receiver::start().await.expect("the receiver starts");
        let orders: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
        let requests: Vec<Arrival> =
            orders.iter().enumerate().map(|(i, id)| arrival(i as i64, *id, &format!("d-{i}"))).collect();
        let refused = post_plain(receiver.addr, requests, 4).await.expect("the posts go through");
        assert_eq!(refused, 0);
        let received = receiver.since(0);
        assert_eq!(received.len(), 20);
        assert!(received.iter().all(|a| a.plain && !a.signed), "posted to the plain path, without signatures");
        let mut seen: Vec<Uuid> = received.iter().filter_map(|a| a.order_id).collect();
        seen.sort();
        let mut expected = orders.clone();
        expected.sort();
        assert_eq!(seen, expected, "each body's order id, once");
        let ids: HashSet<&str> = received.iter().map(|a| a.webhook_id.as_str()).collect();
        assert_eq!(ids.len(), 20, "the headers are posted as they came");
        // The webhook path is not the plain one: wait_for counts webhooks only.
        let err = receiver.wait_for(&orders[..1], 0, Duration::from_millis(50)).await.expect_err("none was a webhook");
        assert!(err.to_string().contains("1 of 1"), "{err}");
    }
}
