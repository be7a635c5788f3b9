//! Broker addresses. `AMQP_URL` may name several nodes of one RabbitMQ
//! cluster, separated by commas; a client connects to one of them and, when
//! that connection dies, its next connect begins with the following node, so
//! a replica moves to a live node without a restart and replicas spread over
//! the nodes.
//!
//! A connection asks for frames of at most [`DEFAULT_FRAME_MAX`] bytes unless
//! its URL sets `frame_max`: lapin keeps a send and a receive buffer of 32
//! frames each, which RabbitMQ's default of 128 KiB makes 8 MiB a connection.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use lapin::{Connection, ConnectionProperties, uri::AMQPUri};

/// How long one node may take to accept a connection before the next is tried:
/// a node that is stopped refuses at once, one that hangs must not hold the
/// client for the minutes a TCP connect can take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The frame size a connection asks for when its URL does not name one. A
/// message larger than a frame travels as several body frames; events are far
/// smaller. lapin's buffers then take 2 x 32 x 16 KiB = 1 MiB a connection.
pub const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

/// The URLs in `list`, in order: split on commas, blanks trimmed, empty ones dropped.
pub fn addresses(list: &str) -> Vec<&str> {
    list.split(',').map(str::trim).filter(|url| !url.is_empty()).collect()
}

/// Why no node of the list could be reached; names the last node tried, its password masked.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no broker address given")]
    NoAddress,
    #[error("{address}: not an AMQP URL: {reason}")]
    Invalid { address: String, reason: String },
    #[error("{address}: {source}")]
    Failed { address: String, source: lapin::Error },
    #[error("{address}: no connection within {after:?}")]
    TimedOut { address: String, after: Duration },
}

/// Where the next connect of this process begins: rotates on every call and
/// starts at a random node, so that replicas do not all pile on the first.
fn next_start() -> usize {
    static NEXT: OnceLock<AtomicUsize> = OnceLock::new();
    NEXT.get_or_init(|| AtomicUsize::new(rand::random::<u16>() as usize)).fetch_add(1, Ordering::Relaxed)
}

/// Connects to the first node of `list` that accepts, trying each at most
/// once, beginning with the node after the one the previous call began with.
pub async fn connect(list: &str, properties: ConnectionProperties) -> Result<Connection, ConnectError> {
    let urls = addresses(list);
    if urls.is_empty() {
        return Err(ConnectError::NoAddress);
    }
    let start = next_start();
    let mut last = ConnectError::NoAddress;
    for i in 0..urls.len() {
        let url = urls[(start + i) % urls.len()];
        let address = || crate::redact::redact_url(url);
        last = match parse(url) {
            Err(reason) => ConnectError::Invalid { address: address(), reason },
            Ok(uri) => {
                match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, properties.clone())).await {
                    Ok(Ok(connection)) => return Ok(connection),
                    Ok(Err(source)) => ConnectError::Failed { address: address(), source },
                    Err(_) => ConnectError::TimedOut { address: address(), after: CONNECT_TIMEOUT },
                }
            }
        };
        if urls.len() > 1 {
            tracing::warn!(error = %last, "broker node unreachable; trying the next");
        }
    }
    Err(last)
}

/// `url` parsed, with [`DEFAULT_FRAME_MAX`] unless it sets `frame_max` itself.
fn parse(url: &str) -> Result<AMQPUri, String> {
    let mut uri: AMQPUri = url.parse()?;
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_splits_on_commas_and_drops_blanks() {
        assert_eq!(addresses("amqp://a:5672/%2f"), ["amqp://a:5672/%2f"]);
        assert_eq!(
            addresses("amqp://a:5701/%2f, amqp://b:5702/%2f,,amqp://c:5703/%2f "),
            ["amqp://a:5701/%2f", "amqp://b:5702/%2f", "amqp://c:5703/%2f"]
        );
        assert!(addresses(" , ").is_empty());
    }

    #[tokio::test]
    async fn a_dead_node_is_passed_over() {
        // Port 1 refuses; the real broker (or, without one, its refusal) answers after it.
        let live = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let list = format!("amqp://guest:guest@127.0.0.1:1/%2f,{live}");
        for _ in 0..2 {
            let connection = connect(&list, ConnectionProperties::default()).await.expect("the live node accepts");
            assert!(connection.status().connected());
            assert_eq!(connection.configuration().frame_max(), DEFAULT_FRAME_MAX, "negotiated with the broker");
            let _ = connection.close(200, "bye".into()).await;
        }
        let err = connect("amqp://guest:s3cret@127.0.0.1:1/%2f", ConnectionProperties::default())
            .await
            .expect_err("nothing listens on port 1");
        assert!(err.to_string().starts_with("amqp://guest:***@127.0.0.1:1/"), "{err}");
    }

    #[test]
    fn the_frame_size_is_the_urls_or_the_default() {
        assert_eq!(parse("amqp://a:5672/%2f").unwrap().query.frame_max, Some(DEFAULT_FRAME_MAX));
        assert_eq!(parse("amqp://a:5672/%2f?frame_max=131072").unwrap().query.frame_max, Some(131_072));
        assert_eq!(parse("amqp://a:5672/%2f?heartbeat=10").unwrap().query.heartbeat, Some(10));
    }

    #[tokio::test]
    async fn a_malformed_url_is_named_without_its_password() {
        let err = connect("amqp://guest:s3cret@127.0.0.1:5672/%2f?frame_max=big", ConnectionProperties::default())
            .await
            .expect_err("frame_max is not a number");
        let text = err.to_string();
        assert!(text.starts_with("amqp://guest:***@127.0.0.1:5672/") && text.contains("not an AMQP URL"), "{text}");
    }
}
