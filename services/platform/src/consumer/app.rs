//! [`Kit::serve`]: the router with health, reflection, the service's API and
//! the dead-letter console; the consumer and the relay as the run loop's
//! tasks, their health names mirrored; and the [`App`] that runs them.

use std::{net::SocketAddr, sync::Arc};

use inbox::{
    Handler, Inbox, InboxStats,
    admin::{self, DeadLetterConsole},
};
use outbox::{Relay, RelayConfig};
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use super::{Kit, admin_auth};
use crate::{
    grpc::{GrpcRouter, set_status},
    run::Service,
};

/// How long a database probe of the readiness check may take.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Kit {
    /// Binds the gRPC and metrics ports: the router carries health,
    /// reflection, what `api` adds (the service's own API) and the
    /// dead-letter console (`admin_token` its bearer token). With a
    /// `handler`, the consumer runs (None: a replica that only serves the API);
    /// with a `relay`, the outbox relay runs too. Every health name is
    /// NOT_SERVING until its watcher has seen the database or the broker.
    pub async fn serve<H: Handler>(
        self,
        relay: Option<&RelayConfig>,
        handler: Option<H>,
        admin_token: Option<SecretString>,
        api: impl FnOnce(GrpcRouter) -> GrpcRouter,
    ) -> anyhow::Result<App> {
        let Self { spec, server, inbox: config, pool, db_options, registry } = self;
        let inbox = match handler {
            Some(handler) => Some(Inbox::new(pool.clone(), handler, config.clone())?.with_metrics(&registry)),
            None => None,
        };
        let (consumer_connected, stats) = match &inbox {
            Some(inbox) => (inbox.connected(), inbox.stats()),
            None => (watch::channel(false).1, Arc::default()),
        };
        let relay = relay.map(|relay| Relay::new(db_options.clone(), relay.clone(), None).with_metrics(&registry));

        let auth = admin_auth(&spec, &server, admin_token);
        let (router, reporter) = crate::grpc::router_with_health_and_reflection(
            &[spec.service_name, admin::v1::SERVICE_NAME],
            &[spec.descriptor_set, admin::FILE_DESCRIPTOR_SET],
            &registry,
            server.tls.as_ref(),
        )?;
        let router =
            api(router).add_service(DeadLetterConsole::<H>::new(pool.clone(), &config).into_service_with(auth));
        let mut names = vec!["", spec.service_name, spec.consumer_health_name];
        if relay.is_some() {
            names.push(spec.relay_health_name);
        }
        set_status(&reporter, &names, ServingStatus::NotServing).await;

        let mut service = Service::bind(spec.name, router, reporter, registry, server.grpc_addr, server.metrics_addr)
            .await?
            .ready_with_database(db_options, &["", spec.service_name], server.health_interval, PROBE_TIMEOUT)
            .mirror(spec.consumer_health_name, consumer_connected.clone(), |connected| *connected);
        if let Some(inbox) = inbox {
            service = service.task("inbox consumer", |stop| inbox.run(stop));
        }
        if let Some(relay) = relay {
            // A reply committed as the relay stops stays in the outbox, relayed at the next start.
            service = service
                .mirror(spec.relay_health_name, relay.status(), |status| status.healthy())
                .task("outbox relay", |stop| relay.run(stop));
        }
        tracing::info!(addr = %service.grpc_addr(), metrics_addr = %service.metrics_addr(), "{} listening", spec.name);
        let closing = pool.clone();
        let service = service.on_stopped(async move { closing.close().await });
        Ok(App { service, pool, consumer_connected, stats })
    }
}

/// A built service: database migrated, ports bound, nothing running yet.
pub struct App {
    service: Service,
    pool: PgPool,
    consumer_connected: watch::Receiver<bool>,
    stats: Arc<InboxStats>,
}

impl App {
    /// The bound address (the real port when the configuration said 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.service.grpc_addr()
    }

    /// Where `GET /metrics` answers.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.service.metrics_addr()
    }

    /// The service's pool (for tests' own queries).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// True while the consumer is connected to the broker and subscribed.
    pub fn consumer_connected(&self) -> watch::Receiver<bool> {
        self.consumer_connected.clone()
    }

    /// What the consumer has done so far.
    pub fn consumer_stats(&self) -> Arc<InboxStats> {
        Arc::clone(&self.stats)
    }

    /// Serves, consumes (and relays) until `shutdown` fires, then: health
    /// NOT_SERVING, in-flight calls finished, the consumer's batch in hand
    /// committed, the relay's batches settled.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.service.run_until_stopped(shutdown).await
    }
}
