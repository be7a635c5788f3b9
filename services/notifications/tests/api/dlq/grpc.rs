//! The console over gRPC: list, filter, group, show, replay and purge, and
//! the bearer token it demands.

use super::*;

#[sqlx::test(migrations = false)]
async fn dead_letters_are_listed_grouped_shown_replayed_and_purged(_: PgPoolOptions, db: PgConnectOptions) {
    let (app, topology, _token, _sweep) = console_app(&db, &testkit::amqp_url()).await;
    let broker = Broker::connect().await;
    let ex = topology.exchange.as_str();
    let fresh = || Uuid::new_v4().to_string();
    broker.publish_raw(ex, properties(Some(&fresh()), Some(ORDER_CREATED_TYPE), "corr-garbage"), b"\xff\xff\xff").await;
    let (_, shipped) = order_created("corr-unknown");
    let unknown = properties(Some(&fresh()), Some("pulse.events.v1.OrderShipped"), "corr-unknown");
    broker.publish_raw(ex, unknown, &shipped.encode_to_vec()).await;
    let (bad_id, mut bad) = order_created("corr-invalid");
    bad.order_id = "not-an-order".into();
    let mut invalid_headers = FieldTable::default();
    invalid_headers.insert(ShortString::from(headers::CORRELATION_ID), AMQPValue::LongString("corr-invalid".into()));
    invalid_headers.insert(ShortString::from("traceparent"), AMQPValue::LongString(TRACEPARENT.into()));
    let invalid = properties(Some(&bad_id.to_string()), Some(ORDER_CREATED_TYPE), "corr-invalid")
        .with_correlation_id(ShortString::from("corr-invalid"))
        .with_headers(invalid_headers);
    broker.publish_raw(ex, invalid, &bad.encode_to_vec()).await;
    let (fixed_id, fixed) = dead_letter_directly(&broker, &topology, "corr-fixed").await;

    let mut console = Console::connect(&app, Some(TOKEN)).await;
    let all = console.wait_for(DeadLetterFilter::default(), 4).await;
    assert_eq!(broker.ready(&topology.dead_letter).await, 0, "the queue was taken into the table");
    let mut reasons: Vec<&str> = all.iter().map(|d| d.reason.as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["decode_error", "max_attempts_exceeded", "unknown_type", "validation_failed"]);

    // Filters: reason, type, correlation id, time range; paging.
    let garbage = console.list(by_reason("decode_error")).await;
    assert_eq!((garbage.len(), garbage[0].correlation_id.as_str()), (1, "corr-garbage"));
    let of_type = DeadLetterFilter { message_type: "pulse.events.v1.OrderShipped".into(), ..Default::default() };
    assert_eq!(console.list(of_type).await[0].reason, "unknown_type");
    let correlated = DeadLetterFilter { correlation_id: "corr-fixed".into(), ..Default::default() };
    let fixed_row = console.list(correlated).await.pop().expect("the fixed event is listed");
    assert_eq!((fixed_row.message_id.as_str(), fixed_row.attempts), (fixed_id.to_string().as_str(), 3));
    let future = prost_types::Timestamp { seconds: Utc::now().timestamp() + 3600, nanos: 0 };
    assert!(console.list(DeadLetterFilter { since: Some(future), ..Default::default() }).await.is_empty());
    assert_eq!(console.list(DeadLetterFilter { until: Some(future), ..Default::default() }).await.len(), 4);
    let request = console.request(ListDeadLettersRequest { filter: None, page_size: 3, page_token: String::new() });
    let first = console.client.list_dead_letters(request).await.unwrap().into_inner();
    assert_eq!(first.dead_letters.len(), 3);
    let request =
        console.request(ListDeadLettersRequest { filter: None, page_size: 3, page_token: first.next_page_token });
    let second = console.client.list_dead_letters(request).await.unwrap().into_inner();
    assert_eq!((second.dead_letters.len(), second.next_page_token.as_str()), (1, ""));
    let mut seen: Vec<String> = first.dead_letters.iter().chain(&second.dead_letters).map(|d| d.id.clone()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "pages neither repeat nor skip");

    // Groups by reason and type.
    let groups =
        console.client.get_dead_letter_groups(console.request(GetDeadLetterGroupsRequest { filter: None })).await;
    let groups = groups.unwrap().into_inner().groups;
    assert_eq!(groups.len(), 4);
    assert!(groups.iter().all(|g| g.count == 1));
    assert!(groups.iter().any(|g| g.reason == "unknown_type" && g.message_type == "pulse.events.v1.OrderShipped"));

    // Show: headers, the payload as JSON, the attempts; an undecodable body says why.
    let shown =
        console.client.get_dead_letter(console.request(GetDeadLetterRequest { id: fixed_row.id.clone() })).await;
    let shown = shown.unwrap().into_inner();
    let payload: serde_json::Value = serde_json::from_str(&shown.payload_json).expect("the payload is JSON");
    assert_eq!(payload["order_id"], fixed.order_id.as_str());
    assert_eq!(payload["amount"], "77.50");
    assert_eq!(shown.headers.get("traceparent").map(String::as_str), Some(TRACEPARENT));
    assert_eq!(shown.history.len(), 1);
    assert_eq!(shown.history[0].error, "retryable: database unavailable");
    let garbage_id = garbage[0].id.clone();
    let shown = console.client.get_dead_letter(console.request(GetDeadLetterRequest { id: garbage_id })).await;
    let shown = shown.unwrap().into_inner();
    assert!(shown.payload_json.is_empty() && !shown.decode_error.is_empty());
    assert_eq!(shown.payload, b"\xff\xff\xff");
    let missing = console.client.get_dead_letter(console.request(GetDeadLetterRequest { id: fresh() })).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);

    // A dry run says what would move and moves nothing.
    let would = console.replay(&[], by_reason("max_attempts_exceeded"), true).await;
    assert_eq!(would, std::slice::from_ref(&fixed_row.id));
    assert_eq!(console.list(by_reason("max_attempts_exceeded")).await.len(), 1);
    assert_eq!(broker.ready(&topology.main).await, 0);
    assert!(app.list(&fixed.order_id).await.unwrap().is_empty());

    // Replay by id: processed, with its correlation id kept.
    assert_eq!(
        console.replay(&[&fixed_row.id], DeadLetterFilter::default(), false).await,
        std::slice::from_ref(&fixed_row.id)
    );
    let (app_ref, order_id) = (&app, fixed.order_id.as_str());
    eventually(|| async move { !app_ref.list(order_id).await.unwrap().is_empty() }).await;
    assert_eq!(app.list(order_id).await.unwrap()[0].correlation_id, "corr-fixed");
    let replayed = console.list(in_state(DeadLetterState::Replayed)).await;
    assert_eq!(replayed.len(), 1);
    assert!(replayed[0].replayed_at.is_some());
    assert!(console.replay(&[&fixed_row.id], DeadLetterFilter::default(), false).await.is_empty(), "only once");

    // Replay by filter of one that fails again: back in the console with its
    // attempts counted on, its message id, correlation id and trace context kept.
    let before = console.list(by_reason("validation_failed")).await.pop().unwrap();
    assert_eq!(console.replay(&[], by_reason("validation_failed"), false).await, std::slice::from_ref(&before.id));
    let again = console.wait_for(by_reason("validation_failed"), 1).await.pop().unwrap();
    assert_ne!(again.id, before.id);
    assert_eq!(again.replay_of, before.id);
    assert_eq!(again.attempts, before.attempts + 1);
    assert_eq!(
        (again.message_id.as_str(), again.correlation_id.as_str()),
        (bad_id.to_string().as_str(), "corr-invalid")
    );
    let shown = console.client.get_dead_letter(console.request(GetDeadLetterRequest { id: again.id.clone() })).await;
    let shown = shown.unwrap().into_inner();
    assert_eq!(shown.headers.get("traceparent").map(String::as_str), Some(TRACEPARENT));
    assert_eq!(shown.headers.get(inbox::admin::REPLAY_OF).map(String::as_str), Some(before.id.as_str()));
    assert_eq!(
        shown.history.iter().map(|a| a.dead_letter_id.as_str()).collect::<Vec<_>>(),
        [before.id.as_str(), again.id.as_str()]
    );

    // Purge: a dry run changes nothing; a purge is recorded, not forgotten.
    let unknown_row = console.list(by_reason("unknown_type")).await.pop().unwrap();
    let purge = |dry_run| PurgeDeadLettersRequest {
        ids: vec![unknown_row.id.clone()],
        filter: None,
        dry_run,
        by: "ops@example.com".into(),
        reason: "OrderShipped is not ours".into(),
        limit: 0,
    };
    let dry = console.client.purge_dead_letters(console.request(purge(true))).await.unwrap().into_inner();
    assert_eq!((dry.ids.len(), dry.dry_run), (1, true));
    assert_eq!(console.list(by_reason("unknown_type")).await.len(), 1);
    let done = console.client.purge_dead_letters(console.request(purge(false))).await.unwrap().into_inner();
    assert_eq!(done.ids, std::slice::from_ref(&unknown_row.id));
    assert!(console.list(by_reason("unknown_type")).await.is_empty());
    let purged = console.list(in_state(DeadLetterState::Purged)).await;
    assert_eq!(purged.len(), 1);
    assert_eq!(
        (purged[0].purged_by.as_str(), purged[0].purge_reason.as_str()),
        ("ops@example.com", "OrderShipped is not ours")
    );
    assert!(purged[0].purged_at.is_some());
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 5, "every round is kept");

    app.stop().await;
    broker.delete(&topology).await;
}

/// `AMQP_URL` naming a cluster's nodes, the first one down: the console
/// reaches the dead-letter queue through the list as the consumer does.
#[sqlx::test(migrations = false)]
async fn the_console_reaches_the_broker_through_a_list_of_nodes(_: PgPoolOptions, db: PgConnectOptions) {
    let nodes = format!("amqp://guest:guest@127.0.0.1:1/%2f,{}", testkit::amqp_url());
    let (app, topology, _token, _sweep) = console_app(&db, &nodes).await;
    let broker = Broker::connect().await;
    let garbage = properties(Some(&Uuid::new_v4().to_string()), Some(ORDER_CREATED_TYPE), "corr-nodes");
    broker.publish_raw(topology.exchange.as_str(), garbage, b"\xff\xff").await;

    let mut console = Console::connect(&app, Some(TOKEN)).await;
    let listed = console.wait_for(DeadLetterFilter::default(), 1).await;
    assert_eq!((listed[0].reason.as_str(), listed[0].correlation_id.as_str()), ("decode_error", "corr-nodes"));
    assert_eq!(broker.ready(&topology.dead_letter).await, 0, "the queue was taken into the table");
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn the_console_needs_the_configured_token(_: PgPoolOptions, db: PgConnectOptions) {
    let token = TokenFile::new(TOKEN);
    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.consumer_enabled = false;
    config.admin_token_file = Some(token.0.clone());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config.clone()).await;
    for (token, want) in
        [(None, Code::Unauthenticated), (Some("wrong"), Code::Unauthenticated), (Some(TOKEN), Code::Ok)]
    {
        let mut console = Console::connect(&app, token).await;
        let request = console.request(GetDeadLetterGroupsRequest { filter: None });
        let got = console.client.get_dead_letter_groups(request).await.map_or_else(|s| s.code(), |_| Code::Ok);
        assert_eq!(got, want, "token {token:?}");
    }
    app.stop().await;

    config.admin_token_file = None;
    let app = spawn_app(config).await;
    let mut console = Console::connect(&app, Some(TOKEN)).await;
    let request = console.request(ListDeadLettersRequest::default());
    assert_eq!(console.client.list_dead_letters(request).await.unwrap_err().code(), Code::PermissionDenied);
    app.stop().await;
    Broker::connect().await.delete(&topology).await;
}
