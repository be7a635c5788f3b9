//! Load generators over real gRPC clients: closed loop at a fixed concurrency,
//! open loop at a fixed rate.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use contracts::orders::v1::{CreateOrderRequest, order_service_client::OrderServiceClient};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tokio::sync::Mutex;
use tonic::transport::Channel;
use uuid::Uuid;

pub(crate) struct LoadResult {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    /// Client-side CreateOrder latency, microseconds.
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) order_ids: Vec<Uuid>,
}

impl LoadResult {
    pub(crate) fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// This window and `next` as one: their orders, errors, latencies and durations added.
    pub(crate) fn and(mut self, next: Self) -> anyhow::Result<Self> {
        self.ok += next.ok;
        self.errors += next.errors;
        self.elapsed += next.elapsed;
        self.latency_us.add(next.latency_us)?;
        self.order_ids.extend(next.order_ids);
        Ok(self)
    }
}

/// One HTTP/2 connection per eight callers, as a pool of client stubs would.
pub(crate) async fn clients(addr: SocketAddr, concurrency: usize) -> anyhow::Result<Vec<OrderServiceClient<Channel>>> {
    let mut clients = Vec::new();
    for _ in 0..concurrency.div_ceil(8).max(1) {
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
        clients.push(OrderServiceClient::new(channel));
    }
    Ok(clients)
}

/// The `i`th order of the one-hop phases: no lines.
pub(crate) fn request(i: u64) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: format!("bench-{}", i % 10_000),
        amount: "12.34".into(),
        currency: "EUR".into(),
        request_id: String::new(),
        lines: Vec::new(),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// `concurrency` callers, each sending its next CreateOrder when the last one
/// returns, until `duration` passes or `limit` orders were created.
pub(crate) async fn closed_loop(
    addr: SocketAddr,
    concurrency: usize,
    duration: Duration,
    limit: Option<u64>,
    progress: &ProgressBar,
) -> anyhow::Result<LoadResult> {
    let clients = clients(addr, concurrency).await?;
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers = (0..concurrency).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let (counter, errors, progress) = (Arc::clone(&counter), Arc::clone(&errors), progress.clone());
        tokio::spawn(async move {
            let mut latency = histogram();
            let mut ids: Vec<Uuid> = Vec::new();
            while started.elapsed() < duration {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|limit| n >= limit) {
                    break;
                }
                let sent = Instant::now();
                match client.create_order(request(n)).await {
                    Ok(response) => {
                        latency.saturating_record(sent.elapsed().as_micros() as u64);
                        ids.push(response.into_inner().order_id.parse().expect("order ids are UUIDs"));
                        progress.inc(1);
                    }
                    Err(status) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("bench: first CreateOrder error: {status}");
                        }
                    }
                }
            }
            (latency, ids)
        })
    });
    let mut result =
        LoadResult { ok: 0, errors: 0, elapsed: Duration::ZERO, latency_us: histogram(), order_ids: Vec::new() };
    for worker in futures::future::join_all(workers).await {
        let (latency, ids) = worker?;
        result.latency_us.add(latency)?;
        result.ok += ids.len() as u64;
        result.order_ids.extend(ids);
    }
    result.elapsed = started.elapsed();
    result.errors = errors.load(Ordering::Relaxed);
    Ok(result)
}

/// CreateOrder calls started at a fixed `rate` per second for `duration`,
/// whether or not earlier ones have returned (no coordinated omission).
pub(crate) async fn open_loop(
    addr: SocketAddr,
    rate: f64,
    duration: Duration,
    progress: &ProgressBar,
) -> anyhow::Result<LoadResult> {
    open_loop_of(addr, rate, duration, progress, request).await
}

/// [`open_loop`] with the `i`th request made by `make`.
pub(crate) async fn open_loop_of(
    addr: SocketAddr,
    rate: f64,
    duration: Duration,
    progress: &ProgressBar,
    make: fn(u64) -> CreateOrderRequest,
) -> anyhow::Result<LoadResult> {
    let clients = clients(addr, 16).await?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let results = Arc::new(Mutex::new((histogram(), Vec::<Uuid>::new(), 0u64)));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while started.elapsed() < duration {
        ticker.tick().await;
        let mut client = clients[n as usize % clients.len()].clone();
        let (results, progress) = (Arc::clone(&results), progress.clone());
        let i = n;
        tasks.spawn(async move {
            let sent = Instant::now();
            let outcome = client.create_order(make(i)).await;
            let mut results = results.lock().await;
            match outcome {
                Ok(response) => {
                    results.0.saturating_record(sent.elapsed().as_micros() as u64);
                    results.1.push(response.into_inner().order_id.parse().expect("order ids are UUIDs"));
                    progress.inc(1);
                }
                Err(status) => {
                    if results.2 == 0 {
                        eprintln!("bench: first CreateOrder error: {status}");
                    }
                    results.2 += 1;
                }
            }
        });
        n += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let (latency_us, order_ids, errors) =
        Arc::try_unwrap(results).map_err(|_| anyhow::anyhow!("load tasks still hold results"))?.into_inner();
    Ok(LoadResult { ok: order_ids.len() as u64, errors, elapsed, latency_us, order_ids })
}
