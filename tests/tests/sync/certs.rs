//! Site certificates against a running hub on real PostgreSQL, over real HTTPS enrollment and
//! QUIC with mutual TLS:
//!
//! * revocation is per certificate: `site revoke` (the real binary) revokes the site's
//!   certificates and unused tokens; re-admitting the site revives none of them; a new box
//!   enrolled after that works while the stolen box's certificate stays refused;
//!   certificates from before the registry are recorded on first sight, and refused when
//!   older than the site's last revocation;
//! * `cert list` and `cert revoke SERIAL` (the real binary), and a live session cut after its
//!   certificate is revoked, with the time it took;
//! * renewal: a running edge with a 10-minute certificate and a clock moved past two thirds of
//!   its lifetime renews it over its sync session, writes it atomically and reconnects with
//!   it, without a restart and without a gap in sync; the old certificate is then refused;
//!   `doctor` names the certificate the running agent uses; the hub's expiry gauge and the
//!   once-a-minute limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use central_hub::db::sites::add_site;
use central_hub::serve::{self, ServeConfig};
use edge_agent::config::RunArgs;
use edge_agent::install::{InstallError, InstallOptions, install};
use edge_agent::sync::ProbeError;
use shared_model::SiteId;
use sqlx::PgPool;
use system_tests::edge::{enrollment_token, install_options};
use system_tests::hq::{Hq, hq, json_of, serve_config, temp_dir, text_of, wait_for};

fn hub_bin() -> PathBuf {
    system_tests::procs::workspace_bin("central-hub", "central-hub")
}

struct Hub {
    db: system_tests::pg::TestDb,
    admin: PgPool,
    state_dir: PathBuf,
    running: serve::Running,
}

async fn hub(name: &str, sites: &[&str]) -> Hub {
    hub_with(name, sites, serve::ServeOptions::default()).await
}

async fn hub_with(name: &str, sites: &[&str], options: serve::ServeOptions) -> Hub {
    let zones: Vec<(&str, &str)> = sites.iter().map(|s| (*s, "UTC")).collect();
    let Hq {
        db,
        admin,
        state_dir,
        ..
    } = hq(name, &zones).await;
    let running = serve::start_with(
        ServeConfig {
            enroll_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..serve_config(&db, &state_dir)
        },
        options,
    )
    .await
    .unwrap();
    Hub {
        db,
        admin,
        state_dir,
        running,
    }
}

impl Hub {
    async fn token(&self, site: &str) -> String {
        enrollment_token(&self.admin, &self.state_dir, site).await
    }

    fn quic(&self) -> String {
        self.running.quic_addr.to_string()
    }

    /// `central-hub ARGS --database-url OWNER`: its standard output, or its error.
    async fn cli(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = std::process::Command::new(hub_bin());
        cmd.args(args)
            .args(["--database-url", &self.db.admin_url])
            .env_remove("DATABASE_URL");
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

fn options(h: &Hub, token: String, prefix: &Path) -> InstallOptions {
    install_options(h.running.enroll_addr.unwrap().to_string(), token, prefix)
}

/// A box enrolled with a token: its TLS directory and configuration file.
async fn enroll_box(h: &Hub, site: &str, name: &str) -> (PathBuf, PathBuf) {
    let prefix = temp_dir(name);
    let done = install(&options(h, h.token(site).await, &prefix), |_, _, _| {})
        .await
        .unwrap();
    (done.layout.tls_dir(), done.layout.config_file())
}

/// One hello/welcome with the box's certificate: `Ok` when the hub admits it.
async fn session(h: &Hub, tls: &Path) -> Result<(), String> {
    match edge_agent::sync::probe(tls, &h.quic(), Duration::from_secs(10)).await {
        Ok(p) => {
            assert_eq!(p.site_id.as_str(), "SITE_A");
            Ok(())
        }
        Err(ProbeError::Refused { message, .. }) => Err(message),
        Err(other) => panic!("no answer from the hub: {other}"),
    }
}

fn serial_of(tls: &Path) -> String {
    let pem = std::fs::read_to_string(tls.join("client.crt.pem")).unwrap();
    central_hub::pki::CertFacts::from_pem(&pem).unwrap().serial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_box_stays_out_after_its_site_is_re_admitted() {
    let h = hub("certs-stolen", &["SITE_A", "SITE_B"]).await;
    let ca = central_hub::pki::Ca::load_or_create(&h.state_dir).unwrap();
    let site_a = SiteId::new("SITE_A").unwrap();

    // Box A is enrolled and syncs. A certificate from before the registry (no row: the CA
    // used directly, as an older hub did), never presented yet, lies in a drawer.
    let (tls_a, _) = enroll_box(&h, "SITE_A", "box-a").await;
    session(&h, &tls_a).await.unwrap();
    let drawer = temp_dir("drawer");
    ca.write_site_bundle(&site_a, &drawer).unwrap();
    // An old certificate of another site still works after the upgrade: recorded on sight.
    let old_b = temp_dir("old-b");
    ca.write_site_bundle(&SiteId::new("SITE_B").unwrap(), &old_b)
        .unwrap();
    let b = edge_agent::sync::probe(&old_b, &h.quic(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(b.site_id.as_str(), "SITE_B");
    let unused_token = h.token("SITE_A").await;

    // Box A is stolen: HQ revokes the site with the real binary.
    let out = h.cli(&["site", "revoke", "SITE_A"]).await.unwrap();
    assert!(
        out.contains("1 certificate(s) and 1 unused enrollment token(s)"),
        "{out}"
    );
    let refused = session(&h, &tls_a).await.unwrap_err();
    assert!(refused.contains("revoked"), "{refused}");

    // The site is re-admitted for a new box: the stolen certificate stays refused, the token
    // made before the revocation too, and so does the certificate from the drawer.
    add_site(&h.admin, &site_a, "Plant", "EU", "UTC")
        .await
        .unwrap();
    let refused = session(&h, &tls_a).await.unwrap_err();
    assert!(
        refused.contains(&serial_of(&tls_a)) && refused.contains("site revoked"),
        "{refused}"
    );
    let e = install(&options(&h, unused_token, &temp_dir("box-t")), |_, _, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&e, InstallError::Revoked { message } if message.contains("revoked with the site")),
        "{e}"
    );
    let refused = session(&h, &drawer).await.unwrap_err();
    assert!(
        refused.contains("issued before site SITE_A was revoked"),
        "{refused}"
    );

    // The new box enrolls with a new token and works; the stolen one is still out.
    let (tls_b, config_b) = enroll_box(&h, "SITE_A", "box-b").await;
    session(&h, &tls_b).await.unwrap();
    assert!(session(&h, &tls_a).await.is_err());
    assert!(session(&h, &drawer).await.is_err());

    // `cert list` shows all of it.
    let (a, b) = (serial_of(&tls_a), serial_of(&tls_b));
    let list = h.cli(&["cert", "list", "--site", "SITE_A"]).await.unwrap();
    let line = |serial: &str| {
        list.lines()
            .find(|l| l.starts_with(serial))
            .unwrap_or_else(|| panic!("{serial} not listed:\n{list}"))
            .to_owned()
    };
    assert!(line(&a).contains("revoked (site revoked)"), "{list}");
    assert!(line(&a).contains("enrollment"), "{list}");
    assert!(line(&b).contains("valid, in use"), "{list}");
    assert!(
        line(&serial_of(&drawer)).contains("revoked (issued before the site was revoked)"),
        "{list}"
    );
    assert!(!list.contains("SITE_B"), "{list}");
    let json: serde_json::Value =
        serde_json::from_str(&h.cli(&["cert", "list", "--json"]).await.unwrap()).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{json:#}");
    let legacy_b = rows.iter().find(|r| r["site_id"] == "SITE_B").unwrap();
    assert_eq!(legacy_b["source"], "legacy");
    assert_eq!(legacy_b["status"], "valid");
    assert_eq!(legacy_b["serial"], serial_of(&old_b));

    // The new box runs; revoking its certificate by serial cuts the live session.
    let (agent, _) = start_agent(&config_b).await;
    wait_for("box B connected", Duration::from_secs(20), || async {
        agent.state.connected.load(Ordering::Relaxed)
    })
    .await;
    let typed = b.to_uppercase(); // as an operator may copy it from another tool
    let revoked_at = Instant::now();
    let out = h.cli(&["cert", "revoke", &typed]).await.unwrap();
    assert!(
        out.contains(&format!("certificate {b} of SITE_A revoked")),
        "{out}"
    );
    wait_for("box B cut off", Duration::from_secs(15), || async {
        !agent.state.connected.load(Ordering::Relaxed)
    })
    .await;
    let cut = revoked_at.elapsed();
    println!("FIGURE revoked_session_cut_ms {}", cut.as_millis());
    assert!(cut < Duration::from_secs(8), "cut after {cut:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !agent.state.connected.load(Ordering::Relaxed),
        "a revoked certificate reconnected"
    );
    agent.stop().await.unwrap();
    let refused = session(&h, &tls_b).await.unwrap_err();
    assert!(refused.contains("revoked by an operator"), "{refused}");
    // Revoking again changes nothing; an unknown or malformed serial is an error in words.
    let out = h.cli(&["cert", "revoke", &b]).await.unwrap();
    assert!(out.contains("already revoked"), "{out}");
    let e = h.cli(&["cert", "revoke", "abcdef"]).await.unwrap_err();
    assert!(e.contains("no certificate with serial abcdef"), "{e}");
    let e = h.cli(&["cert", "revoke", "not-hex"]).await.unwrap_err();
    assert!(e.contains("is not a serial number"), "{e}");
    // Nothing of the other site was touched.
    let b_again = edge_agent::sync::probe(&old_b, &h.quic(), Duration::from_secs(10)).await;
    assert!(b_again.is_ok(), "{b_again:?}");
    h.running.stop().await.unwrap();
}

/// The agent as systemd starts it, from the configuration install wrote.
async fn start_agent(config: &Path) -> (edge_agent::server::Running, PathBuf) {
    let cfg = RunArgs {
        config: Some(config.to_owned()),
        ..RunArgs::default()
    }
    .resolve()
    .unwrap();
    let data_dir = cfg.data_dir.clone();
    (edge_agent::server::start(cfg).await.unwrap(), data_dir)
}

/// The agent's clock: the system's, moved by an offset the test sets.
#[derive(Debug, Default)]
struct MovedClock {
    offset_micros: std::sync::atomic::AtomicI64,
}

impl edge_agent::api::Clock for MovedClock {
    fn now(&self) -> shared_model::Timestamp {
        edge_agent::api::SystemClock
            .now()
            .saturating_add_micros(self.offset_micros.load(Ordering::Relaxed))
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_edge_renews_its_certificate_without_a_restart_or_a_gap() {
    const LIFETIME: Duration = Duration::from_secs(600);
    let h = hub_with(
        "certs-renew",
        &["SITE_A"],
        serve::ServeOptions {
            site_cert_validity: LIFETIME,
        },
    )
    .await;
    let (tls, config) = enroll_box(&h, "SITE_A", "box-renew").await;
    let a = edge_agent::identity::load(&tls).unwrap().info;
    assert_eq!(
        a.not_after - a.not_before,
        660,
        "ten minutes, backdated one"
    );
    // A copy of the certificate as it was: a thief's, or a backup's.
    let old = temp_dir("old-tls");
    for f in ["ca.crt.pem", "client.crt.pem", "client.key.pem"] {
        std::fs::copy(tls.join(f), old.join(f)).unwrap();
    }

    // The agent runs with a clock the test moves; a writer posts an event every 50 ms.
    let cfg = RunArgs {
        config: Some(config.clone()),
        ..RunArgs::default()
    }
    .resolve()
    .unwrap();
    let key = {
        let mut conn = edge_agent::store::open_write_connection(
            &cfg.data_dir.join(edge_agent::store::DB_FILE),
        )
        .unwrap();
        let md: edge_agent::master::MasterFile =
            serde_json::from_str(system_tests::edge::MASTER).unwrap();
        edge_agent::master::import(&mut conn, &md.into_records()).unwrap();
        edge_agent::store::keys::create(&conn, "test", 0).unwrap()
    };
    let clock = std::sync::Arc::new(MovedClock::default());
    let agent = edge_agent::server::start_with_clock(cfg.clone(), clock.clone())
        .await
        .unwrap();
    wait_for("the agent connected", Duration::from_secs(20), || async {
        agent.state.connected.load(Ordering::Relaxed)
    })
    .await;
    assert_eq!(agent.state.certificate().unwrap().serial, a.serial);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, url, key) = (
            stop.clone(),
            format!("http://{}/api/v1/events", agent.http_addr),
            key.clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut posted = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&serde_json::json!({"events": [
                        {"type": "production_count", "equipment": "PRESS-01", "good": 1}
                    ]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                posted += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            posted
        })
    };

    // Nothing happens before two thirds of the lifetime. The certificate must be 20 s old
    // before the clock moves, so that the renewed one is not due at once on the moved clock.
    tokio::time::sleep(Duration::from_secs(
        (a.not_before + 60 + 20 - unix_now()).clamp(0, 30) as u64,
    ))
    .await;
    assert_eq!(agent.state.certificate().unwrap().serial, a.serial);
    // The clock moves just past two thirds of the lifetime.
    let offset = a.renew_at() - unix_now() + 1;
    clock
        .offset_micros
        .store(offset * 1_000_000, Ordering::Relaxed);
    let moved = Instant::now();
    let moved_at = time::OffsetDateTime::now_utc();
    let b = wait_for_value(
        "the renewed certificate in use",
        Duration::from_secs(20),
        || {
            let c = agent.state.certificate().unwrap();
            (c.serial != a.serial && agent.state.connected.load(Ordering::Relaxed)).then_some(c)
        },
    )
    .await;
    let renewed_in = moved.elapsed();
    // Back to the real time before the renewed certificate would be due on the moved clock.
    clock.offset_micros.store(0, Ordering::Relaxed);
    println!(
        "FIGURE renewal_to_reconnected_ms {}",
        renewed_in.as_millis()
    );
    assert_eq!(b.common_name, "SITE_A");
    assert_eq!(b.not_after - b.not_before, 660);
    // Written atomically: the files are the new pair, the key private, nothing left over.
    let on_disk = edge_agent::identity::load(&tls).unwrap();
    assert_eq!(on_disk.info, b);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tls.join("client.key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(&tls)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".new"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Sync goes on: a few more seconds of events, then every one of them is at the hub once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let posted = writer.await.unwrap();
    wait_for(
        "every event at the hub",
        Duration::from_secs(20),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE site_id = 'SITE_A'")
                .fetch_one(&h.admin)
                .await
                .unwrap()
                == posted as i64
        },
    )
    .await;
    let arrivals: Vec<time::OffsetDateTime> = sqlx::query_scalar(
        "SELECT received_at FROM events WHERE site_id = 'SITE_A' ORDER BY received_at",
    )
    .fetch_all(&h.admin)
    .await
    .unwrap();
    let longest = |from: usize, to: usize| {
        arrivals[from..to]
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    };
    let before = arrivals.partition_point(|t| *t < moved_at);
    let (steady, gap) = (longest(0, before), longest(0, arrivals.len()));
    println!(
        "FIGURE renewal_longest_arrival_gap_ms {} (before the renewal: {}; {} events, one posted every 50 ms)",
        gap.whole_milliseconds(),
        steady.whole_milliseconds(),
        arrivals.len()
    );
    assert!(
        gap < time::Duration::milliseconds(1_000),
        "events stopped arriving for {gap} around the renewal"
    );
    // One renewal, in this process: no restart, no second attempt.
    assert_eq!(agent.state.certificate_renewals.load(Ordering::Relaxed), 1);

    // The hub recorded it, the first session with it revoked the old one, which is refused.
    let (source, from, used): (String, Option<String>, bool) = sqlx::query_as(
        "SELECT source, renewed_from, first_used_at IS NOT NULL FROM certificates WHERE serial = $1",
    )
    .bind(&b.serial)
    .fetch_one(&h.admin)
    .await
    .unwrap();
    assert_eq!(
        (source.as_str(), from.as_deref(), used),
        ("renewal", Some(a.serial.as_str()), true)
    );
    let refused = session(&h, &old).await.unwrap_err();
    assert!(
        refused.contains(&format!("superseded by {}", b.serial)),
        "{refused}"
    );
    session(&h, &tls).await.unwrap();

    // Doctor names the certificate the running agent uses, and its expiry.
    let checks = edge_agent::doctor::run(&config, 0).await;
    let cert_check = checks.iter().find(|c| c.name == "certificate").unwrap();
    assert!(
        cert_check
            .detail
            .contains(&format!("the running agent uses certificate {}", b.serial)),
        "{}",
        edge_agent::doctor::render(&checks)
    );
    // Ten minutes is well within the 30 days doctor warns about.
    assert_eq!(cert_check.status, edge_agent::doctor::Status::Fail);
    // The agent's own status and metrics say the same.
    let http = reqwest::Client::new();
    let status: serde_json::Value = json_of(
        http.get(format!("http://{}/api/v1/sync/status", agent.http_addr))
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(
        status["certificate"]["serial"],
        b.serial.as_str(),
        "{status}"
    );
    let edge_metrics = text_of(
        http.get(format!("http://{}/metrics", agent.http_addr))
            .bearer_auth(&key),
    )
    .await;
    assert!(
        edge_metrics.contains("edge_sync_certificate_renewals_total 1\n")
            && edge_metrics.contains("edge_sync_certificate_expiry_seconds "),
        "{edge_metrics}"
    );

    // The hub's gauge: seconds until the site's last valid certificate expires, which the
    // alert compares with 30 days.
    let metrics = reqwest::get(format!("http://{}/metrics", h.running.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expiry: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mes_site_certificate_expiry_seconds{site=\"SITE_A\"} "))
        .unwrap_or_else(|| panic!("no expiry gauge for SITE_A\n{metrics}"))
        .parse()
        .unwrap();
    let left = (b.not_after - unix_now()) as f64;
    assert!(
        (expiry - left).abs() < 60.0 && expiry < 30.0 * 86_400.0,
        "{expiry} s, expected about {left}"
    );
    assert!(
        metrics.contains("mes_sync_certificates_renewed_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mes_sync_certificate_renewals_refused_total 0\n"),
        "{metrics}"
    );

    // A second renewal of the site within a minute is refused, whatever the CSR.
    let hub_pool = central_hub::db::connect(&h.db.hub_url).await.unwrap();
    let ca = central_hub::pki::Ca::load_or_create(&h.state_dir)
        .unwrap()
        .with_site_validity(LIFETIME);
    let (_, csr) = edge_agent::identity::new_key_and_csr().unwrap();
    let presented = central_hub::pki::CertFacts::from_pem(
        &std::fs::read_to_string(tls.join("client.crt.pem")).unwrap(),
    )
    .unwrap();
    let site = SiteId::new("SITE_A").unwrap();
    match central_hub::certs::renew(&hub_pool, &ca, &site, &presented, &csr).await {
        sync_protocol::message::RenewOutcome::Refused { message } => {
            assert!(
                message.contains("at most one renewal every 60 s"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    agent.stop().await.unwrap();
    h.running.stop().await.unwrap();
}

/// Polls `f` until it gives a value.
async fn wait_for_value<T>(what: &str, limit: Duration, f: impl Fn() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
