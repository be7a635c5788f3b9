//! Metrics reach the OpenTelemetry Collector one way: it scrapes each
//! service's `/metrics` (`deploy/otel-collector.yaml`), the very endpoint
//! [`super::dashboard`] finds every queried metric on. A scrape job pointing
//! at the wrong port or path would leave the collector's backends empty.

use std::path::Path;

/// The value of `key` on `line`, a list item or not.
fn value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.trim().trim_start_matches("- ").strip_prefix(key).map(str::trim)
}

/// A scrape job of the collector's prometheus receiver.
#[derive(Debug, Default, PartialEq)]
struct Job {
    name: String,
    path: String,
    targets: Vec<String>,
}

/// The scrape jobs under `scrape_configs:`, read line by line (the file's own layout).
fn scrape_jobs(yaml: &str) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    for line in yaml.lines().skip_while(|line| line.trim() != "scrape_configs:") {
        if let Some(name) = value(line, "job_name:") {
            jobs.push(Job { name: name.to_owned(), ..Job::default() });
        } else if let (Some(path), Some(job)) = (value(line, "metrics_path:"), jobs.last_mut()) {
            job.path = path.to_owned();
        } else if let (Some(targets), Some(job)) = (value(line, "targets:"), jobs.last_mut()) {
            let list = targets.trim_matches(['[', ']']);
            job.targets.extend(list.split(',').map(|t| t.trim().trim_matches('"').to_owned()));
        }
    }
    jobs
}

/// The receivers of the collector's `metrics` pipeline.
fn metrics_receivers(yaml: &str) -> String {
    let pipelines = yaml.lines().skip_while(|line| line.trim() != "pipelines:");
    let mut metrics = pipelines.skip_while(|line| line.trim() != "metrics:");
    metrics.find_map(|line| line.trim().strip_prefix("receivers:").map(str::to_owned)).unwrap_or_default()
}

#[test]
fn the_collector_scrapes_both_services_where_compose_serves_their_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let collector = std::fs::read_to_string(root.join("deploy/otel-collector.yaml")).expect("collector config");
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).expect("docker-compose.yml");
    assert_eq!(metrics_receivers(&collector).trim(), "[prometheus]", "metrics come by scrape only");
    let jobs = scrape_jobs(&collector);
    for (service, variable, port) in
        [("orders", "ORDERS_METRICS_ADDR", 9464), ("notifications", "NOTIFICATIONS_METRICS_ADDR", 9465)]
    {
        let expected =
            Job { name: service.to_owned(), path: "/metrics".to_owned(), targets: vec![format!("{service}:{port}")] };
        assert!(jobs.contains(&expected), "{expected:?} in {jobs:?}");
        assert!(compose.contains(&format!("{variable}: 0.0.0.0:{port}")), "compose serves {service} metrics on {port}");
    }
}

#[test]
fn scrape_jobs_are_read_with_their_path_and_targets() {
    let yaml = "receivers:\n  prometheus:\n    config:\n      scrape_configs:\n        - job_name: a\n          \
                metrics_path: /m\n          static_configs:\n            - targets: [\"a:1\", \"b:2\"]\n        \
                - job_name: c\n";
    let job = |name: &str, path: &str, targets: &[&str]| Job {
        name: name.to_owned(),
        path: path.to_owned(),
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
    };
    assert_eq!(scrape_jobs(yaml), [job("a", "/m", &["a:1", "b:2"]), job("c", "", &[])]);
    let pipelines =
        "service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n    metrics:\n      receivers: [prometheus]\n";
    assert_eq!(metrics_receivers(pipelines), " [prometheus]");
}
