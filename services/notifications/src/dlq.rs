//! `notifications dlq <list|groups|show|replay|purge>`: the dead-letter
//! console's command line, a client of `pulse.admin.v1.DeadLetterService` on
//! a running server (`--addr`, default the local `NOTIFICATIONS_GRPC_ADDR`),
//! with the bearer token from `NOTIFICATIONS_ADMIN_TOKEN_FILE` and, over
//! mutual TLS, a client certificate (see `dlq_channel`).

mod args;
mod render;

use std::net::SocketAddr;

use inbox::admin::v1::{
    GetDeadLetterGroupsRequest, GetDeadLetterRequest, ListDeadLettersRequest, PurgeDeadLettersRequest,
    ReplayDeadLettersRequest, dead_letter_service_client::DeadLetterServiceClient,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tonic::{Request, transport::Channel};

pub use self::args::{Common, DlqCommand, Filters};
use self::render::{dead_letter_json, dead_letter_line, outcome, show_json, show_text, time};
use crate::config::{Config, read_admin_token};

/// Shown after `notifications dlq --help`.
pub const AFTER_HELP: &str = "\
The token is read from the file NOTIFICATIONS_ADMIN_TOKEN_FILE names. Over TLS the server is
trusted through NOTIFICATIONS_ADMIN_CA_FILE, and NOTIFICATIONS_ADMIN_CLIENT_CERT_FILE and
NOTIFICATIONS_ADMIN_CLIENT_KEY_FILE present a client certificate (mutual TLS).
docs/operations.md, \"Dead-letter console\", walks through each command.";

/// Runs `notifications dlq …` and prints the answer on stdout.
pub async fn run(command: &DlqCommand, config: &Config) -> anyhow::Result<()> {
    let token = config.admin_token_file.as_deref().map(read_admin_token).transpose()?;
    let addr = command.common().addr.clone().unwrap_or_else(|| local(config.grpc_addr).to_string());
    let channel = crate::dlq_channel::connect(&addr).await?;
    let mut client = DeadLetterServiceClient::new(channel);
    let out = call(&mut client, command, token.as_ref())
        .await
        .map_err(|status| anyhow::anyhow!("dlq {}: {:?}: {}", command.name(), status.code(), status.message()))?;
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
    command: &DlqCommand,
    token: Option<&SecretString>,
) -> Result<String, tonic::Status> {
    let json = command.common().json;
    Ok(match command {
        DlqCommand::List { filters, page_size, page_token, .. } => {
            let body = ListDeadLettersRequest {
                filter: Some(filters.filter()),
                page_size: *page_size,
                page_token: page_token.clone(),
            };
            let page = client.list_dead_letters(request(body, token)).await?.into_inner();
            if json {
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
        DlqCommand::Groups { filters, .. } => {
            let body = GetDeadLetterGroupsRequest { filter: Some(filters.filter()) };
            let groups = client.get_dead_letter_groups(request(body, token)).await?.into_inner().groups;
            if json {
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
        DlqCommand::Show { id, .. } => {
            let shown = client.get_dead_letter(request(GetDeadLetterRequest { id: id.clone() }, token)).await?;
            let shown = shown.into_inner();
            if json { show_json(&shown).to_string() } else { show_text(&shown) }
        }
        DlqCommand::Replay { ids, filters, limit, dry_run, .. } => {
            let body = ReplayDeadLettersRequest {
                ids: ids.clone(),
                // Ids name the rows; a filter applies only without them.
                filter: ids.is_empty().then(|| filters.filter()),
                dry_run: *dry_run,
                limit: *limit,
            };
            let done = client.replay_dead_letters(request(body, token)).await?.into_inner();
            outcome(json, if done.dry_run { "would replay" } else { "replayed" }, done.dry_run, &done.ids)
        }
        DlqCommand::Purge { ids, filters, by, reason_text, limit, dry_run, .. } => {
            let body = PurgeDeadLettersRequest {
                ids: ids.clone(),
                filter: ids.is_empty().then(|| filters.filter()),
                dry_run: *dry_run,
                by: by.clone(),
                reason: reason_text.clone(),
                limit: *limit,
            };
            let done = client.purge_dead_letters(request(body, token)).await?.into_inner();
            outcome(json, if done.dry_run { "would purge" } else { "purged" }, done.dry_run, &done.ids)
        }
    })
}
