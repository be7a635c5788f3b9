//! Health, and the database going away: the API answers UNAVAILABLE, and a
//! command that arrives meanwhile is applied once the database is back.

use std::time::Duration;

use contracts::inventory::v1::{GetStockRequest, SERVICE_NAME};
use inventory::{CONSUMER_HEALTH_NAME, RELAY_HEALTH_NAME};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use uuid::Uuid;

use crate::helpers::*;

async fn health(app: &TestApp, service: &str) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr)).unwrap().connect().await;
    let response = HealthClient::new(channel.unwrap()).check(HealthCheckRequest { service: service.to_owned() }).await;
    ServingStatus::try_from(response.expect("health answers").into_inner().status).unwrap()
}

#[sqlx::test(migrations = false)]
async fn every_health_name_serves_once_connected(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&db);
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let broker = Broker::connect(&topology).await;
    let app = spawn_app(config).await;
    for name in ["", SERVICE_NAME, CONSUMER_HEALTH_NAME, RELAY_HEALTH_NAME, "liveness"] {
        let app = &app;
        let serving = testkit::eventually(WAIT, || async move { health(app, name).await == ServingStatus::Serving });
        assert!(serving.await, "{name:?} serves");
    }
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn a_database_outage_is_unavailable_and_loses_no_command(_: PgPoolOptions, db: PgConnectOptions) {
    let direct = database_url(&db);
    let proxy = testkit::FaultProxy::start(testkit::socket_addr_of(&direct)).await;
    let mut config = test_config(&db);
    config.server.database_url = testkit::via(&direct, proxy.addr()).into();
    config.server.pool.acquire_timeout = Duration::from_millis(500);
    // Room for a few seconds of outage: 0.25 + 0.5 + 1 + 2 × 8 s of retries.
    config.inbox.retry_delays = [250, 500, 1000, 2000].map(Duration::from_millis).to_vec();
    config.inbox.max_attempts = 12;
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut broker = Broker::connect(&topology).await;
    let app = spawn_app(config).await;
    app.set_stock("ABC-1", 5).await.unwrap();

    proxy.cut();
    let request = GetStockRequest { sku: "ABC-1".into() };
    assert_eq!(app.client().await.get_stock(request).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(app.set_stock("ABC-1", 7).await.unwrap_err().code(), Code::Unavailable);
    broker.reserve(&reserve(Uuid::new_v4(), vec![line("ABC-1", 2)], "corr-outage")).await;
    let stats = &app.stats;
    assert!(testkit::eventually(WAIT, || async move { stats.snapshot().retried >= 1 }).await, "retried");
    proxy.restore();

    let Reply::Reserved(reply) = broker.reply().await.reply else { panic!("not reserved") };
    assert_eq!(reply.correlation_id, "corr-outage");
    assert_eq!(app.stock("ABC-1").await, (5, 2, 3));
    broker.no_more_replies(Duration::from_secs(1)).await;
    app.stop().await;
    broker.delete(&topology).await;
}
