//! Commands no orchestrator could have sent go to the dead-letter queue,
//! untouched and unanswered.

use std::time::Duration;

use inbox::headers;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test(migrations = false)]
async fn malformed_commands_are_dead_lettered_as_validation_failed(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&db);
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut broker = Broker::connect(&topology).await;
    let app = spawn_app(config).await;
    app.set_stock("ABC-1", 5).await.unwrap();
    let mut not_a_uuid = release(Uuid::new_v4(), "corr-order-id");
    not_a_uuid.order_id = "not-a-uuid".into();
    broker.reserve(&reserve(Uuid::new_v4(), vec![line("ABC-1", 0)], "corr-zero")).await;
    broker.reserve(&reserve(Uuid::new_v4(), vec![line("", 1)], "corr-empty-sku")).await;
    broker.release(&not_a_uuid).await;

    let dead = broker.take_n(&topology.dead_letter, 3).await;
    let mut seen: Vec<(String, String, String)> = dead
        .iter()
        .map(|m| {
            let text = |name| header(m, name).unwrap_or_default();
            (text(headers::CORRELATION_ID), text(headers::REASON), text(headers::ERROR))
        })
        .collect();
    seen.sort();
    let expected =
        [("corr-empty-sku", "lines[0].sku"), ("corr-order-id", "order_id"), ("corr-zero", "lines[0].quantity")];
    for ((correlation, reason, error), (want_correlation, field)) in seen.iter().zip(expected) {
        assert_eq!((correlation.as_str(), reason.as_str()), (want_correlation, "validation_failed"));
        assert!(error.contains(field), "{error} names {field}");
    }
    broker.no_more_replies(Duration::from_secs(1)).await;
    assert_eq!(app.stock("ABC-1").await, (5, 0, 5));
    assert_eq!(count(&pool(&db).await, "SELECT count(*) FROM reservations").await, 0);
    app.stop().await;
    broker.delete(&topology).await;
}
