//! `orders outbox ...`: operator commands that read or tend the outbox
//! straight from the orders database (`ORDERS_DATABASE_URL`), whether or not
//! any relay runs. Exit status: 0 done, 1 the database cannot be reached (or
//! the command failed there), 2 usage or configuration.

use std::process::ExitCode;

use sqlx::{Connection, PgConnection};

use crate::config::Config;

pub const OUTBOX_USAGE: &str = "\
usage: orders outbox status [--json] [--errors N]
       orders outbox maintain-archive

  status            pending rows, the oldest one's age, each partition's backlog and owner
                    (relay connection: pid, application name, client address), the relays
                    present, unowned partitions and the last N publish errors (default 10)
  --json            the same as one JSON object (keys in docs/operations.md, \"Outbox status\")
  maintain-archive  one pass of archive upkeep, as the relay runs every minute: hourly
                    partitions of outbox_archive created ahead, expired ones dropped
                    (OUTBOX_RETENTION_HOURS must be set)";

/// Last errors shown unless `--errors` says otherwise.
const DEFAULT_ERRORS: i64 = 10;

/// Runs `orders outbox <args>`.
pub async fn outbox(args: &[&str]) -> ExitCode {
    let command = match parse(args) {
        Ok(command) => command,
        Err(problem) => return usage(&problem),
    };
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(problems) => {
            eprintln!("orders: {problems}");
            return ExitCode::from(2);
        }
    };
    let options = match platform::db::connect_options(&config.database_url) {
        Ok(options) => options,
        Err(err) => return usage(&format!("{err:#}")),
    };
    match command {
        Command::Status { json, errors } => {
            let status = match PgConnection::connect_with(&options).await {
                Ok(mut conn) => {
                    let status = outbox::read_status(&mut conn, errors).await;
                    conn.close().await.ok();
                    status
                }
                Err(err) => Err(err),
            };
            match status {
                Ok(status) if json => println!("{}", status.to_json()),
                Ok(status) => print!("{}", status.to_text()),
                Err(err) => return unreachable_database(&err.into()),
            }
        }
        Command::MaintainArchive => {
            if config.relay.retention.is_zero() {
                return usage("OUTBOX_RETENTION_HOURS is 0: nothing is archived, so there is nothing to maintain");
            }
            if let Err(err) = outbox::maintain_archive_once(&options, config.relay.retention, chrono::Utc::now()).await
            {
                return unreachable_database(&err);
            }
            println!("outbox archive maintained (retention {} h)", config.relay.retention.as_secs() / 3600);
        }
    }
    ExitCode::SUCCESS
}

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Status { json: bool, errors: i64 },
    MaintainArchive,
}

fn parse(args: &[&str]) -> Result<Command, String> {
    match args {
        ["status", flags @ ..] => {
            let (mut json, mut errors) = (false, DEFAULT_ERRORS);
            let mut flags = flags.iter();
            while let Some(flag) = flags.next() {
                match *flag {
                    "--json" => json = true,
                    "--errors" => {
                        errors = flags
                            .next()
                            .and_then(|n| n.parse().ok())
                            .filter(|n| (0..=10_000).contains(n))
                            .ok_or("--errors takes a number from 0 to 10000")?;
                    }
                    other => return Err(format!("unknown option {other:?}")),
                }
            }
            Ok(Command::Status { json, errors })
        }
        ["maintain-archive"] => Ok(Command::MaintainArchive),
        _ => Err(format!("unknown command {args:?}")),
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("orders outbox: {problem}\n\n{OUTBOX_USAGE}");
    ExitCode::from(2)
}

fn unreachable_database(err: &anyhow::Error) -> ExitCode {
    // sqlx's errors name the server, never the URL's credentials.
    eprintln!("orders outbox: cannot read the orders database: {err:#}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_commands_and_refuses_the_rest() {
        assert_eq!(parse(&["status"]), Ok(Command::Status { json: false, errors: DEFAULT_ERRORS }));
        assert_eq!(parse(&["status", "--errors", "3", "--json"]), Ok(Command::Status { json: true, errors: 3 }));
        assert_eq!(parse(&["maintain-archive"]), Ok(Command::MaintainArchive));
        for bad in [&["status", "--errors"][..], &["status", "--errors", "-1"], &["status", "--jsn"], &[], &["stats"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
