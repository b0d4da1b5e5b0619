//! Site certificates against a running hub on real PostgreSQL, over real HTTPS enrollment and
//! QUIC with mutual TLS:
//!
//! * revocation is per certificate: `site revoke` (the real binary) revokes the site's
//!   certificates and unused tokens; re-admitting the site revives none of them; a new box
//!   enrolled after that works while the stolen box's certificate stays refused;
//!   certificates from before the registry are recorded on first sight, and refused when
//!   older than the site's last revocation;
//! * `cert list` and `cert revoke SERIAL` (the real binary), and a live session cut after its
//!   certificate is revoked, with the time it took.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use central_hub::db::store::add_site;
use central_hub::serve::{self, ServeConfig};
use edge_agent::config::RunArgs;
use edge_agent::install::{InstallError, InstallOptions, install};
use edge_agent::sync::ProbeError;
use shared_model::SiteId;
use sqlx::PgPool;
use system_tests::hq::{init, temp_dir, wait_for};
use system_tests::pg::server;

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
    init();
    let db = server().await.fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url).await.unwrap();
    for s in sites {
        add_site(&admin, &SiteId::new(*s).unwrap(), "Plant", "EU", "UTC")
            .await
            .unwrap();
    }
    let state_dir = temp_dir(name);
    let running = serve::start(ServeConfig {
        db: Default::default(),
        database_url: db.hub_url.clone(),
        read_database_url: Some(db.reporting_url.clone()),
        quic_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: state_dir.clone(),
        server_names: vec!["127.0.0.1".into()],
        enroll_listen: Some("127.0.0.1:0".parse().unwrap()),
        reports: Default::default(),
    })
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
        let ca = central_hub::pki::Ca::load_or_create(&self.state_dir).unwrap();
        central_hub::enroll::create_token(
            &self.admin,
            &ca,
            &SiteId::new(site).unwrap(),
            Duration::from_secs(3600),
        )
        .await
        .unwrap()
        .to_string()
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
    InstallOptions {
        hub: h.running.enroll_addr.unwrap().to_string(),
        token,
        prefix: prefix.to_owned(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        hub_quic: None,
        min_free_bytes: 1 << 20,
        clock_offset_micros: 0,
        start_service: true,
    }
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
