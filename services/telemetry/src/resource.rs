//! The OpenTelemetry resource a service reports as: `service.name` from
//! `OTEL_SERVICE_NAME`, else from `service.name` in `OTEL_RESOURCE_ATTRIBUTES`,
//! else the service's own name; every other `OTEL_RESOURCE_ATTRIBUTES` pair as
//! it is; and the SDK's `telemetry.sdk.*`. Traces carry it as their resource,
//! `/metrics` as the labels of `target_info` (see [`crate::metrics::target_info`]).

use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::{
    Resource,
    resource::{EnvResourceDetector, ResourceDetector, TelemetryResourceDetector},
};

const SERVICE_NAME: &str = "service.name";

/// The resource of `service` as the environment describes it.
pub fn resource(service: &'static str) -> Resource {
    let name = std::env::var("OTEL_SERVICE_NAME").ok();
    build(service, name, EnvResourceDetector::new().detect())
}

/// `attributes` (what `OTEL_RESOURCE_ATTRIBUTES` says) with the service name
/// chosen the standard way. The SDK's own detectors let `service.name` in the
/// attributes win over `OTEL_SERVICE_NAME`; the specification says otherwise.
fn build(service: &'static str, service_name: Option<String>, attributes: Resource) -> Resource {
    let name = service_name
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| attributes.get(&Key::from_static_str(SERVICE_NAME)).map(|value| value.to_string()))
        .unwrap_or_else(|| service.to_owned());
    let others: Vec<KeyValue> = attributes
        .iter()
        .filter(|(key, _)| key.as_str() != SERVICE_NAME)
        .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
        .collect();
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(others)
        .with_service_name(name)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(pairs: &[(&'static str, &'static str)]) -> Resource {
        Resource::builder_empty().with_attributes(pairs.iter().map(|(k, v)| KeyValue::new(*k, *v))).build()
    }

    fn get(resource: &Resource, key: &'static str) -> Option<String> {
        resource.get(&Key::from_static_str(key)).map(|value| value.to_string())
    }

    #[test]
    fn the_service_name_variable_wins_then_the_attributes_then_the_service() {
        let env = attributes(&[("service.name", "from-attributes"), ("deployment.environment.name", "staging")]);
        let resource = build("orders", Some("orders-eu".to_owned()), env.clone());
        assert_eq!(get(&resource, "service.name").as_deref(), Some("orders-eu"));
        assert_eq!(get(&resource, "deployment.environment.name").as_deref(), Some("staging"));
        assert_eq!(get(&resource, "telemetry.sdk.name").as_deref(), Some("opentelemetry"));

        let resource = build("orders", Some("  ".to_owned()), env);
        assert_eq!(get(&resource, "service.name").as_deref(), Some("from-attributes"));

        let resource = build("orders", None, attributes(&[]));
        assert_eq!(get(&resource, "service.name").as_deref(), Some("orders"));
    }
}
