use std::process::ExitCode;

use orders::{config::Config, startup::App};

#[tokio::main]
async fn main() -> ExitCode {
    // `orders healthcheck`: for container health checks in images without a shell.
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return healthcheck().await;
    }
    let _telemetry = platform::telemetry::init("orders");
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            tracing::error!(error = %err, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    let shutdown = platform::shutdown::on_signal();
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "orders cannot start");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "orders stopped with an error");
            ExitCode::FAILURE
        }
    }
}

async fn healthcheck() -> ExitCode {
    let port = Config::from_env().map(|c| c.grpc_addr.port()).unwrap_or(50051);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match platform::grpc::probe(addr, contracts::orders::v1::SERVICE_NAME).await {
        Ok(true) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
