//! The JSON log line: one object per line with `timestamp` (RFC 3339, UTC),
//! `level`, `target`, `message`, the event's own fields, then the fields of
//! every span the event is in, merged from the root to the innermost span (an
//! inner span's value wins), and last `trace_id` and `span_id`.
//!
//! `trace_id` and `span_id` name the innermost span with an OpenTelemetry
//! context when an OpenTelemetry layer is installed; without one they are the
//! `trace_id` and `span_id` fields a span recorded itself (`CreateOrder`,
//! `GetOrder` and `inbox_message` record the W3C trace context Pulse
//! generates). A line outside any traced span has neither.
//!
//! Span fields are kept by the fmt layer as a JSON object per span
//! ([`JsonFields`]) and read back only when a line is written: an event the
//! level filter drops costs nothing here.

use std::fmt;

use opentelemetry::trace::{SpanId, TraceId};
use serde_json::{Map, Value};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_opentelemetry::OtelData;
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormattedFields,
        format::{JsonFields, Writer},
    },
    registry::LookupSpan,
};

/// Keys the line sets itself; a field of that name is left out.
const RESERVED: [&str; 6] = ["timestamp", "level", "target", "message", "trace_id", "span_id"];

/// The fmt layer writing [`JsonLines`] (give it a writer with `with_writer`; stdout by default).
pub fn layer<S>() -> tracing_subscriber::fmt::Layer<S, JsonFields, JsonLines>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer().fmt_fields(JsonFields::new()).event_format(JsonLines)
}

/// The event formatter of the JSON lines; pairs with [`JsonFields`], which
/// keeps each span's fields as a JSON object.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut own = EventFields::default();
        event.record(&mut own);

        let mut spans: Vec<(String, Value)> = Vec::new();
        let mut otel_ids = None;
        for span in ctx.event_scope().into_iter().flat_map(|scope| scope.from_root()) {
            let extensions = span.extensions();
            if let Some(ids) = extensions.get::<OtelData>().and_then(otel_ids_of) {
                otel_ids = Some(ids);
            }
            let Some(stored) = extensions.get::<FormattedFields<JsonFields>>() else { continue };
            let Ok(fields) = serde_json::from_str::<Map<String, Value>>(stored) else { continue };
            for (key, value) in fields {
                match spans.iter_mut().find(|(k, _)| *k == key) {
                    Some(slot) => slot.1 = value,
                    None => spans.push((key, value)),
                }
            }
        }
        let span_field = |name: &str| spans.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let (trace_id, span_id) = match otel_ids {
            Some((trace, span)) => (Some(Value::String(trace.to_string())), Some(Value::String(span.to_string()))),
            None => (
                span_field("trace_id").or_else(|| own.get("trace_id")),
                span_field("span_id").or_else(|| own.get("span_id")),
            ),
        };

        let mut line = Line::default();
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        line.entry("timestamp", &Value::String(timestamp))?;
        line.entry("level", &Value::from(event.metadata().level().as_str()))?;
        let target = own.log_target.take().unwrap_or_else(|| event.metadata().target().to_owned());
        line.entry("target", &Value::String(target))?;
        if let Some(message) = &own.message {
            line.entry("message", message)?;
        }
        for (key, value) in own.values.iter().filter(|(k, _)| !RESERVED.contains(k)) {
            line.entry(key, value)?;
        }
        for (key, value) in &spans {
            if !RESERVED.contains(&key.as_str()) && own.get(key).is_none() {
                line.entry(key, value)?;
            }
        }
        if let Some(trace_id) = &trace_id {
            line.entry("trace_id", trace_id)?;
        }
        if let Some(span_id) = &span_id {
            line.entry("span_id", span_id)?;
        }
        line.0.push('}');
        writeln!(writer, "{}", line.0)
    }
}

/// The ids of a span whose OpenTelemetry context is built (it was entered,
/// or something asked for its context).
fn otel_ids_of(data: &OtelData) -> Option<(TraceId, SpanId)> {
    let (trace, span) = (data.trace_id()?, data.span_id()?);
    (trace != TraceId::INVALID && span != SpanId::INVALID).then_some((trace, span))
}

/// A JSON object written key by key, in the order given.
#[derive(Default)]
struct Line(String);

impl Line {
    fn entry(&mut self, key: &str, value: &Value) -> fmt::Result {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        self.0.push_str(&serde_json::to_string(key).map_err(|_| fmt::Error)?);
        self.0.push(':');
        self.0.push_str(&serde_json::to_string(value).map_err(|_| fmt::Error)?);
        Ok(())
    }
}

/// An event's fields, in the order it gives them.
#[derive(Default)]
struct EventFields {
    message: Option<Value>,
    /// The `log` crate's target, for records bridged from `log`.
    log_target: Option<String>,
    values: Vec<(&'static str, Value)>,
}

impl EventFields {
    fn get(&self, name: &str) -> Option<Value> {
        self.values.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
    }

    fn record(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => self.message = Some(value),
            "log.target" => self.log_target = value.as_str().map(str::to_owned),
            // The rest of a bridged record's metadata (module, file, line).
            name if name.starts_with("log.") => {}
            name => self.values.push((name.strip_prefix("r#").unwrap_or(name), value)),
        }
    }
}

impl Visit for EventFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.record(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, Value::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::prelude::*;

    use super::*;

    /// Where the test subscriber writes: every line, kept.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn raw(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }

        /// Each line parsed; panics on a line that is not one JSON object.
        pub(crate) fn lines(&self) -> Vec<Map<String, Value>> {
            let text = self.raw();
            assert!(text.ends_with('\n'), "lines end with a newline: {text:?}");
            text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
        }
    }

    fn text<'a>(line: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
        line.get(key).and_then(Value::as_str)
    }

    #[test]
    fn a_line_in_a_child_span_carries_its_ancestors_fields_and_the_trace_context() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(layer().with_writer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let call = tracing::info_span!(
                "CreateOrder",
                correlation_id = "corr-7",
                attempt = 1,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            );
            call.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            call.record("span_id", "00f067aa0ba902b7");
            let statement = tracing::info_span!(parent: &call, "db", db.operation.name = "INSERT", attempt = 2);
            statement.in_scope(|| {
                tracing::info!(rows = 3_u64, quoted = "a \"b\"", "statement done");
                tracing::debug!("filtered out");
            });
        });
        let lines = out.lines();
        assert_eq!(lines.len(), 1, "the DEBUG event is not written: {lines:?}");
        let line = &lines[0];
        assert_eq!(text(line, "message"), Some("statement done"));
        assert_eq!(text(line, "level"), Some("INFO"));
        assert_eq!(text(line, "target"), Some(module_path!()));
        assert!(chrono::DateTime::parse_from_rfc3339(text(line, "timestamp").unwrap()).is_ok(), "{line:?}");
        assert_eq!(line["rows"], 3);
        assert_eq!(text(line, "quoted"), Some("a \"b\""));
        assert_eq!(text(line, "correlation_id"), Some("corr-7"), "the parent's field rides on the child's line");
        assert_eq!(text(line, "db.operation.name"), Some("INSERT"));
        assert_eq!(line["attempt"], 2, "the inner span's value wins");
        assert_eq!(text(line, "trace_id"), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(text(line, "span_id"), Some("00f067aa0ba902b7"));
        let raw = out.raw();
        let at = |key: &str| raw.find(&format!("\"{key}\":")).unwrap();
        assert!(raw.starts_with("{\"timestamp\":"), "{raw}");
        assert!(at("level") < at("target") && at("target") < at("message") && at("message") < at("rows"), "{raw}");
        assert!(at("rows") < at("correlation_id") && at("correlation_id") < at("trace_id"), "{raw}");
    }

    #[test]
    fn with_opentelemetry_the_ids_are_the_innermost_spans() {
        let out = Captured::default();
        let writer = out.clone();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(layer().with_writer(move || writer.clone()));
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            let message = tracing::info_span!("inbox_message", correlation_id = "corr-8");
            let statement = tracing::info_span!(parent: &message, "db", db.operation.name = "INSERT");
            statement.in_scope(|| tracing::info!("in the statement"));
            let context = statement.context();
            let ids = context.span().span_context().clone();
            (ids.trace_id().to_string(), ids.span_id().to_string())
        });
        let line = &out.lines()[0];
        assert_eq!(text(line, "correlation_id"), Some("corr-8"));
        assert_eq!(text(line, "trace_id"), Some(trace_id.as_str()));
        assert_eq!(text(line, "span_id"), Some(span_id.as_str()));
        assert_eq!(trace_id.len(), 32);
    }

    #[test]
    fn a_line_outside_any_span_has_no_trace_context_and_is_still_json() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry().with(layer().with_writer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(error = %"line one\nline two", "started");
            tracing::info!("no fields at all");
        });
        let lines = out.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(text(&lines[0], "error"), Some("line one\nline two"));
        for line in &lines {
            assert!(!line.contains_key("trace_id") && !line.contains_key("span_id"), "{line:?}");
            assert!(text(line, "message").is_some());
        }
    }
}
