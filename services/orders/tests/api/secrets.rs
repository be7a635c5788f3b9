//! Start-up failures of the real binary: no credential reaches a log line or
//! an error (started against unreachable servers with passwords in their URLs,
//! at debug level), and unusable settings are refused by name.

use std::time::Duration;

const DB_PASSWORD: &str = "s3cretpw";
const AMQP_PASSWORD: &str = "amqps3cret";

/// Runs the `orders` binary with `database_url` and returns its exit status and everything it printed.
async fn run_orders(database_url: &str) -> (std::process::ExitStatus, String) {
    run_orders_with(database_url, &[]).await
}

/// The same, with `extra` environment variables.
async fn run_orders_with(database_url: &str, extra: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_orders"))
            .envs(extra.iter().copied())
            .env("ORDERS_DATABASE_URL", database_url)
            .env("AMQP_URL", format!("amqp://guest:{AMQP_PASSWORD}@127.0.0.1:1/%2f"))
            .env("ORDERS_GRPC_ADDR", "127.0.0.1:0")
            .env("ORDERS_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "debug")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("orders exits by itself")
    .expect("orders runs");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status, printed)
}

#[tokio::test]
async fn a_failed_database_connection_logs_no_password() {
    let (status, printed) = run_orders(&format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:1/x")).await;
    assert!(!status.success());
    assert!(printed.contains("orders cannot start"), "the failure is logged: {printed}");
    assert!(printed.contains("cannot connect"), "with its cause: {printed}");
    assert!(!printed.contains(DB_PASSWORD), "{printed}");
    assert!(!printed.contains(AMQP_PASSWORD), "{printed}");
}

#[tokio::test]
async fn an_invalid_database_url_is_reported_without_its_password() {
    let (status, printed) = run_orders(&format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:99999/x")).await;
    assert!(!status.success());
    assert!(printed.contains("ORDERS_DATABASE_URL"), "the variable is named: {printed}");
    assert!(!printed.contains(DB_PASSWORD), "{printed}");
}

#[tokio::test]
async fn unusable_relay_settings_are_refused_by_name() {
    let url = format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:1/x");
    for (name, value) in [
        ("OUTBOX_GATHER_FROM_RATE", "-5"),
        ("OUTBOX_GATHER_FROM_RATE", "NaN"),
        ("OUTBOX_GATHER_MS", "5000"),
        ("ORDERS_DB_WRITERS", "0"),
        // More writers than connections would leave calls waiting on each other for connections.
        ("ORDERS_DB_WRITERS", "33"),
    ] {
        let (status, printed) = run_orders_with(&url, &[(name, value)]).await;
        assert!(!status.success(), "{name}={value} was accepted");
        assert!(printed.contains(name), "{name}={value}: the variable is named: {printed}");
        assert!(!printed.contains("cannot connect"), "{name}={value}: refused before connecting: {printed}");
    }
}

/// A password no other text contains, one for each place a URL can carry it.
const USERINFO_PASSWORD: &str = "Pw1userinfoQx7";
const QUERY_PASSWORD: &str = "Pw2queryQx7";
const SSL_PASSWORD: &str = "Pw3sslpasswordQx7";
const AMQP_QUERY_PASSWORD: &str = "Pw4amqpqueryQx7";

/// A database URL on the local server (trust auth: the passwords are never
/// asked for) for a scratch database, with the credentials written `form`'s way.
fn local_database_url(name: &str, form: usize) -> String {
    let server = testkit::socket_addr_of(&testkit::database_url());
    match form {
        0 => format!("postgres://postgres:{USERINFO_PASSWORD}@{server}/{name}"),
        1 => format!("postgres://{server}/{name}?user=postgres&password={QUERY_PASSWORD}"),
        _ => format!(
            "postgres://postgres@{server}/{name}?sslmode=disable&sslpassword={SSL_PASSWORD}&sslkey={SSL_PASSWORD}"
        ),
    }
}

async fn drop_database(name: &str) {
    let admin = sqlx::PgPool::connect(&testkit::database_url()).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&admin).await.unwrap();
    admin.close().await;
}

/// The real binary started against the local Postgres and RabbitMQ with
/// passwords in every form the URL parsers accept (userinfo, `password`,
/// `sslpassword` and `sslkey` query parameters; the broker's own `guest`
/// password in userinfo and one more in its query), at debug level, serving
/// and relaying until SIGTERM: not one line it writes shows any of them.
#[tokio::test]
async fn a_running_service_logs_no_password_in_any_url_form() {
    let server = testkit::socket_addr_of(&testkit::amqp_url());
    let amqp_url = format!("amqp://guest:guest@{server}/%2f?heartbeat=30&password={AMQP_QUERY_PASSWORD}");
    for form in 0..3 {
        let name = format!("pulse_secrets_{}", uuid::Uuid::new_v4().simple());
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_orders"));
        command
            .env("ORDERS_DATABASE_URL", local_database_url(&name, form))
            .env("AMQP_URL", &amqp_url)
            .env("ORDERS_GRPC_ADDR", "127.0.0.1:0")
            .env("ORDERS_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "debug")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        let ready = ["orders listening", "relay connected to the database", "relay connected to the broker"];
        let (status, printed, got_ready) =
            testkit::run_until_ready_then_terminate(command, &ready, Duration::from_secs(30)).await;
        drop_database(&name).await;
        assert!(got_ready, "form {form}: orders started and relayed: {printed}");
        assert_eq!(status.code(), Some(0), "form {form}: stopped cleanly on SIGTERM: {printed}");
        assert!(printed.contains("orders stopped"), "form {form}: {printed}");
        let masked = ["postgres:***@", "password=***", "sslpassword=***"][form];
        assert!(printed.contains(masked), "form {form}: the URL is logged masked: {printed}");
        assert!(printed.contains("guest:***@") && printed.contains("heartbeat=30&password=***"), "{printed}");
        for secret in [USERINFO_PASSWORD, QUERY_PASSWORD, SSL_PASSWORD, AMQP_QUERY_PASSWORD, "guest:guest"] {
            let shown: Vec<&str> = printed.lines().filter(|line| line.contains(secret)).collect();
            assert!(shown.is_empty(), "form {form}: {secret} shown in {shown:#?}");
        }
    }
}

/// The same passwords in every form, with servers that do not answer: the
/// failure is logged, the passwords are not.
#[tokio::test]
async fn an_unreachable_server_is_reported_without_any_password_form() {
    for url in [
        format!("postgres://postgres:{USERINFO_PASSWORD}@127.0.0.1:1/x"),
        format!("postgres://127.0.0.1:1/x?user=postgres&password={QUERY_PASSWORD}"),
        format!("postgres://postgres@127.0.0.1:1/x?sslpassword={SSL_PASSWORD}"),
    ] {
        let (status, printed) = run_orders(&url).await;
        assert!(!status.success(), "{url}");
        assert!(printed.contains("cannot connect"), "the failure is logged with its cause: {printed}");
        for secret in [USERINFO_PASSWORD, QUERY_PASSWORD, SSL_PASSWORD, AMQP_PASSWORD] {
            assert!(!printed.contains(secret), "{secret} shown: {printed}");
        }
    }
}

/// The database and broker URLs given as files (`<NAME>_FILE`, as mounted
/// Secrets are): the service starts from them and logs neither password.
#[tokio::test]
async fn urls_with_credentials_can_come_from_files_and_are_not_logged() {
    let name = format!("pulse_secrets_{}", uuid::Uuid::new_v4().simple());
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let server = testkit::socket_addr_of(&testkit::amqp_url());
    let (database_file, amqp_file) = (dir.join("database-url"), dir.join("amqp-url"));
    std::fs::write(&database_file, format!("{}\n", local_database_url(&name, 0))).unwrap();
    std::fs::write(&amqp_file, format!("amqp://guest:guest@{server}/%2f?password={AMQP_QUERY_PASSWORD}\n")).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_orders"));
    command
        .env_remove("ORDERS_DATABASE_URL")
        .env_remove("AMQP_URL")
        .env("ORDERS_DATABASE_URL_FILE", &database_file)
        .env("AMQP_URL_FILE", &amqp_file)
        .env("ORDERS_GRPC_ADDR", "127.0.0.1:0")
        .env("ORDERS_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let ready = ["orders listening", "relay connected to the database", "relay connected to the broker"];
    let (status, printed, got_ready) =
        testkit::run_until_ready_then_terminate(command, &ready, Duration::from_secs(30)).await;
    drop_database(&name).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(got_ready, "orders started from the files: {printed}");
    assert_eq!(status.code(), Some(0), "{printed}");
    assert!(printed.contains(&name), "the database named in the file was used: {printed}");
    for secret in [USERINFO_PASSWORD, AMQP_QUERY_PASSWORD, "guest:guest"] {
        assert!(!printed.contains(secret), "{secret} shown: {printed}");
    }
}

/// A secret set both ways is refused naming the variables, and so are TLS
/// files that are missing, unreadable or do not make a server identity.
#[tokio::test]
async fn secret_files_and_tls_files_are_checked_at_start() {
    let pki = testkit::pki::Pki::new("pulse test CA");
    let server = pki.server("orders");
    let junk = pki.dir().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let (cert, key, ca) =
        (server.cert_file.display().to_string(), server.key_file.display().to_string(), pki.ca_file());
    let url = format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:1/x");
    let missing = pki.dir().join("missing").display().to_string();
    // The variables set, and the words the refusal must show.
    type Case<'a> = (Vec<(&'a str, String)>, &'a [&'a str]);
    let cases: Vec<Case<'_>> = vec![
        (vec![("ORDERS_DATABASE_URL_FILE", cert.clone())], &["ORDERS_DATABASE_URL_FILE", "not both"]),
        (vec![("AMQP_URL_FILE", missing.clone())], &["AMQP_URL_FILE", "not both"]),
        (vec![("ORDERS_TLS_CERT_FILE", cert.clone())], &["ORDERS_TLS_KEY_FILE"]),
        (vec![("ORDERS_TLS_KEY_FILE", key.clone())], &["ORDERS_TLS_CERT_FILE"]),
        (vec![("ORDERS_TLS_CLIENT_CA_FILE", ca.display().to_string())], &["ORDERS_TLS_CLIENT_CA_FILE"]),
        (
            vec![("ORDERS_TLS_CERT_FILE", junk.display().to_string()), ("ORDERS_TLS_KEY_FILE", key)],
            &["ORDERS_TLS_CERT_FILE"],
        ),
        (
            vec![("ORDERS_TLS_CERT_FILE", cert), ("ORDERS_TLS_KEY_FILE", missing)],
            &["ORDERS_TLS_KEY_FILE", "cannot read"],
        ),
    ];
    for (vars, named) in cases {
        let extra: Vec<(&str, &str)> = vars.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let (status, printed) = run_orders_with(&url, &extra).await;
        assert!(!status.success(), "{vars:?} was accepted");
        for word in named {
            assert!(printed.contains(word), "{vars:?}: {word} is named: {printed}");
        }
        assert!(!printed.contains("cannot connect"), "{vars:?}: refused before connecting: {printed}");
        assert!(!printed.contains("BEGIN PRIVATE KEY"), "{vars:?}: no key material printed");
    }
}
