//! Oracle test of the reporting API: random event sets, ingested in random batches (with
//! re-sends) through the real ingest path, and every report compared with a **direct SQL
//! computation over the raw events**.
//!
//! The oracle does not read a single rollup. It decodes the rows the hub stored in `events`
//! (postcard bodies) into a plain temporary table, applies the correction rules of
//! `docs/reports.md` with ordinary SQL (latest correction wins, in place of the corrected
//! event), rebuilds state intervals with `lead()`, splits them at site-local hours with
//! `generate_series`, and computes planned production time from the shift calendar as written
//! in the master data. Two sites in different time zones (Berlin, Kolkata at UTC+05:30), one
//! with a shift calendar, three presses, two work orders each, corrections before and after
//! the events they correct, double corrections, material movements.
//!
//! `ORACLE_CASES` sets the number of random cases (default 6) and `ORACLE_SEED` replays one;
//! a failure prints the seed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use central_hub::serve::ReportSettings;
use serde_json::{Value, json};
use shared_model::event::{
    Correction, EquipmentStateChange, MachineState, MaterialMovement, ProductionCount, Replacement,
};
use shared_model::{
    EquipmentId, Event, EventBody, EventId, LotId, MaterialId, ReasonCodeId, SiteId, WorkOrderId,
};
use sqlx::{PgPool, Row};
use sync_protocol::store::HubStore;
use system_tests::hq::{get, hq, put_master, t};

/// splitmix64: small, deterministic, good enough to pick test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const SITES: [(&str, &str); 2] = [("SITE_A", "Europe/Berlin"), ("SITE_K", "Asia/Kolkata")];
const PRESSES: [&str; 3] = ["PRESS-01", "PRESS-02", "PRESS-03"];
const STATES: [MachineState; 5] = [
    MachineState::Running,
    MachineState::Idle,
    MachineState::Down,
    MachineState::Setup,
    MachineState::PlannedStop,
];
const REASONS: [Option<&str>; 4] = [None, Some("JAM"), Some("WAIT"), Some("BREAK")];
const SCRAP_REASONS: [Option<&str>; 3] = [None, Some("BURR"), Some("CRACK")];
/// The window events fall in: 2026-11-02T00:00Z plus up to three days.
const WINDOW_START: &str = "2026-11-02T00:00:00Z";
const WINDOW_MINUTES: u64 = 3 * 24 * 60;

fn wo(site: &str, i: u64) -> String {
    format!("{site}-WO-{}", i % 2 + 1)
}

/// One random case: the events of both sites, in generation order.
fn generate(rng: &mut Rng) -> Vec<Event> {
    let start = t(WINDOW_START);
    let mut out: Vec<Event> = Vec::new();
    let mut n: u64 = 0;
    for (site, _) in SITES {
        let sid = SiteId::new(site).unwrap();
        let mut mk = |rng: &mut Rng, minute: u64, second: u64, body: EventBody| {
            n += 1;
            let at = start.saturating_add_micros(((minute * 60 + second) * 1_000_000) as i64);
            // Ids grow with generation order (their time part), like real UUIDv7s.
            let id = EventId::from_parts(1_795_000_000_000 + n * 1000, {
                let mut r = [0u8; 10];
                r[..8].copy_from_slice(&rng.next().to_be_bytes());
                r
            });
            Event {
                event_id: id,
                site_id: sid.clone(),
                occurred_at: at,
                recorded_at: at,
                operator: None,
                body,
            }
        };
        for (p, press) in PRESSES.iter().enumerate() {
            // State changes at distinct seconds (the second encodes the press and a counter).
            let changes = 3 + rng.below(12);
            let mut minute = rng.below(600);
            for c in 0..changes {
                let st = *rng.pick(&STATES);
                let reason = if st == MachineState::Running {
                    None
                } else {
                    *rng.pick(&REASONS)
                };
                let body = EventBody::EquipmentState(EquipmentStateChange {
                    equipment: EquipmentId::new(*press).unwrap(),
                    state: st,
                    reason: reason.map(|r| ReasonCodeId::new(r).unwrap()),
                });
                out.push(mk(rng, minute, (p as u64 * 17 + c) % 60, body));
                // Mostly hours apart, sometimes a short (small) stop.
                minute += if rng.below(4) == 0 {
                    1
                } else {
                    20 + rng.below(300)
                };
                if minute >= WINDOW_MINUTES {
                    break;
                }
            }
            for _ in 0..(5 + rng.below(25)) {
                let scrap = rng.below(4) as u32;
                let body = EventBody::ProductionCount(ProductionCount {
                    equipment: EquipmentId::new(*press).unwrap(),
                    work_order: if rng.below(6) == 0 {
                        None
                    } else {
                        Some(WorkOrderId::new(wo(site, rng.next())).unwrap())
                    },
                    good: rng.below(300) as u32,
                    scrap,
                    rework: 0,
                    scrap_reason: if scrap > 0 {
                        rng.pick(&SCRAP_REASONS)
                            .map(|r| ReasonCodeId::new(r).unwrap())
                    } else {
                        None
                    },
                });
                let (minute, second) = (rng.below(WINDOW_MINUTES), rng.below(60));
                out.push(mk(rng, minute, second, body));
            }
        }
        for l in 0..3u64 {
            let body = EventBody::MaterialConsumed(MaterialMovement {
                lot: LotId::new(format!("{site}-RAW-{l}")).unwrap(),
                material: MaterialId::new("STEEL").unwrap(),
                quantity: 10.0 + l as f64,
                work_order: Some(WorkOrderId::new(wo(site, l)).unwrap()),
                equipment: None,
            });
            let (minute, second) = (rng.below(WINDOW_MINUTES), rng.below(60));
            out.push(mk(rng, minute, second, body));
        }
    }
    // Corrections of random earlier facts (production and state), some twice, some voiding.
    let targets: Vec<Event> = out
        .iter()
        .filter(|e| {
            matches!(
                e.body,
                EventBody::ProductionCount(_) | EventBody::EquipmentState(_)
            )
        })
        .cloned()
        .collect();
    let corrections = 3 + rng.below(10) as usize;
    for i in 0..corrections {
        let x = rng.pick(&targets).clone();
        let replacement = match (&x.body, rng.below(3)) {
            (_, 0) => None,
            (EventBody::ProductionCount(p), _) => {
                Some(Replacement::ProductionCount(ProductionCount {
                    good: rng.below(50) as u32,
                    scrap: rng.below(3) as u32,
                    scrap_reason: Some(ReasonCodeId::new("CRACK").unwrap()),
                    ..p.clone()
                }))
            }
            (EventBody::EquipmentState(s), _) => {
                Some(Replacement::EquipmentState(EquipmentStateChange {
                    state: *rng.pick(&STATES),
                    reason: Some(ReasonCodeId::new("JAM").unwrap()),
                    ..s.clone()
                }))
            }
            _ => None,
        };
        let id = EventId::from_parts(1_796_000_000_000 + i as u64 * 1000, [i as u8; 10]);
        out.push(Event {
            event_id: id,
            site_id: x.site_id.clone(),
            occurred_at: t("2026-11-06T00:00:00Z"),
            recorded_at: t("2026-11-06T00:00:00Z"),
            operator: None,
            body: EventBody::Correction(Correction {
                corrects: x.event_id,
                replacement,
                note: "oracle".into(),
            }),
        });
    }
    out
}

/// Shuffles and splits one site's events into batches, re-sending some.
fn batches(rng: &mut Rng, events: &[Event]) -> Vec<Vec<Event>> {
    let mut shuffled = events.to_vec();
    for i in (1..shuffled.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        shuffled.swap(i, j);
    }
    let mut out = Vec::new();
    let mut rest = &shuffled[..];
    while !rest.is_empty() {
        let n = (1 + rng.below(40) as usize).min(rest.len());
        out.push(rest[..n].to_vec());
        if rng.below(4) == 0 {
            out.push(rest[..n / 2].to_vec()); // a re-send
        }
        rest = &rest[n..];
    }
    out
}

/// Loads what the hub stored in `events` into the oracle's plain table `raw`.
async fn load_raw(admin: &PgPool) {
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

/// The oracle's effective facts (`eff`) and state intervals split at local hours (`pieces`),
/// over `raw`, for the range `[lo, hi)` given as `$1`/`$2` dates (local midnight per site).
const ORACLE_CTES: &str = "
tz AS (SELECT site_id, timezone FROM sites),
b AS (SELECT site_id, timezone, ($1::date)::timestamp AT TIME ZONE timezone AS lo,
             ($2::date)::timestamp AT TIME ZONE timezone AS hi FROM tz),
win AS (
    SELECT x.event_id AS x_id,
           (SELECT c.event_id FROM raw c WHERE c.kind = 'correction' AND c.corrects = x.event_id
            ORDER BY c.event_id DESC LIMIT 1) AS w_id
    FROM raw x WHERE x.kind <> 'correction'
),
eff AS (
    SELECT x.site_id, x.occurred_at, coalesce(w.event_id, x.event_id) AS fact_id,
           CASE WHEN w.event_id IS NULL THEN x.kind ELSE w.r_kind END AS kind,
           CASE WHEN w.event_id IS NULL THEN x.equipment ELSE w.r_equipment END AS equipment,
           CASE WHEN w.event_id IS NULL THEN x.work_order ELSE w.r_work_order END AS work_order,
           CASE WHEN w.event_id IS NULL THEN x.good ELSE w.r_good END AS good,
           CASE WHEN w.event_id IS NULL THEN x.scrap ELSE w.r_scrap END AS scrap,
           CASE WHEN w.event_id IS NULL THEN x.scrap_reason ELSE w.r_scrap_reason END AS scrap_reason,
           CASE WHEN w.event_id IS NULL THEN x.state ELSE w.r_state END AS state,
           CASE WHEN w.event_id IS NULL THEN x.reason ELSE w.r_reason END AS reason
    FROM raw x JOIN win ON win.x_id = x.event_id LEFT JOIN raw w ON w.event_id = win.w_id
),
iv AS (
    SELECT s.site_id, s.equipment, s.state, s.reason, s.occurred_at AS s_at,
           coalesce(lead(s.occurred_at) OVER (PARTITION BY s.site_id, s.equipment
                                              ORDER BY s.occurred_at, s.fact_id), now()) AS e_at
    FROM eff s WHERE s.kind = 'equipment_state'
),
pieces AS (
    SELECT iv.site_id, iv.equipment, iv.state, coalesce(iv.reason, '') AS reason, h AS hour,
           (iv.state <> 'running' AND iv.e_at - iv.s_at < interval '120 seconds') AS small,
           extract(epoch FROM least(iv.e_at, h + interval '1 hour') - greatest(iv.s_at, h)) AS secs,
           (h = date_trunc('hour', iv.s_at, tz.timezone))::int AS starts
    FROM iv JOIN tz ON tz.site_id = iv.site_id,
         generate_series(date_trunc('hour', iv.s_at, tz.timezone), iv.e_at - interval '1 microsecond',
                         interval '1 hour') h
    WHERE iv.e_at > iv.s_at
),
reasons AS (
    SELECT key AS code, json->'reason_code'->>'loss_category' AS cat,
           (json->'reason_code'->>'counts_against_availability')::bool AS counts
    FROM master_data WHERE kind = 'reason-codes'
)";

async fn oracle_production(admin: &PgPool) -> Vec<(String, String, i64, i64)> {
    let sql = format!(
        "WITH {ORACLE_CTES}
         SELECT e.site_id, e.equipment, sum(e.good)::int8 AS good, sum(e.scrap)::int8 AS scrap
         FROM eff e JOIN b ON b.site_id = e.site_id
         WHERE e.kind = 'production_count'
           AND date_trunc('hour', e.occurred_at, b.timezone) >= b.lo
           AND date_trunc('hour', e.occurred_at, b.timezone) < b.hi
         GROUP BY 1, 2 ORDER BY 1, 2"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(time::macros::date!(2026 - 11 - 02))
        .bind(time::macros::date!(2026 - 11 - 05))
        .fetch_all(admin)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

async fn oracle_pareto(admin: &PgPool, include_planned: bool) -> Vec<(Option<String>, f64, i64)> {
    let sql = format!(
        "WITH {ORACLE_CTES}
         SELECT nullif(p.reason, '') AS reason, sum(p.secs)::float8 AS secs, sum(p.starts)::int8 AS stops
         FROM pieces p JOIN b ON b.site_id = p.site_id LEFT JOIN reasons r ON r.code = p.reason
         WHERE p.state <> 'running' AND p.hour >= b.lo AND p.hour < b.hi
           AND ($3 OR NOT (p.state = 'planned_stop' OR coalesce(r.cat, '') = 'planned'))
         GROUP BY 1 HAVING sum(p.secs) > 0 OR sum(p.starts) > 0
         ORDER BY 2 DESC, 1 NULLS LAST"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(time::macros::date!(2026 - 11 - 02))
        .bind(time::macros::date!(2026 - 11 - 05))
        .bind(include_planned)
        .fetch_all(admin)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Per site and equipment: PPT, clamped stop time, ideal time, good, scrap (seconds).
async fn oracle_oee(admin: &PgPool) -> Vec<(String, String, [f64; 5])> {
    let sql = format!(
        "WITH {ORACLE_CTES},
         seen AS (SELECT site_id, equipment, min(date_trunc('hour', occurred_at, tz.timezone)) AS first_hour
                  FROM raw JOIN tz USING (site_id)
                  WHERE kind IN ('production_count', 'equipment_state') GROUP BY 1, 2),
         shifts AS (SELECT split_part(md.key, '/', 1) AS site_id, (s->>'start')::timestamptz AS s_at,
                           (s->>'end')::timestamptz AS e_at, s->'planned_breaks' AS breaks
                    FROM master_data md, jsonb_array_elements(md.json->'shift_calendar'->'shifts') s
                    WHERE md.kind = 'shift-calendars'),
         hours AS (SELECT b.site_id, h AS hour FROM b,
                   generate_series(b.lo, b.hi - interval '1 hour', interval '1 hour') h),
         sched AS (
            SELECT hours.site_id, hours.hour,
                   CASE WHEN NOT EXISTS (SELECT 1 FROM shifts WHERE shifts.site_id = hours.site_id)
                        THEN 3600.0
                        ELSE coalesce((SELECT sum(greatest(0, extract(epoch FROM least(s.e_at, hours.hour + interval '1 hour') - greatest(s.s_at, hours.hour))))
                                       FROM shifts s WHERE s.site_id = hours.site_id), 0)
                           - coalesce((SELECT sum(greatest(0, extract(epoch FROM least((br->>'end')::timestamptz, hours.hour + interval '1 hour') - greatest((br->>'start')::timestamptz, hours.hour))))
                                       FROM shifts s, jsonb_array_elements(s.breaks) br WHERE s.site_id = hours.site_id), 0)
                   END::float8 AS secs
            FROM hours),
         ppt AS (SELECT s.site_id, e.equipment, s.hour, s.secs FROM sched s
                 JOIN seen e ON e.site_id = s.site_id AND e.first_hour <= s.hour),
         stops AS (SELECT p.site_id, p.equipment, p.hour, sum(p.secs)::float8 AS secs
                   FROM pieces p LEFT JOIN reasons r ON r.code = p.reason
                   WHERE p.state NOT IN ('running', 'planned_stop') AND NOT p.small
                     AND (p.reason = '' OR coalesce(r.counts, true))
                   GROUP BY 1, 2, 3),
         prod AS (SELECT e.site_id, e.equipment, date_trunc('hour', e.occurred_at, b.timezone) AS hour,
                         e.good, e.scrap,
                         (e.good + e.scrap) * coalesce((
                            SELECT (rt.json->'routing_step'->>'ideal_cycle_time_ms')::float8 / 1000
                            FROM master_data rt, work_orders w
                            WHERE rt.kind = 'routings' AND w.site_id = e.site_id AND w.id = e.work_order
                              AND rt.json->'routing_step'->>'material' = w.material), 0) AS ideal
                  FROM eff e JOIN b ON b.site_id = e.site_id WHERE e.kind = 'production_count')
         SELECT p.site_id, p.equipment, sum(p.secs)::float8,
                coalesce((SELECT sum(least(st.secs, p2.secs)) FROM stops st JOIN ppt p2
                          ON p2.site_id = st.site_id AND p2.equipment = st.equipment AND p2.hour = st.hour
                          WHERE st.site_id = p.site_id AND st.equipment = p.equipment), 0)::float8,
                coalesce((SELECT sum(ideal) FROM prod x JOIN b ON b.site_id = x.site_id WHERE x.site_id = p.site_id AND x.equipment = p.equipment AND x.hour >= b.lo AND x.hour < b.hi), 0)::float8,
                coalesce((SELECT sum(good) FROM prod x JOIN b ON b.site_id = x.site_id WHERE x.site_id = p.site_id AND x.equipment = p.equipment AND x.hour >= b.lo AND x.hour < b.hi), 0)::float8,
                coalesce((SELECT sum(scrap) FROM prod x JOIN b ON b.site_id = x.site_id WHERE x.site_id = p.site_id AND x.equipment = p.equipment AND x.hour >= b.lo AND x.hour < b.hi), 0)::float8
         FROM ppt p GROUP BY 1, 2 ORDER BY 1, 2"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(time::macros::date!(2026 - 11 - 02))
        .bind(time::macros::date!(2026 - 11 - 05))
        .fetch_all(admin)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                [r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)],
            )
        })
        .collect()
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

async fn run_case(seed: u64) {
    let mut rng = Rng(seed);
    let h = hq("oracle", &SITES).await;
    let hub = h.hub(ReportSettings::default()).await;
    let base = format!("http://{}", hub.http_addr);
    let http = reqwest::Client::new();
    let writer = h.token("hq:write", None).await;
    put_master(
        &http,
        &base,
        &writer,
        "materials",
        json!([
        {"id": "BRACKET", "name": "Bracket", "unit": "pcs", "tracking": "lot"},
        {"id": "HINGE", "name": "Hinge", "unit": "pcs", "tracking": "lot"}]),
    )
    .await;
    put_master(&http, &base, &writer, "routings", json!([
        {"material": "BRACKET", "version": 1, "seq": 10, "operation_code": "PRESS", "work_center_class": "press",
         "ideal_cycle_time_ms": 1500, "setup_time_ms": 0},
        {"material": "HINGE", "version": 1, "seq": 10, "operation_code": "PRESS", "work_center_class": "press",
         "ideal_cycle_time_ms": 4000, "setup_time_ms": 0}])).await;
    put_master(
        &http,
        &base,
        &writer,
        "equipment",
        json!(
            PRESSES
                .iter()
                .map(|p| json!(
        {"id": p, "parent": "WC-PRESSES", "level": "work_unit", "name": p, "class": "press"}))
                .collect::<Vec<_>>()
        ),
    )
    .await;
    put_master(&http, &base, &writer, "reason-codes", json!([
        {"code": "JAM", "parent": null, "name": "Jam", "loss_category": "unplanned", "counts_against_availability": true},
        {"code": "WAIT", "parent": null, "name": "Waiting", "loss_category": "unplanned", "counts_against_availability": true},
        {"code": "BREAK", "parent": null, "name": "Break", "loss_category": "planned", "counts_against_availability": false}])).await;
    // Kolkata works two shifts a day (06:00–14:00 and 14:00–22:00 local) with a break each.
    let mut shifts = Vec::new();
    for day in 2..5 {
        for (name, from, to, brk) in [
            ("A", "00:30", "08:30", "04:30"),
            ("B", "08:30", "16:30", "12:30"),
        ] {
            shifts.push(json!({"name": name,
                "start": format!("2026-11-0{day}T{from}:00Z"), "end": format!("2026-11-0{day}T{to}:00Z"),
                "planned_breaks": [{"start": format!("2026-11-0{day}T{brk}:00Z"), "end": format!("2026-11-0{day}T{brk}:00Z").replace(":30:00Z", ":50:00Z")}]}));
        }
    }
    put_master(
        &http,
        &base,
        &writer,
        "shift-calendars",
        json!([{"site_id": "SITE_K", "name": "two shifts", "shifts": shifts}]),
    )
    .await;
    for (site, _) in SITES {
        for (i, material) in ["BRACKET", "HINGE"].iter().enumerate() {
            let r = http
                .post(format!("{base}/api/v1/sites/{site}/work-orders"))
                .bearer_auth(&writer)
                .json(&json!({"id": format!("{site}-WO-{}", i + 1), "material": material, "planned_quantity": 1000}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201);
        }
    }
    let events = generate(&mut rng);
    let mut n_batches = 0;
    for (site, _) in SITES {
        let sid = SiteId::new(site).unwrap();
        let mine: Vec<Event> = events
            .iter()
            .filter(|e| e.site_id == sid)
            .cloned()
            .collect();
        for batch in batches(&mut rng, &mine) {
            n_batches += 1;
            h.store.ingest_events(&sid, &batch).await.unwrap();
        }
    }
    load_raw(&h.admin).await;
    let corrections = events
        .iter()
        .filter(|e| matches!(e.body, EventBody::Correction(_)))
        .count();
    println!(
        "  {} events ({corrections} corrections) in {} batches",
        events.len(),
        n_batches
    );
    let reader = h.token("hq:read", None).await;
    let range = "from=2026-11-02&to=2026-11-05";

    // Production by site and equipment.
    let (_, v, _) = get(
        &http,
        &base,
        &reader,
        &format!("/api/v1/reports/production?{range}&group_by=site,equipment"),
    )
    .await;
    let api: Vec<(String, String, i64, i64)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["site"].as_str().unwrap().to_owned(),
                r["equipment"].as_str().unwrap().to_owned(),
                r["good"].as_i64().unwrap(),
                r["scrap"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        api,
        oracle_production(&h.admin).await,
        "seed {seed}: production by site, equipment"
    );

    // Downtime Pareto, without and with planned stops.
    for planned in [false, true] {
        let (_, v, _) = get(
            &http,
            &base,
            &reader,
            &format!("/api/v1/reports/downtime-pareto?{range}&include_planned={planned}"),
        )
        .await;
        let api: Vec<(Option<String>, f64, i64)> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["reason"].as_str().map(str::to_owned),
                    r["seconds"].as_f64().unwrap(),
                    r["stops"].as_i64().unwrap(),
                )
            })
            .collect();
        let oracle = oracle_pareto(&h.admin, planned).await;
        assert_eq!(
            api.len(),
            oracle.len(),
            "seed {seed}: pareto rows (planned {planned}): api {api:?} oracle {oracle:?}"
        );
        for (a, o) in api.iter().zip(&oracle) {
            assert!(
                a.0 == o.0 && near(a.1, o.1) && a.2 == o.2,
                "seed {seed}: pareto (planned {planned}) api {a:?} oracle {o:?}"
            );
        }
        let total: f64 = oracle.iter().map(|o| o.1).sum();
        let mut cum = 0.0;
        for (r, o) in v["rows"].as_array().unwrap().iter().zip(&oracle) {
            cum += o.1;
            assert!(
                near(r["cumulative_share"].as_f64().unwrap(), cum / total),
                "seed {seed}: cumulative share"
            );
        }
    }

    // OEE components by site and equipment, and the ratios from them.
    let (_, v, _) = get(
        &http,
        &base,
        &reader,
        &format!("/api/v1/reports/oee?{range}&group_by=site,equipment"),
    )
    .await;
    let oracle = oracle_oee(&h.admin).await;
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), oracle.len(), "seed {seed}: oee rows: {v}");
    println!(
        "  oee rows {}, total OEE {}, pareto reasons compared",
        rows.len(),
        v["total"]["oee"]
    );
    for (r, (site, eq, o)) in rows.iter().zip(&oracle) {
        assert_eq!(
            (
                r["site"].as_str().unwrap(),
                r["equipment"].as_str().unwrap()
            ),
            (site.as_str(), eq.as_str())
        );
        let ctx = format!("seed {seed}: oee {site}/{eq}: api {r} oracle {o:?}");
        assert!(
            near(r["planned_production_seconds"].as_f64().unwrap(), o[0]),
            "{ctx} (ppt)"
        );
        assert!(
            near(r["stop_seconds"].as_f64().unwrap(), o[1]),
            "{ctx} (stops)"
        );
        assert!(
            near(r["ideal_seconds"].as_f64().unwrap(), o[2]),
            "{ctx} (ideal)"
        );
        assert!(near(r["good"].as_f64().unwrap(), o[3]), "{ctx} (good)");
        let run = o[0] - o[1];
        if o[0] > 0.0 {
            assert!(
                near(r["availability"].as_f64().unwrap(), run / o[0]),
                "{ctx} (A)"
            );
        }
        if run > 0.0 && o[3] + o[4] > 0.0 {
            let oee = (run / o[0]) * (o[2] / run) * (o[3] / (o[3] + o[4]));
            assert!(near(r["oee"].as_f64().unwrap(), oee), "{ctx} (OEE)");
        }
    }
    // The site roll-up is the sum of its equipment's components.
    let (_, v, _) = get(
        &http,
        &base,
        &reader,
        &format!("/api/v1/reports/oee?{range}&group_by=site"),
    )
    .await;
    for r in v["rows"].as_array().unwrap() {
        let site = r["site"].as_str().unwrap();
        let ppt: f64 = oracle.iter().filter(|o| o.0 == site).map(|o| o.2[0]).sum();
        let ideal: f64 = oracle.iter().filter(|o| o.0 == site).map(|o| o.2[2]).sum();
        let good: f64 = oracle.iter().filter(|o| o.0 == site).map(|o| o.2[3]).sum();
        let scrap: f64 = oracle.iter().filter(|o| o.0 == site).map(|o| o.2[4]).sum();
        if ppt > 0.0 && good + scrap > 0.0 {
            assert!(
                near(
                    r["oee"].as_f64().unwrap(),
                    ideal * good / (good + scrap) / ppt
                ),
                "seed {seed}: {site} roll-up"
            );
        }
    }
    hub.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_equal_direct_sql_over_raw_events() {
    let seeds: Vec<u64> = match std::env::var("ORACLE_SEED") {
        Ok(s) => vec![s.parse().expect("ORACLE_SEED is a number")],
        Err(_) => {
            let cases: u64 = std::env::var("ORACLE_CASES")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(6);
            (0..cases).map(|i| 0x5EED_0000 + i * 7919).collect()
        }
    };
    for seed in seeds {
        println!("oracle case seed {seed} (replay with ORACLE_SEED={seed})");
        run_case(seed).await;
    }
}

/// A work order as the site's edge reports it: one Automerge change from an actor of the site.
async fn site_order(
    store: &central_hub::db::store::PgHubStore,
    site: &str,
    id: &str,
    material: &str,
    due: &str,
    ended_at: Option<&str>,
) {
    use sync_protocol::message::{RecordChange, RecordId, RecordKind};
    let mut order = shared_model::work_order::WorkOrder::released(
        WorkOrderId::new(id).unwrap(),
        SiteId::new(site).unwrap(),
        MaterialId::new(material).unwrap(),
        100,
    );
    order.due = Some(t(due));
    if let Some(end) = ended_at {
        order.state = shared_model::work_order::WorkOrderState::Ended;
        order.actual_start = Some(t("2026-11-10T00:00:00Z"));
        order.actual_end = Some(t(end));
        order.good_count = 100;
    }
    let mut doc = automerge::AutoCommit::new();
    sync_protocol::records::write_all(
        &mut doc,
        &sync_protocol::records::WorkOrderView {
            order,
            work_unit: None,
        },
    )
    .unwrap();
    doc.commit();
    let change = RecordChange::new(
        RecordId::new(RecordKind::WorkOrder, id).unwrap(),
        doc.get_last_local_change().unwrap().raw_bytes().to_vec(),
    )
    .unwrap();
    store
        .apply_changes(&SiteId::new(site).unwrap(), &[change])
        .await
        .unwrap();
}

fn movement(consumed: bool, lot: &str, material: &str, qty: f64, order: &str) -> EventBody {
    let m = MaterialMovement {
        lot: LotId::new(lot).unwrap(),
        material: MaterialId::new(material).unwrap(),
        quantity: qty,
        work_order: Some(WorkOrderId::new(order).unwrap()),
        equipment: None,
    };
    if consumed {
        EventBody::MaterialConsumed(m)
    } else {
        EventBody::MaterialProduced(m)
    }
}

/// Hand-worked figures, written out: a cross-site roll-up that differs from the average of
/// percentages, a Pareto with its order and cumulative shares, an on-time rate, and a lot
/// genealogy of three levels across two sites in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_worked_rollup_pareto_on_time_and_genealogy() {
    use system_tests::hq::{close, count, event, state};
    let h = hq(
        "hand",
        &[("SITE_X", "UTC"), ("SITE_Y", "UTC"), ("SITE_P", "UTC")],
    )
    .await;
    let hub = h.hub(ReportSettings::default()).await;
    let base = format!("http://{}", hub.http_addr);
    let http = reqwest::Client::new();
    let writer = h.token("hq:write", None).await;
    put_master(&http, &base, &writer, "routings", json!([
        {"material": "M1", "version": 1, "seq": 10, "operation_code": "PRESS", "work_center_class": "press",
         "ideal_cycle_time_ms": 1000, "setup_time_ms": 0}])).await;
    put_master(&http, &base, &writer, "reason-codes", json!([
        {"code": "JAM", "parent": null, "name": "Jam", "loss_category": "unplanned", "counts_against_availability": true},
        {"code": "WAIT", "parent": null, "name": "Waiting", "loss_category": "unplanned", "counts_against_availability": true},
        {"code": "BREAK", "parent": null, "name": "Break", "loss_category": "planned", "counts_against_availability": false}])).await;
    let (x, y, p) = (
        SiteId::new("SITE_X").unwrap(),
        SiteId::new("SITE_Y").unwrap(),
        SiteId::new("SITE_P").unwrap(),
    );
    // Orders: X-WO-1 due 02:00 ended 01:30 (on time), X-WO-2 due 03:00 ended 03:30 (late),
    // X-WO-3 due 03:30 still open; Y-WO-1 due next week (outside the range).
    site_order(
        &h.store,
        "SITE_X",
        "SITE_X-WO-1",
        "M1",
        "2026-11-10T02:00:00Z",
        Some("2026-11-10T01:30:00Z"),
    )
    .await;
    site_order(
        &h.store,
        "SITE_X",
        "SITE_X-WO-2",
        "M1",
        "2026-11-10T03:00:00Z",
        Some("2026-11-10T03:30:00Z"),
    )
    .await;
    site_order(
        &h.store,
        "SITE_X",
        "SITE_X-WO-3",
        "M1",
        "2026-11-10T03:30:00Z",
        None,
    )
    .await;
    site_order(
        &h.store,
        "SITE_Y",
        "SITE_Y-WO-1",
        "M1",
        "2026-11-17T00:00:00Z",
        None,
    )
    .await;

    // Roll-up. SITE_X: running from 00:00, PPT 4 h = 14,400 s, 10,800 good at 1 s ideal → OEE
    // 0.75. SITE_Y: first reports at 03:00, PPT 3,600 s, 900 good → OEE 0.25. The average of
    // the two percentages would be 0.50; the roll-up sums components:
    // (10,800 + 900) × 1 s / (14,400 + 3,600) s = 11,700 / 18,000 = 0.65.
    let mut ex = vec![event(
        &x,
        1,
        t("2026-11-10T00:00:00Z"),
        state("PRESS-01", MachineState::Running, None),
    )];
    for i in 0..108u64 {
        let at = t("2026-11-10T00:00:00Z").saturating_add_micros(i as i64 * 2 * 60_000_000);
        ex.push(event(
            &x,
            10 + i,
            at,
            count("PRESS-01", "SITE_X-WO-1", 100, 0),
        ));
    }
    h.store.ingest_events(&x, &ex).await.unwrap();
    let ey = vec![
        event(
            &y,
            1,
            t("2026-11-10T03:00:00Z"),
            state("PRESS-01", MachineState::Running, None),
        ),
        event(
            &y,
            2,
            t("2026-11-10T03:30:00Z"),
            count("PRESS-01", "SITE_Y-WO-1", 900, 0),
        ),
    ];
    h.store.ingest_events(&y, &ey).await.unwrap();
    let reader = h.token("hq:read", None).await;
    let range = "from=2026-11-10T00:00:00Z&to=2026-11-10T04:00:00Z";
    let (_, v, _) = get(
        &http,
        &base,
        &reader,
        &format!("/api/v1/reports/oee?{range}&site=SITE_X&site=SITE_Y"),
    )
    .await;
    assert!(close(v["rows"][0]["oee"].as_f64().unwrap(), 0.75), "{v}");
    assert!(close(v["rows"][1]["oee"].as_f64().unwrap(), 0.25), "{v}");
    assert!(
        close(v["total"]["oee"].as_f64().unwrap(), 0.65),
        "summed, not averaged: {v}"
    );

    // Pareto at SITE_P: JAM 30 + 15 min (2 stops), WAIT 20 min, unassigned 5 min, a planned
    // BREAK of 30 min. Without planned stops (70 min in all): JAM 45/70 = 0.642857,
    // cumulative 0.642857; WAIT 20/70 → 0.928571; unassigned 5/70 → 1.0.
    // With them (100 min): JAM 0.45, BREAK 0.75, WAIT 0.95, unassigned 1.0.
    let changes = [
        ("00:00", MachineState::Running, None),
        ("00:10", MachineState::Down, Some("JAM")),
        ("00:40", MachineState::Running, None),
        ("01:00", MachineState::Down, Some("WAIT")),
        ("01:20", MachineState::Running, None),
        ("02:00", MachineState::Down, Some("JAM")),
        ("02:15", MachineState::Running, None),
        ("03:00", MachineState::PlannedStop, Some("BREAK")),
        ("03:30", MachineState::Down, None),
        ("03:35", MachineState::Running, None),
    ];
    let ep: Vec<Event> = changes
        .iter()
        .enumerate()
        .map(|(i, (at, s, r))| {
            event(
                &p,
                i as u64 + 1,
                t(&format!("2026-11-10T{at}:00Z")),
                state("PRESS-09", *s, *r),
            )
        })
        .collect();
    h.store.ingest_events(&p, &ep).await.unwrap();
    let pareto = |v: &Value| -> Vec<(Option<String>, f64, i64, f64)> {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["reason"].as_str().map(str::to_owned),
                    r["seconds"].as_f64().unwrap() / 60.0,
                    r["stops"].as_i64().unwrap(),
                    r["cumulative_share"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (_, v, _) = get(
        &http,
        &base,
        &reader,
        &format!("/api/v1/reports/downtime-pareto?{range}&site=SITE_P"),
    )
    .await;
    let got = pareto(&v);
    let want = [
        (Some("JAM"), 45.0, 2, 45.0 / 70.0),
        (Some("WAIT"), 20.0, 1, 65.0 / 70.0),
        (None, 5.0, 1, 1.0),
    ];
    assert_eq!(got.len(), want.len(), "{v}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            g.0.as_deref() == w.0 && close(g.1, w.1) && g.2 == w.2 && close(g.3, w.3),
            "{g:?} != {w:?}"
        );
    }
    let (_, v, _) = get(
        &http,
        &base,
        &reader,
        &format!("/api/v1/reports/downtime-pareto?{range}&site=SITE_P&include_planned=true"),
    )
    .await;
    let got = pareto(&v);
    let order: Vec<Option<&str>> = got.iter().map(|g| g.0.as_deref()).collect();
    assert_eq!(order, vec![Some("JAM"), Some("BREAK"), Some("WAIT"), None]);
    let cumulative: Vec<f64> = got.iter().map(|g| g.3).collect();
    for (c, w) in cumulative.iter().zip([0.45, 0.75, 0.95, 1.0]) {
        assert!(close(*c, w), "{cumulative:?}");
    }
    // The stops lowered SITE_P's availability by 70 min of its 240 (the break did not).
    let (_, v, _) = get(
        &http,
        &base,
        &reader,
        &format!("/api/v1/reports/oee?{range}&site=SITE_P"),
    )
    .await;
    assert!(
        close(
            v["rows"][0]["availability"].as_f64().unwrap(),
            170.0 / 240.0
        ),
        "{v}"
    );

    // On-time in [00:00, 04:00): three orders due, one on time → 1/3.
    let (_, v, _) = get(
        &http,
        &base,
        &reader,
        &format!("/api/v1/reports/on-time?{range}"),
    )
    .await;
    let row = &v["rows"][0];
    assert_eq!(
        (
            row["site"].as_str(),
            row["due"].as_i64(),
            row["on_time"].as_i64(),
            row["late"].as_i64(),
            row["open"].as_i64()
        ),
        (Some("SITE_X"), Some(3), Some(1), Some(1), Some(1)),
        "{v}"
    );
    assert!(close(row["on_time_rate"].as_f64().unwrap(), 1.0 / 3.0));
    assert_eq!(
        v["rows"].as_array().unwrap().len(),
        1,
        "SITE_Y's order is due next week: {v}"
    );

    // Genealogy: SITE_X's order 10 turns RAW-1 (12.5 kg) and RAW-2 (0.5 l) into SUB-1 (40);
    // SUB-1 goes to SITE_Y, whose order 20 turns SUB-1 (40) and HW-1 (80) into FG-1 (40), and
    // order 21 packs FG-1 (40) into PAL-1 (1).
    let gx = vec![
        event(
            &x,
            500,
            t("2026-11-10T01:00:00Z"),
            movement(true, "RAW-1", "STEEL", 12.5, "SITE_X-WO-10"),
        ),
        event(
            &x,
            501,
            t("2026-11-10T01:00:00Z"),
            movement(true, "RAW-2", "PAINT", 0.5, "SITE_X-WO-10"),
        ),
        event(
            &x,
            502,
            t("2026-11-10T01:30:00Z"),
            movement(false, "SUB-1", "BLANK", 40.0, "SITE_X-WO-10"),
        ),
    ];
    let gy = vec![
        event(
            &y,
            500,
            t("2026-11-10T02:00:00Z"),
            movement(true, "SUB-1", "BLANK", 40.0, "SITE_Y-WO-20"),
        ),
        event(
            &y,
            501,
            t("2026-11-10T02:00:00Z"),
            movement(true, "HW-1", "SCREW", 80.0, "SITE_Y-WO-20"),
        ),
        event(
            &y,
            502,
            t("2026-11-10T02:30:00Z"),
            movement(false, "FG-1", "BRACKET", 40.0, "SITE_Y-WO-20"),
        ),
        event(
            &y,
            503,
            t("2026-11-10T03:00:00Z"),
            movement(true, "FG-1", "BRACKET", 40.0, "SITE_Y-WO-21"),
        ),
        event(
            &y,
            504,
            t("2026-11-10T03:30:00Z"),
            movement(false, "PAL-1", "KIT", 1.0, "SITE_Y-WO-21"),
        ),
    ];
    h.store.ingest_events(&x, &gx).await.unwrap();
    h.store.ingest_events(&y, &gy).await.unwrap();
    let edges = |v: &Value| -> Vec<(String, String, String, String, f64, i64)> {
        let mut e: Vec<_> = v["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["from_lot"].as_str().unwrap().to_owned(),
                    e["to_lot"].as_str().unwrap().to_owned(),
                    e["work_order"].as_str().unwrap().to_owned(),
                    e["site"].as_str().unwrap().to_owned(),
                    e["quantity"].as_f64().unwrap(),
                    e["depth"].as_i64().unwrap(),
                )
            })
            .collect();
        e.sort_by(|a, b| a.partial_cmp(b).unwrap());
        e
    };
    let e = |f: &str, to: &str, wo: &str, s: &str, q: f64, d: i64| {
        (
            f.to_owned(),
            to.to_owned(),
            wo.to_owned(),
            s.to_owned(),
            q,
            d,
        )
    };
    let (_, v, _) = get(
        &http,
        &base,
        &reader,
        "/api/v1/reports/genealogy/PAL-1?direction=backward",
    )
    .await;
    assert_eq!(
        edges(&v),
        vec![
            e("FG-1", "HW-1", "SITE_Y-WO-20", "SITE_Y", 80.0, 2),
            e("FG-1", "SUB-1", "SITE_Y-WO-20", "SITE_Y", 40.0, 2),
            e("PAL-1", "FG-1", "SITE_Y-WO-21", "SITE_Y", 40.0, 1),
            e("SUB-1", "RAW-1", "SITE_X-WO-10", "SITE_X", 12.5, 3),
            e("SUB-1", "RAW-2", "SITE_X-WO-10", "SITE_X", 0.5, 3),
        ],
        "{v}"
    );
    assert_eq!(
        v["nodes"].as_array().unwrap().len(),
        6,
        "PAL-1 and five lots behind it: {v}"
    );
    let (_, v, _) = get(
        &http,
        &base,
        &reader,
        "/api/v1/reports/genealogy/RAW-1?direction=forward",
    )
    .await;
    assert_eq!(
        edges(&v),
        vec![
            e("FG-1", "PAL-1", "SITE_Y-WO-21", "SITE_Y", 1.0, 3),
            e("RAW-1", "SUB-1", "SITE_X-WO-10", "SITE_X", 40.0, 1),
            e("SUB-1", "FG-1", "SITE_Y-WO-20", "SITE_Y", 40.0, 2),
        ],
        "{v}"
    );
    // A SITE_Y token sees SITE_Y's movements only: the walk stops at the plant's border.
    let y_token = h.token("hq:read", Some("SITE_Y")).await;
    let (_, v, _) = get(&http, &base, &y_token, "/api/v1/reports/genealogy/PAL-1").await;
    assert_eq!(edges(&v).len(), 3, "{v}");
    assert!(edges(&v).iter().all(|e| e.3 == "SITE_Y"));
    hub.stop().await.unwrap();
}
