//! Proves the workspace's layering: the pure crates reach no I/O crate and the two binaries
//! stay apart. The real check runs `cargo metadata` on this workspace; the other tests feed
//! the same rule function a doctored graph, so a rule that silently stopped matching would
//! fail here instead of passing vacuously.
//!
//! The same binary checks the other rule about what the workspace is built from: the vendored
//! sqlx-core is upstream plus its documented patch and nothing else ([`vendored_sqlx_core`]).

mod vendored_sqlx_core;

use std::path::Path;

use serde_json::{Value, json};
use system_tests::layering::{self, Violation};

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
    for required in ["shared-model", "sync-protocol", "edge-agent", "central-hub"] {
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

#[test]
fn malformed_metadata_is_an_error_not_a_pass() {
    assert!(layering::check(&json!({})).is_err());
    assert!(layering::check(&json!({"packages": [], "resolve": null})).is_err());
}
