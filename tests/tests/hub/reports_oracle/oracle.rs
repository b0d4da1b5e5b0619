//! The oracle common to every report: the stored events decoded into a plain table, the
//! correction rules and state intervals in ordinary SQL, fine-grained rows per key, and the
//! comparison of the API's answers (shape, CSV, numbers and ratios) with them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use serde_json::{Value, json};
use shared_model::{Event, EventBody};
use sqlx::{PgPool, Row};
use system_tests::hq::{Api, get};

use super::dataset::{EQUIPMENT, K_SHIFTS, ORDERS, PRESSES, REASON_MASTER, SITES, ideal_ms};

/// Loads what the hub stored in `events` into the oracle's plain table `raw`.
pub(super) async fn load_raw(admin: &PgPool) {
    sqlx::query(
        "CREATE TABLE raw (site_id text, event_id uuid, occurred_at timestamptz, kind text,
            equipment text, work_order text, good bigint, scrap bigint, scrap_reason text,
            state text, reason text, lot text, material text, quantity float8, direction text,
            corrects uuid, r_kind text, r_equipment text, r_work_order text, r_good bigint,
            r_scrap bigint, r_scrap_reason text, r_state text, r_reason text)",
    )
    .execute(admin)
    .await
    .unwrap();
    let rows = sqlx::query("SELECT body FROM events")
        .fetch_all(admin)
        .await
        .unwrap();
    for r in rows {
        let e: Event = postcard::from_bytes(&r.get::<Vec<u8>, _>("body")).unwrap();
        let mut v: BTreeMap<String, Value> = BTreeMap::new();
        let fill = |v: &mut BTreeMap<String, Value>, prefix: &str, body: &EventBody| {
            let key = |k: &str| format!("{prefix}{k}");
            match body {
                EventBody::ProductionCount(p) => {
                    v.insert(key("kind"), json!("production_count"));
                    v.insert(key("equipment"), json!(p.equipment.to_string()));
                    v.insert(
                        key("work_order"),
                        json!(p.work_order.as_ref().map(|w| w.to_string())),
                    );
                    v.insert(key("good"), json!(p.good));
                    v.insert(key("scrap"), json!(p.scrap));
                    v.insert(
                        key("scrap_reason"),
                        json!(p.scrap_reason.as_ref().map(|w| w.to_string())),
                    );
                }
                EventBody::EquipmentState(s) => {
                    v.insert(key("kind"), json!("equipment_state"));
                    v.insert(key("equipment"), json!(s.equipment.to_string()));
                    v.insert(key("state"), json!(s.state.as_str()));
                    v.insert(
                        key("reason"),
                        json!(s.reason.as_ref().map(|w| w.to_string())),
                    );
                }
                EventBody::MaterialConsumed(m) | EventBody::MaterialProduced(m) => {
                    v.insert(key("kind"), json!("material"));
                    v.insert("lot".into(), json!(m.lot.to_string()));
                    v.insert("material".into(), json!(m.material.to_string()));
                    v.insert("quantity".into(), json!(m.quantity));
                    v.insert(
                        key("work_order"),
                        json!(m.work_order.as_ref().map(|w| w.to_string())),
                    );
                }
                _ => {}
            }
        };
        fill(&mut v, "", &e.body);
        if let EventBody::Correction(c) = &e.body {
            v.insert("kind".into(), json!("correction"));
            v.insert("corrects".into(), json!(c.corrects.as_uuid().to_string()));
            if let Some(r) = &c.replacement {
                fill(&mut v, "r_", &r.to_body());
            }
        }
        sqlx::query(
            "INSERT INTO raw SELECT $1, $2, $3, r.* FROM jsonb_to_record($4) AS r(
                kind text, equipment text, work_order text, good bigint, scrap bigint,
                scrap_reason text, state text, reason text, lot text, material text,
                quantity float8, direction text, corrects uuid, r_kind text, r_equipment text,
                r_work_order text, r_good bigint, r_scrap bigint, r_scrap_reason text,
                r_state text, r_reason text)",
        )
        .bind(e.site_id.as_str())
        .bind(e.event_id.as_uuid())
        .bind(
            time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(e.occurred_at.as_micros()) * 1000,
            )
            .unwrap(),
        )
        .bind(serde_json::to_value(&v).unwrap())
        .execute(admin)
        .await
        .unwrap();
    }
}

/// The oracle's own copies of the master data and orders the test wrote (not the hub's views),
/// and its derived tables over `raw`: effective facts `eff` (corrections applied), state
/// interval pieces split at site-local hours `pieces`, planned production time per equipment
/// and hour `ppt`.
pub(super) async fn prepare_oracle(admin: &PgPool) {
    let mut stmts: Vec<String> = vec![
        "CREATE TABLE o_sites (site_id text, tz text)".into(),
        "CREATE TABLE o_equipment (equipment text, work_center text, class text)".into(),
        "CREATE TABLE o_reasons (code text, name text, cat text, counts bool)".into(),
        "CREATE TABLE o_orders (site_id text, id text, material text)".into(),
        "CREATE TABLE o_ideal (material text, equipment text, ideal_ms float8)".into(),
        "CREATE TABLE o_shifts (site_id text, name text, s_at timestamptz, e_at timestamptz,
                                b_start timestamptz, b_end timestamptz)"
            .into(),
    ];
    for (s, tz) in SITES {
        stmts.push(format!("INSERT INTO o_sites VALUES ('{s}', '{tz}')"));
        for (suffix, material) in ORDERS {
            stmts.push(format!(
                "INSERT INTO o_orders VALUES ('{s}', '{s}-{suffix}', '{material}')"
            ));
        }
    }
    for (e, wc, class) in EQUIPMENT {
        stmts.push(format!(
            "INSERT INTO o_equipment VALUES ('{e}', '{wc}', '{class}')"
        ));
    }
    for (code, name, cat, counts) in REASON_MASTER {
        stmts.push(format!(
            "INSERT INTO o_reasons VALUES ('{code}', '{name}', '{cat}', {counts})"
        ));
    }
    for material in ["BRACKET", "HINGE"] {
        for e in PRESSES {
            stmts.push(format!(
                "INSERT INTO o_ideal VALUES ('{material}', '{e}', {})",
                ideal_ms(material, e)
            ));
        }
    }
    for day in 2..5 {
        for (name, from, to, b0, b1) in K_SHIFTS {
            let at = |hm: &str| format!("'2026-11-0{day}T{hm}:00Z'");
            stmts.push(format!(
                "INSERT INTO o_shifts VALUES ('SITE_K', '{name}', {}, {}, {}, {})",
                at(from),
                at(to),
                at(b0),
                at(b1)
            ));
        }
    }
    stmts.push(
        // Corrections apply within a site; the greatest correction id wins; a void
        // correction (no replacement) leaves no fact; corrections are not facts themselves.
        "CREATE TABLE eff AS
         WITH x AS (SELECT DISTINCT ON (site_id, event_id) * FROM raw ORDER BY site_id, event_id),
         win AS (
            SELECT x.site_id, x.event_id AS x_id,
                   (SELECT c.event_id FROM x c
                    WHERE c.site_id = x.site_id AND c.kind = 'correction' AND c.corrects = x.event_id
                    ORDER BY c.event_id DESC LIMIT 1) AS w_id
            FROM x WHERE x.kind <> 'correction')
         SELECT x.site_id, x.occurred_at, x.event_id AS orig_id, w.event_id AS corr_id,
                CASE WHEN w.event_id IS NULL THEN x.kind ELSE w.r_kind END AS kind,
                CASE WHEN w.event_id IS NULL THEN x.equipment ELSE w.r_equipment END AS equipment,
                CASE WHEN w.event_id IS NULL THEN x.work_order ELSE w.r_work_order END AS work_order,
                CASE WHEN w.event_id IS NULL THEN x.good ELSE w.r_good END AS good,
                CASE WHEN w.event_id IS NULL THEN x.scrap ELSE w.r_scrap END AS scrap,
                CASE WHEN w.event_id IS NULL THEN x.scrap_reason ELSE w.r_scrap_reason END AS scrap_reason,
                CASE WHEN w.event_id IS NULL THEN x.state ELSE w.r_state END AS state,
                CASE WHEN w.event_id IS NULL THEN x.reason ELSE w.r_reason END AS reason
         FROM x JOIN win ON win.x_id = x.event_id AND win.site_id = x.site_id
         LEFT JOIN x w ON w.event_id = win.w_id AND w.site_id = x.site_id"
            .into(),
    );
    stmts.push(
        // A state lasts until the next state change of the equipment (same instant: by event
        // id, the corrected event's own id: its replacement "takes the corrected event's
        // place"; `a_correction_keeps_the_corrected_events_place_among_simultaneous_changes`
        // shows that case alone), the last one until now. Pieces are cut at site-local hours
        // up to 2026-11-08 (past every range asked).
        "CREATE TABLE pieces AS
         WITH iv AS (
            SELECT s.site_id, s.equipment, s.state, s.reason, s.occurred_at AS s_at,
                   coalesce(lead(s.occurred_at) OVER (PARTITION BY s.site_id, s.equipment
                                                      ORDER BY s.occurred_at, s.orig_id), now()) AS e_at
            FROM eff s WHERE s.kind = 'equipment_state')
         SELECT iv.site_id, iv.equipment, iv.state, iv.reason, h AS hour,
                (iv.state <> 'running' AND iv.e_at - iv.s_at < interval '120 seconds') AS small,
                extract(epoch FROM least(iv.e_at, h + interval '1 hour') - greatest(iv.s_at, h))::float8 AS secs,
                (h = date_trunc('hour', iv.s_at, o.tz))::int AS starts
         FROM iv JOIN o_sites o ON o.site_id = iv.site_id,
              generate_series(date_trunc('hour', iv.s_at, o.tz),
                              least(iv.e_at, '2026-11-08T00:00:00Z') - interval '1 microsecond',
                              interval '1 hour') h
         WHERE iv.e_at > iv.s_at"
            .into(),
    );
    stmts.push(
        // Planned production time: shift time minus breaks in each local hour; a site without
        // shifts is scheduled around the clock. Equipment counts from the first hour in which
        // any count or state change (corrected or not) named it.
        "CREATE TABLE ppt AS
         WITH hours AS (
            SELECT o.site_id, o.tz, h AS hour FROM o_sites o,
                   generate_series(('2026-11-01'::date)::timestamp AT TIME ZONE o.tz,
                                   ('2026-11-07'::date)::timestamp AT TIME ZONE o.tz - interval '1 hour',
                                   interval '1 hour') h),
         sched AS (
            SELECT hours.site_id, hours.hour,
                   CASE WHEN NOT EXISTS (SELECT 1 FROM o_shifts s WHERE s.site_id = hours.site_id)
                        THEN 3600.0
                        ELSE greatest(0,
                           coalesce((SELECT sum(greatest(0, extract(epoch FROM
                                        least(s.e_at, hours.hour + interval '1 hour') - greatest(s.s_at, hours.hour))))
                                     FROM o_shifts s WHERE s.site_id = hours.site_id), 0)
                         - coalesce((SELECT sum(greatest(0, extract(epoch FROM
                                        least(s.b_end, hours.hour + interval '1 hour') - greatest(s.b_start, hours.hour))))
                                     FROM o_shifts s WHERE s.site_id = hours.site_id), 0))
                   END::float8 AS secs
            FROM hours),
         seen AS (
            SELECT r.site_id, r.equipment, min(date_trunc('hour', r.occurred_at, o.tz)) AS first_hour
            FROM raw r JOIN o_sites o ON o.site_id = r.site_id
            WHERE r.kind IN ('production_count', 'equipment_state') GROUP BY 1, 2)
         SELECT s.site_id, e.equipment, s.hour, s.secs
         FROM sched s JOIN seen e ON e.site_id = s.site_id AND e.first_hour <= s.hour"
            .into(),
    );
    for s in stmts {
        sqlx::query(sqlx::AssertSqlSafe(s))
            .execute(admin)
            .await
            .unwrap();
    }
}

/// The group keys of a fine row, in this order.
const KEYS: [&str; 6] = [
    "site",
    "work_center",
    "equipment",
    "product",
    "day",
    "shift",
];
pub(super) type Keys = [Option<String>; 6];

/// Key columns over a source `x` with `site_id`, `equipment`, `hour`, `product`.
pub(super) const KEY_SQL: &str = "x.site_id, eqm.work_center, x.equipment, x.product,
    to_char(x.hour AT TIME ZONE o.tz, 'YYYY-MM-DD') AS day,
    (SELECT to_char(s.s_at AT TIME ZONE o.tz, 'YYYY-MM-DD') || ' ' || s.name FROM o_shifts s
     WHERE s.site_id = x.site_id AND s.s_at <= x.hour AND x.hour < s.e_at
     ORDER BY s.s_at LIMIT 1) AS shift";

/// Per-site range bounds: `$1`/`$2` from as an instant or a date, `$3`/`$4` to.
pub(super) const RANGE_SQL: &str = "o_sites o";
pub(super) const IN_RANGE: &str =
    "x.hour >= coalesce($1::timestamptz, ($2::date)::timestamp AT TIME ZONE o.tz)
    AND x.hour < coalesce($3::timestamptz, ($4::date)::timestamp AT TIME ZONE o.tz)";

/// A range as the API gets it and as the oracle binds it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Range {
    pub(super) query: &'static str,
    pub(super) from: (Option<&'static str>, Option<&'static str>),
    pub(super) to: (Option<&'static str>, Option<&'static str>),
}

pub(super) const RANGES: [Range; 2] = [
    Range {
        query: "from=2026-11-02&to=2026-11-05",
        from: (None, Some("2026-11-02")),
        to: (None, Some("2026-11-05")),
    },
    Range {
        query: "from=2026-11-02T12:00:00Z&to=2026-11-04T06:00:00Z",
        from: (Some("2026-11-02T12:00:00Z"), None),
        to: (Some("2026-11-04T06:00:00Z"), None),
    },
];

#[derive(Debug, Clone)]
pub(super) struct Fine {
    pub(super) keys: Keys,
    /// Scrap reason (production) or stop reason (pareto).
    pub(super) reason: Option<String>,
    pub(super) reason_name: Option<String>,
    pub(super) loss_category: Option<String>,
    pub(super) planned: bool,
    /// production: good, scrap, ideal s; time: ppt s, stop s; pareto: s, stops.
    pub(super) m: [f64; 3],
}

/// The fine rows of a source `x` of pieces (the last of the common table expressions `with`):
/// its key columns, its `measures`, within `range`; `joins` add tables the measures need.
pub(super) async fn fine_rows_of(
    admin: &PgPool,
    with: &str,
    measures: &str,
    joins: &str,
    range: Range,
    with_reason: bool,
) -> Vec<Fine> {
    let sql = format!(
        "WITH {with}
         SELECT {KEY_SQL}, {measures}
         FROM x JOIN {RANGE_SQL} ON o.site_id = x.site_id
         LEFT JOIN o_equipment eqm ON eqm.equipment = x.equipment {joins}
         WHERE {IN_RANGE}"
    );
    fine_rows(admin, &sql, range, with_reason).await
}

/// Asserts that the API's answer and the oracle have the same groups, in the same order;
/// `what` names the comparison and `differ` what differs.
pub(super) fn same_groups<K: std::fmt::Debug + PartialEq, A, B>(
    api: &BTreeMap<K, A>,
    oracle: &BTreeMap<K, B>,
    what: &str,
    differ: &str,
) {
    assert_eq!(
        api.keys().collect::<Vec<_>>(),
        oracle.keys().collect::<Vec<_>>(),
        "{what}: {differ}"
    );
}

/// The `group_by` sets every report over time is compared by (some reports add more).
pub(super) const GROUPINGS: [&[&str]; 6] = [
    &[],
    &["site"],
    &["site", "equipment"],
    &["work_center"],
    &["site", "day"],
    &["shift"],
];

pub(super) async fn fine_rows(
    admin: &PgPool,
    sql: &str,
    range: Range,
    with_reason: bool,
) -> Vec<Fine> {
    let ts = |s: Option<&str>| {
        s.map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
        })
    };
    let date = |s: Option<&str>| {
        s.map(|s| {
            time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).unwrap()
        })
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(ts(range.from.0))
        .bind(date(range.from.1))
        .bind(ts(range.to.0))
        .bind(date(range.to.1))
        .fetch_all(admin)
        .await
        .unwrap();
    rows.into_iter()
        .map(|r| Fine {
            keys: std::array::from_fn(|i| r.get::<Option<String>, _>(i)),
            reason: if with_reason { r.get("reason") } else { None },
            reason_name: if with_reason {
                r.get("reason_name")
            } else {
                None
            },
            loss_category: if with_reason {
                r.get("loss_category")
            } else {
                None
            },
            planned: if with_reason { r.get("planned") } else { false },
            m: [r.get("m0"), r.get("m1"), r.get("m2")],
        })
        .collect()
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

pub(super) fn pick_keys(k: &Keys, groups: &[&str]) -> Vec<Option<String>> {
    groups
        .iter()
        .map(|g| k[KEYS.iter().position(|x| x == g).unwrap()].clone())
        .collect()
}

pub(super) fn api_keys(r: &Value, groups: &[&str]) -> Vec<Option<String>> {
    groups
        .iter()
        .map(|g| r[*g].as_str().map(str::to_owned))
        .collect()
}

pub(super) fn num(r: &Value, f: &str) -> f64 {
    r[f].as_f64()
        .unwrap_or_else(|| panic!("{f} is not a number in {r}"))
}

/// Compares a ratio: `None` (denominator 0) must be JSON null.
pub(super) fn check_ratio(ctx: &str, field: &str, api: &Value, want: Option<f64>) {
    match want {
        None => assert!(
            api[field].is_null(),
            "{ctx} {field}: api {} oracle null",
            api[field]
        ),
        Some(w) => assert!(
            api[field].as_f64().is_some_and(|a| near(a, w)),
            "{ctx} {field}: api {} oracle {w}",
            api[field]
        ),
    }
}

pub(super) fn check_num(ctx: &str, field: &str, api: &Value, want: f64) {
    assert!(
        api[field].as_f64().is_some_and(|a| near(a, want)),
        "{ctx} {field}: api {} oracle {want}",
        api[field]
    );
}

pub(super) fn ratio(n: f64, d: f64) -> Option<f64> {
    (d > 0.0).then(|| n / d)
}

pub(super) type Sums = BTreeMap<Vec<Option<String>>, Vec<f64>>;

pub(super) fn sum_by(rows: &[Fine], groups: &[&str], width: usize, at: usize, n: usize) -> Sums {
    let mut out: Sums = BTreeMap::new();
    for r in rows {
        let e = out
            .entry(pick_keys(&r.keys, groups))
            .or_insert_with(|| vec![0.0; width]);
        for i in 0..n {
            e[at + i] += r.m[i];
        }
    }
    out
}

pub(super) fn merge(mut a: Sums, b: Sums) -> Sums {
    for (k, v) in b {
        let e = a.entry(k).or_insert_with(|| vec![0.0; v.len()]);
        for (x, y) in e.iter_mut().zip(v) {
            *x += y;
        }
    }
    a
}

/// The API's rows by key, without rows whose measures are all zero (the contract does not say
/// whether an empty group is listed); `fields` are the measures that decide emptiness.
pub(super) fn api_rows<'a>(
    v: &'a Value,
    groups: &[&str],
    fields: &[&str],
) -> BTreeMap<Vec<Option<String>>, &'a Value> {
    let mut out = BTreeMap::new();
    for r in v["rows"].as_array().unwrap() {
        if !fields.is_empty() && fields.iter().all(|f| r[*f].as_f64() == Some(0.0)) {
            continue;
        }
        let k = api_keys(r, groups);
        assert!(out.insert(k.clone(), r).is_none(), "duplicate row {k:?}");
    }
    out
}

/// The documented measure columns of each report (after the group keys).
fn measures_of(report: &str) -> &'static [&'static str] {
    match report {
        "oee" => &[
            "planned_production_seconds",
            "run_seconds",
            "stop_seconds",
            "ideal_seconds",
            "good",
            "scrap",
            "total_count",
            "availability",
            "performance",
            "quality",
            "oee",
        ],
        "production" => &["good", "scrap", "total_count", "scrap_rate"],
        "scrap" => &["reason", "scrap", "share"],
        "downtime-pareto" => &[
            "reason",
            "reason_name",
            "loss_category",
            "seconds",
            "stops",
            "share",
            "cumulative_share",
        ],
        _ => unreachable!(),
    }
}

/// `columns` are the group keys, then the documented measures, and every row has exactly
/// them; the CSV form of the same query is a header of `columns` and one line per row.
async fn check_shape(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
    report: &str,
    groups: &[&str],
    v: &Value,
) {
    let columns: Vec<&str> = v["columns"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: no columns: {v}"))
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        &columns[..groups.len().min(columns.len())],
        groups,
        "{path}: group keys first"
    );
    let mut measures: Vec<&str> = columns[groups.len()..].to_vec();
    let mut want: Vec<&str> = measures_of(report).to_vec();
    measures.sort_unstable();
    want.sort_unstable();
    assert_eq!(measures, want, "{path}: measure columns");
    let rows = v["rows"].as_array().unwrap();
    for r in rows {
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        let mut cols = columns.clone();
        keys.sort_unstable();
        cols.sort_unstable();
        assert_eq!(keys, cols, "{path}: a row's fields are the columns: {r}");
    }
    let csv = format!("{path}&format=csv");
    let r = Api::new(http, base, token).response(&csv).await;
    assert_eq!(r.status().as_u16(), 200, "{path} as CSV");
    let body = r.text().await.unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines.len(),
        rows.len() + 1,
        "{path} as CSV: header and one line per row"
    );
    assert_eq!(lines[0], columns.join(","), "{path} as CSV: header");
    for (line, r) in lines[1..].iter().zip(rows) {
        // Fields have no commas here (ids, dates, labels, numbers).
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), columns.len(), "{path} as CSV: {line}");
        for (f, c) in fields.iter().zip(&columns) {
            let ok = match &r[*c] {
                Value::Null => f.is_empty(),
                Value::String(s) => f == s,
                // This client's JSON parser may be one ulp off: compare numbers as numbers.
                Value::Number(n) => f.parse::<f64>().is_ok_and(|x| near(x, n.as_f64().unwrap())),
                Value::Bool(b) => *f == if *b { "true" } else { "false" },
                Value::Array(_) | Value::Object(_) => false,
            };
            assert!(
                ok,
                "{path} as CSV: column {c} is {f:?}, JSON has {} (row {r})",
                r[*c]
            );
        }
    }
}

/// Who asks the API what, for one range of one case: what every report's `compare` needs.
#[derive(Clone, Copy)]
pub(super) struct Ask<'a> {
    pub(super) http: &'a reqwest::Client,
    pub(super) base: &'a str,
    pub(super) reader: &'a str,
    pub(super) seed: u64,
    pub(super) q: &'static str,
}

impl Ask<'_> {
    /// `path` of `report` as JSON, answered 200 and of the documented shape (JSON and CSV).
    pub(super) async fn report(&self, report: &str, path: &str, groups: &[&str]) -> Value {
        let (status, v, _) = get(self.http, self.base, self.reader, path).await;
        assert_eq!(status, 200, "seed {}: {path}: {v}", self.seed);
        check_shape(self.http, self.base, self.reader, path, report, groups, &v).await;
        v
    }
}
