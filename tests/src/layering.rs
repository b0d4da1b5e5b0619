//! The workspace's layering rules, checked against `cargo metadata`.
//!
//! * `shared-model` and `sync-protocol` are pure: neither may reach an I/O crate (runtime,
//!   sockets, HTTP, TLS, databases) through its normal or build dependencies, however
//!   indirectly. That is what lets the protocol run under a simulator and a fuzzer.
//! * `edge-agent` and `central-hub` never depend on each other: they share code only through
//!   `shared-model`, `sync-protocol`, `sync-io` and `service-kit`.
//! * `sync-io`, the session's tokio/quinn driver, may do network I/O but never reaches a
//!   database or HTTP crate (the stores stay behind `sync-protocol`'s traits, in the binaries),
//!   and never depends on either binary.
//! * `service-kit`, the process and HTTP plumbing both binaries share, knows no domain: it
//!   depends on no workspace crate (neither binary, nor `shared-model`, `sync-protocol`,
//!   `sync-io`), so the binaries share nothing else through it.
//! * No import circles between the modules of `central-hub` or `edge-agent` ([`module_graph`],
//!   [`cycles`]).
//!
//! The rules are pure functions over the metadata JSON (or a module graph) so a test can feed
//! them a doctored graph and watch them fail.

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

/// The session driver: network I/O yes, storage and HTTP no.
pub const DRIVER_CRATE: &str = "sync-io";

/// Crates the session driver must not reach: databases and HTTP servers. Matching is on the
/// package name; `sqlx-*`, `hyper-*` and `axum-*` families are matched by prefix.
pub const DRIVER_FORBIDDEN: &[&str] = &[
    "sqlx",
    "rusqlite",
    "libsqlite3-sys",
    "redis",
    "postgres",
    "tokio-postgres",
    "axum",
    "hyper",
];

const DRIVER_FORBIDDEN_PREFIXES: &[&str] = &["sqlx-", "hyper-", "axum-"];

/// The binaries the driver serves and must therefore never depend on.
pub const DRIVER_USERS: &[&str] = &["edge-agent", "central-hub"];

/// The plumbing both binaries share: process and HTTP set-up, no domain rules.
pub const KIT_CRATE: &str = "service-kit";

/// The workspace crates the plumbing must not reach: the domain, the protocol, the session
/// driver and the binaries it serves.
pub const KIT_FORBIDDEN: &[&str] = &[
    "shared-model",
    "sync-protocol",
    "sync-io",
    "edge-agent",
    "central-hub",
];

/// Crates that must not depend on any crate of a list, each with the rule it would break.
pub const MUST_NOT_REACH: &[(&str, &[&str], &str)] = &[
    (
        DRIVER_CRATE,
        DRIVER_USERS,
        "sync-io depends on a binary it serves",
    ),
    (
        KIT_CRATE,
        KIT_FORBIDDEN,
        "service-kit depends on a workspace crate",
    ),
];

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

fn is_driver_forbidden(name: &str) -> bool {
    DRIVER_FORBIDDEN.contains(&name)
        || DRIVER_FORBIDDEN_PREFIXES
            .iter()
            .any(|p| name.starts_with(p))
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
    for path in paths_to(&graph, DRIVER_CRATE, is_driver_forbidden) {
        violations.push(Violation {
            path,
            rule: "sync-io reaches a database or HTTP crate",
        });
    }
    for &(start, forbidden, rule) in MUST_NOT_REACH {
        for path in paths_to(&graph, start, |n| forbidden.contains(&n)) {
            violations.push(Violation { path, rule });
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

// ---------------------------------------------------------------------------------------------
// Import circles between modules.
//
// Inside a crate, `cargo metadata` sees nothing, so the module graph is read from the source:
// every `crate::…` path (and `super::…` / `self::…`, resolved against the file's module) in a
// module's files is an edge from that module to the one it names. Edges are kept between the
// top-level modules of `src/` (`db`, `api`, `metrics`, …) and, inside a directory module, between
// its submodules (`db/store` → `db/rollup`). A circle is an elementary cycle of either graph.
// The reading is textual, not a parser: comment lines are skipped, and a name counts only when
// it is a module that exists, so an item that happens to share a name seldom adds an edge.

/// One place where a module refers to another: the evidence behind an edge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Module → the modules it refers to, each with the first reference found. Node names are a
/// top-level module (`db`) or a submodule of a directory module (`db/store`; `db/mod` is the
/// directory's own `mod.rs`).
pub type ModuleGraph = BTreeMap<String, BTreeMap<String, Reference>>;

/// Most circles reported per graph: enough to read, bounded however tangled the code gets.
pub const CYCLES_MAX: usize = 256;

/// An elementary cycle, rotated to start at its smallest node, with the reference behind each
/// edge (`edges[i]` goes from `nodes[i]` to `nodes[(i + 1) % len]`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cycle {
    pub nodes: Vec<String>,
    pub edges: Vec<Reference>,
}

impl std::fmt::Display for Cycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.nodes.len();
        for i in 0..n {
            write!(
                f,
                "{} -> {} ({}){}",
                self.nodes[i],
                self.nodes[(i + 1) % n],
                self.edges[i],
                if i + 1 < n { "; " } else { "" }
            )?;
        }
        Ok(())
    }
}

/// Every elementary cycle of `graph` (self-references are not cycles), at most
/// [`CYCLES_MAX`], sorted. Each cycle is found once, from its smallest node.
pub fn cycles(graph: &ModuleGraph) -> Vec<Cycle> {
    fn walk(graph: &ModuleGraph, start: &str, path: &mut Vec<String>, found: &mut Vec<Cycle>) {
        let Some(last) = path.last().cloned() else {
            return;
        };
        for (next, _) in graph.get(&last).into_iter().flatten() {
            if found.len() >= CYCLES_MAX {
                return;
            }
            if next == start && path.len() > 1 {
                let edges = (0..path.len())
                    .map(|i| graph[&path[i]][&path[(i + 1) % path.len()]].clone())
                    .collect();
                found.push(Cycle {
                    nodes: path.clone(),
                    edges,
                });
            } else if next.as_str() > start && !path.contains(next) {
                path.push(next.clone());
                walk(graph, start, path, found);
                path.pop();
            }
        }
    }
    let mut found = Vec::new();
    for start in graph.keys() {
        walk(graph, start, &mut vec![start.clone()], &mut found);
    }
    found.sort();
    found
}

/// The paths a use tree names, starting at `s` (just after `crate::`, `super::` or `self::`),
/// each cut to its first `depth` segments: `db::{store::X, rollup}` gives `[db, store]` and
/// `[db, rollup]`. Returns the paths and how many bytes it read.
fn use_tree(s: &[u8], depth: usize) -> (Vec<Vec<String>>, usize) {
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && s[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if s.get(i) == Some(&b'{') {
        i += 1;
        let mut out = Vec::new();
        loop {
            skip_ws(&mut i);
            match s.get(i) {
                None => break,
                Some(b'}') => {
                    i += 1;
                    break;
                }
                Some(b',') => i += 1,
                Some(_) => {
                    let (paths, n) = use_tree(&s[i..], depth);
                    out.extend(paths);
                    if n == 0 {
                        // Not a tree after all (a glob, an attribute): skip one byte.
                        i += 1;
                    } else {
                        i += n;
                    }
                }
            }
        }
        return (out, i);
    }
    let begin = i;
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
        i += 1;
    }
    if i == begin {
        return (Vec::new(), 0);
    }
    let ident = String::from_utf8_lossy(&s[begin..i]).into_owned();
    if s[i..].starts_with(b"::") && depth > 1 {
        let (subs, n) = use_tree(&s[i + 2..], depth - 1);
        i += 2 + n;
        if !subs.is_empty() {
            let paths = subs
                .into_iter()
                .map(|mut p| {
                    p.insert(0, ident.clone());
                    p
                })
                .collect();
            return (paths, i);
        }
    }
    (vec![vec![ident]], i)
}

/// The module path of a file under `src/`: `db/store.rs` → `[db, store]`, `db/mod.rs` →
/// `[db]`, `api.rs` → `[api]`; `None` for the crate roots.
fn module_path(relative: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    if parts.is_empty() || (parts.len() == 1 && matches!(parts[0].as_str(), "lib" | "main")) {
        return None;
    }
    Some(parts)
}

/// The absolute module paths (first segments) one file's source refers to, with their lines.
fn file_references(source: &str, module: &[String]) -> Vec<(Vec<String>, usize)> {
    // Comment lines (doc links included) are not code; blank them but keep the line numbers.
    let code: String = source
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let prefix_len = [b"crate::".as_slice(), b"super::", b"self::"]
            .into_iter()
            .find(|p| rest.starts_with(p))
            .map(<[u8]>::len);
        let preceded_by_ident = i > 0
            && (bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b'$');
        let (Some(_), false) = (prefix_len, preceded_by_ident) else {
            i += 1;
            continue;
        };
        // `super::super::x` climbs twice; `self::x` stays.
        let mut base: Vec<String> = if rest.starts_with(b"crate::") {
            Vec::new()
        } else {
            module.to_vec()
        };
        let mut j = i;
        loop {
            let r = &bytes[j..];
            if r.starts_with(b"crate::") {
                j += 7;
                break;
            } else if r.starts_with(b"super::") {
                base.pop();
                j += 7;
            } else if r.starts_with(b"self::") {
                j += 6;
            } else {
                break;
            }
        }
        let line = 1 + bytes[..i].iter().filter(|b| **b == b'\n').count();
        let (paths, n) = use_tree(&bytes[j..], 2usize.saturating_sub(base.len().min(2)).max(1));
        for p in paths {
            let mut full = base.clone();
            full.extend(p);
            full.truncate(2);
            out.push((full, line));
        }
        i = j + n.max(1);
    }
    out
}

/// Reads every `.rs` file under `src` and builds the graph between its top-level modules and,
/// inside each directory module, between its submodules. File names in references are
/// relative to `src`'s parent (`central-hub/src/db/store.rs` → `src/db/store.rs`).
pub fn module_graph(src: &Path) -> std::io::Result<ModuleGraph> {
    fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                rs_files(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    rs_files(src, &mut files)?;
    files.sort();
    let mut modules: Vec<(Vec<String>, std::path::PathBuf)> = files
        .into_iter()
        .filter_map(|f| Some((module_path(f.strip_prefix(src).ok()?)?, f)))
        .collect();
    modules.sort();
    // Which top-level modules exist, and which submodules each directory module has.
    let tops: BTreeSet<String> = modules.iter().map(|(m, _)| m[0].clone()).collect();
    let subs: BTreeSet<(String, String)> = modules
        .iter()
        .filter(|(m, _)| m.len() > 1)
        .map(|(m, _)| (m[0].clone(), m[1].clone()))
        .collect();
    let is_dir = |top: &str| subs.iter().any(|(t, _)| t == top);
    let node = |m: &[String]| -> String {
        match m {
            [top] if is_dir(top) => format!("{top}/mod"),
            [top] => top.clone(),
            [top, sub, ..] => format!("{top}/{sub}"),
            [] => String::new(),
        }
    };
    let shown = src
        .file_name()
        .map_or_else(|| src.to_path_buf(), std::path::PathBuf::from);
    let mut graph = ModuleGraph::new();
    for (module, file) in &modules {
        let source = std::fs::read_to_string(file)?;
        let name = shown
            .join(file.strip_prefix(src).unwrap_or(file))
            .display()
            .to_string();
        for (target, line) in file_references(&source, module) {
            let Some(top) = target.first() else { continue };
            if !tops.contains(top) {
                continue;
            }
            let reference = Reference {
                file: name.clone(),
                line,
            };
            // A top-level edge, or a submodule edge inside the same directory module.
            let (from, to) = if *top != module[0] {
                (module[0].clone(), top.clone())
            } else if let Some(sub) = target.get(1)
                && subs.contains(&(top.clone(), sub.clone()))
            {
                (node(module), format!("{top}/{sub}"))
            } else {
                continue;
            };
            if from != to {
                graph
                    .entry(from)
                    .or_default()
                    .entry(to)
                    .or_insert(reference);
            }
        }
    }
    Ok(graph)
}
