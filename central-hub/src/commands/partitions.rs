//! `central-hub partitions retire`: archive old event partitions to CSV and drop them.

use std::path::PathBuf;

use central_hub::db::retention;
use clap::Subcommand;

use super::Database;

#[derive(Debug, Subcommand)]
pub(crate) enum PartitionCommand {
    /// Archive event partitions older than the retention age to CSV files, then drop them
    /// (as the schema owner, directly against PostgreSQL).
    Retire {
        #[arg(long, env = "HUB_RETENTION_MONTHS")]
        older_than_months: u32,
        #[arg(long, env = "HUB_ARCHIVE_DIR")]
        archive_dir: PathBuf,
        /// List what would be retired and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        db: Database,
    },
}

pub(crate) async fn run(command: PartitionCommand) -> anyhow::Result<()> {
    let PartitionCommand::Retire {
        older_than_months,
        archive_dir,
        dry_run,
        db,
    } = command;
    let pool = db.connect().await?;
    let now = time::OffsetDateTime::now_utc();
    if dry_run {
        let due = retention::due(&pool, older_than_months, now).await?;
        for (table, _, month) in &due {
            println!("would retire {table} ({month})");
        }
        println!("{} partition(s) due", due.len());
        return Ok(());
    }
    let done = retention::retire(&pool, older_than_months, &archive_dir, now).await?;
    for r in &done {
        println!(
            "retired {} ({} rows, {} bytes) -> {} sha256 {}",
            r.table,
            r.rows,
            r.bytes,
            r.file.display(),
            r.sha256
        );
    }
    println!("{} partition(s) retired", done.len());
    Ok(())
}
