//! The workspace's layering rules, checked against `cargo metadata`.
//!
//! * `shared-model` and `sync-protocol` are pure: neither may reach an I/O crate (runtime,
//!   sockets, HTTP, TLS, databases) through its normal or build dependencies, however
//!   indirectly. That is what lets the protocol run under a simulator and a fuzzer.
//! * `edge-agent` and `central-hub` never depend on each other: they share code only through
//!   `shared-model` and `sync-protocol`.
//!
//! The rules are a pure function over the metadata JSON so a test can feed it a doctored
//! graph and watch it fail.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Crates that do I/O or exist to serve it. Matching is on the package name; `sqlx-*` and
/// `tokio-*` families are matched by prefix.
pub const IO_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "async-std",
    "smol",
    "quinn",
    "quinn-proto",
    "quinn-udp",
    "rustls",
    "ring",
    "aws-lc-rs",
    "hyper",
    "axum",
    "reqwest",
    "sqlx",
    "rusqlite",
    "libsqlite3-sys",
    "postgres",
    "tokio-postgres",
];

const IO_PREFIXES: &[&str] = &["sqlx-", "tokio-", "hyper-", "axum-"];

/// Crates that must stay free of I/O.
pub const PURE_CRATES: &[&str] = &["shared-model", "sync-protocol"];

/// Pairs of crates that must not depend on each other, in either direction.
pub const APART: &[(&str, &str)] = &[("edge-agent", "central-hub")];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// The dependency path from the offending crate to the forbidden one.
    pub path: Vec<String>,
    pub rule: &'static str,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.path.join(" -> "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("running cargo metadata: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("cargo metadata failed: {0}")]
    Failed(String),
    #[error("cargo metadata printed invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cargo metadata output lacks {0}")]
    Shape(&'static str),
}

/// Runs `cargo metadata` for the workspace whose manifest is given.
pub fn cargo_metadata(manifest: &Path) -> Result<Value, MetadataError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(manifest)
        .output()?;
    if !out.status.success() {
        return Err(MetadataError::Failed(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn is_io_crate(name: &str) -> bool {
    IO_CRATES.contains(&name) || IO_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Checks the rules; an empty list means the layering holds.
pub fn check(metadata: &Value) -> Result<Vec<Violation>, MetadataError> {
    let packages = metadata["packages"]
        .as_array()
        .ok_or(MetadataError::Shape("packages"))?;
    let names: BTreeMap<&str, &str> = packages
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .ok_or(MetadataError::Shape("resolve.nodes"))?;
    // Package name -> names of its normal and build dependencies. Dev-dependencies do not
    // ship, so they are not edges here.
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for node in nodes {
        let Some(from) = node["id"].as_str().and_then(|id| names.get(id)) else {
            continue;
        };
        let entry = graph.entry(from).or_default();
        for dep in node["deps"].as_array().into_iter().flatten() {
            let shipped = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| matches!(k["kind"].as_str(), None | Some("build")));
            if let (true, Some(to)) = (shipped, dep["pkg"].as_str().and_then(|id| names.get(id))) {
                entry.insert(to);
            }
        }
    }

    let mut violations = Vec::new();
    for pure in PURE_CRATES {
        for path in paths_to(&graph, pure, is_io_crate) {
            violations.push(Violation {
                path,
                rule: "a pure crate reaches an I/O crate",
            });
        }
    }
    for (a, b) in APART {
        for (from, to) in [(a, b), (b, a)] {
            for path in paths_to(&graph, from, |n| n == *to) {
                violations.push(Violation {
                    path,
                    rule: "edge-agent and central-hub must not depend on each other",
                });
            }
        }
    }
    violations.sort();
    violations.dedup();
    Ok(violations)
}

/// Breadth-first from `start`: the shortest path to each reachable crate matching `target`.
fn paths_to(
    graph: &BTreeMap<&str, BTreeSet<&str>>,
    start: &str,
    target: impl Fn(&str) -> bool,
) -> Vec<Vec<String>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut queue = VecDeque::new();
    let mut found = Vec::new();
    let Some((&start_key, _)) = graph.get_key_value(start) else {
        return found;
    };
    seen.insert(start_key);
    queue.push_back(start_key);
    while let Some(n) = queue.pop_front() {
        for &next in graph.get(n).into_iter().flatten() {
            if !seen.insert(next) {
                continue;
            }
            parent.insert(next, n);
            if target(next) {
                let mut path = vec![next.to_string()];
                let mut cur = next;
                while let Some(&p) = parent.get(cur) {
                    path.push(p.to_string());
                    cur = p;
                }
                path.reverse();
                found.push(path);
            } else {
                queue.push_back(next);
            }
        }
    }
    found
}
