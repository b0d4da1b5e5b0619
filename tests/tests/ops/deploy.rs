//! The deployment material in `deploy/`, checked as files and against a running hub:
//!
//! * `deploy/validate.py` passes: every kustomization rendered (and compared with `kubectl
//!   kustomize` when kubectl is installed), every object valid against the Kubernetes schema,
//!   and the hub-specific checks it lists in its header;
//! * the validator is not a rubber stamp: copies of `deploy/` with a TCP QUIC port, a missing
//!   readiness probe, an unencrypted backup repository, a primary that does not archive its
//!   WAL, or a kustomize feature outside its subset fail with the right words;
//! * `deploy/systemd/mes-edge.service` is byte for byte the unit `edge-agent install` writes;
//! * every hub metric that `deploy/prometheus/alerts.yml` and `deploy/grafana/mes-hub.json`
//!   name is exported by a real hub's `GET /metrics`.
//!
//! Python 3 with the modules of `deploy/requirements.txt` is required (`.ci/run` installs
//! them); without them the tests fail and say so, they are never skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use central_hub::serve::ReportSettings;
use system_tests::hq::text_of;
use system_tests::procs::repo_root;

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// Fails the test with the install hint unless python3 and the validator's modules are there.
fn require_python() {
    let out = Command::new("python3")
        .args(["-c", "import kubernetes_validate, yaml, jsonpatch"])
        .output();
    let problem = match out {
        Err(e) => Some(format!("python3 cannot be run: {e}")),
        Ok(o) if !o.status.success() => Some(String::from_utf8_lossy(&o.stderr).into_owned()),
        Ok(_) => None,
    };
    if let Some(p) = problem {
        panic!(
            "deploy/validate.py needs Python 3 with kubernetes-validate, PyYAML and jsonpatch: \
             pip install -r deploy/requirements.txt\n{p}"
        );
    }
}

/// Runs `python3 deploy/validate.py [args]` from the repository root; prints its output.
fn validate(args: &[&str]) -> (Output, String) {
    require_python();
    let out = Command::new("python3")
        .arg(deploy_dir().join("validate.py"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("running python3 deploy/validate.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("--- python3 deploy/validate.py {}\n{text}", args.join(" "));
    (out, text)
}

#[test]
fn deploy_directory_validates() {
    let (out, text) = validate(&[]);
    assert!(out.status.success(), "deploy/validate.py failed:\n{text}");
    assert!(text.contains("deploy/ valid:"), "{text}");
    // Which way the kustomize comparison went is always said, never silently skipped.
    assert!(
        text.contains("renders the same objects as the built-in renderer")
            || text.contains("kubectl not found: checked with the built-in renderer only"),
        "{text}"
    );
    for check in [
        "render",
        "schema",
        "probes",
        "quic-service",
        "hpa",
        "networkpolicy",
        "hub-env",
        "pgbouncer",
        "postgres",
        "pgbackrest",
        "alerts",
        "grafana",
        "dockerfiles",
        "systemd",
    ] {
        assert!(
            text.contains(&format!("ok   {check}: ")),
            "no passing {check} check:\n{text}"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "__pycache__" {
                copy_dir(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of `deploy/` with `file` edited by `edit`, checked with `--root`.
fn validate_broken(name: &str, file: &str, edit: impl FnOnce(String) -> String) -> String {
    let dir = std::env::temp_dir().join(format!(
        "mes-deploy-{name}-{}",
        uuid::Uuid::now_v7().simple()
    ));
    copy_dir(&deploy_dir(), &dir);
    let path = dir.join(file);
    let before = std::fs::read_to_string(&path).unwrap();
    let after = edit(before.clone());
    assert_ne!(before, after, "the edit of {file} changed nothing");
    std::fs::write(&path, after).unwrap();
    let (out, text) = validate(&["--root", dir.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !out.status.success(),
        "deploy/validate.py accepted a broken {file}:\n{text}"
    );
    assert!(text.contains("deploy/ INVALID"), "{text}");
    text
}

#[test]
fn broken_manifests_fail_validation() {
    // QUIC on TCP.
    let text = validate_broken("quic-tcp", "k8s/base/hub/service-quic.yaml", |s| {
        assert_eq!(s.matches("protocol: UDP").count(), 1, "{s}");
        s.replace("protocol: UDP", "protocol: TCP")
    });
    assert!(text.contains("FAIL quic-service"), "{text}");
    assert!(text.contains("QUIC needs UDP"), "{text}");

    // No readiness probe on the hub.
    let text = validate_broken("no-readiness", "k8s/base/hub/deployment.yaml", |s| {
        let start = s
            .find("          readinessProbe:")
            .expect("a readinessProbe");
        let end = start
            + s[start..]
                .find("          lifecycle:")
                .expect("lifecycle after it");
        format!("{}{}", &s[..start], &s[end..])
    });
    assert!(text.contains("FAIL probes"), "{text}");
    assert!(
        text.contains("readinessProbe must be httpGet /ready"),
        "{text}"
    );

    // An unencrypted backup repository.
    let text = validate_broken("no-cipher", "postgres/pgbackrest-repo.conf", |s| {
        assert_eq!(s.matches("repo1-cipher-type=aes-256-cbc").count(), 1, "{s}");
        s.replace("repo1-cipher-type=aes-256-cbc", "repo1-cipher-type=none")
    });
    assert!(text.contains("FAIL pgbackrest"), "{text}");
    assert!(
        text.contains("repo1-cipher-type='none', expected 'aes-256-cbc'"),
        "{text}"
    );

    // A primary that does not archive its WAL.
    let text = validate_broken("no-archive", "postgres/primary.conf", |s| {
        s.replace("archive_mode = on", "archive_mode = off")
    });
    assert!(text.contains("FAIL pgbackrest"), "{text}");
    assert!(text.contains("archive_mode = 'off', expected on"), "{text}");

    // A kustomize feature the built-in renderer does not implement is refused, not ignored.
    let text = validate_broken(
        "generator",
        "k8s/overlays/eu-central/kustomization.yaml",
        |s| s + "configMapGenerator:\n  - name: extra\n    literals: [A=B]\n",
    );
    assert!(text.contains("FAIL render"), "{text}");
    assert!(text.contains("outside the subset"), "{text}");
}

#[test]
fn systemd_unit_is_what_the_installer_writes() {
    let file = std::fs::read_to_string(deploy_dir().join("systemd/mes-edge.service")).unwrap();
    let installer = edge_agent::install::systemd_unit(&edge_agent::install::Layout {
        prefix: PathBuf::from("/"),
    });
    assert_eq!(
        file, installer,
        "deploy/systemd/mes-edge.service differs from edge_agent::install::systemd_unit for prefix /"
    );
}

/// Metric names in a text: `mes_…` identifiers, histogram series folded to their base name.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("mes_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if boundary {
            let mut name = &text[start..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base;
                }
            }
            out.insert(name.to_owned());
        }
        i = end.max(start + 4);
    }
    out
}

/// Every PromQL expression of the dashboard (targets of panels, nested rows included).
fn dashboard_exprs(panels: &serde_json::Value, out: &mut Vec<String>) {
    for p in panels.as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_owned());
            }
        }
        dashboard_exprs(&p["panels"], out);
    }
}

/// Exported means a `# TYPE` line or a sample of that name. In OpenMetrics a counter
/// family `x` (`# TYPE x counter`) exposes its samples as `x_total`.
fn exported(metrics: &str, name: &str) -> bool {
    metrics.lines().any(|l| {
        let family = l
            .strip_prefix("# TYPE ")
            .map(|rest| rest.split_whitespace().collect::<Vec<_>>());
        family.as_deref().is_some_and(|f| {
            f.first() == Some(&name)
                || (f.get(1) == Some(&"counter")
                    && name.strip_suffix("_total") == f.first().copied())
        }) || l
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_alerts_and_dashboard_is_exported() {
    let alerts = std::fs::read_to_string(deploy_dir().join("prometheus/alerts.yml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana/mes-hub.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard["panels"], &mut exprs);
    assert!(
        exprs.len() >= 15,
        "the dashboard has only {} queries",
        exprs.len()
    );
    // The rules' expressions (one line each in alerts.yml; comments and annotations may name
    // metric families loosely, so only `expr:` counts).
    let rule_exprs: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        rule_exprs.len(),
        alerts.matches("- alert:").count(),
        "every rule's expr must be on its expr: line"
    );
    assert!(
        rule_exprs
            .iter()
            .all(|e| !e.is_empty() && !e.starts_with(['|', '>'])),
        "{rule_exprs:?}"
    );
    let mut wanted = BTreeSet::new();
    for e in rule_exprs
        .iter()
        .copied()
        .chain(exprs.iter().map(String::as_str))
    {
        wanted.extend(metric_names(e));
    }
    assert!(wanted.len() >= 20, "only {wanted:?}");

    // A hub with a site (seen a minute ago) and its reporting connection: the per-site gauges
    // need both.
    let h = system_tests::hq::hq("deploy-metrics", &[("SITE_A", "UTC")]).await;
    sqlx::query(
        "UPDATE sites SET last_seen_at = now() - interval '1 minute' WHERE site_id = 'SITE_A'",
    )
    .execute(&h.admin)
    .await
    .unwrap();
    let (hub, base, http) = h.serve(ReportSettings::default()).await;
    let reader = h.token("hq:read", None).await;
    // Some traffic first: probes, the site list, one report twice (a miss, then a hit).
    for path in ["/health", "/ready"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    let report = "/api/v1/reports/production?from=2026-11-02&to=2026-11-03";
    for path in ["/api/v1/sites", report, report] {
        let (status, body, _) = system_tests::hq::get(&http, &base, &reader, path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }

    let metrics = text_of(http.get(format!("{base}/metrics"))).await;
    let missing: Vec<&String> = wanted.iter().filter(|n| !exported(&metrics, n)).collect();
    assert!(
        missing.is_empty(),
        "deploy/prometheus/alerts.yml or deploy/grafana/mes-hub.json use metrics the hub does \
         not export: {missing:?}\n--- GET /metrics\n{metrics}"
    );
    // The per-site gauges carry the registered site.
    for gauge in [
        "mes_sync_site_connected",
        "mes_sync_site_last_seen_seconds",
        "mes_sync_backlog_events",
        "mes_sync_lag_seconds",
        "mes_work_orders_active",
        "mes_quality_alerts_active",
        "mes_active_users_by_site",
    ] {
        assert!(
            metrics.contains(&format!("{gauge}{{site=\"SITE_A\"}} ")),
            "{gauge} has no sample for SITE_A\n{metrics}"
        );
    }
    println!(
        "{} metrics of alerts.yml and mes-hub.json exported: {wanted:?}",
        wanted.len()
    );
    hub.stop().await.unwrap();
}
