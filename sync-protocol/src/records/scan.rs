//! Pre-scan of an untrusted Automerge change chunk: how many operations it holds, counted
//! from its columns' run-length headers without decoding a single operation.
//!
//! Why: automerge 0.12 stores a change's operations in run-length encoded columns, and
//! `Change::from_bytes` (`verify_ops`) and `apply_changes` materialise every operation the
//! columns announce. A run header is a varint, so a ~80-byte change can announce 2^40
//! operations, and `from_bytes` spins for hours on it (`fuzz/fixtures/change_ingest/
//! bomb-ops-2e40`); a single operation announcing 2^40 predecessors grows a `Vec` until the
//! process is killed. The scan walks the two columns that drive that work — the action column
//! (one value per operation: automerge stops when it is exhausted) and the predecessor group
//! column (how many predecessors each operation reads) — one run header at a time, so its
//! cost is linear in the bytes, and refuses a change over [`CHANGE_OPS_MAX`] or
//! [`CHANGE_PREDS_MAX`] before automerge sees it.
//!
//! The layout follows automerge 0.12's `storage::chunk`, `storage::change`,
//! `storage::columns` and `columnar::encoding::{rle, raw}` exactly: the chunk header and the
//! change's metadata use automerge's strict LEB128 (no overlong encodings, 10 bytes at most);
//! column data uses the `leb128` crate's lenient reading, as automerge's column decoders do.
//! For a change automerge itself wrote the count is exact (the unit tests compare it with
//! `Change::len`); for anything else it is never below what automerge would iterate.

use sha2::{Digest, Sha256};

/// Most operations one change may hold. A work-order edit is 1–20 operations (one per field
/// written); 10,000 leaves room for any legitimate record while bounding the decode and merge
/// to milliseconds.
pub const CHANGE_OPS_MAX: u64 = 10_000;
/// Most predecessor references (operation ids an operation overwrites) one change may hold:
/// two per operation on average, far above a real change (an overwrite names the one or few
/// values it replaces).
pub const CHANGE_PREDS_MAX: u64 = 2 * CHANGE_OPS_MAX;

/// The magic bytes that start every Automerge chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Chunk type of a plain (uncompressed) change.
const CHUNK_TYPE_CHANGE: u8 = 1;
/// Length of a change hash (a dependency).
const HASH_BYTES: usize = 32;

/// Column specifications (`id << 4 | deflate << 3 | type`) of the two columns the scan reads,
/// as automerge's `ChangeOpsColumns` finds them: the action column is (id 4, integer) and the
/// predecessor group column is (id 7, group).
const ACTION_COLUMN: u32 = (4 << 4) | 2;
const PRED_GROUP_COLUMN: u32 = 7 << 4;
/// The deflate bit of a column specification: automerge refuses compressed change columns.
const DEFLATE_BIT: u32 = 0b1000;

/// What the scan found in a change that passed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeShape {
    /// Operations (exactly automerge's `Change::len` for a well-formed change).
    pub ops: u64,
    /// Predecessor references over all operations.
    pub preds: u64,
}

/// Why the scan refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("not an Automerge change (a single uncompressed change chunk is expected)")]
    NotAChange,
    #[error("the change is malformed: {0}")]
    Malformed(&'static str),
    #[error("the change holds more than {max} {what}")]
    TooMany { what: &'static str, max: u64 },
}

/// Scans a change chunk (`Change::raw_bytes`) and returns its operation and predecessor
/// counts, or why it is refused. Pure and linear in `bytes.len()`; never panics.
pub fn scan_change(bytes: &[u8]) -> Result<ChangeShape, ScanError> {
    let mut r = Reader::new(bytes);
    // Header: magic, checksum, chunk type, data length (automerge `Header::parse`).
    if r.take(4).ok() != Some(&MAGIC[..]) {
        return Err(ScanError::NotAChange);
    }
    let checksum = r.take(4).map_err(|_| ScanError::NotAChange)?;
    if r.byte().map_err(|_| ScanError::NotAChange)? != CHUNK_TYPE_CHANGE {
        return Err(ScanError::NotAChange);
    }
    let data_len = r.uleb_strict()?;
    let data_len = usize::try_from(data_len).map_err(|_| truncated())?;
    let data = r.take(data_len)?;
    // `Change::from_bytes` refuses bytes after the chunk; so does the scan.
    if !r.is_empty() {
        return Err(ScanError::Malformed("bytes after the change chunk"));
    }
    // The checksum is the first 4 bytes of SHA-256 over type, length and data. automerge
    // does not check it when decoding a change; a change that fails it is not one it wrote.
    let mut hasher = Sha256::new();
    hasher.update([CHUNK_TYPE_CHANGE]);
    hasher.update(uleb_bytes(data_len as u64));
    hasher.update(data);
    if hasher.finalize()[..4] != *checksum {
        return Err(ScanError::Malformed("checksum mismatch"));
    }

    // Change metadata (automerge `Change::parse_following_header`).
    let mut r = Reader::new(data);
    let deps = r.uleb_strict()?;
    for _ in 0..deps {
        r.take(HASH_BYTES)?;
    }
    r.length_prefixed()?; // actor
    r.uleb_strict()?; // seq
    let start_op = r.uleb_strict()?;
    if start_op == 0 {
        return Err(ScanError::Malformed("start_op is zero"));
    }
    r.sleb_strict()?; // time
    let message = r.length_prefixed()?;
    if std::str::from_utf8(message).is_err() {
        return Err(ScanError::Malformed("the message is not UTF-8"));
    }
    let other_actors = r.uleb_strict()?;
    for _ in 0..other_actors {
        r.length_prefixed()?;
    }

    // Column metadata: (spec, length) pairs in normalized order, then the columns' data
    // back to back (automerge `RawColumns::parse`, `Columns::parse2`).
    let columns = r.uleb_strict()?;
    let mut offset = 0usize;
    let mut last_spec: Option<u32> = None;
    let mut action = None;
    let mut pred_group = None;
    for _ in 0..columns {
        let spec = u32::try_from(r.uleb_strict()?)
            .map_err(|_| ScanError::Malformed("column specification too large"))?;
        let len = usize::try_from(r.uleb_strict()?).map_err(|_| truncated())?;
        if spec & DEFLATE_BIT != 0 {
            return Err(ScanError::Malformed("compressed columns in a change"));
        }
        // Strictly increasing: automerge refuses columns out of order and duplicates, and a
        // duplicate action column must not let the scan count one and automerge the other.
        if last_spec.is_some_and(|last| spec <= last) {
            return Err(ScanError::Malformed("columns out of order or duplicated"));
        }
        last_spec = Some(spec);
        let end = offset.checked_add(len).ok_or_else(truncated)?;
        match spec {
            ACTION_COLUMN => action = Some(offset..end),
            PRED_GROUP_COLUMN => pred_group = Some(offset..end),
            _ => {}
        }
        offset = end;
    }
    let ops_data = r.take(offset)?;
    // Whatever follows the columns is the change's extra bytes, opaque to automerge.

    let ops = match action {
        Some(range) => count_values(&ops_data[range], CHANGE_OPS_MAX, "operations")?,
        None => 0,
    };
    let preds = match pred_group {
        Some(range) => sum_values(&ops_data[range], CHANGE_PREDS_MAX, "predecessor references")?,
        None => 0,
    };
    // automerge keeps counters in 32 bits and refuses a start_op beyond them, but only after
    // iterating every operation; the last operation's counter must fit too.
    if start_op
        .checked_add(ops.saturating_sub(1))
        .is_none_or(|max_op| max_op > u64::from(u32::MAX))
    {
        return Err(ScanError::Malformed("operation counters beyond 32 bits"));
    }
    Ok(ChangeShape { ops, preds })
}

fn truncated() -> ScanError {
    ScanError::Malformed("truncated")
}

/// The minimal unsigned LEB128 encoding of `v` (what automerge hashes the length as).
fn uleb_bytes(mut v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Walks an RLE column of `u64` (automerge `RleDecoder`): a signed count `n`; `n > 0` is a
/// run of one value repeated `n` times, `n < 0` is `-n` literal values, `0` is a null run
/// whose length follows. Calls `each(times, value)` per run or literal, `None` for nulls.
fn walk_rle_u64(
    col: &[u8],
    mut each: impl FnMut(u64, Option<u64>) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    let mut r = Reader::new(col);
    while !r.is_empty() {
        let count = r.sleb_lenient()?;
        if count > 0 {
            let value = r.uleb_lenient()?;
            each(count.unsigned_abs(), Some(value))?;
        } else if count < 0 {
            // Each literal takes at least one byte, so this loop is bounded by the column's
            // length: a huge count over a short column ends in `truncated`.
            for _ in 0..count.unsigned_abs() {
                let value = r.uleb_lenient()?;
                each(1, Some(value))?;
            }
        } else {
            let nulls = r.uleb_lenient()?;
            each(nulls, None)?;
        }
    }
    Ok(())
}

/// How many values (nulls included) an RLE column holds, refused above `max`.
fn count_values(col: &[u8], max: u64, what: &'static str) -> Result<u64, ScanError> {
    let mut n = 0u64;
    walk_rle_u64(col, |times, _| {
        n = n.saturating_add(times);
        if n > max {
            return Err(ScanError::TooMany { what, max });
        }
        Ok(())
    })?;
    Ok(n)
}

/// The sum of an RLE column's values (nulls count as 0), refused above `max`.
fn sum_values(col: &[u8], max: u64, what: &'static str) -> Result<u64, ScanError> {
    let mut sum = 0u64;
    walk_rle_u64(col, |times, value| {
        sum = sum.saturating_add(times.saturating_mul(value.unwrap_or(0)));
        if sum > max {
            return Err(ScanError::TooMany { what, max });
        }
        Ok(())
    })?;
    Ok(sum)
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ScanError> {
        if n > self.bytes.len() {
            return Err(truncated());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, ScanError> {
        let (&b, rest) = self.bytes.split_first().ok_or_else(truncated)?;
        self.bytes = rest;
        Ok(b)
    }

    fn length_prefixed(&mut self) -> Result<&'a [u8], ScanError> {
        let len = usize::try_from(self.uleb_strict()?).map_err(|_| truncated())?;
        self.take(len)
    }

    /// automerge's `storage::parse::leb128_u64`: at most 10 bytes, no overlong encodings.
    fn uleb_strict(&mut self) -> Result<u64, ScanError> {
        let mut res = 0u64;
        let mut shift = 0u32;
        loop {
            let byte = self.byte()?;
            res |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                if shift > 64 && byte > 1 {
                    return Err(ScanError::Malformed("LEB128 too large"));
                } else if shift > 7 && byte == 0 {
                    return Err(ScanError::Malformed("overlong LEB128"));
                }
                return Ok(res);
            } else if shift > 64 {
                return Err(ScanError::Malformed("LEB128 too large"));
            }
        }
    }

    /// automerge's `storage::parse::leb128_i64`.
    fn sleb_strict(&mut self) -> Result<i64, ScanError> {
        let mut res = 0i64;
        let mut shift = 0u32;
        let mut prev = 0u8;
        loop {
            let byte = self.byte()?;
            res |= i64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                if shift > 64 && byte != 0 && byte != 0x7f {
                    return Err(ScanError::Malformed("LEB128 too large"));
                } else if shift > 7
                    && ((byte == 0 && prev & 0x40 == 0) || (byte == 0x7f && prev & 0x40 > 0))
                {
                    return Err(ScanError::Malformed("overlong LEB128"));
                } else if shift < 64 && byte & 0x40 > 0 {
                    res |= -1i64 << shift;
                }
                return Ok(res);
            } else if shift > 64 {
                return Err(ScanError::Malformed("LEB128 too large"));
            }
            prev = byte;
        }
    }

    /// The `leb128` crate's `read::unsigned`, which automerge's column decoders use: overlong
    /// encodings are accepted, a value beyond 64 bits is an error.
    fn uleb_lenient(&mut self) -> Result<u64, ScanError> {
        let mut res = 0u64;
        let mut shift = 0u32;
        loop {
            let byte = self.byte()?;
            if shift == 63 && byte != 0x00 && byte != 0x01 {
                return Err(ScanError::Malformed("LEB128 too large"));
            }
            res |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(res);
            }
            shift += 7;
        }
    }

    /// The `leb128` crate's `read::signed`.
    fn sleb_lenient(&mut self) -> Result<i64, ScanError> {
        let mut res = 0i64;
        let mut shift = 0u32;
        let mut byte;
        loop {
            byte = self.byte()?;
            if shift == 63 && byte != 0x00 && byte != 0x7f {
                return Err(ScanError::Malformed("LEB128 too large"));
            }
            res |= i64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if shift < 64 && byte & 0x40 != 0 {
            res |= -1i64 << shift;
        }
        Ok(res)
    }
}

/// Builds change chunks by hand, for the tests here and the committed hostile fixtures.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    pub(crate) fn uleb(v: u64) -> Vec<u8> {
        uleb_bytes(v)
    }

    pub(crate) fn sleb(mut v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
            if done {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    /// A chunk of `chunk_type` around `data`, with its correct checksum.
    pub(crate) fn chunk(chunk_type: u8, data: &[u8]) -> Vec<u8> {
        let mut hasher = Sha256::new();
        hasher.update([chunk_type]);
        hasher.update(uleb(data.len() as u64));
        hasher.update(data);
        let hash = hasher.finalize();
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&hash[..4]);
        out.push(chunk_type);
        out.extend(uleb(data.len() as u64));
        out.extend_from_slice(data);
        out
    }

    /// The body of a change with no dependencies, a 16-byte actor, seq 1, `start_op`, time 0,
    /// no message, no other actors and `columns` (spec, data) in the given order.
    pub(crate) fn change_body(start_op: u64, columns: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0]; // deps
        b.extend(uleb(16));
        b.extend_from_slice(&[0xb0, 0x4b, 0xb0, 0x4b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        b.extend(uleb(1)); // seq
        b.extend(uleb(start_op));
        b.extend(sleb(0)); // time
        b.extend(uleb(0)); // message
        b.extend(uleb(0)); // other actors
        b.extend(uleb(columns.len() as u64));
        for (spec, data) in columns {
            b.extend(uleb(u64::from(*spec)));
            b.extend(uleb(data.len() as u64));
        }
        for (_, data) in columns {
            b.extend_from_slice(data);
        }
        b
    }

    /// An RLE run of `n` copies of `value`.
    pub(crate) fn run(n: i64, value: &[u8]) -> Vec<u8> {
        let mut out = sleb(n);
        out.extend_from_slice(value);
        out
    }

    pub(crate) const KEY_STRING: u32 = (1 << 4) | 5;
    pub(crate) const INSERT: u32 = (3 << 4) | 4;
    pub(crate) const VALUE_META: u32 = (5 << 4) | 6;

    /// The op bomb: every column a single run of `n` — puts of null to root key "a" without
    /// predecessors. With `n = 2^40` it is 79 bytes and automerge 0.12's `Change::from_bytes`
    /// materialises 2^40 operations (hours of CPU).
    pub(crate) fn op_bomb(n: i64) -> Vec<u8> {
        chunk(
            CHUNK_TYPE_CHANGE,
            &change_body(
                1,
                &[
                    (KEY_STRING, run(n, &[1, b'a'])),
                    (INSERT, uleb(n as u64)),
                    (ACTION_COLUMN, run(n, &uleb(1))),
                    (VALUE_META, run(n, &uleb(0))),
                    (PRED_GROUP_COLUMN, run(n, &uleb(0))),
                ],
            ),
        )
    }

    /// One operation announcing `n` predecessors, all actor 0 counter 1 (runs of `n`): automerge
    /// would push `n` operation ids into one `Vec`.
    pub(crate) fn pred_bomb(n: i64) -> Vec<u8> {
        const PRED_ACTOR: u32 = (7 << 4) | 1;
        const PRED_COUNTER: u32 = (7 << 4) | 3;
        chunk(
            CHUNK_TYPE_CHANGE,
            &change_body(
                2,
                &[
                    (KEY_STRING, run(1, &[1, b'a'])),
                    (INSERT, uleb(1)),
                    (ACTION_COLUMN, run(1, &uleb(1))),
                    (VALUE_META, run(1, &uleb(0))),
                    (PRED_GROUP_COLUMN, run(1, &uleb(n as u64))),
                    (PRED_ACTOR, run(n, &uleb(0))),
                    (PRED_COUNTER, {
                        // The first delta is 1, then 0: counter 1 every time.
                        let mut d = run(1, &sleb(1));
                        d.extend(run(n - 1, &sleb(0)));
                        d
                    }),
                ],
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, AutoCommit, ObjType, ROOT};

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/fixtures/change_ingest")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The committed fixtures are exactly what the builders make, so their construction is
    /// documented here and the system tests can load them as files.
    #[test]
    fn the_committed_bombs_are_the_built_ones() {
        assert_eq!(fixture("bomb-ops-2e40"), op_bomb(1 << 40));
        assert_eq!(fixture("bomb-preds-2e40"), pred_bomb(1 << 40));
        assert!(op_bomb(1 << 40).len() < 150, "{}", op_bomb(1 << 40).len());
    }

    /// The op bomb's small siblings are well-formed changes automerge decodes with exactly the
    /// announced count, so the builder writes real changes and the scan reads them right; the
    /// 2^40 one is refused by the count alone, in microseconds.
    #[test]
    fn an_op_bomb_is_refused_and_its_small_sibling_counted_exactly() {
        for n in [1i64, 7, 10_000] {
            let bytes = op_bomb(n);
            let change = automerge::Change::from_bytes(bytes.clone()).expect("a valid change");
            assert_eq!(change.len() as i64, n);
            assert_eq!(
                scan_change(&bytes),
                Ok(ChangeShape {
                    ops: n as u64,
                    preds: 0
                })
            );
        }
        let refused = ScanError::TooMany {
            what: "operations",
            max: CHANGE_OPS_MAX,
        };
        assert_eq!(scan_change(&op_bomb(10_001)), Err(refused.clone()));
        let started = std::time::Instant::now();
        assert_eq!(scan_change(&op_bomb(1 << 40)), Err(refused.clone()));
        assert_eq!(scan_change(&op_bomb(i64::MAX)), Err(refused));
        assert!(started.elapsed() < std::time::Duration::from_millis(10));
    }

    #[test]
    fn a_predecessor_bomb_is_refused_and_its_small_sibling_counted_exactly() {
        let small = pred_bomb(3);
        let change = automerge::Change::from_bytes(small.clone()).expect("a valid change");
        let preds: usize = change
            .decode()
            .operations
            .iter()
            .map(|o| o.pred.len())
            .sum();
        assert_eq!(preds, 3);
        assert_eq!(scan_change(&small), Ok(ChangeShape { ops: 1, preds: 3 }));
        assert_eq!(
            scan_change(&pred_bomb(1 << 40)),
            Err(ScanError::TooMany {
                what: "predecessor references",
                max: CHANGE_PREDS_MAX
            })
        );
    }

    /// Runs of every kind in the action column: a literal run announcing 2^40 values over a
    /// few bytes is truncated (so is one of -2^63, whose magnitude does not fit an i64), a null
    /// run of 2^40 is counted (automerge iterates nulls until it fails on one, the scan does not
    /// guess), and short runs add up.
    #[test]
    fn every_run_kind_of_the_action_column_is_bounded() {
        let with_action =
            |data: Vec<u8>| chunk(CHUNK_TYPE_CHANGE, &change_body(1, &[(ACTION_COLUMN, data)]));
        let mut literal = sleb(-(1 << 40));
        literal.extend([1, 1, 1]);
        assert_eq!(
            scan_change(&with_action(literal)),
            Err(ScanError::Malformed("truncated"))
        );
        let mut nulls = sleb(0);
        nulls.extend(uleb(1 << 40));
        assert!(matches!(
            scan_change(&with_action(nulls)),
            Err(ScanError::TooMany { .. })
        ));
        assert_eq!(
            scan_change(&with_action(run(i64::MIN, &uleb(1)))),
            Err(ScanError::Malformed("truncated"))
        );
        // Many short runs add up: 2 × 6,000.
        let mut two = run(6_000, &uleb(1));
        two.extend(run(6_000, &uleb(3)));
        assert!(matches!(
            scan_change(&with_action(two)),
            Err(ScanError::TooMany { .. })
        ));
    }

    /// Changes automerge wrote, from real documents: the scan passes them with automerge's
    /// own operation count and predecessor total.
    #[test]
    fn legitimate_changes_pass_with_automerges_own_counts() {
        let mut cases: Vec<(&str, automerge::Change)> = Vec::new();
        let last = |doc: &mut AutoCommit| doc.get_last_local_change().expect("a change").clone();

        // A released work order, as the hub writes it, with a big routing snapshot and notes.
        let mut doc = AutoCommit::new().with_actor(ActorId::random());
        let mut view = crate::records::tests_support::view();
        view.order.notes = "x".repeat(60_000);
        view.order.operations = (0..500)
            .map(|i| shared_model::work_order::OperationProgress {
                seq: i,
                operation_code: format!("OP{i:04}"),
                work_center_class: "PRESS".into(),
                ideal_cycle_time_ms: 1_000 + u64::from(i),
                good: 0,
                scrap: 0,
                done: false,
            })
            .collect();
        crate::records::write_all(&mut doc, &view).expect("written");
        doc.commit();
        cases.push(("big work order release", last(&mut doc)));
        // The site starts it and reports totals: overwrites, one predecessor each.
        doc.put(ROOT, "state", "running").expect("put");
        doc.put(ROOT, "good_count", 480u64).expect("put");
        doc.put(ROOT, "scrap_count", 20u64).expect("put");
        doc.commit();
        cases.push(("state and counts", last(&mut doc)));

        // A concurrent edit on another copy, then a merge and an overwrite of both values:
        // several predecessors and other actors in one change.
        let mut other = AutoCommit::load(&doc.save())
            .expect("load")
            .with_actor(ActorId::random());
        other.put(ROOT, "state", "suspended").expect("put");
        other.commit();
        doc.put(ROOT, "state", "ended").expect("put");
        doc.commit();
        doc.merge(&mut other).expect("merge");
        doc.put(ROOT, "state", "ended").expect("put");
        doc.commit_with(automerge::transaction::CommitOptions::default().with_message("settled"));
        cases.push(("conflict settled, message", last(&mut doc)));

        // Objects, lists, text with marks, counters, deletes.
        let mut doc = AutoCommit::new().with_actor(ActorId::random());
        let list = doc.put_object(ROOT, "list", ObjType::List).expect("list");
        for i in 0..300u64 {
            doc.insert(&list, i as usize, i).expect("insert");
        }
        let text = doc.put_object(ROOT, "text", ObjType::Text).expect("text");
        doc.splice_text(&text, 0, 0, &"lorem ipsum ".repeat(200))
            .expect("text");
        doc.mark(
            &text,
            automerge::marks::Mark::new("bold".into(), true, 3, 40),
            automerge::marks::ExpandMark::Both,
        )
        .expect("mark");
        doc.put(ROOT, "n", automerge::ScalarValue::counter(1))
            .expect("counter");
        let map = doc.put_object(ROOT, "map", ObjType::Map).expect("map");
        doc.put(&map, "k", -5i64).expect("put");
        doc.put(&map, "f", 1.5f64).expect("put");
        doc.put(&map, "b", automerge::ScalarValue::Bytes(vec![0; 300]))
            .expect("put");
        doc.commit();
        cases.push(("list, text, marks, counter, map", last(&mut doc)));
        doc.increment(ROOT, "n", 4).expect("increment");
        for _ in 0..100 {
            doc.delete(&list, 0).expect("delete");
        }
        doc.splice_text(&text, 5, 100, "").expect("delete text");
        doc.commit();
        cases.push(("increments and deletes", last(&mut doc)));

        // The largest legal change: exactly CHANGE_OPS_MAX operations.
        let mut doc = AutoCommit::new().with_actor(ActorId::random());
        for i in 0..CHANGE_OPS_MAX {
            doc.put(ROOT, format!("k{}", i % 5_000), i).expect("put");
        }
        doc.commit();
        cases.push(("CHANGE_OPS_MAX operations", last(&mut doc)));

        for (name, change) in cases {
            let preds: usize = change
                .decode()
                .operations
                .iter()
                .map(|o| o.pred.len())
                .sum();
            let shape = scan_change(change.raw_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                shape,
                ChangeShape {
                    ops: change.len() as u64,
                    preds: preds as u64
                },
                "{name}"
            );
            assert!(shape.ops > 0, "{name}");
            let decoded = crate::records::decode_untrusted(change.raw_bytes())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(decoded.hash(), change.hash(), "{name}");
        }
    }

    /// Every prefix of a real change, and every single-byte corruption of it, is refused or
    /// passed without a panic; the truncated ones are refused.
    #[test]
    fn truncated_and_corrupted_changes_are_refused_without_panic() {
        let mut doc = AutoCommit::new().with_actor(ActorId::random());
        crate::records::write_all(&mut doc, &crate::records::tests_support::view()).expect("write");
        doc.commit();
        let bytes = doc
            .get_last_local_change()
            .expect("a change")
            .raw_bytes()
            .to_vec();
        for cut in 0..bytes.len() {
            assert!(scan_change(&bytes[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut passed = 0;
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                // The checksum covers the body, so almost every corruption is refused; the
                // ones that pass must not panic automerge either.
                if scan_change(&b).is_ok() {
                    passed += 1;
                    let _ = crate::records::decode_untrusted(&b);
                }
            }
        }
        assert!(
            passed <= 3 * 4,
            "only corruptions of the checksum itself may pass: {passed}"
        );
        // A document chunk and a bundle are not changes; garbage is not either.
        assert_eq!(scan_change(&doc.save()), Err(ScanError::NotAChange));
        assert_eq!(scan_change(b"hello"), Err(ScanError::NotAChange));
        assert_eq!(scan_change(&[]), Err(ScanError::NotAChange));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(scan_change(&trailing).is_err());
    }

    /// A change whose columns are compressed, out of order or duplicated is refused like
    /// automerge refuses it, and a start_op past 32 bits as automerge would (after iterating).
    #[test]
    fn column_layouts_automerge_refuses_are_refused() {
        let body = |start_op, cols: &[(u32, Vec<u8>)]| {
            chunk(CHUNK_TYPE_CHANGE, &change_body(start_op, cols))
        };
        let one = run(1, &uleb(1));
        assert!(scan_change(&body(1, &[(ACTION_COLUMN | DEFLATE_BIT, one.clone())])).is_err());
        assert!(
            scan_change(&body(
                1,
                &[(ACTION_COLUMN, one.clone()), (ACTION_COLUMN, one.clone())]
            ))
            .is_err()
        );
        assert!(
            scan_change(&body(
                1,
                &[(VALUE_META, one.clone()), (ACTION_COLUMN, one.clone())]
            ))
            .is_err()
        );
        assert!(scan_change(&body(u64::from(u32::MAX) + 1, &[])).is_err());
        assert!(
            scan_change(&body(
                u64::from(u32::MAX),
                &[(ACTION_COLUMN, run(2, &uleb(1)))]
            ))
            .is_err()
        );
        assert!(scan_change(&body(0, &[])).is_err());
        // A column announcing more bytes than the chunk holds.
        let mut b = change_body(1, &[(ACTION_COLUMN, one)]);
        b.pop();
        assert_eq!(
            scan_change(&chunk(CHUNK_TYPE_CHANGE, &b)),
            Err(ScanError::Malformed("truncated"))
        );
    }

    /// The LEB128 readers agree with automerge's parser and the `leb128` crate on values,
    /// and refuse what they refuse.
    #[test]
    fn leb128_readers_match_their_originals() {
        for v in [0u64, 1, 127, 128, 300, 1 << 40, u64::MAX] {
            let enc = uleb(v);
            assert_eq!(Reader::new(&enc).uleb_strict(), Ok(v));
            assert_eq!(Reader::new(&enc).uleb_lenient(), Ok(v));
        }
        for v in [0i64, 1, -1, 63, 64, -64, -65, 1 << 40, i64::MAX, i64::MIN] {
            let enc = sleb(v);
            assert_eq!(Reader::new(&enc).sleb_strict(), Ok(v));
            assert_eq!(Reader::new(&enc).sleb_lenient(), Ok(v));
        }
        // Overlong: automerge's strict parser refuses, the column reader accepts.
        assert!(Reader::new(&[0x81, 0x00]).uleb_strict().is_err());
        assert_eq!(Reader::new(&[0x81, 0x00]).uleb_lenient(), Ok(1));
        // Eleven bytes are too many for both.
        let long = [0x80u8; 10].iter().copied().chain([0]).collect::<Vec<_>>();
        assert!(Reader::new(&long).uleb_strict().is_err());
        assert!(Reader::new(&long).uleb_lenient().is_err());
        assert!(Reader::new(&long).sleb_lenient().is_err());
    }
}
