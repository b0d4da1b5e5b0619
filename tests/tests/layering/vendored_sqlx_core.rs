//! `vendor/sqlx-core` is upstream sqlx-core 0.9.0 with `vendor/sqlx-core.patch` applied and
//! nothing else (`vendor/README.md`): a change to the copy that is not in the documented patch
//! fails here, as does a patch that no longer matches the copy.
//!
//! Upstream is the `.crate` file crates.io published, checked against its SHA-256 from the
//! crates.io index: taken from Cargo's download cache when it is there, else fetched by
//! `cargo fetch` of a throwaway manifest that depends on `sqlx-core = "=0.9.0"` without the
//! workspace's `[patch]`. It is unpacked into a temporary directory, the packaging files the
//! copy leaves out are removed, the patch is applied with `git apply`, and the result must equal
//! the copy file for file (`git diff --no-index`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use system_tests::procs::repo_root;

const VERSION: &str = "0.9.0";

/// SHA-256 of `sqlx-core-0.9.0.crate`, as the crates.io index lists it (its `cksum`; also
/// the `checksum` Cargo writes to a lock file that resolves sqlx-core 0.9.0 from crates.io).
const CRATE_SHA256: &str = "05b44e85bf579a8eeb4ceaa77a3a523baf2bf0e9bac7e40f405d537b5d2d5ccb";

/// Files of the published crate that the copy leaves out: packaging records Cargo does not
/// read from a path dependency (the VCS note, the crate's own lock file, the manifest as
/// written before `cargo package` normalised it).
const NOT_VENDORED: [&str; 3] = [".cargo_vcs_info.json", "Cargo.lock", "Cargo.toml.orig"];

fn cargo_home() -> PathBuf {
    match std::env::var_os("CARGO_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME or CARGO_HOME is set"))
            .join(".cargo"),
    }
}

/// `sqlx-core-0.9.0.crate` in Cargo's download cache (any registry directory), if there.
fn cached_crate() -> Option<PathBuf> {
    let name = format!("sqlx-core-{VERSION}.crate");
    std::fs::read_dir(cargo_home().join("registry").join("cache"))
        .ok()?
        .filter_map(Result::ok)
        .map(|d| d.path().join(&name))
        .find(|p| p.is_file())
}

fn run(what: &str, cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The published crate file: from the cache, else downloaded by Cargo (which checks it against
/// the index) through a manifest outside this workspace, so no `[patch]` applies.
fn upstream_crate(scratch: &Path) -> PathBuf {
    if let Some(p) = cached_crate() {
        return p;
    }
    let manifest = scratch.join("fetch");
    std::fs::create_dir_all(manifest.join("src")).unwrap();
    std::fs::write(manifest.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        manifest.join("Cargo.toml"),
        format!(
            "[package]\nname = \"sqlx-core-upstream\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             publish = false\n\n[dependencies]\n\
             sqlx-core = {{ version = \"={VERSION}\", default-features = false }}\n\n[workspace]\n"
        ),
    )
    .unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(
        "cargo fetch of upstream sqlx-core (needs the crates.io registry)",
        Command::new(cargo)
            .arg("fetch")
            .arg("--manifest-path")
            .arg(manifest.join("Cargo.toml")),
    );
    cached_crate().expect("cargo fetch left sqlx-core's .crate in the registry cache")
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn vendored_sqlx_core_is_upstream_0_9_0_plus_the_documented_patch() {
    let root = repo_root();
    let vendored = root.join("vendor/sqlx-core");
    let patch = root.join("vendor/sqlx-core.patch");
    let scratch = std::env::temp_dir().join(format!(
        "mes-vendor-check-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&scratch).unwrap();

    let crate_file = upstream_crate(&scratch);
    let sum = sha256_hex(&std::fs::read(&crate_file).unwrap());
    assert_eq!(
        sum,
        CRATE_SHA256,
        "{} is not the sqlx-core {VERSION} crates.io published (SHA-256 differs from the index's)",
        crate_file.display()
    );

    run(
        "unpacking the upstream crate",
        Command::new("tar")
            .arg("-xzf")
            .arg(&crate_file)
            .arg("-C")
            .arg(&scratch),
    );
    let upstream = scratch.join(format!("sqlx-core-{VERSION}"));
    for f in NOT_VENDORED {
        std::fs::remove_file(upstream.join(f))
            .unwrap_or_else(|e| panic!("upstream sqlx-core {VERSION} has no {f}: {e}"));
    }
    let applied = Command::new("git")
        .args(["apply", "-p1", "--whitespace=nowarn"])
        .arg(&patch)
        .current_dir(&upstream)
        .output()
        .expect("starting git apply");
    assert!(
        applied.status.success(),
        "vendor/sqlx-core.patch does not apply to upstream sqlx-core {VERSION}:\n{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let diff = Command::new("git")
        .args(["diff", "--no-index", "--no-color", "--stat", "--patch"])
        .arg(&upstream)
        .arg(&vendored)
        .output()
        .expect("starting git diff --no-index");
    std::fs::remove_dir_all(&scratch).unwrap();
    assert!(
        diff.status.success(),
        "vendor/sqlx-core differs from upstream sqlx-core {VERSION} + vendor/sqlx-core.patch \
         (left: upstream with the patch applied, right: the vendored copy):\n{}{}\n\
         Undo the change, or, if it is meant, document it in vendor/README.md and regenerate \
         vendor/sqlx-core.patch as it says.",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
}
