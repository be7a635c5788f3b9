//! The dead-letter console's command line: `notifications dlq <command>`.

use chrono::DateTime;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use inbox::admin::v1::{DeadLetterFilter, DeadLetterState};

/// Every filter (list and groups; for replay and purge, what to act on).
#[derive(Debug, Default, Clone, Args)]
pub struct Filters {
    /// Only this reason (decode_error, handler_error, ...)
    #[arg(long, value_name = "R")]
    reason: Option<String>,
    /// Only this message type
    #[arg(long = "type", value_name = "T")]
    message_type: Option<String>,
    /// Dead-lettered at or after this time (RFC 3339, e.g. 2026-01-31T12:00:00Z)
    #[arg(long, value_name = "RFC3339", value_parser = timestamp)]
    since: Option<prost_types::Timestamp>,
    /// Dead-lettered before this time (RFC 3339)
    #[arg(long, value_name = "RFC3339", value_parser = timestamp)]
    until: Option<prost_types::Timestamp>,
    /// Only this correlation id
    #[arg(long, value_name = "C")]
    correlation_id: Option<String>,
    /// Rows in this state (list and groups; default dead)
    #[arg(long, value_enum, value_name = "STATE")]
    state: Option<State>,
}

impl Filters {
    pub(crate) fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            reason: self.reason.clone().unwrap_or_default(),
            message_type: self.message_type.clone().unwrap_or_default(),
            since: self.since,
            until: self.until,
            correlation_id: self.correlation_id.clone().unwrap_or_default(),
            state: self.state.map_or(DeadLetterState::Unspecified, DeadLetterState::from).into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum State {
    Dead,
    Replayed,
    Purged,
}

impl From<State> for DeadLetterState {
    fn from(state: State) -> Self {
        match state {
            State::Dead => Self::Dead,
            State::Replayed => Self::Replayed,
            State::Purged => Self::Purged,
        }
    }
}

/// Options every command takes.
#[derive(Debug, Default, Clone, Args)]
pub struct Common {
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
    /// The server (default: the local NOTIFICATIONS_GRPC_ADDR)
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
}

/// The arguments that pick what replay and purge act on: ids, a filter or
/// `--all`, at least one (a replay of everything is asked for by name).
const TARGET: [&str; 8] = ["ids", "reason", "message_type", "since", "until", "correlation_id", "state", "all"];

#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, a page at a time
    List {
        #[command(flatten)]
        filters: Filters,
        /// Rows per page (the server's default when 0)
        #[arg(long, value_name = "N", default_value_t = 0)]
        page_size: i32,
        /// The page after the one that printed this token
        #[arg(long, value_name = "T", default_value = "", hide_default_value = true)]
        page_token: String,
        #[command(flatten)]
        common: Common,
    },
    /// Dead letters counted by reason and type
    Groups {
        #[command(flatten)]
        filters: Filters,
        #[command(flatten)]
        common: Common,
    },
    /// One dead letter: its headers, payload and every attempt
    Show {
        /// The dead letter's id
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Publish dead letters again to the main queue
    #[command(group(ArgGroup::new("target").args(TARGET).required(true).multiple(true)))]
    Replay {
        /// Dead-letter ids (or a filter, or --all)
        ids: Vec<String>,
        #[command(flatten)]
        filters: Filters,
        /// Every dead letter
        #[arg(long)]
        all: bool,
        /// At most N (the server's default when 0)
        #[arg(long, value_name = "N", default_value_t = 0)]
        limit: i32,
        /// Say what would be replayed, change nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Mark dead letters purged, recorded with who and why
    #[command(group(ArgGroup::new("target").args(TARGET).required(true).multiple(true)))]
    Purge {
        /// Dead-letter ids (or a filter, or --all)
        ids: Vec<String>,
        #[command(flatten)]
        filters: Filters,
        /// Every dead letter
        #[arg(long)]
        all: bool,
        /// Who purges (recorded with the rows)
        #[arg(long, value_name = "WHO", value_parser = not_blank)]
        by: String,
        /// Why (recorded with the rows)
        #[arg(long, value_name = "WHY", default_value = "", hide_default_value = true)]
        reason_text: String,
        /// At most N (the server's default when 0)
        #[arg(long, value_name = "N", default_value_t = 0)]
        limit: i32,
        /// Say what would be purged, change nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        common: Common,
    },
}

impl DlqCommand {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::List { .. } => "list",
            Self::Groups { .. } => "groups",
            Self::Show { .. } => "show",
            Self::Replay { .. } => "replay",
            Self::Purge { .. } => "purge",
        }
    }

    pub(crate) fn common(&self) -> &Common {
        match self {
            Self::List { common, .. }
            | Self::Groups { common, .. }
            | Self::Show { common, .. }
            | Self::Replay { common, .. }
            | Self::Purge { common, .. } => common,
        }
    }
}

fn timestamp(raw: &str) -> Result<prost_types::Timestamp, String> {
    let at = DateTime::parse_from_rfc3339(raw)
        .map_err(|_| format!("an RFC 3339 time such as 2026-01-31T12:00:00Z is needed, got {raw:?}"))?;
    Ok(prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 })
}

fn not_blank(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        Err("who purges is recorded with the rows: it cannot be blank".into())
    } else {
        Ok(raw.into())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    }

    fn parse(args: &[&str]) -> Result<DlqCommand, clap::Error> {
        Dlq::try_parse_from(std::iter::once("dlq").chain(args.iter().copied())).map(|dlq| dlq.command)
    }

    #[test]
    fn parses_filters_ids_and_flags() {
        let args = ["replay", "--reason", "decode_error", "--since", "2026-01-31T12:00:00Z", "--dry-run"];
        let DlqCommand::Replay { filters, dry_run, ids, .. } = parse(&args).unwrap() else { panic!("replay") };
        assert_eq!(filters.filter().reason, "decode_error");
        assert_eq!(filters.filter().since.unwrap().seconds, 1_769_860_800);
        assert!(dry_run && ids.is_empty());
        let args = ["purge", "a", "b", "--by", "ops", "--reason-text", "bad data", "--json"];
        let DlqCommand::Purge { ids, by, reason_text, common, .. } = parse(&args).unwrap() else { panic!("purge") };
        assert_eq!((ids.len(), by.as_str(), reason_text.as_str(), common.json), (2, "ops", "bad data", true));
        let DlqCommand::List { filters, .. } = parse(&["list", "--state", "purged"]).unwrap() else { panic!("list") };
        assert_eq!(filters.filter().state, i32::from(DeadLetterState::Purged));
    }

    #[test]
    fn refuses_what_would_surprise() {
        assert!(parse(&["replay"]).is_err(), "a replay of everything needs --all");
        assert!(parse(&["replay", "--all"]).is_ok());
        assert!(parse(&["purge", "some-id"]).is_err(), "a purge is recorded with who");
        assert!(parse(&["purge", "some-id", "--by", " "]).is_err(), "and who is not blank");
        assert!(parse(&["show"]).is_err());
        assert!(parse(&["show", "a", "b"]).is_err(), "show takes one id");
        assert!(parse(&["list", "an-id"]).is_err(), "list takes no ids");
        assert!(parse(&["list", "--since", "yesterday"]).is_err());
        assert!(parse(&["list", "--page-size", "ten"]).is_err());
        assert!(parse(&["list", "--state", "alive"]).is_err());
        assert!(parse(&["drop"]).is_err());
        assert!(parse(&["list", "--frobnicate"]).is_err());
        for bad in [&["replay"][..], &["list", "--frobnicate"]] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?} is a usage error");
        }
    }
}
