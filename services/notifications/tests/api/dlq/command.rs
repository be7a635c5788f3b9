//! The console from outside the process: the `notifications dlq` command
//! line, and reflection as grpcurl sees it.

use super::*;

/// `notifications dlq …` run as a process against the running server, logging
/// at `RUST_LOG` level `log`.
fn cli(token_file: &std::path::Path, addr: std::net::SocketAddr, log: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_notifications"))
        .env_clear()
        .env("NOTIFICATIONS_ADMIN_TOKEN_FILE", token_file)
        .env("RUST_LOG", log)
        .arg("dlq")
        .args(args)
        .args(["--addr", &addr.to_string()])
        .output()
        .expect("the notifications binary runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

#[sqlx::test(migrations = false)]
async fn the_dlq_command_lists_shows_replays_and_purges(_: PgPoolOptions, db: PgConnectOptions) {
    let (app, topology, token, _sweep) = console_app(&db, &testkit::amqp_url()).await;
    let broker = Broker::connect().await;
    let (_, fixed) = dead_letter_directly(&broker, &topology, "corr-cli-fixed").await;
    let (_, other) = dead_letter_directly(&broker, &topology, "corr-cli-other").await;
    let addr = app.addr;
    let run = move |path: PathBuf, args: Vec<&'static str>| {
        tokio::task::spawn_blocking(move || cli(&path, addr, "info", &args))
    };
    let run_owned = move |path: PathBuf, args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            cli(&path, addr, "info", &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };

    let (ok, out, err) = run(token.0.clone(), vec!["list", "--json"]).await.unwrap();
    assert!(ok, "dlq list failed: {err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    let rows = listed["dead_letters"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let id_of =
        |corr: &str| rows.iter().find(|r| r["correlation_id"] == corr).unwrap()["id"].as_str().unwrap().to_owned();
    let (fixed_id, other_id) = (id_of("corr-cli-fixed"), id_of("corr-cli-other"));

    let (ok, out, _) = run(token.0.clone(), vec!["groups"]).await.unwrap();
    assert!(ok && out.contains("max_attempts_exceeded") && out.contains(ORDER_CREATED_TYPE), "groups: {out}");
    let (ok, out, _) =
        run_owned(token.0.clone(), vec!["show".into(), fixed_id.clone(), "--json".into()]).await.unwrap();
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["payload"]["order_id"], fixed.order_id.as_str());
    assert_eq!(shown["headers"]["traceparent"], TRACEPARENT);

    let (ok, out, _) =
        run(token.0.clone(), vec!["replay", "--correlation-id", "corr-cli-fixed", "--dry-run"]).await.unwrap();
    assert!(ok && out.starts_with("would replay 1 dead letter(s)") && out.contains(&fixed_id), "dry run: {out}");
    assert!(app.list(&fixed.order_id).await.unwrap().is_empty(), "a dry run moves nothing");
    let (ok, out, _) =
        run_owned(token.0.clone(), vec!["replay".into(), fixed_id.clone(), "--json".into()]).await.unwrap();
    assert!(ok);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["ids"][0], fixed_id.as_str());
    let (app_ref, order_id) = (&app, fixed.order_id.as_str());
    eventually(|| async move { !app_ref.list(order_id).await.unwrap().is_empty() }).await;

    let purge = vec![
        "purge".into(),
        other_id.clone(),
        "--by".into(),
        "cli-test".into(),
        "--reason-text".into(),
        "duplicate order".into(),
    ];
    let (ok, out, err) = run_owned(token.0.clone(), purge).await.unwrap();
    assert!(ok && out.contains(&other_id), "purge: {out} {err}");
    assert!(app.list(&other.order_id).await.unwrap().is_empty(), "a purged message is not processed");
    let pool = pool(&db).await;
    let recorded: (String, String, String) =
        sqlx::query_as("SELECT state, purged_by, purge_reason FROM dead_letters WHERE id::text = $1")
            .bind(&other_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recorded, ("purged".into(), "cli-test".into(), "duplicate order".into()));

    // A wrong token is refused, and the token is not printed, even at trace level.
    let wrong = TokenFile::new("not-the-token");
    let path = wrong.0.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || cli(&path, addr, "trace", &["list"])).await.unwrap();
    assert!(!ok, "a wrong token lists nothing: {out}");
    assert!(err.contains("Unauthenticated"), "stderr: {err}");
    assert!(!err.contains("not-the-token") && !out.contains("not-the-token"));

    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn reflection_describes_the_console(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.consumer_enabled = false;
    let app = spawn_app(config).await;
    let mut command = Command::new(testkit::grpcurl());
    command.args([
        "-plaintext",
        "-max-time",
        "10",
        &app.addr.to_string(),
        "describe",
        "pulse.admin.v1.DeadLetterService",
    ]);
    let output = tokio::task::spawn_blocking(move || command.output().expect("grpcurl runs")).await.unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "grpcurl: {}", String::from_utf8_lossy(&output.stderr));
    assert!(out.contains("rpc ReplayDeadLetters"), "{out}");
    app.stop().await;
}
