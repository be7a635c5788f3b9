//! What `notifications dlq` prints: text for people, JSON for scripts.

use chrono::{DateTime, SecondsFormat, Utc};
use inbox::admin::v1::{DeadLetter, DeadLetterState, GetDeadLetterResponse};
use serde_json::{Value, json};

pub(super) fn outcome(json: bool, verb: &str, dry_run: bool, ids: &[String]) -> String {
    if json {
        json!({ "dry_run": dry_run, "ids": ids }).to_string()
    } else {
        let mut lines = vec![format!("{verb} {} dead letter(s)", ids.len())];
        lines.extend(ids.iter().cloned());
        lines.join("\n")
    }
}

pub(super) fn time(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn state_name(state: i32) -> &'static str {
    match DeadLetterState::try_from(state) {
        Ok(DeadLetterState::Replayed) => "replayed",
        Ok(DeadLetterState::Purged) => "purged",
        _ => "dead",
    }
}

pub(super) fn dead_letter_json(d: &DeadLetter) -> Value {
    json!({
        "id": d.id, "message_id": d.message_id, "message_type": d.message_type,
        "correlation_id": d.correlation_id, "reason": d.reason, "error": d.error,
        "attempts": d.attempts, "source_queue": d.source_queue,
        "dead_lettered_at": time(d.dead_lettered_at.as_ref()), "state": state_name(d.state),
        "replay_of": d.replay_of, "replayed_at": time(d.replayed_at.as_ref()),
        "purged_at": time(d.purged_at.as_ref()), "purged_by": d.purged_by, "purge_reason": d.purge_reason,
    })
}

pub(super) fn dead_letter_line(d: &DeadLetter) -> String {
    let error: String = d.error.chars().take(80).collect();
    format!(
        "{}  {}  {}  {}  attempts={}  correlation_id={}  {}",
        d.id,
        time(d.dead_lettered_at.as_ref()),
        d.reason,
        d.message_type,
        d.attempts,
        d.correlation_id,
        error
    )
}

pub(super) fn show_json(shown: &GetDeadLetterResponse) -> Value {
    let payload: Value = serde_json::from_str(&shown.payload_json).unwrap_or(Value::Null);
    let history: Vec<Value> = shown
        .history
        .iter()
        .map(|a| {
            json!({ "dead_letter_id": a.dead_letter_id, "reason": a.reason, "error": a.error,
                    "attempts": a.attempts, "dead_lettered_at": time(a.dead_lettered_at.as_ref()) })
        })
        .collect();
    json!({
        "dead_letter": shown.dead_letter.as_ref().map(dead_letter_json),
        "headers": shown.headers,
        "payload": payload,
        "decode_error": shown.decode_error,
        "history": history,
    })
}

pub(super) fn show_text(shown: &GetDeadLetterResponse) -> String {
    let mut lines = Vec::new();
    if let Some(Value::Object(fields)) = shown.dead_letter.as_ref().map(dead_letter_json) {
        lines.extend(
            fields.iter().map(|(k, v)| format!("{k}: {}", v.as_str().map_or_else(|| v.to_string(), str::to_owned))),
        );
    }
    lines.push("headers:".to_owned());
    let mut headers: Vec<_> = shown.headers.iter().collect();
    headers.sort();
    lines.extend(headers.into_iter().map(|(k, v)| format!("  {k}: {v}")));
    if shown.decode_error.is_empty() {
        lines.push(format!("payload:\n{}", shown.payload_json));
    } else {
        lines.push(format!("payload: not decoded ({}), {} bytes", shown.decode_error, shown.payload.len()));
    }
    lines.push("attempts:".to_owned());
    lines.extend(shown.history.iter().map(|a| {
        format!(
            "  {}  {}  {}  attempts={}  {}",
            time(a.dead_lettered_at.as_ref()),
            a.dead_letter_id,
            a.reason,
            a.attempts,
            a.error
        )
    }));
    lines.join("\n")
}
