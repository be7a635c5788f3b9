//! The bench's own consumer queues, deleted between phases so that no phase
//! inherits another's messages.

use lapin::{ConnectionProperties, options::QueueDeleteOptions, types::ShortString};

/// Main queue of the bench's notifications consumer.
pub(crate) const MAIN_QUEUE: &str = "bench.notifications.order-created";
/// The saga participants' command queues (their prefix is the bench's too).
pub(crate) const PAYMENTS_QUEUE: &str = "bench.payments.commands";
pub(crate) const INVENTORY_QUEUE: &str = "bench.inventory.commands";
/// Orders' saga reply queue.
pub(crate) const REPLIES_QUEUE: &str = "bench.orders.saga-replies";
/// Retry tiers the bench configures (milliseconds), so it knows their queue names.
pub(crate) const RETRY_DELAYS_MS: &str = "1000,5000,30000";

pub(crate) async fn delete_consumer_queues(url: &str) -> anyhow::Result<()> {
    let connection = infra::amqp::connect(url, ConnectionProperties::default()).await?;
    let delays: Vec<std::time::Duration> = RETRY_DELAYS_MS
        .split(',')
        .map(|ms| std::time::Duration::from_millis(ms.parse().expect("constant delays parse")))
        .collect();
    let channel = connection.create_channel().await?;
    let default_delays = &inbox::DEFAULT_RETRY_DELAYS[..];
    for (queue, delays) in [
        (MAIN_QUEUE, &delays[..]),
        (PAYMENTS_QUEUE, default_delays),
        (INVENTORY_QUEUE, default_delays),
        (REPLIES_QUEUE, default_delays),
    ] {
        let topology = inbox::Topology::new(contracts::EVENTS_EXCHANGE, queue, &[], delays);
        for name in topology.queues() {
            channel.queue_delete(ShortString::from(name), QueueDeleteOptions::default()).await?;
        }
    }
    let _ = connection.close(200, ShortString::from("done")).await;
    Ok(())
}

/// Waits until the notifications consumer is subscribed to its main queue:
/// its health says SERVING once its database answers, which can be before it
/// has declared its queues, and a relay publishing then finds no route.
pub(crate) async fn wait_consumer(url: &str, limit: std::time::Duration) -> anyhow::Result<()> {
    wait_consumer_of(url, MAIN_QUEUE, limit).await
}

/// Waits until a consumer is subscribed to `queue`.
pub(crate) async fn wait_consumer_of(url: &str, queue: &str, limit: std::time::Duration) -> anyhow::Result<()> {
    let connection = infra::amqp::connect(url, ConnectionProperties::default()).await?;
    let deadline = tokio::time::Instant::now() + limit;
    let subscribed = loop {
        // A passive declare of a missing queue closes its channel: a new one each time.
        let channel = connection.create_channel().await?;
        let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let declared = channel.queue_declare(ShortString::from(queue), options, Default::default()).await;
        if declared.is_ok_and(|queue| queue.consumer_count() > 0) {
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let _ = connection.close(200, ShortString::from("done")).await;
    anyhow::ensure!(subscribed, "no consumer subscribed to {queue} within {limit:?}");
    Ok(())
}

/// The bench's own virtual host, so that nothing else publishing to
/// `pulse.events` on the same broker reaches the consumer it measures (and the
/// bench's events reach nobody else). Made with `rabbitmqctl` when this machine
/// runs the broker; otherwise (or if the broker does not answer in time) the
/// given URL is used as it is.
pub(crate) fn isolated(url: &str) -> (String, Option<String>) {
    const VHOST: &str = "pulse-bench";
    // Already there (a run that could not remove it): kept, as it is.
    let _ = rabbitmqctl(&["add_vhost", VHOST]);
    if let Err(err) = rabbitmqctl(&["set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"]) {
        eprintln!("bench: {err}; sharing the broker's vhost with whatever else runs there");
        return (url.to_owned(), None);
    }
    let (address, query) = url.split_once('?').map_or((url, None), |(address, query)| (address, Some(query)));
    let base = address.rsplit_once('/').map_or(address, |(base, _)| base);
    let query = query.map_or_else(String::new, |query| format!("?{query}"));
    (format!("{base}/{VHOST}{query}"), Some(VHOST.to_owned()))
}

/// Deletes the bench's virtual host and everything in it.
pub(crate) fn remove(vhost: &str) {
    if let Err(err) = rabbitmqctl(&["delete_vhost", vhost]) {
        eprintln!("bench: the vhost {vhost} stays: {err}");
    }
}

/// How long a `rabbitmqctl` call may take: a broker that does not finish a
/// vhost operation must not hang the run.
const CTL_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `rabbitmqctl` with `args`, killed after [`CTL_LIMIT`].
fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let what = format!("rabbitmqctl {}", args.join(" "));
    let mut child = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|err| format!("{what}: {err}"))?;
    let deadline = std::time::Instant::now() + CTL_LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{what}: {status}")),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: no answer within {CTL_LIMIT:?}"));
            }
            Err(err) => return Err(format!("{what}: {err}")),
        }
    }
}
