//! Backups with pgBackRest and point-in-time restore, on their own (issue 22, part 1): a
//! private PostgreSQL cluster archives its WAL with the real `pgbackrest` into an encrypted,
//! compressed repository; the cluster is then destroyed (stopped without a checkpoint, its
//! data directory removed) and restored from the repository alone.
//!
//! * Restoring to a time T between two batches of rows brings back exactly the rows committed
//!   before T, on the same system identifier and a later timeline (the restore promoted a new
//!   history), and `pgbackrest check` passes on the restored cluster: archiving resumed.
//! * The repository is encrypted: `info` names the cipher, and a marker string that is in the
//!   table's file in plain bytes is nowhere in the repository's bytes.
//! * A differential and an incremental backup on top of the full one restore to "latest" with
//!   every row, and `info` lists the three kinds.
//!
//! The restore's timings are printed: they are the first part of the hub's RTO.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use sqlx::{Connection, Executor, PgConnection};
use system_tests::pgbackrest::{Backed, BackupKind, RestoreTarget, RestoreTimings};

/// In a row of the first batch; must never be readable in the repository.
const MARKER: &str = "mes-backup-drill-marker-5e1f0c7a";
const ROWS_PER_BATCH: i64 = 2_000;

async fn connect(backed: &Backed) -> PgConnection {
    let url = &backed.cluster().unwrap().admin_url;
    PgConnection::connect(url).await.expect("connecting")
}

async fn insert_batch(c: &mut PgConnection, batch: &str) {
    sqlx::query(
        "INSERT INTO drill (batch, n, note) \
         SELECT $1, n, $1 || '-' || n FROM generate_series(1, $2) AS n",
    )
    .bind(batch)
    .bind(ROWS_PER_BATCH)
    .execute(&mut *c)
    .await
    .expect("inserting a batch");
}

async fn count(c: &mut PgConnection, batch: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM drill WHERE batch = $1")
        .bind(batch)
        .fetch_one(&mut *c)
        .await
        .expect("counting a batch")
}

/// The cluster's system identifier and its current timeline.
async fn identity(c: &mut PgConnection) -> (i64, u32) {
    let (system, timeline): (i64, String) = sqlx::query_as(
        "SELECT (SELECT system_identifier FROM pg_control_system()), \
                substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
    )
    .fetch_one(&mut *c)
    .await
    .expect("reading the identity");
    (
        system,
        u32::from_str_radix(&timeline, 16).expect("a hex timeline"),
    )
}

/// Whether `needle` occurs in the bytes of any file under `dir`; also the bytes searched.
fn bytes_contain(dir: &Path, needle: &[u8]) -> (bool, u64) {
    let mut found = false;
    let mut searched = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("reading the repository") {
            let entry = entry.unwrap();
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() {
                // pgBackRest's `latest` points at a backup set that is listed anyway.
                continue;
            }
            if kind.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                searched += bytes.len() as u64;
                found |= bytes.windows(needle.len()).any(|w| w == needle);
            }
        }
    }
    (found, searched)
}

fn print_restore(what: &str, timings: RestoreTimings) {
    println!(
        "{what}: pgbackrest restore {:.2} s, start (replay and promote) {:.2} s, together {:.2} s",
        timings.restore.as_secs_f64(),
        timings.start.as_secs_f64(),
        (timings.restore + timings.start).as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_restore_after_losing_the_primary() {
    let drill = Instant::now();
    let mut backed = Backed::start().unwrap();
    let mut c = connect(&backed).await;
    c.execute("CREATE TABLE drill (batch text NOT NULL, n int NOT NULL, note text NOT NULL)")
        .await
        .unwrap();
    insert_batch(&mut c, "A").await;
    sqlx::query("INSERT INTO drill VALUES ('A', 0, $1)")
        .bind(MARKER)
        .execute(&mut c)
        .await
        .unwrap();
    let (system_before, timeline_before) = identity(&mut c).await;

    let started = Instant::now();
    backed.backup(BackupKind::Full).unwrap();
    let full_s = started.elapsed().as_secs_f64();
    // pgBackRest keeps a backup's stop time to the second and restores a point in time from a
    // set that stopped before it: the target must be a clear second after the backup.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;

    insert_batch(&mut c, "B").await;
    let target: String = sqlx::query_scalar(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', \
                        'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    // C commits strictly after the target (the clock has moved on by the time it commits),
    // and its WAL reaches the archive: recovery needs a commit past the target to stop there.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    insert_batch(&mut c, "C").await;
    backed.switch_wal_and_wait_archived().await.unwrap();

    // The marker is in the table's own file in plain bytes: the search below can find it.
    c.execute("CHECKPOINT").await.unwrap();
    let relation: String = sqlx::query_scalar("SELECT pg_relation_filepath('drill')")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let table_file = backed.cluster().unwrap().data_dir().join(relation);
    let heap = std::fs::read(&table_file).unwrap();
    assert!(
        heap.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "the marker is not in plain bytes in {}",
        table_file.display()
    );
    drop(c);

    let old_data = backed.cluster().unwrap().data_dir().to_path_buf();
    backed.destroy().unwrap();
    assert!(!old_data.exists(), "the primary's data directory is gone");

    let timings = backed
        .restore(&RestoreTarget::Time(target.clone()))
        .await
        .unwrap();
    print_restore(&format!("point-in-time restore to {target}"), timings);

    let mut c = connect(&backed).await;
    assert_eq!(count(&mut c, "A").await, ROWS_PER_BATCH + 1, "rows A");
    assert_eq!(count(&mut c, "B").await, ROWS_PER_BATCH, "rows B");
    assert_eq!(count(&mut c, "C").await, 0, "rows C came after the target");
    let (system_after, timeline_after) = identity(&mut c).await;
    assert_eq!(system_after, system_before, "same system identifier");
    assert!(
        timeline_after > timeline_before,
        "timeline {timeline_after} after the restore, {timeline_before} before"
    );
    println!("system identifier {system_after}, timeline {timeline_before} -> {timeline_after}");

    // The configuration now names the restored cluster: archiving and check work again.
    backed.check().unwrap();
    drop(c);

    // Encrypted: info names the cipher, and no plain bytes of the table are in the repository.
    let info = backed.info().unwrap();
    assert_eq!(
        info[0]["repo"][0]["cipher"], "aes-256-cbc",
        "pgbackrest info: {info:#}"
    );
    assert_eq!(info[0]["status"]["code"], 0, "pgbackrest info: {info:#}");
    let (found, searched) = bytes_contain(&backed.repo_dir(), MARKER.as_bytes());
    assert!(
        searched > 1_000_000,
        "only {searched} bytes in the repository: no backup there?"
    );
    assert!(!found, "the marker is readable in the repository");

    println!(
        "full backup {full_s:.2} s; drill {:.1} s in all; {searched} repository bytes searched",
        drill.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_and_incremental_backups_restore_to_latest() {
    let mut backed = Backed::start().unwrap();
    let mut c = connect(&backed).await;
    c.execute("CREATE TABLE drill (batch text NOT NULL, n int NOT NULL, note text NOT NULL)")
        .await
        .unwrap();
    let mut timings = Vec::new();
    for (batch, kind) in [
        ("A", BackupKind::Full),
        ("B", BackupKind::Diff),
        ("C", BackupKind::Incr),
    ] {
        insert_batch(&mut c, batch).await;
        let started = Instant::now();
        backed.backup(kind).unwrap();
        timings.push(format!(
            "{} {:.2} s",
            kind.as_str(),
            started.elapsed().as_secs_f64()
        ));
    }
    // Only in the archived WAL, in no backup.
    insert_batch(&mut c, "D").await;
    let (system_before, timeline_before) = identity(&mut c).await;
    backed.switch_wal_and_wait_archived().await.unwrap();
    drop(c);

    let info = backed.info().unwrap();
    let kinds: Vec<&str> = info[0]["backup"]
        .as_array()
        .expect("a backup list")
        .iter()
        .map(|b| b["type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds, ["full", "diff", "incr"], "pgbackrest info: {info:#}");

    backed.destroy().unwrap();
    let restored = backed.restore(&RestoreTarget::Latest).await.unwrap();
    println!("backups: {}", timings.join(", "));
    print_restore("restore to latest from full + diff + incr", restored);

    let mut c = connect(&backed).await;
    for batch in ["A", "B", "C", "D"] {
        assert_eq!(count(&mut c, batch).await, ROWS_PER_BATCH, "rows {batch}");
    }
    let (system_after, timeline_after) = identity(&mut c).await;
    assert_eq!(system_after, system_before);
    assert!(timeline_after > timeline_before);
    backed.check().unwrap();
}

#[test]
fn restore_targets_become_pgbackrest_options() {
    // A bad target is an error before anything is restored, never a restore to somewhere else.
    let promote = "--target-action=promote";
    for (target, expected) in [
        (RestoreTarget::Latest, Ok(vec![])),
        (
            RestoreTarget::Time("2030-01-01T12:00:00.5+02:00".into()),
            Ok(vec![
                "--type=time",
                "--target=2030-01-01 10:00:00.500000+00",
                promote,
            ]),
        ),
        (
            RestoreTarget::Lsn("0/3000060".into()),
            Ok(vec!["--type=lsn", "--target=0/3000060", promote]),
        ),
        (RestoreTarget::Time("yesterday".into()), Err("not RFC 3339")),
        (
            RestoreTarget::Time("2030-01-01 12:00:00".into()),
            Err("not RFC 3339"),
        ),
        (RestoreTarget::Time("9".repeat(100)), Err("bytes")),
        (RestoreTarget::Lsn("3000060".into()), Err("not an LSN")),
        (RestoreTarget::Lsn("0/zz".into()), Err("not an LSN")),
        (RestoreTarget::Lsn("/1".into()), Err("not an LSN")),
    ] {
        match (target.restore_args(), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{target:?}"),
            (Err(got), Err(words)) => assert!(got.contains(words), "{target:?}: {got}"),
            (got, want) => panic!("{target:?}: {got:?}, expected {want:?}"),
        }
    }
}
