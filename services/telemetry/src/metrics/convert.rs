//! A gathered [`Registry`] as an OTLP `ExportMetricsServiceRequest`: counters
//! become cumulative monotonic sums, gauges gauges, histograms cumulative
//! explicit-bucket histograms (Prometheus counts each bucket cumulatively and
//! leaves `+Inf` implicit; OTLP counts each bucket on its own and lists the
//! bounds without `+Inf`), labels attributes under their OpenTelemetry names.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};
use prometheus::proto::{self, MetricFamily, MetricType};

use super::{Instrument, Registry};

/// The request carrying every series of `registry` as of `now`; its metrics
/// list is empty when nothing has been recorded yet.
pub(super) fn request(registry: &Registry, resource: Resource, now: SystemTime) -> ExportMetricsServiceRequest {
    let times = Times { start: unix_nanos(registry.created), now: unix_nanos(now) };
    let families = registry.gather();
    let metrics = {
        let instruments = registry.instruments.lock().expect("instrument map poisoned");
        families.iter().filter_map(|family| metric(family, instruments.get(family.name()), times)).collect()
    };
    let scope = InstrumentationScope {
        name: "platform".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope), metrics, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    }
}

/// How many metrics `request` carries.
pub(super) fn metric_count(request: &ExportMetricsServiceRequest) -> usize {
    request.resource_metrics.iter().flat_map(|r| &r.scope_metrics).map(|s| s.metrics.len()).sum()
}

/// A resource made of string attributes.
pub(super) fn resource(attributes: &[(&str, &str)]) -> Resource {
    Resource { attributes: attributes.iter().map(|(key, value)| string(key, value)).collect(), ..Default::default() }
}

#[derive(Clone, Copy)]
struct Times {
    /// When the cumulative series began: the registry's creation.
    start: u64,
    now: u64,
}

fn metric(family: &MetricFamily, instrument: Option<&Instrument>, times: Times) -> Option<Metric> {
    // Every instrument is registered with its names; a stranger keeps its Prometheus name.
    let (name, unit, integer) = instrument.map_or((family.name(), "", false), |i| (i.otel, i.unit, i.integer));
    let series = family.get_metric();
    if series.is_empty() {
        return None;
    }
    let attributes = |series: &proto::Metric| attributes(series, instrument);
    let data = match family.get_field_type() {
        MetricType::COUNTER => Data::Sum(Sum {
            data_points: series
                .iter()
                .map(|s| number(attributes(s), s.get_counter().get_value(), integer, times))
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        MetricType::GAUGE => Data::Gauge(Gauge {
            data_points: series
                .iter()
                .map(|s| number(attributes(s), s.get_gauge().get_value(), integer, times))
                .collect(),
        }),
        MetricType::HISTOGRAM => Data::Histogram(Histogram {
            data_points: series.iter().map(|s| histogram(attributes(s), s.get_histogram(), times)).collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        // Summaries and untyped metrics: this module registers none.
        MetricType::SUMMARY | MetricType::UNTYPED => return None,
    };
    Some(Metric {
        name: name.to_owned(),
        description: family.help().to_owned(),
        unit: unit.to_owned(),
        metadata: Vec::new(),
        data: Some(data),
    })
}

fn attributes(series: &proto::Metric, instrument: Option<&Instrument>) -> Vec<KeyValue> {
    series
        .get_label()
        .iter()
        .map(|pair| {
            let key = instrument
                .and_then(|i| i.attributes.iter().find(|(label, _)| label == pair.name()))
                .map_or(pair.name(), |(_, attribute)| attribute);
            string(key, pair.value())
        })
        .collect()
}

fn number(attributes: Vec<KeyValue>, value: f64, integer: bool, times: Times) -> NumberDataPoint {
    let value =
        if integer { number_data_point::Value::AsInt(value as i64) } else { number_data_point::Value::AsDouble(value) };
    NumberDataPoint {
        attributes,
        start_time_unix_nano: times.start,
        time_unix_nano: times.now,
        value: Some(value),
        ..Default::default()
    }
}

fn histogram(attributes: Vec<KeyValue>, histogram: &proto::Histogram, times: Times) -> HistogramDataPoint {
    let count = histogram.get_sample_count();
    let mut explicit_bounds = Vec::with_capacity(histogram.get_bucket().len());
    let mut bucket_counts = Vec::with_capacity(histogram.get_bucket().len() + 1);
    let mut below = 0;
    for bucket in histogram.get_bucket() {
        // The overflow bucket is counted below, from the total.
        if bucket.upper_bound() == f64::INFINITY {
            continue;
        }
        explicit_bounds.push(bucket.upper_bound());
        bucket_counts.push(bucket.cumulative_count().saturating_sub(below));
        below = bucket.cumulative_count();
    }
    bucket_counts.push(count.saturating_sub(below));
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: times.start,
        time_unix_nano: times.now,
        count,
        sum: Some(histogram.get_sample_sum()),
        bucket_counts,
        explicit_bounds,
        ..Default::default()
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_owned())) }),
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::{Name, counter_vec, float_gauge, gauge, histogram_vec};

    fn find<'a>(request: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name} in {metrics:?}"))
    }

    fn keys(attributes: &[KeyValue]) -> Vec<(String, String)> {
        let mut pairs: Vec<_> = attributes
            .iter()
            .map(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => (kv.key.clone(), s.clone()),
                other => panic!("{} is not a string: {other:?}", kv.key),
            })
            .collect();
        pairs.sort();
        pairs
    }

    #[test]
    fn converts_every_kind_with_names_units_and_attributes() {
        let registry = Registry::new();
        let name = Name { prometheus: "rpc_server_duration_seconds", otel: "rpc.server.duration", unit: "s" };
        let calls = histogram_vec(&registry, name, "calls", &["rpc.method", "outcome"], &[0.1, 1.0, 10.0]);
        for seconds in [0.05, 0.1, 0.5, 0.7, 5.0, 20.0, 30.0] {
            calls.with_label_values(&["CreateOrder", "ok"]).observe(seconds);
        }
        let name = Name { prometheus: "inbox_messages", otel: "inbox.messages", unit: "{message}" };
        let messages = counter_vec(&registry, name, "messages by outcome", &["queue", "outcome"]);
        messages.with_label_values(&["q", "processed"]).inc_by(7);
        messages.with_label_values(&["q", "poison"]).inc();
        let name = Name { prometheus: "outbox_pending_messages", otel: "outbox.pending", unit: "{message}" };
        gauge(&registry, name, "pending").set(42);
        let name =
            Name { prometheus: "outbox_oldest_pending_age_seconds", otel: "outbox.oldest_pending.age", unit: "s" };
        float_gauge(&registry, name, "age").set(1.5);

        let now = registry.created + Duration::from_secs(5);
        let request = request(&registry, resource(&[("service.name", "orders")]), now);
        assert_eq!(metric_count(&request), 4);
        assert_eq!(
            keys(&request.resource_metrics[0].resource.as_ref().unwrap().attributes),
            [("service.name".to_owned(), "orders".to_owned())]
        );

        let duration = find(&request, "rpc.server.duration");
        assert_eq!((duration.unit.as_str(), duration.description.as_str()), ("s", "calls"));
        let Some(Data::Histogram(histogram)) = &duration.data else { panic!("{duration:?}") };
        assert_eq!(histogram.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, [0.1, 1.0, 10.0]);
        // 0.05 and 0.1 (bounds are inclusive), 0.5 and 0.7, 5.0, then 20 and 30 above every bound.
        assert_eq!(point.bucket_counts, [2, 2, 1, 2]);
        assert_eq!(point.count, 7);
        assert!((point.sum.unwrap() - 56.35).abs() < 1e-9, "{:?}", point.sum);
        assert_eq!(point.time_unix_nano - point.start_time_unix_nano, 5_000_000_000);
        assert_eq!(
            keys(&point.attributes),
            [("outcome".to_owned(), "ok".to_owned()), ("rpc.method".to_owned(), "CreateOrder".to_owned())]
        );

        let counter = find(&request, "inbox.messages");
        assert_eq!(counter.unit, "{message}");
        let Some(Data::Sum(sum)) = &counter.data else { panic!("{counter:?}") };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        let mut values: Vec<_> = sum.data_points.iter().map(|p| (keys(&p.attributes), p.value)).collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        let point =
            |outcome: &str| vec![("outcome".to_owned(), outcome.to_owned()), ("queue".to_owned(), "q".to_owned())];
        assert_eq!(
            values,
            [
                (point("poison"), Some(number_data_point::Value::AsInt(1))),
                (point("processed"), Some(number_data_point::Value::AsInt(7))),
            ]
        );

        let Some(Data::Gauge(pending)) = &find(&request, "outbox.pending").data else { panic!() };
        assert_eq!(pending.data_points[0].value, Some(number_data_point::Value::AsInt(42)));
        let Some(Data::Gauge(age)) = &find(&request, "outbox.oldest_pending.age").data else { panic!() };
        assert_eq!(age.data_points[0].value, Some(number_data_point::Value::AsDouble(1.5)));
    }

    #[test]
    fn an_empty_registry_has_nothing_to_send() {
        let registry = Registry::new();
        let name = Name { prometheus: "inbox_messages", otel: "inbox.messages", unit: "{message}" };
        counter_vec(&registry, name, "messages by outcome", &["outcome"]);
        let request = request(&registry, resource(&[]), SystemTime::now());
        assert_eq!(metric_count(&request), 0, "a vector without series is left out");
    }
}
