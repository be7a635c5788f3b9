//! A command has its effect once: by event id (the inbox) and by order (a
//! second command for the same order is answered with the first outcome).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test(migrations = false)]
async fn the_same_command_three_times_reserves_once(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&db);
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut broker = Broker::connect(&topology).await;
    let app = spawn_app(config).await;
    app.set_stock("ABC-1", 10).await.unwrap();
    let order_id = Uuid::new_v4();
    let command = reserve(order_id, vec![line("ABC-1", 3)], "corr-thrice");
    for _ in 0..3 {
        broker.reserve(&command).await;
    }

    let Reply::Reserved(first) = broker.reply().await.reply else { panic!("not reserved") };
    let stats = &app.stats;
    assert!(
        testkit::eventually(WAIT, || async move {
            let s = stats.snapshot();
            s.processed + s.duplicates == 3
        })
        .await
    );
    let snapshot = app.stats.snapshot();
    assert_eq!((snapshot.processed, snapshot.duplicates), (1, 2));
    broker.no_more_replies(Duration::from_secs(1)).await;
    assert_eq!(app.stock("ABC-1").await, (10, 3, 7));

    // The same order again under a new event id: the same outcome, nothing held twice.
    broker.reserve(&reserve(order_id, vec![line("ABC-1", 3)], "corr-thrice")).await;
    let Reply::Reserved(second) = broker.reply().await.reply else { panic!("not reserved") };
    assert_eq!(second.reservation_id, first.reservation_id);
    assert_ne!(second.event_id, first.event_id);
    assert_eq!(app.stock("ABC-1").await, (10, 3, 7));
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM reservations").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM processed_events").await, 2);
    app.stop().await;
    broker.delete(&topology).await;
}
