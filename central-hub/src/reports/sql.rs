//! The report queries. Each reads rollups maintained on ingest (`production_hourly`,
//! `state_hourly`, `state_current`, `equipment_seen`, `lot_movements`, `work_orders`) and master
//! data views, never the raw `events`. Sums come back from SQL; ratios are computed in Rust from
//! the sums, so a roll-up never averages percentages.

use std::fmt::Write as _;

use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};

use super::params::{Bound, Direction, Group, Query};

/// Most rows a report returns; a bigger answer is a question the caller should narrow.
pub const ROWS_MAX: usize = 50_000;
/// Deepest genealogy walk.
pub const GENEALOGY_DEPTH_MAX: i32 = 20;
/// Most genealogy edges in one answer (and so most lots visited).
pub const GENEALOGY_EDGES_MAX: i64 = 10_000;

/// Per-site bounds of the range: `$1` sites, `$2`/`$3` from (instant or date), `$4`/`$5` to.
const BOUNDS: &str = "b AS MATERIALIZED (
    SELECT s.site_id, s.timezone AS tz,
           coalesce($2::timestamptz, ($3::date)::timestamp AT TIME ZONE s.timezone) AS lo,
           coalesce($4::timestamptz, ($5::date)::timestamp AT TIME ZONE s.timezone) AS hi
    FROM sites s WHERE s.site_id = ANY($1))";

/// Shift instances near the range, for `shift` groups and planned production time.
const SHIFTS: &str = "sh AS MATERIALIZED (
    SELECT m.site_id, m.shift_name, m.start_at, m.end_at, m.breaks
    FROM md_shifts m JOIN b ON b.site_id = m.site_id
    WHERE m.end_at > b.lo - interval '1 day' AND m.start_at < b.hi + interval '1 day')";

/// The SQL of the group keys over a source aliased `x` (with `site_id`, and where the group
/// needs them `equipment`, `hour`, `work_order`), joined to `b`.
struct Keys {
    select: String,
    joins: String,
    group_by: String,
    n: usize,
}

fn keys(groups: &[Group], product_col: &str, time_col: &str) -> Keys {
    let mut select = String::new();
    let mut joins = String::new();
    for (i, g) in groups.iter().enumerate() {
        let expr = match g {
            Group::Site => "x.site_id::text".to_owned(),
            Group::Equipment => "x.equipment".to_owned(),
            Group::WorkCenter => {
                joins.push_str(" LEFT JOIN md_equipment eqk ON eqk.equipment = x.equipment");
                "eqk.parent".to_owned()
            }
            Group::Product => product_col.to_owned(),
            Group::Day => format!("to_char({time_col} AT TIME ZONE b.tz, 'YYYY-MM-DD')"),
            Group::Shift => {
                let _ = write!(
                    joins,
                    " LEFT JOIN LATERAL (
                        SELECT to_char(s.start_at AT TIME ZONE b.tz, 'YYYY-MM-DD') || ' ' || s.shift_name AS label
                        FROM sh s WHERE s.site_id = x.site_id AND s.start_at <= {time_col}
                          AND {time_col} < s.end_at
                        ORDER BY s.start_at LIMIT 1) shk ON true"
                );
                "shk.label".to_owned()
            }
        };
        let _ = write!(select, "{expr} AS k{i}, ");
    }
    let group_by = if groups.is_empty() {
        String::new()
    } else {
        format!(
            "GROUP BY {}",
            (1..=groups.len())
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Keys {
        select,
        joins,
        group_by,
        n: groups.len(),
    }
}

fn order_by(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(
            "ORDER BY {}",
            (1..=n)
                .map(|i| format!("{i} NULLS LAST"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Planned production time per equipment and hour bucket (`ppt`), stop time against
/// availability clamped to it (`stopc`), and all state time in the range (`stt`).
const TIME_CTES: &str = "
cal AS MATERIALIZED (SELECT DISTINCT m.site_id FROM md_shifts m JOIN b ON b.site_id = m.site_id),
hrs AS (
    SELECT DISTINCT sh.site_id, h AS hour
    FROM sh JOIN b ON b.site_id = sh.site_id,
         generate_series(date_trunc('hour', sh.start_at, b.tz), sh.end_at - interval '1 microsecond',
                         interval '1 hour') h
    UNION ALL
    SELECT b.site_id, h FROM b,
         generate_series(CASE WHEN date_trunc('hour', b.lo, b.tz) = b.lo THEN b.lo
                              ELSE date_trunc('hour', b.lo, b.tz) + interval '1 hour' END,
                         least(b.hi, now()) - interval '1 microsecond', interval '1 hour') h
    WHERE b.site_id NOT IN (SELECT site_id FROM cal)
),
sched AS MATERIALIZED (
    SELECT hrs.site_id, hrs.hour,
           CASE WHEN hrs.site_id IN (SELECT site_id FROM cal) THEN greatest(0,
               coalesce((SELECT sum(mes_overlap_us(hrs.hour, least(hrs.hour + interval '1 hour', now()),
                                                   s.start_at, s.end_at))
                         FROM sh s WHERE s.site_id = hrs.site_id
                           AND s.start_at < hrs.hour + interval '1 hour' AND s.end_at > hrs.hour), 0)
             - coalesce((SELECT sum(mes_overlap_us(hrs.hour, least(hrs.hour + interval '1 hour', now()),
                                                   (br->>'start')::timestamptz, (br->>'end')::timestamptz))
                         FROM sh s, jsonb_array_elements(s.breaks) br WHERE s.site_id = hrs.site_id
                           AND s.start_at < hrs.hour + interval '1 hour' AND s.end_at > hrs.hour), 0))
           ELSE mes_overlap_us(hrs.hour, hrs.hour + interval '1 hour', hrs.hour, now()) END AS us
    FROM hrs JOIN b ON b.site_id = hrs.site_id
    WHERE hrs.hour >= b.lo AND hrs.hour < b.hi AND hrs.hour < now()
),
ppt AS MATERIALIZED (
    SELECT s.site_id, e.equipment, s.hour, s.us
    FROM sched s JOIN equipment_seen e ON e.site_id = s.site_id AND e.first_hour <= s.hour
),
openiv AS MATERIALIZED (
    SELECT c.site_id, c.equipment, h AS hour, c.state, coalesce(c.reason, '') AS reason,
           (c.state <> 'running' AND now() - c.at < interval '120 seconds') AS small,
           mes_overlap_us(c.at, now(), h, h + interval '1 hour') AS us,
           CASE WHEN h = date_trunc('hour', c.at, b.tz) THEN 1 ELSE 0 END AS starts
    FROM state_current c JOIN b ON b.site_id = c.site_id,
         generate_series(greatest(date_trunc('hour', c.at, b.tz), date_trunc('hour', b.lo, b.tz)),
                         least(now(), b.hi), interval '1 hour') h
    WHERE c.at < now() AND h >= b.lo AND h < b.hi AND h < now()
),
stt AS MATERIALIZED (
    SELECT x.site_id, x.equipment, x.hour, x.state, x.reason, x.small, x.micros AS us, x.starts
    FROM state_hourly x JOIN b ON b.site_id = x.site_id
    WHERE x.hour >= b.lo AND x.hour < b.hi
    UNION ALL
    SELECT site_id, equipment, hour, state, reason, small, us, starts FROM openiv
),
stops AS MATERIALIZED (
    SELECT t.site_id, t.equipment, t.hour, sum(t.us) AS us
    FROM stt t LEFT JOIN md_reasons r ON r.code = t.reason
    WHERE t.state NOT IN ('running', 'planned_stop') AND NOT t.small
      AND (t.reason = '' OR coalesce(r.counts_against_availability, true))
    GROUP BY 1, 2, 3
),
stopc AS MATERIALIZED (
    SELECT st.site_id, st.equipment, st.hour, least(st.us, coalesce(p.us, 0)) AS us
    FROM stops st LEFT JOIN ppt p
      ON p.site_id = st.site_id AND p.equipment = st.equipment AND p.hour = st.hour
)";

/// Production rows in the range with the ideal time of their counts.
const PROD_CTES: &str = "
ideal AS MATERIALIZED (SELECT * FROM md_ideal),
prod AS MATERIALIZED (
    SELECT p.site_id, p.equipment, p.hour, p.work_order, p.scrap_reason, p.good, p.scrap,
           wo.material,
           (p.good + p.scrap)::numeric * coalesce(i.ideal_ms, 0) * 1000 AS ideal_us
    FROM production_hourly p JOIN b ON b.site_id = p.site_id
    LEFT JOIN work_orders wo ON wo.site_id = p.site_id AND wo.id = p.work_order
    LEFT JOIN md_equipment eqm ON eqm.equipment = p.equipment
    LEFT JOIN ideal i ON i.material = wo.material AND i.class = coalesce(eqm.class, '')
    WHERE p.hour >= b.lo AND p.hour < b.hi
)";

fn bind_range<'q>(
    q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    sites: &'q [String],
    query: &Query,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    let inst = |b: Bound| match b {
        Bound::Instant(t) => Some(crate::db::store::ts(t)),
        Bound::Date(_) => None,
    };
    let date = |b: Bound| match b {
        Bound::Date(d) => Some(d),
        Bound::Instant(_) => None,
    };
    q.bind(sites)
        .bind(inst(query.from))
        .bind(date(query.from))
        .bind(inst(query.to))
        .bind(date(query.to))
}

/// A result row: the group keys, then named measures.
#[derive(Debug, Clone)]
pub struct SqlRow {
    pub keys: Vec<Option<String>>,
    pub values: Vec<f64>,
}

fn read_rows(
    rows: Vec<PgRow>,
    n_keys: usize,
    measures: &[&str],
) -> Result<Vec<SqlRow>, sqlx::Error> {
    rows.into_iter()
        .map(|r| {
            let keys = (0..n_keys)
                .map(|i| r.try_get::<Option<String>, _>(format!("k{i}").as_str()))
                .collect::<Result<Vec<_>, _>>()?;
            let values = measures
                .iter()
                .map(|m| r.try_get::<Option<f64>, _>(*m).map(|v| v.unwrap_or(0.0)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(SqlRow { keys, values })
        })
        .collect()
}

async fn run(
    tx: &mut Transaction<'static, Postgres>,
    sql: String,
    sites: &[String],
    query: &Query,
    n_keys: usize,
    measures: &[&str],
) -> Result<Vec<SqlRow>, sqlx::Error> {
    // Built only from constant fragments and enum-chosen column expressions; every value is a
    // bind parameter.
    let rows = bind_range(crate::db::query(sqlx::AssertSqlSafe(sql)), sites, query)
        .fetch_all(&mut **tx)
        .await?;
    read_rows(rows, n_keys, measures)
}

pub const OEE_MEASURES: [&str; 5] = ["ppt_us", "stop_us", "ideal_us", "good", "scrap"];

pub async fn oee(
    tx: &mut Transaction<'static, Postgres>,
    sites: &[String],
    query: &Query,
) -> Result<Vec<SqlRow>, sqlx::Error> {
    let k = keys(&query.groups, "NULL::text", "x.hour");
    let sql = format!(
        "WITH {BOUNDS}, {SHIFTS}, {TIME_CTES}, {PROD_CTES},
         u AS MATERIALIZED (
            SELECT site_id, equipment, hour, us::numeric AS ppt, 0::numeric AS stop, 0::numeric AS ideal,
                   0::bigint AS good, 0::bigint AS scrap FROM ppt
            UNION ALL SELECT site_id, equipment, hour, 0, us, 0, 0, 0 FROM stopc
            UNION ALL SELECT site_id, equipment, hour, 0, 0, ideal_us, good, scrap FROM prod
         )
         SELECT {sel} sum(x.ppt)::float8 AS ppt_us, sum(x.stop)::float8 AS stop_us,
                sum(x.ideal)::float8 AS ideal_us, sum(x.good)::float8 AS good,
                sum(x.scrap)::float8 AS scrap
         FROM u x JOIN b ON b.site_id = x.site_id {joins} {group_by} {order}",
        sel = k.select,
        joins = k.joins,
        group_by = k.group_by,
        order = order_by(k.n),
    );
    run(tx, sql, sites, query, k.n, &OEE_MEASURES).await
}

pub const PRODUCTION_MEASURES: [&str; 2] = ["good", "scrap"];

pub async fn production(
    tx: &mut Transaction<'static, Postgres>,
    sites: &[String],
    query: &Query,
) -> Result<Vec<SqlRow>, sqlx::Error> {
    let k = keys(&query.groups, "x.material", "x.hour");
    let sql = format!(
        "WITH {BOUNDS}, {SHIFTS}, {PROD_CTES}
         SELECT {sel} sum(x.good)::float8 AS good, sum(x.scrap)::float8 AS scrap
         FROM prod x JOIN b ON b.site_id = x.site_id {joins} {group_by} {order}",
        sel = k.select,
        joins = k.joins,
        group_by = k.group_by,
        order = order_by(k.n),
    );
    run(tx, sql, sites, query, k.n, &PRODUCTION_MEASURES).await
}

/// Scrap per group and reason: the last key is the reason.
pub async fn scrap(
    tx: &mut Transaction<'static, Postgres>,
    sites: &[String],
    query: &Query,
) -> Result<Vec<SqlRow>, sqlx::Error> {
    let k = keys(&query.groups, "x.material", "x.hour");
    let n = k.n;
    let sql = format!(
        "WITH {BOUNDS}, {SHIFTS}, {PROD_CTES}
         SELECT {sel} nullif(x.scrap_reason, '') AS k{n}, sum(x.scrap)::float8 AS scrap
         FROM prod x JOIN b ON b.site_id = x.site_id {joins}
         WHERE x.scrap <> 0
         GROUP BY {gb}
         HAVING sum(x.scrap) <> 0 {order}",
        sel = k.select,
        joins = k.joins,
        gb = (1..=n + 1)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        order = order_by(n + 1),
    );
    run(tx, sql, sites, query, n + 1, &["scrap"]).await
}

/// Stop time per group and reason: keys are the groups, then reason, reason name, loss
/// category.
pub async fn pareto(
    tx: &mut Transaction<'static, Postgres>,
    sites: &[String],
    query: &Query,
) -> Result<Vec<SqlRow>, sqlx::Error> {
    let k = keys(&query.groups, "NULL::text", "x.hour");
    let n = k.n;
    let planned = if query.include_planned {
        ""
    } else {
        "AND NOT (x.state = 'planned_stop' OR coalesce(r.loss_category, '') = 'planned')"
    };
    let sql = format!(
        "WITH {BOUNDS}, {SHIFTS}, {TIME_CTES}
         SELECT {sel} nullif(x.reason, '') AS k{n}, r.name AS k{n1}, r.loss_category AS k{n2},
                sum(x.us)::float8 AS us, sum(x.starts)::float8 AS stops
         FROM stt x JOIN b ON b.site_id = x.site_id LEFT JOIN md_reasons r ON r.code = x.reason
         {joins}
         WHERE x.state <> 'running' {planned}
         GROUP BY {gb}
         HAVING sum(x.us) > 0 OR sum(x.starts) > 0",
        sel = k.select,
        joins = k.joins,
        n1 = n + 1,
        n2 = n + 2,
        gb = (1..=n + 3)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    run(tx, sql, sites, query, n + 3, &["us", "stops"]).await
}

pub const ON_TIME_MEASURES: [&str; 4] = ["due", "on_time", "late", "open"];

pub async fn on_time(
    tx: &mut Transaction<'static, Postgres>,
    sites: &[String],
    query: &Query,
) -> Result<Vec<SqlRow>, sqlx::Error> {
    let k = keys(&query.groups, "x.material", "x.due");
    let sql = format!(
        "WITH {BOUNDS}
         SELECT {sel} count(*)::float8 AS due,
                count(*) FILTER (WHERE x.state = 'ended' AND x.actual_end <= x.due)::float8 AS on_time,
                count(*) FILTER (WHERE x.state = 'ended'
                                   AND (x.actual_end IS NULL OR x.actual_end > x.due))::float8 AS late,
                count(*) FILTER (WHERE x.state <> 'ended')::float8 AS open
         FROM work_orders x JOIN b ON b.site_id = x.site_id {joins}
         WHERE x.due >= b.lo AND x.due < b.hi AND x.state <> 'aborted'
         {group_by} {order}",
        sel = k.select,
        joins = k.joins,
        group_by = k.group_by,
        order = order_by(k.n),
    );
    run(tx, sql, sites, query, k.n, &ON_TIME_MEASURES).await
}

pub const WIP_MEASURES: [&str; 7] = [
    "orders",
    "running",
    "interrupted",
    "planned_quantity",
    "good",
    "remaining",
    "lots_in_process",
];

pub async fn wip(
    tx: &mut Transaction<'static, Postgres>,
    sites: &[String],
    query: &Query,
) -> Result<Vec<SqlRow>, sqlx::Error> {
    let k = keys(&query.groups, "x.material", "x.updated_at");
    let key_cols: Vec<String> = (0..k.n).map(|i| format!("k{i}")).collect();
    let on = if key_cols.is_empty() {
        "true".to_owned()
    } else {
        key_cols
            .iter()
            .map(|c| format!("a.{c} IS NOT DISTINCT FROM l.{c}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let a_keys: String = key_cols.iter().map(|c| format!("a.{c}, ")).collect();
    // Orders and their lots are aggregated apart: a lot consumed by two orders of a group
    // counts once, and the join must not multiply the order sums.
    let sql = format!(
        "WITH {BOUNDS},
         w AS (SELECT * FROM work_orders wo
               WHERE wo.site_id = ANY($1) AND wo.state IN ('allowed_to_start', 'running', 'interrupted')),
         a AS (
            SELECT {sel} count(*)::float8 AS orders,
                   count(*) FILTER (WHERE x.state = 'running')::float8 AS running,
                   count(*) FILTER (WHERE x.state = 'interrupted')::float8 AS interrupted,
                   sum(x.planned_quantity)::float8 AS planned_quantity,
                   sum(x.good_count)::float8 AS good,
                   sum(greatest(0, x.planned_quantity - x.good_count))::float8 AS remaining
            FROM w x JOIN b ON b.site_id = x.site_id {joins} {group_by}),
         l AS (
            SELECT {sel} count(DISTINCT (lm.site_id, lm.lot))::float8 AS lots
            FROM w x JOIN b ON b.site_id = x.site_id
            JOIN lot_movements lm ON lm.site_id = x.site_id AND lm.work_order = x.id
                                 AND lm.direction = 'consumed'
            {joins} {group_by})
         SELECT {a_keys} a.orders, a.running, a.interrupted, a.planned_quantity, a.good,
                a.remaining, coalesce(l.lots, 0) AS lots_in_process
         FROM a LEFT JOIN l ON {on} {order}",
        sel = k.select,
        joins = k.joins,
        group_by = k.group_by,
        order = order_by(k.n),
    );
    run(tx, sql, sites, query, k.n, &WIP_MEASURES).await
}

/// One edge of a genealogy walk.
#[derive(Debug, Clone)]
pub struct Edge {
    pub from_lot: String,
    pub to_lot: String,
    pub work_order: String,
    pub site: String,
    pub quantity: f64,
    pub depth: i32,
}

#[derive(Debug)]
pub struct Genealogy {
    pub root_material: Option<String>,
    pub materials: Vec<(String, Option<String>)>,
    pub edges: Vec<Edge>,
}

/// Walks lot genealogy from `lot`. `None` when the lot has no movements at all.
pub async fn genealogy(
    tx: &mut Transaction<'static, Postgres>,
    lot: &str,
    direction: Direction,
) -> Result<Option<Genealogy>, sqlx::Error> {
    let root: Option<Option<String>> = crate::db::query_scalar(
        "SELECT max(material) FROM lot_movements WHERE lot = $1 HAVING count(*) > 0",
    )
    .bind(lot)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(root_material) = root else {
        return Ok(None);
    };
    // Backward: the orders that produced a lot, and the lots they consumed. Forward: the orders
    // that consumed it, and the lots they produced.
    let (walk_dir, next_dir) = match direction {
        Direction::Backward => ("produced", "consumed"),
        Direction::Forward => ("consumed", "produced"),
    };
    // Breadth first over lots, each lot expanded once at its least depth: a recursion that
    // carries whole paths grows with the number of paths (3^depth rows when every order
    // blends three lots), a walk over visited lots with the number of lots. One statement per
    // depth, each bounded by the edges still allowed.
    let step = format!(
        "WITH g AS (
            SELECT DISTINCT a.lot AS from_lot, c.lot AS to_lot, a.work_order, c.site_id
            FROM lot_movements a
            JOIN lot_movements c ON c.site_id = a.site_id AND c.work_order = a.work_order
                                AND c.direction = '{next_dir}'
            WHERE a.lot = ANY($1) AND a.direction = '{walk_dir}' AND a.work_order IS NOT NULL
         )
         SELECT g.from_lot, g.to_lot, g.work_order, g.site_id,
                (SELECT sum(m.quantity) FROM lot_movements m
                 WHERE m.site_id = g.site_id AND m.work_order = g.work_order AND m.lot = g.to_lot
                   AND m.direction = '{next_dir}')::float8 AS quantity,
                (SELECT max(m.material) FROM lot_movements m WHERE m.lot = g.to_lot) AS material
         FROM g ORDER BY g.from_lot, g.to_lot, g.work_order, g.site_id
         LIMIT $2"
    );
    let mut edges = Vec::new();
    let mut materials: Vec<(String, Option<String>)> = Vec::new();
    let mut visited: std::collections::HashSet<String> = std::collections::HashSet::new();
    visited.insert(lot.to_owned());
    let mut frontier = vec![lot.to_owned()];
    let mut depth = 0;
    while !frontier.is_empty() && depth < GENEALOGY_DEPTH_MAX {
        depth += 1;
        let room = GENEALOGY_EDGES_MAX - edges.len() as i64;
        if room <= 0 {
            break;
        }
        let rows = crate::db::query(sqlx::AssertSqlSafe(step.clone()))
            .bind(&frontier)
            .bind(room)
            .fetch_all(&mut **tx)
            .await?;
        let mut next = Vec::new();
        for r in rows {
            let to_lot: String = r.try_get("to_lot")?;
            let material: Option<String> = r.try_get("material")?;
            if !materials.iter().any(|(l, _)| l == &to_lot) {
                materials.push((to_lot.clone(), material));
            }
            if visited.insert(to_lot.clone()) {
                next.push(to_lot.clone());
            }
            edges.push(Edge {
                from_lot: r.try_get("from_lot")?,
                to_lot,
                work_order: r.try_get("work_order")?,
                site: r.try_get("site_id")?,
                quantity: r.try_get::<Option<f64>, _>("quantity")?.unwrap_or(0.0),
                depth,
            });
        }
        frontier = next;
    }
    Ok(Some(Genealogy {
        root_material,
        materials,
        edges,
    }))
}
