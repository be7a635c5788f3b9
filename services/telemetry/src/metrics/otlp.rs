//! Pushing a [`Registry`] over OTLP/gRPC: every `interval`, and once more on
//! shutdown so a short-lived process still reports, the registry is gathered
//! and sent as one `ExportMetricsServiceRequest` (see [`super::convert`]).
//!
//! The push runs in a task of its own and never fails the service: an export
//! that errs or outlasts its timeout is dropped (the next one carries the
//! cumulative values anyway) and logged at warn at most once a minute.

use std::time::{Duration, Instant, SystemTime};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::metrics_service_client::MetricsServiceClient, resource::v1::Resource,
};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::{Registry, convert};
use infra::config::ConfigError;

/// Failed exports are logged at warn at most this often (at debug otherwise).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where and how often [`push`] sends a registry.
#[derive(Debug, Clone)]
pub struct OtlpExport {
    /// The collector's OTLP/gRPC address, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// Between two exports (`OTEL_METRIC_EXPORT_INTERVAL`).
    pub interval: Duration,
    /// The longest one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout: Duration,
    /// The resource's `service.name`.
    pub service_name: String,
    /// The resource's `service.version`.
    pub service_version: String,
}

impl OtlpExport {
    /// The OpenTelemetry SDKs' default export interval.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// An export to `endpoint` with the default interval and timeout.
    pub fn new(
        endpoint: impl Into<String>,
        service_name: impl Into<String>,
        service_version: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
            service_name: service_name.into(),
            service_version: service_version.into(),
        }
    }

    /// From the standard variables: the endpoint from
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (neither: None); `OTEL_METRICS_EXPORTER` without `otlp` (e.g. `none`):
    /// None; `OTEL_METRIC_EXPORT_INTERVAL` and `OTEL_EXPORTER_OTLP_METRICS_TIMEOUT`
    /// or `OTEL_EXPORTER_OTLP_TIMEOUT` in milliseconds; `OTEL_SERVICE_NAME`
    /// in place of `service_name`.
    pub fn from_env(service_name: &str, service_version: &str) -> Result<Option<Self>, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok(), service_name, service_version)
    }

    fn from_vars(
        lookup: impl Fn(&str) -> Option<String>,
        service_name: &str,
        service_version: &str,
    ) -> Result<Option<Self>, ConfigError> {
        let var = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let exporters = var("OTEL_METRICS_EXPORTER").unwrap_or_else(|| "otlp".to_owned());
        if !exporters.split(',').any(|e| e.trim().eq_ignore_ascii_case("otlp")) {
            return Ok(None);
        }
        let endpoint = ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
            .into_iter()
            .find_map(|name| var(name).map(|value| (name, value)));
        let Some((endpoint_name, endpoint)) = endpoint else { return Ok(None) };
        check_endpoint(&endpoint).map_err(|reason| invalid(endpoint_name, reason))?;
        let millis = |names: &[&str], default: Duration| -> Result<Duration, ConfigError> {
            let Some((name, value)) = names.iter().find_map(|name| var(name).map(|value| (*name, value))) else {
                return Ok(default);
            };
            match value.parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                _ => Err(invalid(name, format!("expected a positive number of milliseconds, got {value:?}"))),
            }
        };
        Ok(Some(Self {
            endpoint,
            interval: millis(&["OTEL_METRIC_EXPORT_INTERVAL"], Self::DEFAULT_INTERVAL)?,
            timeout: millis(
                &["OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"],
                Self::DEFAULT_TIMEOUT,
            )?,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| service_name.to_owned()),
            service_version: service_version.to_owned(),
        }))
    }
}

fn invalid(name: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { name: name.to_owned(), reason: reason.into() }
}

/// Plain `http://` only: this build has no TLS (the traces' exporter has none either).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    match url::Url::parse(endpoint) {
        Ok(url) if url.scheme() == "http" && url.host().is_some() => Ok(()),
        Ok(url) if url.scheme() == "https" => Err("https needs TLS, which this build does not include".to_owned()),
        _ => Err(format!("expected an http:// URL such as http://otel-collector:4317, got {endpoint:?}")),
    }
}

/// Sends `registry` every `export.interval` until `shutdown` fires, then once
/// more (an export in flight at that moment is abandoned for the final one)
/// and returns. Nothing is sent while the registry has no series.
pub async fn push(registry: Registry, export: OtlpExport, shutdown: CancellationToken) {
    let channel = match Endpoint::from_shared(export.endpoint.clone()) {
        Ok(endpoint) => endpoint.connect_timeout(export.timeout).timeout(export.timeout).connect_lazy(),
        Err(err) => {
            tracing::warn!(endpoint = %export.endpoint, error = %err, "metrics export off: invalid endpoint");
            return;
        }
    };
    let mut client = MetricsServiceClient::new(channel);
    let instance = uuid::Uuid::new_v4().to_string();
    let resource = convert::resource(&[
        ("service.name", &export.service_name),
        ("service.version", &export.service_version),
        ("service.instance.id", &instance),
    ]);
    tracing::debug!(endpoint = %export.endpoint, interval = ?export.interval, "exporting metrics over OTLP");
    let mut failures = Failures::default();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + export.interval, export.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let sent = tokio::select! {
            _ = shutdown.cancelled() => break,
            sent = send(&mut client, &registry, &resource, export.timeout) => sent,
        };
        failures.record(sent, Instant::now());
    }
    let sent = send(&mut client, &registry, &resource, export.timeout).await;
    failures.record(sent, Instant::now());
}

async fn send(
    client: &mut MetricsServiceClient<Channel>,
    registry: &Registry,
    resource: &Resource,
    timeout: Duration,
) -> Result<(), String> {
    let request = convert::request(registry, resource.clone(), SystemTime::now());
    if convert::metric_count(&request) == 0 {
        return Ok(());
    }
    match tokio::time::timeout(timeout, client.export(request)).await {
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(response)) => match response.into_inner().partial_success {
            Some(partial) if partial.rejected_data_points > 0 => {
                Err(format!("{} data points rejected: {}", partial.rejected_data_points, partial.error_message))
            }
            _ => Ok(()),
        },
    }
}

/// Export outcomes, so that a collector that stays away costs one warning a minute.
#[derive(Debug, Default)]
struct Failures {
    warned_at: Option<Instant>,
    /// Failures logged at debug since the last warning.
    quiet: u64,
    failing: bool,
}

impl Failures {
    /// Logs `sent`; true when it was logged at warn.
    fn record(&mut self, sent: Result<(), String>, now: Instant) -> bool {
        let error = match sent {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("metrics export works again");
                }
                return false;
            }
            Err(error) => error,
        };
        self.failing = true;
        if self.warned_at.is_some_and(|at| now.saturating_duration_since(at) < WARN_EVERY) {
            self.quiet += 1;
            tracing::debug!(%error, "metrics export failed");
            return false;
        }
        tracing::warn!(%error, failures_not_logged = self.quiet, "metrics export failed");
        self.warned_at = Some(now);
        self.quiet = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Option<OtlpExport>, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        OtlpExport::from_vars(|name| vars.get(name).cloned(), "orders", "1.2.3")
    }

    #[test]
    fn reads_the_standard_variables() {
        assert!(from(&[]).unwrap().is_none(), "no endpoint, no export");
        let export = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]).unwrap().unwrap();
        assert_eq!(export.endpoint, "http://collector:4317");
        assert_eq!((export.interval, export.timeout), (Duration::from_secs(60), Duration::from_secs(10)));
        assert_eq!((export.service_name.as_str(), export.service_version.as_str()), ("orders", "1.2.3"));

        let export = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:4317"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
            ("OTEL_SERVICE_NAME", "orders-eu"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(export.endpoint, "http://metrics:4317");
        assert_eq!((export.interval, export.timeout), (Duration::from_secs(5), Duration::from_secs(2)));
        assert_eq!(export.service_name, "orders-eu");

        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        assert!(from(&[endpoint, ("OTEL_METRICS_EXPORTER", "none")]).unwrap().is_none());
        assert!(from(&[endpoint, ("OTEL_METRICS_EXPORTER", "prometheus")]).unwrap().is_none());
        assert!(from(&[endpoint, ("OTEL_METRICS_EXPORTER", "prometheus,otlp")]).unwrap().is_some());
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        for bad in
            [("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector")]
        {
            let err = from(&[bad]).unwrap_err().to_string();
            assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{err}");
        }
        let err = from(&[endpoint, ("OTEL_METRIC_EXPORT_INTERVAL", "0")]).unwrap_err().to_string();
        assert!(err.contains("OTEL_METRIC_EXPORT_INTERVAL"), "{err}");
        let err = from(&[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).unwrap_err().to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_TIMEOUT"), "{err}");
    }

    #[test]
    fn warns_at_most_once_a_minute() {
        let mut failures = Failures::default();
        let start = Instant::now();
        let failed = || Err("unavailable".to_owned());
        assert!(failures.record(failed(), start), "the first failure warns");
        assert!(!failures.record(failed(), start + Duration::from_secs(30)));
        assert!(!failures.record(Ok(()), start + Duration::from_secs(40)));
        assert!(!failures.record(failed(), start + Duration::from_secs(50)), "a recovery does not reset the minute");
        assert!(failures.record(failed(), start + Duration::from_secs(61)));
    }
}
