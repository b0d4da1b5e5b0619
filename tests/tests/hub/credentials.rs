//! HQ API credentials over real PostgreSQL and HTTP, with the real `central-hub` binary where
//! an operator would use it: a token revoked with `api-token revoke` is refused by a running
//! hub within 2 s (the issue asks for 5); tokens are looked up on the read side, so unknown
//! ones are answered `401` by a hub whose write pool cannot run a single statement; a bad
//! token repeated costs one lookup; failed authentications from one client address end in
//! `429` with a JSON body, counted per forwarded client behind a trusted proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use central_hub::serve::ReportSettings;
use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use system_tests::hq::{content_type, get, hq, text_of};
use system_tests::procs::{Proc, workspace_bin};

/// What the issue demands of a revocation, and what the hub promises (its token cache).
const REVOKED_WITHIN: Duration = Duration::from_secs(5);
const TOKEN_RECHECK: Duration = Duration::from_secs(2);
/// Failed authentications one address may make per minute (`central_hub::auth`).
const FAILURES_PER_ADDRESS: usize = 20;

async fn hub_bin() -> PathBuf {
    tokio::task::spawn_blocking(|| workspace_bin("central-hub", "central-hub"))
        .await
        .unwrap()
}

/// `central-hub ARGS`: (success, stdout, stderr).
fn cli(bin: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `central-hub serve` on free ports with `extra` flags; returns it and its HTTP base URL.
fn serve(
    bin: &Path,
    db: &system_tests::pg::TestDb,
    state_dir: &Path,
    extra: &[&str],
) -> (Proc, String) {
    let mut p = Proc::start(
        Command::new(bin)
            .arg("serve")
            .args(["--database-url", &db.hub_url])
            .args(["--read-database-url", &db.reporting_url])
            .args([
                "--quic-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--enroll-listen",
                "127.0.0.1:0",
                "--server-name",
                "127.0.0.1",
            ])
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
            .env("RUST_LOG", "warn"),
    );
    let line = p.wait_for_line("central-hub sync on", Duration::from_secs(30));
    let http = line.split("http on ").nth(1).unwrap().trim().to_owned();
    (p, http)
}

async fn status(http: &reqwest::Client, base: &str, token: &str) -> u16 {
    get(http, base, token, "/api/v1/sites").await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_with_the_cli_is_refused_by_a_running_hub_within_2_s() {
    let h = hq("cred-revoke", &[("SITE_A", "UTC")]).await;
    let bin = hub_bin().await;
    let (_hub, base) = serve(&bin, &h.db, &h.state_dir, &[]);
    let admin = h.db.admin_url.as_str();
    let create = |name: &str| {
        let (ok, out, err) = cli(
            &bin,
            &[
                "api-token",
                "create",
                "--scope",
                "hq:read",
                "--name",
                name,
                "--database-url",
                admin,
            ],
        );
        assert!(ok, "create {name}: {err}");
        out.trim().to_owned()
    };
    let (dashboard, etl, keep) = (create("dashboard"), create("etl"), create("keep"));
    let http = reqwest::Client::new();
    for t in [&dashboard, &etl, &keep] {
        assert_eq!(status(&http, &base, t).await, 200);
    }

    // The worst case: a token seen valid just before its revocation and not used since.
    let (ok, _, err) = cli(
        &bin,
        &["api-token", "revoke", "etl", "--database-url", admin],
    );
    assert!(ok, "revoke: {err}");
    let revoked = Instant::now();
    tokio::time::sleep(TOKEN_RECHECK + Duration::from_millis(50)).await;
    let (s, v, _) = get(&http, &base, &etl, "/api/v1/sites").await;
    assert_eq!(
        s,
        401,
        "a revoked token still worked {:?} after `api-token revoke`: {v}",
        revoked.elapsed()
    );
    assert_eq!(v["error"]["code"], json!("unauthorized"));

    // A token in constant use (a request every 10 ms): how long from the revocation (the
    // start of the CLI, before its commit) until the first refusal.
    let poller = {
        let (http, base, token) = (http.clone(), base.clone(), dashboard.clone());
        tokio::spawn(async move {
            loop {
                let s = status(&http, &base, &token).await;
                if s == 401 {
                    return Instant::now();
                }
                assert_eq!(s, 200);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poller.is_finished());
    let revoked = Instant::now();
    let (ok, out, err) = cli(
        &bin,
        &["api-token", "revoke", "dashboard", "--database-url", admin],
    );
    assert!(ok, "revoke: {err}");
    assert!(
        out.contains("1 token(s) named \"dashboard\" revoked"),
        "{out}"
    );
    let refused = tokio::time::timeout(REVOKED_WITHIN, poller)
        .await
        .expect("the revoked token still works after 5 s")
        .unwrap();
    let refused_after = refused - revoked;
    eprintln!(
        "FIGURE hub_token_revoked_refused_after_ms {}",
        refused_after.as_millis()
    );
    assert!(
        refused_after <= TOKEN_RECHECK + Duration::from_millis(500),
        "refused only after {refused_after:?}"
    );
    assert_eq!(status(&http, &base, &keep).await, 200);

    // `list`: every token with its last use and revocation, never the token itself.
    let (ok, out, err) = cli(&bin, &["api-token", "list", "--database-url", admin]);
    assert!(ok, "list: {err}");
    let row = |name: &str| -> Vec<String> {
        out.lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|f| f.get(1).map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    for (name, revoked) in [("dashboard", true), ("etl", true), ("keep", false)] {
        let f = row(name);
        assert_eq!(f.len(), 7, "{f:?}");
        assert_eq!((f[2].as_str(), f[3].as_str()), ("hq:read", "(all)"));
        assert!(f[5].ends_with('Z'), "{name}'s last use is recorded: {f:?}");
        assert_eq!(f[6].ends_with('Z'), revoked, "{f:?}");
    }
    for t in [&dashboard, &etl, &keep] {
        assert!(!out.contains(t.as_str()), "{out}");
    }
    assert!(err.contains("3 token(s), 1 live"), "{err}");
    let (ok, _, err) = cli(
        &bin,
        &["api-token", "revoke", "dashboard", "--database-url", admin],
    );
    assert!(!ok);
    assert!(err.contains("no live token named \"dashboard\""), "{err}");
}

async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = text_of(http.get(format!("{base}/metrics"))).await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

fn made_up(i: usize) -> String {
    format!("hub_{i:048x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tokens_never_reach_the_write_pool_and_an_address_that_keeps_failing_gets_429() {
    let h = hq("cred-read-side", &[("SITE_A", "UTC")]).await;
    let reader = h.token("hq:read", None).await;
    let spare = h.token("hq:read", None).await;
    // The hub role loses the schema: from now on every statement on the write pool fails.
    h.admin
        .execute(
            "REVOKE ALL ON SCHEMA public FROM PUBLIC;
             GRANT USAGE ON SCHEMA public TO mes_reporting, mes_reporting_site",
        )
        .await
        .unwrap();
    let mut as_hub = sqlx::PgConnection::connect(&h.db.hub_url).await.unwrap();
    assert!(
        sqlx::query("SELECT count(*) FROM api_tokens")
            .execute(&mut as_hub)
            .await
            .is_err()
    );
    // The read side checks a hash through the function; it cannot list the table.
    let mut as_reporting = sqlx::PgConnection::connect(&h.db.reporting_url)
        .await
        .unwrap();
    assert!(
        sqlx::query("SELECT hash FROM api_tokens")
            .execute(&mut as_reporting)
            .await
            .is_err()
    );
    let (hub, base, http) = h.serve(ReportSettings::default()).await;

    // An unknown token is refused from the read side, and repeating it costs no lookup.
    for _ in 0..5 {
        let (s, v, _) = get(&http, &base, &made_up(0), "/api/v1/sites").await;
        assert_eq!(s, 401, "{v}");
        assert_eq!(v["error"]["code"], json!("unauthorized"), "{v}");
    }
    assert_eq!(
        metric(&http, &base, "mes_api_token_lookups_total").await,
        1.0
    );
    // A known token works with the write pool down: its lookup and its read are read-side.
    let (s, v, _) = get(&http, &base, &reader, "/api/v1/sites").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["sites"][0]["site_id"], json!("SITE_A"));

    // Failures from this address: 5 so far; up to the limit they are answered 401...
    for i in 1..FAILURES_PER_ADDRESS - 5 {
        assert_eq!(
            status(&http, &base, &made_up(i)).await,
            401,
            "failure {}",
            i + 5
        );
    }
    assert_eq!(status(&http, &base, &reader).await, 200);
    assert_eq!(
        status(&http, &base, &made_up(99)).await,
        401,
        "the 20th failure"
    );
    // ... then with 429, before any lookup.
    let lookups = metric(&http, &base, "mes_api_token_lookups_total").await;
    let r = http
        .get(format!("{base}/api/v1/sites"))
        .bearer_auth(made_up(100))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(content_type(&r).starts_with("application/json"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], json!("too_many_failures"), "{v}");
    assert_eq!(v["error"]["retry_after_seconds"], json!(retry));
    assert!((1..=60).contains(&retry), "{v}");
    // Nothing else from the blocked address causes a lookup: not a live token that would
    // need one, nor another made-up one ...
    assert_eq!(status(&http, &base, &spare).await, 429);
    assert_eq!(status(&http, &base, &made_up(101)).await, 429);
    assert_eq!(
        metric(&http, &base, "mes_api_token_lookups_total").await,
        lookups,
        "a blocked address caused lookups"
    );
    // ... while a live token whose scope is cached still passes.
    assert_eq!(status(&http, &base, &reader).await, 200);
    assert_eq!(
        metric(&http, &base, "mes_api_auth_limited_total").await,
        3.0
    );
    hub.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_failure_budget() {
    let h = hq("cred-proxy", &[("SITE_A", "UTC")]).await;
    let reader = h.token("hq:read", None).await;
    let bin = hub_bin().await;
    let (_hub, base) = serve(
        &bin,
        &h.db,
        &h.state_dir,
        &["--trusted-proxy", "127.0.0.0/8"],
    );
    let http = reqwest::Client::new();
    // The status of a request with `token` from `client`, as the proxy forwards it.
    let from = |client: &str, token: &str| {
        let request = http
            .get(format!("{base}/api/v1/sites"))
            .bearer_auth(token)
            .header("x-forwarded-for", client);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for i in 0..FAILURES_PER_ADDRESS {
        assert_eq!(from("203.0.113.1", &made_up(i)).await, 401);
    }
    assert_eq!(from("203.0.113.1", &made_up(50)).await, 429);
    // Whatever the client writes to the left of what the proxy appended does not help.
    assert_eq!(from("198.51.100.7, 203.0.113.1", &made_up(51)).await, 429);
    // Another client behind the same proxy is not blocked.
    assert_eq!(from("203.0.113.2", &made_up(52)).await, 401);
    assert_eq!(from("203.0.113.2", &reader).await, 200);
}
