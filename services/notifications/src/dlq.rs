//! `notifications dlq <list|groups|show|replay|purge>`: the dead-letter
//! console's command line, a client of `pulse.admin.v1.DeadLetterService` on
//! a running server (`--addr`, default the local `NOTIFICATIONS_GRPC_ADDR`),
//! with the bearer token from `NOTIFICATIONS_ADMIN_TOKEN_FILE` and, over
//! mutual TLS, a client certificate (see `dlq_channel`).

use std::net::SocketAddr;

use chrono::{DateTime, SecondsFormat, Utc};
use inbox::admin::v1::{
    DeadLetter, DeadLetterFilter, DeadLetterState, GetDeadLetterGroupsRequest, GetDeadLetterRequest,
    GetDeadLetterResponse, ListDeadLettersRequest, PurgeDeadLettersRequest, ReplayDeadLettersRequest,
    dead_letter_service_client::DeadLetterServiceClient,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tonic::{Request, transport::Channel};

use crate::config::{Config, read_admin_token};

pub const USAGE: &str = "usage: notifications dlq <command> [options]
  list    [filters] [--page-size N] [--page-token T]
  groups  [filters]
  show    ID
  replay  (ID... | filters | --all) [--limit N] [--dry-run]
  purge   (ID... | filters | --all) --by WHO [--reason-text WHY] [--limit N] [--dry-run]
filters: --reason R --type T --since RFC3339 --until RFC3339 --correlation-id C
         --state dead|replayed|purged (list and groups; default dead)
every command: --json, --addr HOST:PORT (default: the local NOTIFICATIONS_GRPC_ADDR)
the token is read from the file NOTIFICATIONS_ADMIN_TOKEN_FILE names; over TLS the server is trusted
through NOTIFICATIONS_ADMIN_CA_FILE, and NOTIFICATIONS_ADMIN_CLIENT_CERT_FILE and
NOTIFICATIONS_ADMIN_CLIENT_KEY_FILE present a client certificate (mutual TLS)";

/// A parsed command line.
#[derive(Debug, Default, PartialEq)]
struct Args {
    command: String,
    ids: Vec<String>,
    filter: DeadLetterFilter,
    filtered: bool,
    all: bool,
    page_size: i32,
    page_token: String,
    limit: i32,
    dry_run: bool,
    by: String,
    reason_text: String,
    json: bool,
    addr: Option<String>,
}

fn parse(args: &[&str]) -> anyhow::Result<Args> {
    let (command, rest) = args.split_first().ok_or_else(|| anyhow::anyhow!("{USAGE}"))?;
    anyhow::ensure!(
        matches!(*command, "list" | "groups" | "show" | "replay" | "purge"),
        "unknown command {command:?}\n{USAGE}"
    );
    let mut parsed = Args { command: (*command).to_owned(), ..Args::default() };
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        let mut value =
            || rest.next().map(|v| (*v).to_owned()).ok_or_else(|| anyhow::anyhow!("{arg} takes a value\n{USAGE}"));
        let number = |raw: String| raw.parse::<i32>().map_err(|_| anyhow::anyhow!("{arg} takes a number, got {raw:?}"));
        match *arg {
            "--reason" => parsed.filter.reason = value()?,
            "--type" => parsed.filter.message_type = value()?,
            "--correlation-id" => parsed.filter.correlation_id = value()?,
            "--since" => parsed.filter.since = Some(timestamp(arg, &value()?)?),
            "--until" => parsed.filter.until = Some(timestamp(arg, &value()?)?),
            "--state" => parsed.filter.state = state(&value()?)?.into(),
            "--page-size" => parsed.page_size = number(value()?)?,
            "--page-token" => parsed.page_token = value()?,
            "--limit" => parsed.limit = number(value()?)?,
            "--by" => parsed.by = value()?,
            "--reason-text" => parsed.reason_text = value()?,
            "--addr" => parsed.addr = Some(value()?),
            "--dry-run" => parsed.dry_run = true,
            "--json" => parsed.json = true,
            "--all" => parsed.all = true,
            flag if flag.starts_with("--") => anyhow::bail!("unknown option {flag}\n{USAGE}"),
            id => parsed.ids.push(id.to_owned()),
        }
        if matches!(*arg, "--reason" | "--type" | "--correlation-id" | "--since" | "--until" | "--state") {
            parsed.filtered = true;
        }
    }
    match parsed.command.as_str() {
        "show" => anyhow::ensure!(parsed.ids.len() == 1, "show takes one id\n{USAGE}"),
        "replay" | "purge" => anyhow::ensure!(
            !parsed.ids.is_empty() || parsed.filtered || parsed.all,
            "{} needs ids, a filter or --all\n{USAGE}",
            parsed.command
        ),
        _ => anyhow::ensure!(parsed.ids.is_empty(), "{} takes no ids\n{USAGE}", parsed.command),
    }
    if parsed.command == "purge" {
        anyhow::ensure!(!parsed.by.trim().is_empty(), "purge needs --by WHO (recorded with the rows)\n{USAGE}");
    }
    Ok(parsed)
}

fn timestamp(flag: &str, raw: &str) -> anyhow::Result<prost_types::Timestamp> {
    let at = DateTime::parse_from_rfc3339(raw)
        .map_err(|_| anyhow::anyhow!("{flag} takes an RFC 3339 time such as 2026-01-31T12:00:00Z, got {raw:?}"))?;
    Ok(prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 })
}

fn state(raw: &str) -> anyhow::Result<DeadLetterState> {
    match raw {
        "dead" => Ok(DeadLetterState::Dead),
        "replayed" => Ok(DeadLetterState::Replayed),
        "purged" => Ok(DeadLetterState::Purged),
        other => anyhow::bail!("--state is dead, replayed or purged, got {other:?}"),
    }
}

/// Runs `notifications dlq …` and prints the answer on stdout.
pub async fn run(args: &[&str], config: &Config) -> anyhow::Result<()> {
    let args = parse(args)?;
    let token = config.admin_token_file.as_deref().map(read_admin_token).transpose()?;
    let addr = args.addr.clone().unwrap_or_else(|| local(config.grpc_addr).to_string());
    let channel = crate::dlq_channel::connect(&addr).await?;
    let mut client = DeadLetterServiceClient::new(channel);
    let out = call(&mut client, &args, token.as_ref())
        .await
        .map_err(|status| anyhow::anyhow!("dlq {}: {:?}: {}", args.command, status.code(), status.message()))?;
    println!("{out}");
    Ok(())
}

/// The server listens on every interface; a CLI on the same host asks it locally.
fn local(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr }
}

fn request<T>(body: T, token: Option<&SecretString>) -> Request<T> {
    let mut request = Request::new(body);
    if let Some(value) = token.and_then(|t| format!("Bearer {}", t.expose_secret()).parse().ok()) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

async fn call(
    client: &mut DeadLetterServiceClient<Channel>,
    args: &Args,
    token: Option<&SecretString>,
) -> Result<String, tonic::Status> {
    let filter = Some(args.filter.clone());
    Ok(match args.command.as_str() {
        "list" => {
            let body =
                ListDeadLettersRequest { filter, page_size: args.page_size, page_token: args.page_token.clone() };
            let page = client.list_dead_letters(request(body, token)).await?.into_inner();
            if args.json {
                let rows: Vec<Value> = page.dead_letters.iter().map(dead_letter_json).collect();
                json!({ "dead_letters": rows, "next_page_token": page.next_page_token }).to_string()
            } else {
                let mut lines: Vec<String> = page.dead_letters.iter().map(dead_letter_line).collect();
                lines.push(format!("{} dead letter(s)", page.dead_letters.len()));
                if !page.next_page_token.is_empty() {
                    lines.push(format!("next page: --page-token {}", page.next_page_token));
                }
                lines.join("\n")
            }
        }
        "groups" => {
            let groups = client.get_dead_letter_groups(request(GetDeadLetterGroupsRequest { filter }, token)).await?;
            let groups = groups.into_inner().groups;
            if args.json {
                let rows: Vec<Value> = groups
                    .iter()
                    .map(|g| {
                        json!({ "reason": g.reason, "message_type": g.message_type, "count": g.count,
                                "oldest": time(g.oldest.as_ref()), "newest": time(g.newest.as_ref()) })
                    })
                    .collect();
                json!({ "groups": rows }).to_string()
            } else {
                let mut lines =
                    vec![format!("{:>7}  {:<26} {:<34} {:<24} {}", "COUNT", "REASON", "TYPE", "OLDEST", "NEWEST")];
                lines.extend(groups.iter().map(|g| {
                    format!(
                        "{:>7}  {:<26} {:<34} {:<24} {}",
                        g.count,
                        g.reason,
                        g.message_type,
                        time(g.oldest.as_ref()),
                        time(g.newest.as_ref())
                    )
                }));
                lines.join("\n")
            }
        }
        "show" => {
            let body = GetDeadLetterRequest { id: args.ids[0].clone() };
            let shown = client.get_dead_letter(request(body, token)).await?.into_inner();
            if args.json { show_json(&shown).to_string() } else { show_text(&shown) }
        }
        "replay" => {
            let body = ReplayDeadLettersRequest {
                ids: args.ids.clone(),
                filter: filter.filter(|_| args.ids.is_empty()),
                dry_run: args.dry_run,
                limit: args.limit,
            };
            let done = client.replay_dead_letters(request(body, token)).await?.into_inner();
            outcome(args.json, if done.dry_run { "would replay" } else { "replayed" }, done.dry_run, &done.ids)
        }
        "purge" => {
            let body = PurgeDeadLettersRequest {
                ids: args.ids.clone(),
                filter: filter.filter(|_| args.ids.is_empty()),
                dry_run: args.dry_run,
                by: args.by.clone(),
                reason: args.reason_text.clone(),
                limit: args.limit,
            };
            let done = client.purge_dead_letters(request(body, token)).await?.into_inner();
            outcome(args.json, if done.dry_run { "would purge" } else { "purged" }, done.dry_run, &done.ids)
        }
        other => unreachable!("parse accepts no command {other}"),
    })
}

fn outcome(json: bool, verb: &str, dry_run: bool, ids: &[String]) -> String {
    if json {
        json!({ "dry_run": dry_run, "ids": ids }).to_string()
    } else {
        let mut lines = vec![format!("{verb} {} dead letter(s)", ids.len())];
        lines.extend(ids.iter().cloned());
        lines.join("\n")
    }
}

fn time(at: Option<&prost_types::Timestamp>) -> String {
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

fn dead_letter_json(d: &DeadLetter) -> Value {
    json!({
        "id": d.id, "message_id": d.message_id, "message_type": d.message_type,
        "correlation_id": d.correlation_id, "reason": d.reason, "error": d.error,
        "attempts": d.attempts, "source_queue": d.source_queue,
        "dead_lettered_at": time(d.dead_lettered_at.as_ref()), "state": state_name(d.state),
        "replay_of": d.replay_of, "replayed_at": time(d.replayed_at.as_ref()),
        "purged_at": time(d.purged_at.as_ref()), "purged_by": d.purged_by, "purge_reason": d.purge_reason,
    })
}

fn dead_letter_line(d: &DeadLetter) -> String {
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

fn show_json(shown: &GetDeadLetterResponse) -> Value {
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

fn show_text(shown: &GetDeadLetterResponse) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters_ids_and_flags() {
        let args =
            parse(&["replay", "--reason", "decode_error", "--since", "2026-01-31T12:00:00Z", "--dry-run"]).unwrap();
        assert_eq!(args.filter.reason, "decode_error");
        assert_eq!(args.filter.since.unwrap().seconds, 1_769_860_800);
        assert!(args.dry_run && args.filtered);
        let args = parse(&["purge", "a", "b", "--by", "ops", "--reason-text", "bad data", "--json"]).unwrap();
        assert_eq!(
            (args.ids.len(), args.by.as_str(), args.reason_text.as_str(), args.json),
            (2, "ops", "bad data", true)
        );
    }

    #[test]
    fn refuses_what_would_surprise() {
        assert!(parse(&["replay"]).is_err(), "a replay of everything needs --all");
        assert!(parse(&["replay", "--all"]).is_ok());
        assert!(parse(&["purge", "some-id"]).is_err(), "a purge is recorded with who");
        assert!(parse(&["show"]).is_err());
        assert!(parse(&["list", "--since", "yesterday"]).is_err());
        assert!(parse(&["list", "--page-size", "ten"]).is_err());
        assert!(parse(&["drop"]).is_err());
        assert!(parse(&["list", "--frobnicate"]).is_err());
    }
}
