//! The example clients in `clients/` (Python and Node.js, stubs made from
//! `proto/` at run time) against the real processes. Their dependencies come
//! from `build-support/scripts/ensure-tools.sh`, under `$PULSE_TOOLS`.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, sync::Arc, time::Duration};

use testkit::FaultProxy;
use tokio::process::Command;

use crate::support::{SagaSystem, System, db, delivering, process::Spec, saga, scratch::Scratch};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root")
}

fn tools_dir() -> PathBuf {
    std::env::var_os("PULSE_TOOLS").map_or_else(|| PathBuf::from("/var/cache/pulse-tools"), PathBuf::from)
}

fn installed(path: PathBuf) -> PathBuf {
    assert!(path.exists(), "{} is missing: run build-support/scripts/ensure-tools.sh", path.display());
    path
}

/// The Python client's command, its interpreter from `$PULSE_TOOLS`.
fn python_client() -> Command {
    python("clients/python/pulse_client.py")
}

/// `script` run by the Python of `$PULSE_TOOLS`.
fn python(script: &str) -> Command {
    let mut command = Command::new(installed(tools_dir().join("venv/bin/python")));
    command.arg(script);
    command
}

/// The Node client's command.
fn node_client() -> Command {
    node("clients/node/pulse_client.js")
}

/// `script` run by Node.js with the Node client's dependencies.
fn node(script: &str) -> Command {
    let mut command = Command::new("node");
    // Dependencies from `npm ci` in clients/node when present, else ensure-tools.sh's copy.
    if !repo_root().join("clients/node/node_modules").is_dir() {
        command.env("NODE_PATH", installed(tools_dir().join("node-client/node_modules")));
    }
    command.arg(script);
    command
}

/// The environment that points a client at `system`'s orders and notifications.
fn addrs_of(system: &System) -> [(&'static str, SocketAddr); 2] {
    [("ORDERS_ADDR", system.orders.addr()), ("NOTIFICATIONS_ADDR", system.notifications.addr())]
}

/// Runs a client with `addrs` (`ORDERS_ADDR` and the like) in its
/// environment (bounded); fails the test, with its output, unless it exits
/// 0. Returns what it printed.
async fn run_client(addrs: &[(&str, SocketAddr)], mut command: Command) -> String {
    for (name, addr) in addrs {
        command.env(name, addr.to_string());
    }
    command.current_dir(repo_root()).env("PULSE_CLIENT_TIMEOUT_SECS", "30").stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the client finishes within 120 s")
        .expect("the client runs");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("{printed}");
    assert!(output.status.success(), "the client failed ({}):\n{printed}", output.status);
    printed
}

/// The client's order is in the orders database and has exactly one notification.
async fn assert_order_notified(system: &System, customer: &str) {
    let orders_db = system.scratch.orders_pool().await;
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT order_id FROM orders WHERE customer_id = $1")
        .bind(customer)
        .fetch_all(&orders_db)
        .await
        .expect("read orders");
    assert_eq!(ids.len(), 1, "the client made one order for {customer}");
    let notifications_db = system.scratch.notifications_pool().await;
    db::assert_one_notification_each(&notifications_db, &ids, Duration::from_secs(5)).await;
}

// Without payments and inventory the clients skip the saga; `--no-saga` says
// so, and keeps them off whatever may answer on the default addresses.

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_creates_an_order_and_sees_its_notification() {
    let system = System::start().await;
    let mut command = python_client();
    command.args(["--customer", "c-python-e2e", "--no-saga"]);
    let printed = run_client(&addrs_of(&system), command).await;
    assert!(printed.contains("all checks passed"), "{printed}");
    assert_order_notified(&system, "c-python-e2e").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_client_creates_an_order_and_sees_its_notification() {
    let system = System::start().await;
    let mut command = node_client();
    command.args(["--customer", "c-node-e2e", "--no-saga"]);
    let printed = run_client(&addrs_of(&system), command).await;
    assert!(printed.contains("all checks passed"), "{printed}");
    assert_order_notified(&system, "c-node-e2e").await;
}

/// Runs a client's webhook example against orders and a notifications that
/// delivers: it creates a webhook endpoint, receives its order's delivery,
/// verifies the signature with `standardwebhooks` and finds the delivery
/// DELIVERED under the webhook-id it received; the database agrees.
async fn assert_client_receives_a_signed_webhook(mut command: Command, customer: &str) {
    let system = System::start_with(delivering).await;
    command.args(["--customer", customer]);
    let printed = run_client(&addrs_of(&system), command).await;
    assert!(printed.contains("webhook checks passed"), "{printed}");
    let pool = system.scratch.notifications_pool().await;
    // The example's one order, to its one endpoint.
    let delivered = db::count(&pool, "SELECT count(*) FROM deliveries WHERE status = 'delivered'").await;
    assert_eq!(delivered, 1, "{printed}");
    assert_order_notified(&system, customer).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_webhook_example_receives_a_signed_delivery() {
    assert_client_receives_a_signed_webhook(python("clients/python/webhook_example.py"), "c-python-webhook-e2e").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_webhook_example_receives_a_signed_delivery() {
    assert_client_receives_a_signed_webhook(node("clients/node/webhook_example.js"), "c-node-webhook-e2e").await;
}

/// What follows `label` in the client's output up to the next colon: the
/// sku of `SetStock: <sku>: ...`, the customer of `SetCustomerCredit: ...`.
fn printed_name<'a>(printed: &'a str, label: &str) -> &'a str {
    let (_, rest) = printed.split_once(label).unwrap_or_else(|| panic!("no {label:?} in:\n{printed}"));
    rest.split(':').next().unwrap_or_default().trim()
}

/// Runs a client with `--saga` against the four processes: it passes its
/// order checks and its saga checks (one order COMPLETED, one FAILED
/// PAYMENT_DECLINED), and the participants' own APIs agree: 12.34 of the
/// customer's 50.00 EUR used, 2 of the sku's 5 reserved.
async fn assert_client_runs_the_saga(mut command: Command) {
    let system = SagaSystem::start(|spec| spec).await;
    let (payments, inventory) = (system.payments.addr(), system.inventory.addr());
    let addrs = [
        ("ORDERS_ADDR", system.orders.addr()),
        ("NOTIFICATIONS_ADDR", system.notifications.addr()),
        ("PAYMENTS_ADDR", payments),
        ("INVENTORY_ADDR", inventory),
    ];
    command.arg("--saga");
    let printed = run_client(&addrs, command).await;
    assert!(printed.contains("all checks passed"), "{printed}");
    assert!(printed.contains("ORDER_STATUS_COMPLETED"), "{printed}");
    assert!(printed.contains("ORDER_STATUS_FAILED (FAILURE_REASON_PAYMENT_DECLINED)"), "{printed}");
    assert!(printed.contains("saga checks passed"), "{printed}");
    let customer = printed_name(&printed, "SetCustomerCredit: ");
    assert_eq!(saga::credit(payments, customer).await, (5_000, 1_234), "{customer}: limit and used, in cents");
    let sku = printed_name(&printed, "SetStock: ");
    assert_eq!(saga::stock(inventory, sku).await, (5, 2), "{sku}: on hand and reserved");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_runs_an_order_saga_to_completed_and_failed() {
    let mut command = python_client();
    command.args(["--customer", "c-python-saga"]);
    assert_client_runs_the_saga(command).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_client_runs_an_order_saga_to_completed_and_failed() {
    let mut command = node_client();
    command.args(["--customer", "c-node-saga"]);
    assert_client_runs_the_saga(command).await;
}

/// Both services, orders reaching its database through a proxy that is cut
/// now and restored `outage` later: CreateOrder answers UNAVAILABLE with a
/// RetryInfo meanwhile.
async fn system_with_orders_database_away(outage: Duration) -> System {
    let scratch = Scratch::new().await;
    let notifications = Spec::notifications(&scratch).start().await;
    let direct = scratch.orders_db_url();
    let proxy = Arc::new(FaultProxy::start(testkit::socket_addr_of(&direct)).await);
    let orders = Spec::orders(&scratch)
        .env("ORDERS_DATABASE_URL", &testkit::via(&direct, proxy.addr()))
        .env("ORDERS_DB_ACQUIRE_TIMEOUT_MS", "500")
        .start()
        .await;
    proxy.cut();
    tokio::spawn(async move {
        tokio::time::sleep(outage).await;
        proxy.restore();
        // The proxy lives until the test's runtime ends.
        std::future::pending::<()>().await;
    });
    System { notifications, orders, scratch }
}

/// The client retried CreateOrder on UNAVAILABLE after the delay the
/// server's RetryInfo gave, and then made exactly one order.
async fn assert_retried_as_told(system: &System, printed: &str, customer: &str) {
    assert!(
        printed.contains(
            "CreateOrder: UNAVAILABLE (DATABASE_UNAVAILABLE), attempt 1; retrying in 1.00s (as RetryInfo asks)"
        ),
        "{printed}"
    );
    assert!(printed.contains("all checks passed"), "{printed}");
    assert_order_notified(system, customer).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_retries_unavailable_after_the_retry_info_delay() {
    let system = system_with_orders_database_away(Duration::from_secs(3)).await;
    let mut command = python_client();
    command.args(["--customer", "c-python-retry", "--no-health-check", "--no-saga"]);
    let printed = run_client(&addrs_of(&system), command).await;
    assert_retried_as_told(&system, &printed, "c-python-retry").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_client_retries_unavailable_after_the_retry_info_delay() {
    let system = system_with_orders_database_away(Duration::from_secs(3)).await;
    let mut command = node_client();
    command.args(["--customer", "c-node-retry", "--no-health-check", "--no-saga"]);
    let printed = run_client(&addrs_of(&system), command).await;
    assert_retried_as_told(&system, &printed, "c-node-retry").await;
}
