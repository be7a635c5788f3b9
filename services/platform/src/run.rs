//! The one run loop of every Pulse service. A service builds its parts (the
//! router, the database it is ready with, its background tasks and the health
//! names that follow them) and hands them to [`Service`], which serves them
//! and stops them in one order:
//!
//! 1. the shutdown token fires (or the gRPC server ends on its own);
//! 2. readiness and the mirrored names turn NOT_SERVING, so load balancers
//!    stop sending calls; the grace period gives them time to notice;
//! 3. the gRPC server stops accepting and lets in-flight calls finish;
//! 4. the background tasks (relay, consumer, ...) stop, each after the work
//!    in hand, then the resources registered with [`Service::on_stopped`] close;
//! 5. the metrics endpoint closes: it is scraped until the very end.

use std::{future::Future, net::SocketAddr, time::Duration};

use futures::future::BoxFuture;
use sqlx::postgres::PgConnectOptions;
use telemetry::metrics::Registry;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    grpc::GrpcRouter,
    health::{self, LIVENESS, set_status},
};

type Task = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;
type Mirror = Box<dyn FnOnce(HealthReporter, CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// A service ready to run: ports bound, nothing running yet.
pub struct Service {
    name: &'static str,
    router: GrpcRouter,
    health: HealthReporter,
    listener: TcpListener,
    grpc_addr: SocketAddr,
    registry: Registry,
    metrics_listener: TcpListener,
    metrics_addr: SocketAddr,
    grace: Duration,
    database: Option<(PgConnectOptions, Duration, Duration)>,
    readiness: Vec<&'static str>,
    mirrored: Vec<&'static str>,
    mirrors: Vec<Mirror>,
    tasks: Vec<(&'static str, Task)>,
    closers: Vec<BoxFuture<'static, ()>>,
}

impl Service {
    /// Binds the gRPC and metrics addresses (port 0 picks a free port) and
    /// reports `liveness` SERVING, as it stays until the process exits.
    pub async fn bind(
        name: &'static str,
        router: GrpcRouter,
        health: HealthReporter,
        registry: Registry,
        grpc_addr: SocketAddr,
        metrics_addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let (listener, grpc_addr) = crate::serve::bind(grpc_addr).await?;
        let (metrics_listener, metrics_addr) = telemetry::metrics::bind(metrics_addr).await?;
        health.set_service_status(LIVENESS, ServingStatus::Serving).await;
        Ok(Self {
            name,
            router,
            health,
            listener,
            grpc_addr,
            registry,
            metrics_listener,
            metrics_addr,
            grace: Duration::ZERO,
            database: None,
            readiness: Vec::new(),
            mirrored: Vec::new(),
            mirrors: Vec::new(),
            tasks: Vec::new(),
            closers: Vec::new(),
        })
    }

    /// The bound gRPC address (the real port when the configuration said 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where `GET /metrics` answers.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// How long readiness is NOT_SERVING before the server stops accepting.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// `names` follow the database (see [`health::watch_database`]): the readiness names.
    pub fn ready_with_database(
        mut self,
        options: PgConnectOptions,
        names: &[&'static str],
        interval: Duration,
        timeout: Duration,
    ) -> Self {
        self.database = Some((options, interval, timeout));
        self.readiness = names.to_vec();
        self
    }

    /// `name` is SERVING while `serving` holds for what `state` says; NOT_SERVING
    /// once its sender is gone, and from shutdown on.
    pub fn mirror<T: Send + Sync + 'static>(
        mut self,
        name: &'static str,
        mut state: watch::Receiver<T>,
        serving: fn(&T) -> bool,
    ) -> Self {
        self.mirrored.push(name);
        self.mirrors.push(Box::new(move |reporter, stop| {
            Box::pin(async move {
                loop {
                    let up = serving(&state.borrow_and_update());
                    let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
                    reporter.set_service_status(name, status).await;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = state.changed() => if changed.is_err() { break },
                    }
                }
                reporter.set_service_status(name, ServingStatus::NotServing).await;
                stop.cancelled().await;
            })
        }));
        self
    }

    /// Runs `task` in the background, handing it a token cancelled once the
    /// server has stopped; the task should then finish the work in hand and return.
    pub fn task<F, Fut>(mut self, name: &'static str, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push((name, Box::new(move |stop| Box::pin(task(stop)))));
        self
    }

    /// Awaits `close` once the tasks have stopped (pools, connection lanes).
    pub fn on_stopped(mut self, close: impl Future<Output = ()> + Send + 'static) -> Self {
        self.closers.push(Box::pin(close));
        self
    }

    /// Serves until `shutdown` fires, then stops in the order the module describes.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let name = self.name;
        // Each stage stops on a token of its own; dropped unfinished, the
        // loop takes every stage with it.
        let root = CancellationToken::new();
        let _stop_all = root.clone().drop_guard();
        let (health_stop, serve_stop, tasks_stop, telemetry_stop) =
            (root.child_token(), root.child_token(), root.child_token(), root.child_token());

        let mut watchers = JoinSet::new();
        if let Some((options, interval, timeout)) = self.database {
            let names = self.readiness.clone();
            let reporter = self.health.clone();
            watchers.spawn(health::watch_database(options, reporter, names, interval, timeout, health_stop.clone()));
        }
        for mirror in self.mirrors {
            watchers.spawn(mirror(self.health.clone(), health_stop.clone()));
        }
        let mut tasks = JoinSet::new();
        for (task_name, task) in self.tasks {
            let run = task(tasks_stop.child_token());
            tasks.spawn(async move {
                run.await;
                tracing::debug!(task = task_name, "task stopped");
                task_name
            });
        }
        let metrics =
            tokio::spawn(telemetry::metrics::serve(self.metrics_listener, self.registry, telemetry_stop.clone()));
        let mut server = tokio::spawn(crate::serve::serve(self.router, self.listener, serve_stop.clone()));
        tracing::info!(addr = %self.grpc_addr, metrics = %self.metrics_addr, "{name} serving");

        let early = tokio::select! {
            _ = shutdown.cancelled() => None,
            ended = &mut server => Some(ended),
        };
        // The watchers stop first: one caught mid-update could write SERVING after us.
        let names: Vec<&str> = self.readiness.iter().chain(&self.mirrored).copied().collect();
        health_stop.cancel();
        while watchers.join_next().await.is_some() {}
        set_status(&self.health, &names, ServingStatus::NotServing).await;
        let served = match early {
            Some(ended) => ended,
            None => {
                tokio::time::sleep(self.grace).await;
                serve_stop.cancel();
                server.await
            }
        };
        tasks_stop.cancel();
        let mut panicked = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            if let Err(err) = joined {
                tracing::error!(error = %err, "{name}: a background task failed");
                panicked.push(err.to_string());
            }
        }
        for close in self.closers {
            close.await;
        }
        telemetry_stop.cancel();
        tracing::info!("{name} stopped");
        served??;
        metrics.await??;
        anyhow::ensure!(panicked.is_empty(), "background tasks failed: {}", panicked.join("; "));
        Ok(())
    }
}
