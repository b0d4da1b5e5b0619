//! `central-hub import-master-data FILE`: validate HQ master data, store it and queue it for
//! every live site.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use shared_model::SiteId;
use shared_model::master::{MasterFile, MasterRecord};

use super::Database;

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    file: PathBuf,
    #[command(flatten)]
    db: Database,
}

pub(crate) async fn import(args: ImportArgs) -> anyhow::Result<()> {
    // Everything is read and validated before PostgreSQL is touched.
    let records = read(&args.file)?;
    let pool = args.db.connect().await?;
    let sites: Vec<SiteId> =
        sqlx::query_scalar::<_, String>("SELECT site_id FROM sites WHERE revoked_at IS NULL")
            .fetch_all(&pool)
            .await
            .context("listing sites")?
            .into_iter()
            .filter_map(|s| SiteId::new(s).ok())
            .collect();
    central_hub::db::master::publish(&pool, &sites, &records)
        .await
        .context("publishing master data")?;
    println!(
        "{} records stored and sent to {} sites",
        records.len(),
        sites.len()
    );
    Ok(())
}

/// The records of a JSON (or, by extension, TOML) master-data file, each validated.
fn read(file: &Path) -> anyhow::Result<Vec<MasterRecord>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed: MasterFile = if file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
    {
        toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?
    } else {
        serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?
    };
    let records = parsed.into_records();
    for r in &records {
        r.validate()
            .with_context(|| format!("{} {}", r.kind().as_str(), r.key()))?;
    }
    Ok(records)
}
