//! Proves the workspace's layering: the pure crates reach no I/O crate, the two binaries stay
//! apart, the session driver (`sync-io`) reaches no database or HTTP crate and neither binary,
//! and the binaries' modules import each other without circles (but for the listed ones being
//! removed). The real checks run `cargo metadata` on this workspace and read the binaries'
//! sources; the other tests feed the same rule functions doctored graphs and a doctored source
//! tree, so a rule that silently stopped matching would fail here instead of passing vacuously.
//!
//! The same binary checks the other rule about what the workspace is built from: the vendored
//! sqlx-core is upstream plus its documented patch and nothing else ([`vendored_sqlx_core`]).

mod vendored_sqlx_core;

use std::path::Path;

use serde_json::{Value, json};
use system_tests::layering::{self, Cycle, ModuleGraph, Reference, Violation};

#[test]
fn workspace_layering_holds() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let metadata = layering::cargo_metadata(&manifest).expect("cargo metadata");
    // The graph must contain the crates the rules talk about, or the check proves nothing.
    let names: Vec<&str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for required in [
        "shared-model",
        "sync-protocol",
        "sync-io",
        "service-kit",
        "edge-agent",
        "central-hub",
    ] {
        assert!(
            names.contains(&required),
            "{required} missing from metadata"
        );
    }
    let violations = layering::check(&metadata).expect("check");
    assert!(
        violations.is_empty(),
        "layering violated:\n{}",
        violations
            .iter()
            .map(Violation::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A dependency edge: from, to, and cargo's kind (`None` normal, `"build"`, `"dev"`).
type Edge<'a> = (&'a str, &'a str, Option<&'a str>);

/// A minimal metadata document: packages by name, and resolve edges with their kinds.
fn metadata(edges: &[Edge<'_>]) -> Value {
    let mut names: Vec<&str> = edges.iter().flat_map(|(a, b, _)| [*a, *b]).collect();
    names.sort();
    names.dedup();
    let id = |n: &str| format!("{n} 0.1.0 (path+file:///x/{n})");
    let packages: Vec<Value> = names
        .iter()
        .map(|n| json!({"id": id(n), "name": n}))
        .collect();
    let nodes: Vec<Value> = names
        .iter()
        .map(|n| {
            let deps: Vec<Value> = edges
                .iter()
                .filter(|(from, _, _)| from == n)
                .map(|(_, to, kind)| {
                    json!({"name": to, "pkg": id(to), "dep_kinds": [{"kind": kind, "target": null}]})
                })
                .collect();
            json!({"id": id(n), "deps": deps})
        })
        .collect();
    json!({"packages": packages, "resolve": {"nodes": nodes}})
}

#[test]
fn doctored_graphs_are_caught() {
    // (edges, expected violation paths)
    let cases: Vec<(Vec<Edge<'_>>, Vec<Vec<&str>>)> = vec![
        // Clean graph.
        (
            vec![
                ("sync-protocol", "shared-model", None),
                ("sync-protocol", "postcard", None),
                ("edge-agent", "sync-protocol", None),
                ("edge-agent", "tokio", None),
                ("central-hub", "sqlx", None),
            ],
            vec![],
        ),
        // Direct I/O dependency of the protocol.
        (
            vec![("sync-protocol", "tokio", None)],
            vec![vec!["sync-protocol", "tokio"]],
        ),
        // Transitive, through an innocent-looking crate, and a family prefix.
        (
            vec![
                ("shared-model", "helper", None),
                ("helper", "sqlx-core", None),
            ],
            vec![vec!["shared-model", "helper", "sqlx-core"]],
        ),
        // Build dependencies ship too.
        (
            vec![("sync-protocol", "rusqlite", Some("build"))],
            vec![vec!["sync-protocol", "rusqlite"]],
        ),
        // Dev-dependencies do not.
        (vec![("sync-protocol", "tokio", Some("dev"))], vec![]),
        // The binaries must stay apart, directly or not.
        (
            vec![("edge-agent", "central-hub", None)],
            vec![vec!["edge-agent", "central-hub"]],
        ),
        (
            vec![("central-hub", "glue", None), ("glue", "edge-agent", None)],
            vec![vec!["central-hub", "glue", "edge-agent"]],
        ),
    ];
    for (edges, expected) in cases {
        let found: Vec<Vec<String>> = layering::check(&metadata(&edges))
            .expect("check")
            .into_iter()
            .map(|v| v.path)
            .collect();
        let expected: Vec<Vec<String>> = expected
            .into_iter()
            .map(|p| p.into_iter().map(String::from).collect())
            .collect();
        assert_eq!(found, expected, "edges {edges:?}");
    }
}

/// The session driver's and the shared plumbing's rules, on graphs written compactly: edges `from>to` (a `:build` or
/// `:dev` suffix gives cargo's kind), expected violation paths `a>b>c`.
#[test]
fn doctored_graphs_of_the_session_driver_are_caught() {
    let cases: &[(&str, &[&str])] = &[
        // Network I/O is its job, and both binaries may use it.
        (
            "sync-io>sync-protocol sync-io>tokio sync-io>quinn quinn>rustls \
             edge-agent>sync-io central-hub>sync-io",
            &[],
        ),
        // No database, directly, through another crate, as a build dependency, by prefix.
        ("sync-io>rusqlite", &["sync-io>rusqlite"]),
        (
            "sync-io>helper helper>sqlx-postgres",
            &["sync-io>helper>sqlx-postgres"],
        ),
        ("sync-io>redis:build", &["sync-io>redis"]),
        ("sync-io>sqlx:dev", &[]),
        // No HTTP server.
        (
            "sync-io>axum sync-io>hyper-util",
            &["sync-io>axum", "sync-io>hyper-util"],
        ),
        // Neither binary it serves.
        ("sync-io>edge-agent", &["sync-io>edge-agent"]),
        (
            "sync-io>glue glue>central-hub",
            &["sync-io>glue>central-hub"],
        ),
        // The pure protocol must not lean on its driver.
        (
            "sync-protocol>sync-io sync-io>tokio",
            &["sync-protocol>sync-io>tokio"],
        ),
        // The shared plumbing: I/O and HTTP yes, and both binaries may use it ...
        (
            "service-kit>tokio service-kit>axum edge-agent>service-kit central-hub>service-kit",
            &[],
        ),
        // ... but it reaches no workspace crate, directly or not.
        ("service-kit>shared-model", &["service-kit>shared-model"]),
        (
            "service-kit>glue glue>edge-agent",
            &["service-kit>glue>edge-agent"],
        ),
        ("service-kit>sync-io:build", &["service-kit>sync-io"]),
    ];
    for (edges, expected) in cases {
        let parsed: Vec<Edge<'_>> = edges
            .split_whitespace()
            .map(|e| {
                let (from, rest) = e.split_once('>').expect("from>to");
                let (to, kind) = rest
                    .split_once(':')
                    .map_or((rest, None), |(t, k)| (t, Some(k)));
                (from, to, kind)
            })
            .collect();
        let found: Vec<String> = layering::check(&metadata(&parsed))
            .expect("check")
            .into_iter()
            .map(|v| v.path.join(">"))
            .collect();
        assert_eq!(found, *expected, "edges {edges}");
    }
}

#[test]
fn malformed_metadata_is_an_error_not_a_pass() {
    assert!(layering::check(&json!({})).is_err());
    assert!(layering::check(&json!({"packages": [], "resolve": null})).is_err());
}

/// Import circles tolerated per crate: a circle is its nodes in order from the smallest, each
/// importing the next and the last the first. Empty since issue 20 removed the nine there were
/// (hub: api↔auth, api↔reports, db↔metrics, db/master↔db/store, db/rollup↔db/store; edge:
/// api↔ui, master↔store, records↔store, store/counts↔store/events). The test fails on a circle
/// not listed and on a listed circle that no longer exists, so the list can only shrink.
const ALLOWED_CYCLES: &[(&str, &[&str])] = &[];

#[test]
fn no_import_circles_but_the_listed_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut problems = Vec::new();
    for krate in ["central-hub", "edge-agent"] {
        let graph = layering::module_graph(&root.join(krate).join("src")).expect("read sources");
        assert!(
            graph.len() > 3,
            "{krate}: the module graph is nearly empty, so the check proves nothing"
        );
        let found = layering::cycles(&graph);
        let allowed: Vec<&[&str]> = ALLOWED_CYCLES
            .iter()
            .filter(|(k, _)| *k == krate)
            .map(|(_, c)| *c)
            .collect();
        for cycle in &found {
            if !allowed.contains(
                &cycle
                    .nodes
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .as_slice(),
            ) {
                problems.push(format!("{krate}: import circle {cycle}"));
            }
        }
        for nodes in allowed {
            if !found.iter().any(|c| c.nodes == nodes) {
                problems.push(format!(
                    "{krate}: the allowed circle {} is gone: remove it from ALLOWED_CYCLES",
                    nodes.join(" -> ")
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn doctored_module_graphs_show_their_cycles() {
    let r = |line| Reference {
        file: "src/x.rs".into(),
        line,
    };
    let graph = |edges: &[(&str, &str)]| -> ModuleGraph {
        let mut g = ModuleGraph::new();
        for (i, (a, b)) in edges.iter().enumerate() {
            g.entry(a.to_string())
                .or_default()
                .insert(b.to_string(), r(i + 1));
        }
        g
    };
    let nodes =
        |cycles: Vec<Cycle>| -> Vec<Vec<String>> { cycles.into_iter().map(|c| c.nodes).collect() };
    // A chain has no cycle.
    assert!(layering::cycles(&graph(&[("a", "b"), ("b", "c")])).is_empty());
    // Two overlapping cycles are both found, each once, from its smallest node.
    let g = graph(&[("b", "a"), ("a", "b"), ("b", "c"), ("c", "a")]);
    assert_eq!(
        nodes(layering::cycles(&g)),
        vec![vec!["a", "b"], vec!["a", "b", "c"]]
    );
    // The message names each edge's reference.
    let shown = layering::cycles(&g)[0].to_string();
    assert_eq!(shown, "a -> b (src/x.rs:2); b -> a (src/x.rs:1)");
}

#[test]
fn circles_are_read_from_the_source_tree() {
    // A doctored crate: `db` and `metrics` import each other (a `use` group, a path in an
    // expression), and inside `db/` `store` and `rollup` do (through `super::` and through
    // `crate::db::`). Comment lines and doc links are not imports; `api` only imports.
    let dir = std::env::temp_dir().join(format!("layering-circles-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("db")).expect("mkdir");
    let files = [
        ("lib.rs", "pub mod api;\npub mod db;\npub mod metrics;\n"),
        ("api.rs", "use crate::{db::store::Row, metrics};\n"),
        (
            "db/mod.rs",
            "pub mod rollup;\npub mod store;\nfn f() { crate::metrics::count(); }\n",
        ),
        (
            "db/store.rs",
            "// crate::api is only mentioned here\nuse super::{\n    rollup::{self, Sum},\n};\n",
        ),
        (
            "db/rollup.rs",
            "/// See [`crate::api`].\nuse crate::db::store::Row;\n",
        ),
        ("metrics.rs", "\n\nuse crate::db;\n"),
    ];
    for (name, text) in files {
        std::fs::write(src.join(name), text).expect("write");
    }
    let graph = layering::module_graph(&src).expect("read");
    std::fs::remove_dir_all(&dir).expect("clean up");
    let found: Vec<String> = layering::cycles(&graph)
        .iter()
        .map(Cycle::to_string)
        .collect();
    assert_eq!(
        found,
        vec![
            "db -> metrics (src/db/mod.rs:3); metrics -> db (src/metrics.rs:3)",
            "db/rollup -> db/store (src/db/rollup.rs:2); db/store -> db/rollup (src/db/store.rs:2)",
        ]
    );
    assert!(
        !graph.contains_key("db/mod"),
        "a declaration `pub mod x;` is not an import"
    );
    assert_eq!(graph["api"].keys().collect::<Vec<_>>(), ["db", "metrics"]);
}
