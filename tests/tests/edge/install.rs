//! The field installer against a running hub on real PostgreSQL, over real HTTPS and QUIC:
//!
//! * a full install into a temporary prefix (files, modes, the systemd unit), a re-run that
//!   keeps the enrollment, and the agent started from the written configuration syncing
//!   events to the hub;
//! * every failure a field engineer can meet, each with its own words: a wrong, a reused and
//!   an expired token, a token from another hub (pin mismatch), an unreachable hub, UDP
//!   blocked while HTTPS works, a revoked site, a clock too far off, too little disk;
//! * `doctor` passing on the fresh install, then failing on an injected clock skew, a hub
//!   that does not answer, and a revoked certificate;
//! * a restore from a backup taken before 1,000 further events: the edge and the hub end with
//!   the same records and no event twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use central_hub::serve::{self, ServeConfig};
use edge_agent::config::RunArgs;
use edge_agent::doctor::{self, Status};
use edge_agent::install::{InstallError, InstallOptions, install};
use sqlx::PgPool;
use system_tests::edge::{api_key, enrollment_token, install_options, order_at, repaired};
use system_tests::hq::{Hq, hq, serve_config, temp_dir, wait_for};
use system_tests::requests::{count_batch, send_json, session_cookie};

fn edge_agent_bin() -> PathBuf {
    system_tests::procs::workspace_bin("edge-agent", "edge-agent")
}

struct Hub {
    db: system_tests::pg::TestDb,
    admin: PgPool,
    state_dir: PathBuf,
    running: Option<serve::Running>,
}

async fn hub(name: &str) -> Hub {
    let Hq {
        db,
        admin,
        state_dir,
        ..
    } = hq(
        name,
        &[("SITE_A", "UTC"), ("SITE_B", "UTC"), ("SITE_C", "UTC")],
    )
    .await;
    let mut h = Hub {
        db,
        admin,
        state_dir,
        running: None,
    };
    h.start("127.0.0.1:0").await;
    h
}

impl Hub {
    async fn start(&mut self, quic: &str) {
        self.running = Some(
            serve::start(ServeConfig {
                quic_listen: quic.parse().unwrap(),
                enroll_listen: Some("127.0.0.1:0".parse().unwrap()),
                ..serve_config(&self.db, &self.state_dir)
            })
            .await
            .unwrap(),
        );
    }

    fn running(&self) -> &serve::Running {
        self.running.as_ref().unwrap()
    }

    fn enroll_addr(&self) -> String {
        self.running().enroll_addr.unwrap().to_string()
    }

    async fn token(&self, site: &str) -> String {
        enrollment_token(&self.admin, &self.state_dir, site).await
    }

    async fn events(&self, site: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE site_id = $1")
            .bind(site)
            .fetch_one(&self.admin)
            .await
            .unwrap()
    }

    async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }
}

fn options(h: &Hub, token: String, prefix: &Path) -> InstallOptions {
    install_options(h.enroll_addr(), token, prefix)
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Posts `n` production counts through the agent's API with a fresh key.
async fn post_counts(agent: &edge_agent::server::Running, data_dir: &Path, n: usize) {
    let key = api_key(data_dir, "test");
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/v1/events", agent.http_addr);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let r = send_json(http.post(&url), &key, &count_batch(chunk.len())).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
}

/// The agent as `systemd` would start it: from the written configuration, plus the master
/// data a production count refers to.
async fn start_installed(config: &Path) -> (edge_agent::server::Running, PathBuf) {
    let cfg = RunArgs {
        config: Some(config.to_owned()),
        ..RunArgs::default()
    }
    .resolve()
    .unwrap();
    let data_dir = cfg.data_dir.clone();
    {
        let mut conn =
            edge_agent::store::open_write_connection(&data_dir.join(edge_agent::store::DB_FILE))
                .unwrap();
        let md: edge_agent::master::MasterFile = serde_json::from_str(
            r#"{"equipment": [{"id": "PRESS-01", "parent": "PLANT", "level": "work_unit", "name": "Press", "class": "press"}],
                "materials": [{"id": "BRACKET-7", "name": "Bracket", "unit": "pcs", "tracking": "lot"}]}"#,
        )
        .unwrap();
        edge_agent::master::import(&mut conn, &md.into_records()).unwrap();
    }
    (edge_agent::server::start(cfg).await.unwrap(), data_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_enrolls_writes_a_service_and_the_agent_syncs() {
    let mut h = hub("install-ok").await;
    let prefix = temp_dir("prefix-ok");
    let token = h.token("SITE_A").await;
    let mut steps = Vec::new();
    let done = install(&options(&h, token.clone(), &prefix), |n, total, what| {
        steps.push(format!("[{n}/{total}] {what}"));
    })
    .await
    .unwrap();
    assert_eq!(done.site, "SITE_A");
    assert!(done.enrolled_now);
    assert!(!done.started, "never started under a prefix");
    assert!(
        done.start_hint.contains("run --config"),
        "{}",
        done.start_hint
    );
    assert_eq!(steps.len(), 9, "{steps:?}");
    let l = &done.layout;
    for f in [
        l.config_file(),
        l.unit_file(),
        l.tls_dir().join("ca.crt.pem"),
        l.tls_dir().join("client.crt.pem"),
    ] {
        assert!(f.exists(), "{} missing", f.display());
    }
    assert!(l.data_dir().is_dir());
    #[cfg(unix)]
    assert_eq!(mode(&l.tls_dir().join("client.key.pem")), 0o600);
    let unit = std::fs::read_to_string(l.unit_file()).unwrap();
    for line in [
        "Restart=on-failure",
        "User=mes-edge",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        &format!("ReadWritePaths={}", l.data_dir().display()),
        &format!("run --config {}", l.config_file().display()),
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}:\n{unit}");
    }
    // The token is spent (stored as a hash, with who used it).
    let (used, by): (bool, Option<String>) =
        sqlx::query_as("SELECT used_at IS NOT NULL, used_by FROM enroll_tokens")
            .fetch_one(&h.admin)
            .await
            .unwrap();
    assert!(used && by.unwrap().contains("edge-agent"));
    let stored: Vec<u8> = sqlx::query_scalar("SELECT hash FROM enroll_tokens")
        .fetch_one(&h.admin)
        .await
        .unwrap();
    assert!(!token.contains(&sync_protocol::enroll::hex(&stored)));

    // Re-running is safe: the enrollment is kept, the token is not needed again.
    let again = install(&options(&h, token, &prefix), |_, _, _| {})
        .await
        .unwrap();
    assert!(!again.enrolled_now);

    // Doctor is happy with a fresh installation.
    let checks = doctor::run(&l.config_file(), 0).await;
    assert!(doctor::all_passed(&checks), "{}", doctor::render(&checks));

    // The agent, started from what install wrote, syncs.
    let (agent, data_dir) = start_installed(&l.config_file()).await;
    post_counts(&agent, &data_dir, 25).await;
    wait_for("the events at the hub", Duration::from_secs(20), || async {
        h.events("SITE_A").await == 25
    })
    .await;
    agent.stop().await.unwrap();
    h.stop().await;
    let _ = std::fs::remove_dir_all(prefix);
}

fn central_hub_bin() -> PathBuf {
    system_tests::procs::workspace_bin("central-hub", "central-hub")
}

/// Runs the real `central-hub` binary; its standard output, or a failure with its words.
async fn central_hub(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(central_hub_bin())
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "central-hub failed: {stdout}\n{stderr}"
    );
    stdout
}

/// The order a new plant is brought in: HQ imports master data, then adds the site, then the
/// box enrolls. The new site's edge gets every material, machine, reason code and person on
/// its first session (none of it was sent to the site before it existed), so a badge logs in
/// at the terminal and its count is accepted and reaches the hub. The same for a site
/// re-admitted after a revocation, which uploads skipped meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_added_after_master_data_gets_it_on_its_first_session() {
    let mut h = hub("install-late-md").await;
    let admin_url = h.db.admin_url.clone();
    let dir = temp_dir("late-md");
    let md = dir.join("master-data.json");
    std::fs::write(
        &md,
        r#"{"materials": [{"id": "BRACKET-7", "name": "Bracket", "unit": "pcs", "tracking": "lot"}],
            "reason_codes": [{"code": "DOWN", "parent": null, "name": "Stop", "loss_category": "unplanned", "counts_against_availability": true}],
            "equipment": [{"id": "PRESS-01", "parent": "SITE_D", "level": "work_unit", "name": "Press 1", "class": "press"}],
            "personnel": [{"badge": "D-100", "site_id": "SITE_D", "name": "Dora", "role": "operator"},
                          {"badge": "A-100", "site_id": "SITE_A", "name": "Ada", "role": "operator"}]}"#,
    )
    .unwrap();
    let out = central_hub(vec![
        "import-master-data".into(),
        md.display().to_string(),
        "--database-url".into(),
        admin_url.clone(),
    ])
    .await;
    assert!(out.contains("5 records stored"), "{out}");
    let out = central_hub(vec![
        "site".into(),
        "add".into(),
        "SITE_D".into(),
        "--name".into(),
        "Plant D".into(),
        "--region".into(),
        "EU".into(),
        "--database-url".into(),
        admin_url.clone(),
        "--state-dir".into(),
        h.state_dir.display().to_string(),
    ])
    .await;
    // Materials, reason code, equipment and D's own person; not A's person.
    assert!(out.contains("4 master data records queued"), "{out}");

    let prefix = temp_dir("prefix-late-md");
    let token = h.token("SITE_D").await;
    let done = install(&options(&h, token, &prefix), |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(done.site, "SITE_D");
    // Started from what install wrote, with no master data of its own.
    let cfg = RunArgs {
        config: Some(done.layout.config_file()),
        ..RunArgs::default()
    }
    .resolve()
    .unwrap();
    let agent = edge_agent::server::start(cfg).await.unwrap();
    let base = format!("http://{}", agent.http_addr);
    let http = reqwest::Client::new();
    // The master data arrives with the first session; until then the badge is unknown.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let cookie = loop {
        let r = http
            .post(format!("{base}/api/v1/session"))
            .json(&serde_json::json!({ "badge": "D-100" }))
            .send()
            .await
            .unwrap();
        if r.status() == 201 {
            break session_cookie(&r);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the badge never logged in at the new site's terminal: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let r = http
        .post(format!("{base}/api/v1/events"))
        .header("cookie", &cookie)
        .header("x-mes-terminal", "1")
        .json(
            &serde_json::json!({"type": "production_count", "equipment": "PRESS-01",
                                  "work_order": null, "good": 3}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    wait_for("D's count at the hub", Duration::from_secs(20), || async {
        h.events("SITE_D").await == 1
    })
    .await;
    // Another site's person never reached this edge.
    let people: Vec<String> = agent
        .state
        .store
        .read(|c| {
            let mut s = c.prepare("SELECT key FROM master WHERE kind = 'personnel'")?;
            let keys = s.query_map([], |r| r.get::<_, String>(0))?;
            Ok(keys.collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .unwrap();
    assert_eq!(people, vec!["SITE_D/D-100".to_owned()]);
    agent.stop().await.unwrap();

    // Re-admission: SITE_C is revoked, a person for it is uploaded meanwhile (uploads skip
    // revoked sites), and `site add` again queues the whole current master data for it.
    let down = |site: &'static str| {
        let admin = h.admin.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM down_log WHERE site_id = $1")
                .bind(site)
                .fetch_one(&admin)
                .await
                .unwrap()
        }
    };
    central_hub(vec![
        "site".into(),
        "revoke".into(),
        "SITE_C".into(),
        "--database-url".into(),
        admin_url.clone(),
    ])
    .await;
    std::fs::write(
        &md,
        r#"{"personnel": [{"badge": "C-100", "site_id": "SITE_C", "name": "Cem", "role": "operator"}]}"#,
    )
    .unwrap();
    central_hub(vec![
        "import-master-data".into(),
        md.display().to_string(),
        "--database-url".into(),
        admin_url.clone(),
    ])
    .await;
    let before = down("SITE_C").await;
    let readmit = vec![
        "site".into(),
        "add".into(),
        "SITE_C".into(),
        "--name".into(),
        "Plant C".into(),
        "--region".into(),
        "EU".into(),
        "--database-url".into(),
        admin_url.clone(),
        "--state-dir".into(),
        h.state_dir.display().to_string(),
    ];
    let out = central_hub(readmit.clone()).await;
    assert!(out.contains("4 master data records queued"), "{out}");
    assert_eq!(down("SITE_C").await, before + 4);
    // A rename of an active site queues nothing again.
    let out = central_hub(readmit).await;
    assert!(!out.contains("queued"), "{out}");
    assert_eq!(down("SITE_C").await, before + 4);
    h.stop().await;
    let _ = std::fs::remove_dir_all(prefix);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_install_failure_is_told_in_words() {
    let mut h = hub("install-errors").await;
    // Each case runs the real binary: its words on stderr and exit status 1; the library's
    // error must say the same.
    async fn fails(o: InstallOptions) -> String {
        let prefix = o.prefix.clone();
        let e: InstallError = install(&o, |_, _, _| {}).await.unwrap_err();
        let mut cmd = std::process::Command::new(edge_agent_bin());
        cmd.args([
            "install",
            "--hub",
            &o.hub,
            "--token",
            &o.token,
            "--no-start",
        ])
        .arg("--prefix")
        .arg(&prefix)
        .args(["--http-listen", &o.http_listen.to_string()])
        .args([
            "--min-free-mb",
            &(o.min_free_bytes >> 20).max(1).to_string(),
        ])
        .env(
            "EDGE_CLOCK_SKEW_SECS",
            (o.clock_offset_micros / 1_000_000).to_string(),
        )
        .env_remove("EDGE_ENROLL_TOKEN");
        if let Some(q) = &o.hub_quic {
            cmd.args(["--hub-quic", q]);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        // Figures may differ between the two runs (free disk space moves): compare words.
        let words = |s: &str| -> String {
            let mut out = String::new();
            for c in s.chars() {
                if c.is_ascii_digit() {
                    if !out.ends_with('#') {
                        out.push('#');
                    }
                } else {
                    out.push(c);
                }
            }
            out
        };
        assert!(
            words(&stderr).contains(&words(&format!("error: {e}"))),
            "the binary says\n{stderr}\nthe library says\n{e}"
        );
        let _ = std::fs::remove_dir_all(prefix);
        e.to_string()
    }
    let p = |n: &str| temp_dir(&format!("prefix-{n}"));

    // Not a token at all.
    let m = fails(options(&h, "hello".into(), &p("format"))).await;
    assert!(m.contains("not an enrollment token"), "{m}");
    // A well-formed token this hub never issued.
    let real = h.token("SITE_A").await;
    let parsed = sync_protocol::enroll::EnrollToken::parse(&real).unwrap();
    let forged = sync_protocol::enroll::EnrollToken {
        secret: "0123456789abcdef0123456789abcdef".into(),
        ca_fingerprint: parsed.ca_fingerprint,
    };
    let m = fails(options(&h, forged.to_string(), &p("wrong"))).await;
    assert!(m.contains("did not issue that token"), "{m}");
    // A token made for another hub (its CA): caught before the token is sent.
    let other = sync_protocol::enroll::EnrollToken {
        ca_fingerprint: [7; 32],
        ..parsed.clone()
    };
    let m = fails(options(&h, other.to_string(), &p("pin"))).await;
    assert!(m.contains("not the hub this token was made for"), "{m}");
    // Used twice.
    install(&options(&h, real.clone(), &p("first")), |_, _, _| {})
        .await
        .unwrap();
    let m = fails(options(&h, real, &p("reused"))).await;
    assert!(m.contains("already used"), "{m}");
    // Expired.
    let t = h.token("SITE_B").await;
    sqlx::query(
        "UPDATE enroll_tokens SET expires_at = now() - interval '1 minute' WHERE used_at IS NULL",
    )
    .execute(&h.admin)
    .await
    .unwrap();
    let m = fails(options(&h, t, &p("expired"))).await;
    assert!(m.contains("expired"), "{m}");
    // The hub's address is wrong or down.
    let t = h.token("SITE_B").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut o = options(&h, t.clone(), &p("unreachable"));
    o.hub = closed.to_string();
    let m = fails(o).await;
    assert!(
        m.contains("cannot reach the hub") && m.contains("connection refused"),
        "{m}"
    );
    // HTTPS works, UDP does not: nothing answers on the QUIC port.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut o = options(&h, t.clone(), &p("udp"));
    o.hub_quic = Some(udp.local_addr().unwrap().to_string());
    let m = fails(o).await;
    drop(udp);
    assert!(
        m.contains("UDP") && m.contains("the token was not used"),
        "{m}"
    );
    // A clock an hour ahead.
    let mut o = options(&h, t.clone(), &p("clock"));
    o.clock_offset_micros = 3_600_000_000;
    let m = fails(o).await;
    assert!(m.contains("clock is 3600 s ahead of the hub's"), "{m}");
    // Too little disk (more than any test machine has free).
    let mut o = options(&h, t.clone(), &p("disk"));
    o.min_free_bytes = u64::MAX / 2;
    let m = fails(o).await;
    assert!(
        m.contains("MB are free") && m.contains("larger disk"),
        "{m}"
    );
    // None of those spent the token: it still enrolls.
    install(&options(&h, t, &p("after")), |_, _, _| {})
        .await
        .unwrap();
    // A revoked site.
    let t = h.token("SITE_C").await;
    sqlx::query("UPDATE sites SET revoked_at = now() WHERE site_id = 'SITE_C'")
        .execute(&h.admin)
        .await
        .unwrap();
    let m = fails(options(&h, t, &p("revoked"))).await;
    assert!(m.contains("SITE_C is revoked"), "{m}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_clock_skew_an_unreachable_hub_and_a_revoked_certificate() {
    let mut h = hub("doctor").await;
    let prefix = temp_dir("prefix-doctor");
    let done = install(&options(&h, h.token("SITE_A").await, &prefix), |_, _, _| {})
        .await
        .unwrap();
    let config = done.layout.config_file();
    let status = |checks: &[doctor::Check], name: &str| {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} check"))
            .clone()
    };
    let checks = doctor::run(&config, 0).await;
    assert!(doctor::all_passed(&checks), "{}", doctor::render(&checks));

    // The box's clock 10 minutes behind.
    let checks = doctor::run(&config, -600_000_000).await;
    let clock = status(&checks, "clock");
    assert_eq!(clock.status, Status::Fail, "{}", doctor::render(&checks));
    assert!(clock.detail.contains("behind") && clock.remedy.unwrap().contains("timedatectl"));

    // The hub is down. `stop` gives the QUIC endpoint 10 s to drain; a connection the earlier
    // probes left behind can keep its socket refusing (rather than ignoring) new connections
    // until the 30 s idle timeout, so the check is repeated until nothing answers.
    let quic = h.running().quic_addr.to_string();
    h.stop().await;
    let down_since = std::time::Instant::now();
    let checks = loop {
        let checks = doctor::run(&config, 0).await;
        let hub_check = status(&checks, "hub");
        assert_eq!(
            hub_check.status,
            Status::Fail,
            "{}",
            doctor::render(&checks)
        );
        if hub_check.remedy.is_some_and(|r| r.contains("UDP port")) {
            break checks;
        }
        assert!(
            down_since.elapsed() < std::time::Duration::from_secs(45),
            "the stopped hub still answers after 45 s: {}",
            doctor::render(&checks)
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    assert_eq!(status(&checks, "clock").status, Status::Skip);
    assert!(!doctor::all_passed(&checks));

    // Back, but the site is revoked.
    h.start(&quic).await;
    sqlx::query("UPDATE sites SET revoked_at = now() WHERE site_id = 'SITE_A'")
        .execute(&h.admin)
        .await
        .unwrap();
    let checks = doctor::run(&config, 0).await;
    let hub_check = status(&checks, "hub");
    assert_eq!(
        hub_check.status,
        Status::Fail,
        "{}",
        doctor::render(&checks)
    );
    assert!(
        hub_check.remedy.unwrap().contains("revoked"),
        "{}",
        doctor::render(&checks)
    );
    // The other checks still pass, and JSON carries the same.
    for name in ["config", "certificate", "disk", "database"] {
        assert_eq!(
            status(&checks, name).status,
            Status::Pass,
            "{}",
            doctor::render(&checks)
        );
    }
    // The agent never ran here, so there is no outbox to look at yet.
    assert_eq!(status(&checks, "outbox").status, Status::Skip);
    let json = serde_json::to_value(&checks).unwrap();
    assert_eq!(json[2]["name"], "hub");
    assert_eq!(json[2]["status"], "fail");
    h.stop().await;
    let _ = std::fs::remove_dir_all(prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_an_old_backup_converges_without_duplicates() {
    let mut h = hub("restore").await;
    let prefix = temp_dir("prefix-restore");
    let done = install(&options(&h, h.token("SITE_A").await, &prefix), |_, _, _| {})
        .await
        .unwrap();
    let (agent, data_dir) = start_installed(&done.layout.config_file()).await;
    post_counts(&agent, &data_dir, 100).await;
    wait_for("100 events at the hub", Duration::from_secs(20), || async {
        h.events("SITE_A").await == 100
    })
    .await;
    // A shared record, synced before the backup.
    let key = api_key(&data_dir, "orders");
    let http = reqwest::Client::new();
    let edge_url = format!("http://{}", agent.http_addr);
    let r = send_json(
        http.post(format!("{edge_url}/api/v1/work-orders")),
        &key,
        &serde_json::json!({"id": "SITE_A-WO-R1", "material": "BRACKET-7", "planned_quantity": 10}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let hub_state = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT state FROM work_orders WHERE site_id = 'SITE_A' AND id = 'SITE_A-WO-R1'",
        )
        .fetch_optional(&h.admin)
        .await
        .unwrap()
    };
    wait_for("the order at the hub", Duration::from_secs(20), || async {
        hub_state().await.is_some()
    })
    .await;
    let backup = prefix.join("backup.db");
    let c = edge_agent::backup::backup(&data_dir, &backup).unwrap();
    assert_eq!(c.events, 100);
    // A backup never overwrites.
    assert!(edge_agent::backup::backup(&data_dir, &backup).is_err());
    // Restoring while the agent runs is refused in words.
    let e = edge_agent::backup::restore(&data_dir, &backup).unwrap_err();
    assert!(e.to_string().contains("stop it first"), "{e}");

    // After the backup: the site starts the order, HQ re-prioritises it, and 1,000 further
    // events reach the hub.
    let r = http
        .post(format!("{edge_url}/api/v1/work-orders/SITE_A-WO-R1/start"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hq = central_hub::api::create_token(&h.admin, "hq", "hq:write", None)
        .await
        .unwrap();
    let r = http
        .patch(format!(
            "http://{}/api/v1/work-orders/SITE_A-WO-R1",
            h.running().http_addr
        ))
        .bearer_auth(&hq)
        .json(&serde_json::json!({"priority": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    wait_for("the start at the hub", Duration::from_secs(20), || async {
        hub_state().await.as_deref() == Some("running")
    })
    .await;
    post_counts(&agent, &data_dir, 1000).await;
    wait_for(
        "1,100 events at the hub",
        Duration::from_secs(30),
        || async { h.events("SITE_A").await == 1100 },
    )
    .await;
    agent.stop().await.unwrap();

    // The box's disk is replaced by the old backup.
    let (restored, kept) = edge_agent::backup::restore(&data_dir, &backup).unwrap();
    assert_eq!(restored.events, 100);
    assert!(kept.is_some());
    let (agent, _) = start_installed(&done.layout.config_file()).await;
    wait_for("the repair to finish", Duration::from_secs(20), || async {
        repaired(&agent).await && agent.state.store.pending().await.unwrap().events == 0
    })
    .await;
    // The record converged: the site's own start (lost with the disk) came back from the
    // hub, HQ's priority too, and both copies have the same Automerge heads.
    wait_for(
        "the order back to running with HQ's priority",
        Duration::from_secs(20),
        || async {
            let o = order_at(&agent, "SITE_A-WO-R1").await.unwrap();
            o.order.state == shared_model::work_order::WorkOrderState::Running
                && o.order.priority == 1
        },
    )
    .await;
    let edge_heads = agent
        .state
        .store
        .read(|c| edge_agent::records::heads_page(c, None, 100))
        .await
        .unwrap();
    let hub_doc: Vec<u8> = sqlx::query_scalar(
        "SELECT doc FROM records WHERE site_id = 'SITE_A' AND record_id = 'SITE_A-WO-R1'",
    )
    .fetch_one(&h.admin)
    .await
    .unwrap();
    let mut hub_doc = automerge::AutoCommit::load(&hub_doc).unwrap();
    let mut hub_heads: Vec<[u8; 32]> = hub_doc.get_heads().into_iter().map(|x| x.0).collect();
    let mut heads = edge_heads[0].heads.clone();
    hub_heads.sort();
    heads.sort();
    assert_eq!(edge_heads.len(), 1);
    assert_eq!(heads, hub_heads, "edge and hub hold different histories");

    // New events after the restore sync as usual; nothing is there twice.
    post_counts(&agent, &data_dir, 10).await;
    wait_for(
        "1,110 events at the hub",
        Duration::from_secs(20),
        || async { h.events("SITE_A").await == 1110 },
    )
    .await;
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM events")
        .fetch_one(&h.admin)
        .await
        .unwrap();
    assert_eq!(distinct, 1110);
    agent.stop().await.unwrap();
    h.stop().await;
    let _ = std::fs::remove_dir_all(prefix);
}
