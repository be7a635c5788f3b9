//! The report: a table of figures beside their ceilings, and the JSON file.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

#[derive(Default)]
pub(crate) struct Report {
    figures: BTreeMap<String, Value>,
    rows: Vec<(String, String, String)>,
}

impl Report {
    /// Records `value` under a dotted key (`create_order.c32_tps`).
    pub(crate) fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.figures.insert(key.to_owned(), value.into());
    }

    /// Every number recorded, by key.
    pub(crate) fn numbers(&self) -> impl Iterator<Item = (&str, f64)> {
        self.figures.iter().filter_map(|(key, value)| value.as_f64().map(|number| (key.as_str(), number)))
    }

    /// The number recorded under `key`, if any.
    pub(crate) fn number(&self, key: &str) -> Option<f64> {
        self.figures.get(key).and_then(Value::as_f64)
    }

    /// The rows recorded so far.
    pub(crate) fn rows(&self) -> &[(String, String, String)] {
        &self.rows
    }

    /// A table row: what, the figure, and its comparison.
    pub(crate) fn row(&mut self, what: impl Into<String>, figure: impl Into<String>, against: impl Into<String>) {
        self.rows.push((what.into(), figure.into(), against.into()));
    }

    pub(crate) fn print(&self) {
        let width = self.rows.iter().map(|r| r.0.len()).max().unwrap_or(10).max(10);
        let figure = self.rows.iter().map(|r| r.1.len()).max().unwrap_or(10).max(10);
        println!();
        println!("{:width$}  {:>figure$}  against", "figure", "value");
        println!("{}", "-".repeat(width + figure + 40));
        for (what, value, against) in &self.rows {
            println!("{what:width$}  {value:>figure$}  {against}");
        }
    }

    /// Nested JSON: `a.b` becomes `{"a": {"b": ...}}`.
    pub(crate) fn json(&self) -> Value {
        let mut root = json!({});
        for (key, value) in &self.figures {
            let mut node = &mut root;
            let parts: Vec<&str> = key.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                node = node.as_object_mut().expect("object").entry(*part).or_insert_with(|| json!({}));
            }
            node.as_object_mut().expect("object").insert(parts[parts.len() - 1].to_owned(), value.clone());
        }
        root
    }
}

/// `p50 / p99 / p99.9 / max` of a microsecond histogram, in milliseconds.
pub(crate) fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    let us = if quantile >= 1.0 { histogram.max() } else { histogram.value_at_quantile(quantile) };
    (us as f64 / 1000.0 * 100.0).round() / 100.0
}

pub(crate) fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// A target's text with its mark: met or MISSED.
pub(crate) fn target_mark(met: bool, target: &str) -> String {
    format!("{target} {}", if met { "✓" } else { "✗ MISSED" })
}

/// A report row for a [`cpu::CpuSnapshot::per_unit`] breakdown.
pub(crate) fn cpu_row(report: &mut Report, label: &str, cpu: &serde_json::Value) {
    let part = |name: &str| cpu.get(name).and_then(serde_json::Value::as_f64);
    let parts: Vec<String> = ["postgres", "rabbitmq", "orders", "notifications", "payments", "inventory", "bench"]
        .iter()
        .filter_map(|name| part(name).map(|us| format!("{name} {us:.0}")))
        .collect();
    report.row(
        label,
        format!("{:.0} us", part("total").unwrap_or(0.0)),
        format!("{}; cores {:.0}% busy", parts.join(", "), part("busy_share_of_cores").unwrap_or(0.0) * 100.0),
    );
}
