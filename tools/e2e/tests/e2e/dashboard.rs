//! The Grafana dashboards (`deploy/grafana/`) and the alert rules
//! (`deploy/prometheus-rules.yml`) find the metrics by name: a metric renamed in
//! the code would leave a panel empty and an alert silent, with nothing failing.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::support::{api, db, process::Spec, scratch::Scratch};

/// Prefixes of the metrics Pulse itself exports (the queries also use Prometheus's own, `up` and the like).
const PREFIXES: [&str; 5] = ["outbox_", "inbox_", "rpc_", "orders_", "notifications_"];

/// Every series the dashboards and the alert rules query is one the services
/// export on `/metrics` (which the collector scrapes, see [`super::collector`])
/// once an order has gone end to end. Orders starts before the notifications
/// queue exists, so the relay's first publish is unroutable and the counters
/// by failure reason and retry cause move too.
#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboards_and_alerts_query_is_exported_by_the_services() {
    let scratch = Scratch::new().await;
    let (orders_metrics, notifications_metrics) = (free_local_addr(), free_local_addr());
    let orders = Spec::orders(&scratch).env("ORDERS_METRICS_ADDR", &orders_metrics.to_string()).start().await;
    let created = api::create_order(orders.addr(), "dashboard").await;
    let rejected = testkit::eventually(Duration::from_secs(15), || async {
        let text = testkit::scrape_metrics(orders_metrics).await;
        testkit::metric_sample(&text, "outbox_publish_retries_total", &[("cause", "rejected")])
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(
        rejected,
        "the relay backs off from the unroutable event:\n{}",
        testkit::scrape_metrics(orders_metrics).await
    );

    let _notifications = Spec::notifications(&scratch)
        .env("NOTIFICATIONS_METRICS_ADDR", &notifications_metrics.to_string())
        .start()
        .await;
    let notifications_db = scratch.notifications_pool().await;
    db::assert_one_notification_each(&notifications_db, &db::uuids([&created.order_id]), Duration::from_secs(30)).await;
    // The counter moves after the ack, a moment after the row is visible.
    let counted = testkit::eventually(Duration::from_secs(10), || async {
        let text = testkit::scrape_metrics(notifications_metrics).await;
        testkit::metric_sample(&text, "inbox_messages_total", &[("outcome", "processed")]).is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(counted, "the consumer counts the processed event");

    let mut exported = series_names(&testkit::scrape_metrics(orders_metrics).await);
    exported.extend(series_names(&testkit::scrape_metrics(notifications_metrics).await));
    let queried = queried_metrics(&repository_root().join("deploy"));
    assert!(
        queried.keys().any(|name| name.starts_with("outbox_"))
            && queried.keys().any(|name| name.starts_with("inbox_"))
            && queried.keys().any(|name| name.starts_with("rpc_"))
            && queried.keys().any(|name| name.starts_with("orders_saga"))
            && queried.keys().any(|name| name.starts_with("notifications_deliver")),
        "the dashboards and rules query the outbox, the inbox, gRPC, the saga and the deliveries: {queried:?}"
    );
    let missing: Vec<String> = queried
        .iter()
        .filter(|(name, _)| !exported.contains(*name))
        .map(|(name, files)| format!("{name} (in {})", files.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    assert!(missing.is_empty(), "queried but not exported:\n  {}\nexported: {exported:?}", missing.join("\n  "));
}

/// The Pulse metrics every dashboard JSON under `deploy/grafana/` and the rules
/// in `deploy/prometheus-rules.yml` query, each with the files querying it.
fn queried_metrics(deploy: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut queries = Vec::new();
    for path in json_files(&deploy.join("grafana")) {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let dashboard: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let mut exprs = Vec::new();
        dashboard_queries(&dashboard, &mut exprs);
        queries.extend(exprs.into_iter().map(|expr| (path.clone(), expr)));
    }
    let rules = deploy.join("prometheus-rules.yml");
    let text = std::fs::read_to_string(&rules).unwrap_or_else(|err| panic!("{}: {err}", rules.display()));
    queries.extend(rule_exprs(&text).into_iter().map(|expr| (rules.clone(), expr)));

    let mut queried: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, expr) in queries {
        let file = path.strip_prefix(deploy.parent().unwrap_or(deploy)).unwrap_or(&path).display().to_string();
        for name in metric_names(&expr) {
            queried.entry(name).or_default().insert(file.clone());
        }
    }
    queried
}

/// Every `.json` file under `dir`, recursively.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            found.extend(json_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "json") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// The PromQL of a dashboard: every panel target's `expr`, and the query of
/// every templating variable (`label_values(<metric>, <label>)`).
fn dashboard_queries(node: &serde_json::Value, out: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                out.push(expr.clone());
            }
            if let Some(variables) = map.get("templating").and_then(|t| t["list"].as_array()) {
                for variable in variables {
                    let query = &variable["query"];
                    if let Some(query) = query.as_str().or_else(|| query["query"].as_str()) {
                        out.push(query.to_owned());
                    }
                }
            }
            map.values().for_each(|value| dashboard_queries(value, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|value| dashboard_queries(value, out)),
        _ => {}
    }
}

/// The `expr` of every rule in a Prometheus rules file: a plain scalar on its
/// line, or a block scalar (`expr: |`) made of the more indented lines below.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().trim_start_matches("- ").strip_prefix("expr:") else { continue };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let block = lines[i + 1..]
                .iter()
                .take_while(|next| next.trim().is_empty() || indent(next) > indent(line))
                .map(|next| next.trim())
                .collect::<Vec<_>>()
                .join(" ");
            exprs.push(block);
        } else {
            exprs.push(value.trim_matches(['"', '\'']).to_owned());
        }
    }
    exprs
}

/// The Pulse metric names a PromQL expression refers to: identifiers with one
/// of [`PREFIXES`], except label names (inside `{...}`, in `by (...)` and the
/// other grouping clauses, after the metric in `label_values(...)`), quoted
/// strings and Grafana variables (`$name`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    const GROUPING: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    // Quoted strings and label matchers first: blanked out.
    let mut plain = String::with_capacity(expr.len());
    let (mut quote, mut escaped, mut braces) = (None, false, 0_usize);
    for c in expr.chars() {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{') => braces += 1,
            (None, '}') => braces = braces.saturating_sub(1),
            (None, _) if braces == 0 => {
                plain.push(c);
                continue;
            }
            (None, _) => {}
        }
        plain.push(' ');
    }

    let mut names = BTreeSet::new();
    let chars: Vec<char> = plain.chars().collect();
    let mut i = 0;
    // Inside `label_values(`: only its first identifier is a metric.
    let mut label_values = false;
    while i < chars.len() {
        let c = chars[i];
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            if c == ')' {
                label_values = false;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let variable = start > 0 && chars[start - 1] == '$';
        let next = chars[i..].iter().find(|c| !c.is_whitespace());
        if GROUPING.contains(&word.as_str()) && next == Some(&'(') {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
        } else if word == "label_values" && next == Some(&'(') {
            label_values = true;
            i += chars[i..].iter().position(|c| *c == '(').unwrap_or(0) + 1;
            let rest: String = chars[i..].iter().collect();
            let metric = rest.trim_start().split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).next();
            if let Some(metric) = metric.filter(|m| PREFIXES.iter().any(|p| m.starts_with(p))) {
                names.insert(metric.to_owned());
            }
        } else if !variable && !label_values && PREFIXES.iter().any(|prefix| word.starts_with(prefix)) {
            names.insert(word);
        }
    }
    names
}

/// The name of every series in a Prometheus text exposition (histograms as
/// their `_bucket`, `_sum` and `_count` series, counters with `_total`).
fn series_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// `tools/e2e/../..`
fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A local address that was free a moment ago, for a service's metrics listener.
fn free_local_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn label_names_strings_and_variables_are_not_metric_names() {
        let expr = r#"sum by (job, rpc_method) (rate(rpc_server_duration_seconds_count{rpc_grpc_status_code!~"0|3", rpc_service="x"}[$__rate_interval]))
            / on (rpc_method) group_left (rpc_service) sum without (rpc_grpc_status_code) (rpc_other_total{job=~"$service"})"#;
        assert_eq!(names(expr), ["rpc_other_total", "rpc_server_duration_seconds_count"]);
        assert_eq!(
            names(r#"label_values(rpc_server_duration_seconds_count{job=~"$rpc_x"}, rpc_method)"#),
            ["rpc_server_duration_seconds_count"]
        );
        assert_eq!(
            names("histogram_quantile(0.99, sum by (le) (rate(inbox_lag_seconds_bucket[5m]))) > 30"),
            ["inbox_lag_seconds_bucket"]
        );
        assert_eq!(names(r#"max(outbox_a) or vector(0) + count(up{job="inbox_x\"}"}) + $outbox_var"#), ["outbox_a"]);
    }

    #[test]
    fn rule_expressions_are_read_from_plain_and_block_scalars() {
        let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: max(outbox_a) > 1\n        \
                    for: 2m\n      - alert: B\n        expr: |\n          sum(rate(inbox_b[5m]))\n            / 2\n        \
                    labels:\n          severity: page\n      - record: c\n        expr: \"rpc_c\"\n";
        assert_eq!(rule_exprs(yaml), ["max(outbox_a) > 1", "sum(rate(inbox_b[5m])) / 2", "rpc_c"]);
    }

    #[test]
    fn series_names_come_from_samples_not_comments() {
        let text = "# HELP a_total help\n# TYPE a_total counter\na_total{x=\"1\"} 3\nb_bucket{le=\"+Inf\"} 1\nc 2\n";
        assert_eq!(series_names(text).into_iter().collect::<Vec<_>>(), ["a_total", "b_bucket", "c"]);
    }
}
