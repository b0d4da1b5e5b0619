//! Master data at the edge: stored per kind and key with the hub's version, filled by
//! down-sync or by `edge-agent import-master-data FILE` for a standalone edge.

use std::path::Path;

use shared_model::master::MasterRecord;

/// Largest import file accepted: master data of a plant is kilobytes to a few megabytes.
pub const IMPORT_FILE_BYTES_MAX: u64 = 64 << 20;

pub use shared_model::master::MasterFile;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is {len} bytes, more than the {max} accepted")]
    TooLarge { path: String, len: u64, max: u64 },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {kind} {key}: {error}")]
    Invalid {
        path: String,
        kind: &'static str,
        key: String,
        error: shared_model::ValidationError,
    },
}

/// Reads and validates an import file (JSON, or TOML for a `.toml` extension).
pub fn read_file(path: &Path) -> Result<Vec<MasterRecord>, ImportError> {
    let shown = path.display().to_string();
    let len = std::fs::metadata(path)
        .map_err(|source| ImportError::Read {
            path: shown.clone(),
            source,
        })?
        .len();
    if len > IMPORT_FILE_BYTES_MAX {
        return Err(ImportError::TooLarge {
            path: shown,
            len,
            max: IMPORT_FILE_BYTES_MAX,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: shown.clone(),
        source,
    })?;
    let file: MasterFile = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
    {
        toml::from_str(&text).map_err(|e| ImportError::Parse {
            path: shown.clone(),
            message: e.to_string(),
        })?
    } else {
        serde_json::from_str(&text).map_err(|e| ImportError::Parse {
            path: shown.clone(),
            message: e.to_string(),
        })?
    };
    let records = file.into_records();
    for r in &records {
        r.validate().map_err(|error| ImportError::Invalid {
            path: shown.clone(),
            kind: r.kind().as_str(),
            key: r.key(),
            error,
        })?;
    }
    Ok(records)
}

/// The table itself (read, upsert, delete, local import) is [`crate::store::master`]; `import`
/// is re-exported here because it is what `import-master-data` and the test fixtures call.
pub use crate::store::master::import;

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's example file must stay importable.
    #[test]
    fn the_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/master-data.json");
        let records = read_file(&path).unwrap();
        assert_eq!(records.len(), 15);
    }

    #[test]
    fn bad_files_are_refused_with_the_record_named() {
        let dir = std::env::temp_dir().join(format!("edge-master-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("bad.json", "{\"materials\": [", "bad.json"),
            ("typo.json", "{\"material\": []}", "unknown field"),
            (
                "invalid.json",
                r#"{"routings": [{"material": "M", "version": 1, "seq": 1, "operation_code": "OP",
                    "work_center_class": "c", "ideal_cycle_time_ms": 0, "setup_time_ms": 0}]}"#,
                "ideal_cycle_time_ms",
            ),
            (
                "t.toml",
                "[[materials]]\nid = \"M\"\nname = \"\"\nunit = \"kg\"\ntracking = \"none\"\n",
                "materials M",
            ),
        ];
        for (name, text, expected) in cases {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            let err = read_file(&p).unwrap_err().to_string();
            assert!(err.contains(expected), "{name}: {err}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
