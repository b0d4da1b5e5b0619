//! The database's generation on real PostgreSQL (issue 22): the hub notices from PostgreSQL
//! itself that its data went back in time.
//!
//! Proves: a fresh database is generation 1, observed again without a write and without
//! touching the sequences, through the hub's own role; a failover to an asynchronous replica
//! that missed the primary's last writes (its WAL receiver cut off before them, then `pg_ctl
//! promote`) is generation 2 on a greater timeline of the same cluster, recorded once however
//! many hub instances observe at once, with the down-log cursor and master version sequences
//! moved past everything the lost primary issued and a restore point between what the replica
//! kept and what it lost; the timeline is read from the current WAL file's name, which is right
//! at once after the promotion (the last checkpoint's is printed beside it, it lags); and data
//! whose newest generation was recorded on another cluster (a logical copy) starts a new
//! generation, which a `GenerationWatch` reports once its observation is older than its ttl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use central_hub::db::connect;
use central_hub::db::generation::{Generation, GenerationWatch, history, observe};
use sqlx::{Executor, PgPool};
use system_tests::pg::{PrivateCluster, server};

/// How far a new generation moves both sequences (the migration's 2^32).
const SEQUENCE_STEP: i64 = 1 << 32;

async fn scalar_i64(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The sequences' positions without advancing them.
async fn sequence_positions(admin: &PgPool) -> (i64, i64) {
    (
        scalar_i64(admin, "SELECT last_value FROM down_log_cursor_seq").await,
        scalar_i64(admin, "SELECT last_value FROM master_version_seq").await,
    )
}

async fn system_identifier(admin: &PgPool) -> u64 {
    scalar_i64(admin, "SELECT system_identifier FROM pg_control_system()").await as u64
}

/// Writes one down-log item and one master-data version as HQ would, returning the cursor and
/// the version they were given.
async fn write_down_and_master(admin: &PgPool, key: &str) -> (i64, i64) {
    let cursor: i64 = sqlx::query_scalar(
        "INSERT INTO down_log (site_id, item) VALUES ('SITE_A', '\\x00') RETURNING cursor",
    )
    .fetch_one(admin)
    .await
    .unwrap();
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO master_data (kind, key, version, json)
         VALUES ('materials', $1, nextval('master_version_seq'), '{}') RETURNING version",
    )
    .bind(key)
    .fetch_one(admin)
    .await
    .unwrap();
    (cursor, version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_is_generation_one_and_observing_again_writes_nothing() {
    let db = server().await.fresh_database().await;
    db.migrate().await;
    let admin = connect(&db.admin_url).await.unwrap();
    let hub = connect(&db.hub_url).await.unwrap();
    let system_id = system_identifier(&admin).await;
    let sequences = sequence_positions(&admin).await;
    assert!(history(&hub).await.unwrap().is_empty());

    let (first, new) = observe(&hub).await.unwrap();
    assert!(!new, "the first observation is no change");
    assert_eq!(first.number, 1);
    assert_eq!(first.system_id, system_id);
    assert!(first.timeline >= 1);
    assert_eq!(first.restore_point, None, "nothing was restored");
    let row_version: String = sqlx::query_scalar("SELECT xmin::text FROM hub_generations")
        .fetch_one(&admin)
        .await
        .unwrap();

    let (again, new) = observe(&hub).await.unwrap();
    assert!(!new);
    assert_eq!(again, first);
    // The owner sees the same generation as the hub role.
    assert_eq!(observe(&admin).await.unwrap(), (first.clone(), false));
    assert_eq!(history(&hub).await.unwrap(), vec![first.clone()]);
    assert_eq!(
        sqlx::query_scalar::<_, String>("SELECT xmin::text FROM hub_generations")
            .fetch_one(&admin)
            .await
            .unwrap(),
        row_version,
        "observing an unchanged generation rewrote its row"
    );
    assert_eq!(
        sequence_positions(&admin).await,
        sequences,
        "sequences moved without a new generation"
    );

    // Only the function writes generations; the reporting role may not even observe.
    let err = hub
        .execute("INSERT INTO hub_generations (number, system_id, timeline) VALUES (9, 1, 1)")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    let reporting = connect(&db.reporting_url).await.unwrap();
    let err = observe(&reporting).await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");

    // The cost of the common path, as the hub pays it (transaction, statement, commit) and as
    // the statement alone inside PostgreSQL.
    const ROUNDS: u32 = 200;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        assert!(!observe(&hub).await.unwrap().1);
    }
    let per_call = start.elapsed() / ROUNDS;
    let plan: Vec<String> =
        sqlx::query_scalar("EXPLAIN (ANALYZE, COSTS OFF) SELECT * FROM mes_observe_generation()")
            .fetch_all(&admin)
            .await
            .unwrap();
    eprintln!(
        "observe, unchanged generation: {per_call:?} per call over {ROUNDS} calls; {}",
        plan.join(" / ")
    );
    assert_eq!(
        scalar_i64(&admin, "SELECT count(*) FROM hub_generations").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_lagging_replica_is_a_new_generation_recorded_once() {
    let primary = PrivateCluster::start(false).expect("a private primary");
    let replica = primary.start_replica().expect("a streaming replica");
    let db = primary.server().fresh_database().await;
    db.migrate().await;
    let on_replica = |url: &str| primary.url_on(&replica, url);
    let admin = connect(&db.admin_url).await.unwrap();
    let hub = connect(&db.hub_url).await.unwrap();
    let (first, new) = observe(&hub).await.unwrap();
    assert_eq!((first.number, new), (1, false));

    // What the replica will keep: written, then awaited on the replica.
    let (kept_cursor, kept_version) = write_down_and_master(&admin, "KEPT").await;
    let kept_at: time::OffsetDateTime = sqlx::query_scalar("SELECT max(created_at) FROM down_log")
        .fetch_one(&admin)
        .await
        .unwrap();
    let replica_admin = on_replica(&db.admin_url);
    let replica_root = connect(&on_replica(&primary.admin_url)).await.unwrap();
    system_tests::pg::wait_replayed(&admin, &replica_root).await;

    // An asynchronous replica behind the primary: its WAL receiver is cut off, and the
    // primary goes on writing what the failover will lose.
    system_tests::pg::cut_off(&replica_root, &admin).await;
    let mut lost = (0, 0);
    for i in 0..40 {
        // More than the 32 values a sequence logs ahead, so the lost primary issued values
        // the replica's copy of the sequence has never seen.
        lost = write_down_and_master(&admin, &format!("LOST{i}")).await;
    }
    let (lost_cursor, lost_version) = lost;
    let lost_from: time::OffsetDateTime =
        sqlx::query_scalar("SELECT min(created_at) FROM down_log WHERE cursor > $1")
            .bind(kept_cursor)
            .fetch_one(&admin)
            .await
            .unwrap();
    let old_timeline: i64 = scalar_i64(
        &admin,
        "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint",
    )
    .await;
    admin.close().await;
    hub.close().await;
    primary.stop_immediate().unwrap();

    replica.promote().expect("promoting the replica");
    // Right after the promotion: the insert timeline is the new one at once; the control
    // file's checkpoint timeline changes only with the next checkpoint.
    let (wal_timeline, checkpoint_timeline): (i64, i64) = sqlx::query_as(
        "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint,
                (SELECT timeline_id::bigint FROM pg_control_checkpoint())",
    )
    .fetch_one(&replica_root)
    .await
    .unwrap();
    eprintln!(
        "right after pg_ctl promote: WAL file timeline {wal_timeline}, last checkpoint's \
         timeline {checkpoint_timeline} (old primary: {old_timeline})"
    );
    assert_eq!(wal_timeline, old_timeline + 1);
    assert_eq!(i64::from(first.timeline), old_timeline);

    let promoted_admin = connect(&replica_admin).await.unwrap();
    let promoted_hub = connect(&on_replica(&db.hub_url)).await.unwrap();
    let kept: Vec<i64> = sqlx::query_scalar("SELECT cursor FROM down_log ORDER BY cursor")
        .fetch_all(&promoted_admin)
        .await
        .unwrap();
    assert_eq!(
        kept,
        vec![kept_cursor],
        "the replica must miss the lost rows"
    );

    // Four hub instances observe at once: one of them records the new generation.
    let observers: Vec<_> = (0..4)
        .map(|_| {
            let pool = promoted_hub.clone();
            tokio::spawn(async move { observe(&pool).await.unwrap() })
        })
        .collect();
    let mut seen: Vec<(Generation, bool)> = Vec::new();
    for o in observers {
        seen.push(o.await.unwrap());
    }
    assert_eq!(seen.iter().filter(|(_, new)| *new).count(), 1, "{seen:?}");
    let second = seen[0].0.clone();
    assert!(seen.iter().all(|(g, _)| *g == second), "{seen:?}");
    assert_eq!(second.number, 2);
    assert_eq!(
        second.system_id, first.system_id,
        "a promotion keeps the cluster"
    );
    assert_eq!(i64::from(second.timeline), wal_timeline);
    assert!(second.timeline > first.timeline);
    assert!(!second.same_history(&first));
    let restore_point = second.restore_point.expect("a restore point");
    let micros = |t: time::OffsetDateTime| (t.unix_timestamp_nanos() / 1000) as i64;
    assert!(
        restore_point.as_micros() >= micros(kept_at),
        "restore point {restore_point:?} before the kept row"
    );
    assert!(
        restore_point.as_micros() < micros(lost_from),
        "restore point {restore_point:?} at or after a lost row"
    );
    assert_eq!(
        observe(&promoted_hub).await.unwrap(),
        (second.clone(), false)
    );
    assert_eq!(history(&promoted_hub).await.unwrap(), vec![second, first]);

    // New cursors and versions lie above everything the lost primary issued.
    let (cursor, version) = write_down_and_master(&promoted_admin, "AFTER").await;
    for (what, new_value, kept, lost) in [
        ("down-log cursor", cursor, kept_cursor, lost_cursor),
        ("master version", version, kept_version, lost_version),
    ] {
        assert!(
            new_value >= kept + SEQUENCE_STEP,
            "{what} {new_value} is not 2^32 above {kept}"
        );
        assert!(
            new_value > lost,
            "{what} {new_value} repeats the lost {lost}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_recorded_on_another_cluster_is_a_new_generation_the_watch_sees_after_its_ttl() {
    let db = server().await.fresh_database().await;
    db.migrate().await;
    let admin = connect(&db.admin_url).await.unwrap();
    let hub = connect(&db.hub_url).await.unwrap();
    let watch = GenerationWatch::new(hub.clone());
    assert_eq!(watch.ttl(), Duration::from_secs(5));
    let t0 = Instant::now();
    let first = watch.current(t0).await.unwrap();
    assert_eq!(first.number, 1);

    // A logical copy (pg_dump | psql) brings the generations of the cluster it was taken on:
    // here its newest row names another system identifier.
    let other = first.system_id.wrapping_add(1) as i64;
    sqlx::query("INSERT INTO hub_generations (number, system_id, timeline) VALUES (2, $1, 1)")
        .bind(other)
        .execute(&admin)
        .await
        .unwrap();
    write_down_and_master(&admin, "COPIED").await;
    let sequences = sequence_positions(&admin).await;

    // Within its ttl the watch answers from its last observation, without a query.
    assert_eq!(
        watch
            .current(t0 + Duration::from_millis(4_900))
            .await
            .unwrap(),
        first
    );
    assert_eq!(
        scalar_i64(&admin, "SELECT count(*) FROM hub_generations").await,
        2
    );

    let third = watch.current(t0 + Duration::from_secs(5)).await.unwrap();
    assert_eq!(third.number, 3);
    assert_eq!(third.system_id, first.system_id);
    assert!(third.restore_point.is_some());
    let after = sequence_positions(&admin).await;
    assert!(
        after.0 >= sequences.0 + SEQUENCE_STEP,
        "{after:?} vs {sequences:?}"
    );
    assert!(
        after.1 >= sequences.1 + SEQUENCE_STEP,
        "{after:?} vs {sequences:?}"
    );
    // Recorded by the watch's observation, so a direct one finds nothing new.
    assert_eq!(observe(&hub).await.unwrap(), (third.clone(), false));
    let numbers: Vec<u32> = history(&hub)
        .await
        .unwrap()
        .iter()
        .map(|g| g.number)
        .collect();
    assert_eq!(numbers, vec![3, 2, 1]);
}
