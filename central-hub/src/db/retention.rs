//! Partition lifecycle: raw events older than the retention age leave PostgreSQL as files.
//!
//! Each site's events live in one partition per month (`events_p_<site>_<yyyymm>`). A month is
//! retired once it ended more than `older_than_months` whole months before the current one:
//! inside one transaction the partition is locked against writes, copied out with `COPY … TO
//! STDOUT (FORMAT csv, HEADER)` to `<archive>/<site>/<partition>.csv` (written to a temporary
//! name, fsynced, renamed), its row count checked against the file, a manifest with the
//! SHA-256 written beside it, and only then detached and dropped. A failure anywhere rolls
//! the transaction back and the partition stays; a re-run is safe.
//!
//! The hourly rollups (production, states) are kept: reports over old months still work,
//! only the raw events (and so genealogy and event-level audits) move to the archive.
//! `docs/operations.md` shows how to load an archive back (`COPY FROM` + `ATTACH PARTITION`).
//! Runs as the schema owner (the partitions are the owner's), directly against PostgreSQL.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use serde::Serialize;
use sqlx::{Executor as _, PgPool, Row as _};
use time::{Date, Month, OffsetDateTime};

/// Retention shorter than this is refused: the edge may hold a week of backlog, and late
/// events for a dropped month would land in the site's default partition.
pub const RETENTION_MONTHS_MIN: u32 = 3;

/// Partitions retired per run: a long-neglected database is caught up over several runs
/// rather than in one transaction-heavy burst.
pub const PARTITIONS_PER_RUN_MAX: usize = 120;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("retention must be at least {RETENTION_MONTHS_MIN} months, got {0}")]
    TooShort(u32),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("archive file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("partition {table}: copied {copied} rows but it holds {counted}; left in place")]
    CountMismatch {
        table: String,
        copied: u64,
        counted: i64,
    },
}

/// One retired month of one site.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Retired {
    pub table: String,
    pub site: String,
    /// First day of the month (UTC).
    pub month: String,
    pub rows: u64,
    pub file: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

/// The first day of the month `months` before `now`'s month; months ending on or before it
/// are retired.
pub fn cutoff(now: OffsetDateTime, months: u32) -> Date {
    let total = now.year() * 12 + (now.month() as i32 - 1) - months as i32;
    let (y, m) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let month = Month::try_from(m as u8).unwrap_or(Month::January);
    Date::from_calendar_date(y, month, 1).unwrap_or(Date::MIN)
}

/// `events_p_site_a_202401` → (`SITE_A`, 2024-01-01).
fn parse_partition(name: &str) -> Option<(String, Date)> {
    let rest = name.strip_prefix("events_p_")?;
    let (site, yyyymm) = rest.rsplit_once('_')?;
    if yyyymm.len() != 6 || !yyyymm.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i32 = yyyymm[..4].parse().ok()?;
    let m: u8 = yyyymm[4..].parse().ok()?;
    let date = Date::from_calendar_date(y, Month::try_from(m).ok()?, 1).ok()?;
    Some((site.to_ascii_uppercase(), date))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RetentionError + '_ {
    move |source| RetentionError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The month partitions that [`retire`] would archive, oldest first.
pub async fn due(
    pool: &PgPool,
    older_than_months: u32,
    now: OffsetDateTime,
) -> Result<Vec<(String, String, Date)>, RetentionError> {
    if older_than_months < RETENTION_MONTHS_MIN {
        return Err(RetentionError::TooShort(older_than_months));
    }
    let keep_from = cutoff(now, older_than_months);
    let rows = crate::db::query(
        "SELECT c.relname::text AS child, p.relname::text AS parent FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
         WHERE p.relname LIKE 'events\\_p\\_%' ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let child: String = r.try_get("child")?;
        let parent: String = r.try_get("parent")?;
        if let Some((_, month)) = parse_partition(&child) {
            // The partition holds [month, month + 1): retired when that ends by `keep_from`.
            let next = cutoff_next(month);
            if next <= keep_from {
                out.push((child, parent, month));
            }
        }
    }
    out.sort_by_key(|(_, _, m)| *m);
    out.truncate(PARTITIONS_PER_RUN_MAX);
    debug_assert!(
        older_than_months >= RETENTION_MONTHS_MIN && out.iter().all(|(_, _, m)| *m < keep_from),
        "only months before the retention cutoff are due"
    );
    Ok(out)
}

/// Mode of archive files: they hold a site's raw production data, for the hub's user only.
pub const ARCHIVE_FILE_MODE: u32 = 0o600;

/// Creates (or truncates) `path` with [`ARCHIVE_FILE_MODE`].
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        o.mode(ARCHIVE_FILE_MODE);
        let f = o.open(path)?;
        f.set_permissions(std::fs::Permissions::from_mode(ARCHIVE_FILE_MODE))?;
        Ok(f)
    }
    #[cfg(not(unix))]
    o.open(path)
}

/// Archives of one partition kept side by side: a month retired once may be retired again
/// when late events for it arrived afterwards (they wait in the site's DEFAULT partition until
/// the partition task gives the month its own partition again).
pub const ARCHIVES_PER_PARTITION_MAX: u32 = 1000;

/// The archive file and manifest for `table` that do not exist yet: `<table>.csv`, then
/// `<table>.2.csv`, `<table>.3.csv`, … — an earlier archive is never overwritten.
fn archive_names(dir: &Path, table: &str) -> Result<(PathBuf, PathBuf), RetentionError> {
    for n in 1..=ARCHIVES_PER_PARTITION_MAX {
        let stem = if n == 1 {
            table.to_owned()
        } else {
            format!("{table}.{n}")
        };
        let file = dir.join(format!("{stem}.csv"));
        let manifest = dir.join(format!("{stem}.manifest.json"));
        if !file.exists() && !manifest.exists() {
            return Ok((file, manifest));
        }
    }
    Err(RetentionError::Io {
        path: dir.join(table),
        source: std::io::Error::other(format!(
            "{ARCHIVES_PER_PARTITION_MAX} archives of this partition exist already"
        )),
    })
}

fn cutoff_next(month: Date) -> Date {
    let (y, m) = if month.month() == Month::December {
        (month.year() + 1, Month::January)
    } else {
        (month.year(), month.month().next())
    };
    Date::from_calendar_date(y, m, 1).unwrap_or(Date::MAX)
}

/// Archives and drops every month partition older than `older_than_months` (see the module
/// docs). Returns what was retired.
pub async fn retire(
    pool: &PgPool,
    older_than_months: u32,
    archive_dir: &Path,
    now: OffsetDateTime,
) -> Result<Vec<Retired>, RetentionError> {
    let mut done = Vec::new();
    let keep_from = cutoff(now, older_than_months);
    for (table, parent, month) in due(pool, older_than_months, now).await? {
        // Dropping a month still inside retention destroys data the reports' drill-downs
        // and audits need: `due` must never offer one.
        assert!(
            cutoff_next(month) <= keep_from,
            "partition {table} ({month}) is inside the retention of {older_than_months} months"
        );
        done.push(retire_one(pool, &table, &parent, month, archive_dir).await?);
        tracing::info!(partition = %table, "partition archived and dropped");
    }
    Ok(done)
}

async fn retire_one(
    pool: &PgPool,
    table: &str,
    parent: &str,
    month: Date,
    archive_dir: &Path,
) -> Result<Retired, RetentionError> {
    let site = parse_partition(table).map(|(s, _)| s).unwrap_or_default();
    let dir = archive_dir.join(&site);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let (file, manifest) = archive_names(&dir, table)?;
    let tmp = file.with_extension("csv.partial");
    // Table names come from the catalogue and match events_p_[a-z0-9_]+; quote anyway.
    let q = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    let mut tx = super::begin(pool, super::PoolRole::Write).await?;
    // Writers wait (late events for this month) while readers go on; the lock is upgraded for
    // the detach below.
    tx.execute(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {} IN SHARE MODE",
        q(table)
    )))
    .await?;
    let counted: i64 = crate::db::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}",
        q(table)
    )))
    .fetch_one(&mut *tx)
    .await?;
    let mut out = create_private(&tmp).map_err(io(&tmp))?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut bytes = 0u64;
    let mut newlines = 0u64;
    {
        let mut stream = tx
            .copy_out_raw(&format!(
                "COPY (SELECT * FROM {} ORDER BY occurred_at, event_id) TO STDOUT \
                 WITH (FORMAT csv, HEADER)",
                q(table)
            ))
            .await?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            out.write_all(&chunk).map_err(io(&tmp))?;
            hash.update(&chunk);
            bytes += chunk.len() as u64;
            newlines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    out.sync_all().map_err(io(&tmp))?;
    drop(out);
    // CSV quotes any newline inside a value, and no column holds text with newlines except
    // bytea (hex, none) — so lines minus the header are rows.
    let copied = newlines.saturating_sub(1);
    if i64::try_from(copied).ok() != Some(counted) {
        // The mismatch is the error to report; a partial file left behind is only logged
        // (the next run writes it afresh).
        if let Err(e) = std::fs::remove_file(&tmp) {
            tracing::warn!(file = %tmp.display(), error = %e, "could not remove a partial archive");
        }
        return Err(RetentionError::CountMismatch {
            table: table.to_owned(),
            copied,
            counted,
        });
    }
    std::fs::rename(&tmp, &file).map_err(io(&file))?;
    let sha256: String = hash
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let retired = Retired {
        table: table.to_owned(),
        site: site.clone(),
        month: month.to_string(),
        rows: copied,
        file: file.clone(),
        sha256,
        bytes,
    };
    let body = serde_json::to_vec_pretty(&serde_json::json!({
        "table": table, "parent": parent, "site": site, "month": retired.month,
        "rows": copied, "sha256": retired.sha256, "bytes": bytes,
        "format": "csv with header, columns of the events table",
        "archived_at": OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    }))
    .unwrap_or_default();
    create_private(&manifest)
        .and_then(|mut f| {
            f.write_all(&body)?;
            f.sync_all()
        })
        .map_err(io(&manifest))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))?;
    tx.execute(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {} DETACH PARTITION {}",
        q(parent),
        q(table)
    )))
    .await?;
    tx.execute(sqlx::AssertSqlSafe(format!("DROP TABLE {}", q(table))))
        .await?;
    tx.commit().await?;
    Ok(retired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_counts_whole_months_back() {
        let now = time::macros::datetime!(2026-11-29 05:00 UTC);
        assert_eq!(cutoff(now, 24), time::macros::date!(2024 - 11 - 01));
        assert_eq!(cutoff(now, 11), time::macros::date!(2025 - 12 - 01));
        assert_eq!(cutoff(now, 12), time::macros::date!(2025 - 11 - 01));
        let jan = time::macros::datetime!(2026-01-15 00:00 UTC);
        assert_eq!(cutoff(jan, 1), time::macros::date!(2025 - 12 - 01));
    }

    #[test]
    fn partition_names_parse() {
        assert_eq!(
            parse_partition("events_p_site_a_202401"),
            Some(("SITE_A".to_owned(), time::macros::date!(2024 - 01 - 01)))
        );
        assert_eq!(parse_partition("events_p_site_a_default"), None);
        assert_eq!(parse_partition("events_p_site_a_202413"), None);
        assert_eq!(parse_partition("production_hourly"), None);
    }
}
