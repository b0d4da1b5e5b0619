//! `edge-agent api-key create|list|revoke`: API keys of machines and gateways.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use edge_agent::store::keys;

use super::{DataDir, now_micros, open_db, open_existing_db, rfc3339};

#[derive(Debug, Subcommand)]
pub(crate) enum ApiKeyCommand {
    /// Create a key and print it once on stdout.
    Create {
        #[command(flatten)]
        data: DataDir,
        /// What the key is for, e.g. the gateway's name.
        #[arg(long)]
        name: String,
    },
    /// List every key: id (the first 8 hex digits of its hash), name, created, revoked.
    List {
        #[command(flatten)]
        data: DataDir,
    },
    /// Revoke every live key named NAME; a running agent refuses it within 2 s.
    Revoke {
        name: String,
        #[command(flatten)]
        data: DataDir,
    },
}

pub(crate) fn run(command: ApiKeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        ApiKeyCommand::Create { data, name } => {
            let conn = open_db(&data.data_dir)?;
            let key = keys::create(&conn, &name, now_micros()).context("creating the key")?;
            println!("{key}");
            eprintln!("API key {name:?} created; it is shown only this once");
        }
        ApiKeyCommand::List { data } => list(&data)?,
        ApiKeyCommand::Revoke { name, data } => {
            let conn = open_existing_db(&data.data_dir)?;
            let n = keys::revoke(&conn, &name, now_micros()).context("revoking")?;
            anyhow::ensure!(n > 0, "no live API key named {name:?} (see api-key list)");
            println!(
                "{n} API key(s) named {name:?} revoked; a running agent refuses them within {} s",
                edge_agent::api::KEY_RECHECK_MICROS / 1_000_000
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(data: &DataDir) -> anyhow::Result<()> {
    let conn = open_existing_db(&data.data_dir)?;
    let list = keys::list(&conn).context("listing the keys")?;
    let ts = |micros: i64| match time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(micros) * 1_000,
    ) {
        Ok(t) => rfc3339(t, || micros.to_string()),
        Err(_) => micros.to_string(),
    };
    println!("{:<8}  {:<24}  {:<32}  REVOKED", "ID", "NAME", "CREATED");
    for k in &list {
        println!(
            "{:<8}  {:<24}  {:<32}  {}",
            k.id,
            k.name,
            ts(k.created_at),
            k.revoked_at.map_or_else(|| "-".to_owned(), ts)
        );
    }
    eprintln!(
        "{} key(s), {} live",
        list.len(),
        list.iter().filter(|k| k.revoked_at.is_none()).count()
    );
    Ok(())
}
