//! The edge's files and its restore, as a field engineer meets them.
//!
//! * The store, its backups and its restored copy are readable by their owner only (they hold
//!   API key and PIN hashes), and a store made before that rule is tightened when it opens.
//! * `edge-agent restore`, run as root on a box whose agent runs as its own user (the
//!   installer's `mes-edge`; here `nobody`), gives the restored store to that user: the
//!   agent, started as that user, accepts a write. Needs root, as on the build machines; it
//!   fails saying so otherwise.
//! * After a restore from an old backup, an order's totals are not below what the site had
//!   already reported to HQ: pausing the order again does not send HQ a lower count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use central_hub::serve::ReportSettings;
use system_tests::edge::{api_key, edge_config, repaired};
use system_tests::hq::{hq, temp_dir, wait_for};
use system_tests::requests::send_json;

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn owner(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().uid()
}

const NOBODY: u32 = 65534;

/// The edge-agent binary, copied where any user may run it (the build tree may be private).
fn edge_agent_for_anyone(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = system_tests::procs::workspace_bin("edge-agent", "edge-agent");
    let to = dir.join("edge-agent");
    std::fs::copy(&bin, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    to
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restored_by_root_is_private_and_the_service_users() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let euid = owner(Path::new("/proc/self"));
    assert_eq!(
        euid, 0,
        "this test restores as root and runs the agent as another user: run it as root"
    );
    // /tmp itself is world-writable; the box's layout: a data directory owned by the service
    // user, the binary readable by all.
    let root = temp_dir("restore-owner");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = edge_agent_for_anyone(&root);
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
    let as_service = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args).uid(NOBODY).gid(NOBODY).env("HOME", &root);
        c
    };
    let data_s = data.display().to_string();
    // The service user makes its store (a key): owner-only from the start.
    let key = run(&mut as_service(&[
        "api-key",
        "create",
        "--data-dir",
        &data_s,
        "--name",
        "line-1",
    ]))
    .trim()
    .to_owned();
    let db = data.join(edge_agent::store::DB_FILE);
    assert_eq!(mode(&db), 0o600, "a new store");
    assert_eq!(owner(&db), NOBODY);

    // Root takes a backup (owner-only) and restores it.
    let backup = root.join("backups").join("edge.db");
    run(Command::new(&bin).args([
        "backup",
        "--data-dir",
        &data_s,
        "--out",
        &backup.display().to_string(),
    ]));
    assert_eq!(mode(&backup), 0o600, "a backup");
    let out = run(Command::new(&bin).args([
        "restore",
        "--data-dir",
        &data_s,
        "--from",
        &backup.display().to_string(),
    ]));
    assert!(out.contains("restored"), "{out}");
    assert_eq!(
        owner(&db),
        NOBODY,
        "the restored store belongs to the service user"
    );
    assert_eq!(mode(&db), 0o600, "the restored store");
    assert_eq!(owner(&data.join("edge.lock")), NOBODY, "the lock file");
    for leftover in ["edge.db.restoring", "edge.db.restoring-wal", "edge.db-wal"] {
        assert!(!data.join(leftover).exists(), "{leftover} left behind");
    }

    // The agent as the service user takes a write on the restored store.
    std::fs::write(root.join("md.json"), system_tests::edge::MASTER.as_bytes()).unwrap();
    std::fs::set_permissions(root.join("md.json"), std::fs::Permissions::from_mode(0o644)).unwrap();
    run(&mut as_service(&[
        "import-master-data",
        &root.join("md.json").display().to_string(),
        "--data-dir",
        &data_s,
    ]));
    let mut agent = system_tests::procs::Proc::start(&mut as_service(&[
        "run",
        "--site",
        "SITE_A",
        "--data-dir",
        &data_s,
        "--http-listen",
        "127.0.0.1:0",
    ]));
    let line = agent.wait_for_line("edge-agent listening on ", Duration::from_secs(30));
    let base = line
        .trim_start_matches("edge-agent listening on ")
        .to_owned();
    let r = send_json(
        reqwest::Client::new().post(format!("{base}/api/v1/events")),
        &key,
        &serde_json::json!({"type": "production_count", "equipment": "PRESS-01", "good": 2}),
    )
    .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    agent.terminate(Duration::from_secs(10));
    // Its WAL, made by the agent, is owner-only too.
    for f in std::fs::read_dir(&data).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("edge.db") && !name.contains("replaced") {
            assert_eq!(mode(&f), 0o600, "{name}");
        }
    }

    // A store made before the rule (world-readable) is tightened when it opens.
    let old = root.join("old");
    std::fs::create_dir_all(&old).unwrap();
    let old_db = old.join(edge_agent::store::DB_FILE);
    drop(edge_agent::store::open_write_connection(&old_db).unwrap());
    std::fs::set_permissions(&old_db, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(edge_agent::store::open_write_connection(&old_db).unwrap());
    assert_eq!(mode(&old_db), 0o600, "an old store after opening");
    let _ = std::fs::remove_dir_all(root);
}

/// A backup at 30 good; the site then counts 50 more, pauses (HQ sees 80), and loses its
/// disk. Restored from the backup, the order's totals come back at 80 once the repair brought
/// the record back, so a pause reports 80 + whatever was counted since, never 30.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restore_a_pause_does_not_send_hq_lower_counts() {
    let h = hq("restore-totals", &[("SITE_A", "UTC")]).await;
    let hub = h.hub(ReportSettings::default()).await;
    let ca = central_hub::pki::Ca::load_or_create(&h.state_dir).unwrap();
    let tls = h.state_dir.join("sites").join("SITE_A");
    ca.write_site_bundle(&shared_model::SiteId::new("SITE_A").unwrap(), &tls)
        .unwrap();
    let data = temp_dir("restore-totals-edge");
    let cfg = edge_config("SITE_A", &data, &hub.quic_addr.to_string(), &tls);
    let key = api_key(&data, "line");
    let agent = edge_agent::server::start(cfg.clone()).await.unwrap();
    let base = format!("http://{}", agent.http_addr);
    let http = reqwest::Client::new();
    let post = |path: String, body: serde_json::Value| {
        let (http, key) = (http.clone(), key.clone());
        async move {
            let r = send_json(http.post(path), &key, &body).await;
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let order = "SITE_A-WO-T1";
    let (s, b) = post(
        format!("{base}/api/v1/work-orders"),
        serde_json::json!({"id": order, "material": "BRACKET-7", "planned_quantity": 500}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let act = |base: String, action: &'static str| {
        post(
            format!("{base}/api/v1/work-orders/{order}/{action}"),
            serde_json::json!({}),
        )
    };
    let count = |base: String, good: u32| {
        post(
            format!("{base}/api/v1/events"),
            serde_json::json!({"type": "production_count", "equipment": "PRESS-01",
                               "work_order": order, "good": good}),
        )
    };
    let hub_good = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT good_count FROM work_orders WHERE site_id = 'SITE_A' AND id = $1",
        )
        .bind(order)
        .fetch_optional(&h.admin)
        .await
        .unwrap()
    };
    // A stretch of work: the order started or resumed, `good` counted, paused; then HQ has
    // `total`.
    let stretch = |base: String, action: &'static str, good: u32, total: i64, limit: u64| {
        let (act, count, hub_good) = (&act, &count, &hub_good);
        async move {
            assert_eq!(act(base.clone(), action).await.0, 200);
            assert_eq!(count(base.clone(), good).await.0, 201);
            assert_eq!(act(base, "pause").await.0, 200);
            let what = format!("{total} at HQ");
            wait_for(&what, Duration::from_secs(limit), || async {
                hub_good().await == Some(total)
            })
            .await;
        }
    };
    stretch(base.clone(), "start", 30, 30, 45).await;
    let backup = data
        .join("..")
        .join(format!("backup-{}.db", uuid::Uuid::now_v7().simple()));
    edge_agent::backup::backup(&data, &backup).unwrap();
    stretch(base.clone(), "resume", 50, 80, 20).await;
    agent.stop().await.unwrap();

    edge_agent::backup::restore(&data, &backup).unwrap();
    let agent = edge_agent::server::start(cfg).await.unwrap();
    let base = format!("http://{}", agent.http_addr);
    wait_for("the repair to finish", Duration::from_secs(20), || async {
        repaired(&agent).await
    })
    .await;
    // The hub's answer to the repair (the record with 80) follows the last heads page.
    let totals = move |c: &rusqlite::Connection| edge_agent::store::counts::order_totals(c, order);
    wait_for(
        "the order's good total back at 80",
        Duration::from_secs(20),
        || async { agent.state.store.read(totals).await.unwrap().0 == 80 },
    )
    .await;
    stretch(base.clone(), "resume", 5, 85, 20).await;
    agent.stop().await.unwrap();
    hub.stop().await.unwrap();
    let _ = std::fs::remove_file(backup);
    let _ = std::fs::remove_dir_all(data);
}
