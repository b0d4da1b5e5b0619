//! What the report queries share: the range bounds per site, shift instances, planned
//! production and stop time, production with its ideal time (the CTEs below), the SQL of
//! the group keys, and [`run`], which binds the range and decodes typed rows.
//!
//! Each report's own statement is in its file (`oee.rs`, …). They read rollups maintained on
//! ingest (`production_hourly`, `state_hourly`, `state_current`, `equipment_seen`,
//! `lot_movements`, `work_orders`) and master data views, never the raw `events`. Sums come
//! back from SQL; ratios are computed in Rust from the sums, so a roll-up never averages
//! percentages.

use std::fmt::Write as _;

use shared_model::event::MachineState;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Postgres, Row, Transaction};

use super::params::{Bound, Group, Query};

/// Most rows a report returns; a bigger answer is a question the caller should narrow.
pub const ROWS_MAX: usize = 50_000;

/// Per-site bounds of the range: `$1` sites, `$2`/`$3` from (instant or date), `$4`/`$5` to.
pub(super) const BOUNDS: &str = "b AS MATERIALIZED (
    SELECT s.site_id, s.timezone AS tz,
           coalesce($2::timestamptz, ($3::date)::timestamp AT TIME ZONE s.timezone) AS lo,
           coalesce($4::timestamptz, ($5::date)::timestamp AT TIME ZONE s.timezone) AS hi
    FROM sites s WHERE s.site_id = ANY($1))";

/// Shift instances near the range, for `shift` groups and planned production time.
pub(super) const SHIFTS: &str = "sh AS MATERIALIZED (
    SELECT m.site_id, m.shift_name, m.start_at, m.end_at, m.breaks
    FROM md_shifts m JOIN b ON b.site_id = m.site_id
    WHERE m.end_at > b.lo - interval '1 day' AND m.start_at < b.hi + interval '1 day')";

/// The SQL of the group keys over a source aliased `x` (with `site_id`, and where the group
/// needs them `equipment`, `hour`, `work_order`), joined to `b`.
pub(super) struct Keys {
    pub(super) select: String,
    pub(super) joins: String,
    pub(super) group_by: String,
    pub(super) n: usize,
}

pub(super) fn keys(groups: &[Group], product_col: &str, time_col: &str) -> Keys {
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
        group_by_first(groups.len())
    };
    Keys {
        select,
        joins,
        group_by,
        n: groups.len(),
    }
}

/// `GROUP BY 1, 2, …, n`: the first `n` output columns (the group keys, then a report's own
/// keys such as the reason).
pub(super) fn group_by_first(n: usize) -> String {
    format!(
        "GROUP BY {}",
        (1..=n)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

pub(super) fn order_by(n: usize) -> String {
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
pub(super) fn time_ctes() -> String {
    let (running, planned_stop) = (MachineState::Running, MachineState::PlannedStop);
    format!(
        "
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
           (c.state <> '{running}' AND now() - c.at < {small_stop}) AS small,
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
    WHERE t.state NOT IN ('{running}', '{planned_stop}') AND NOT t.small
      AND (t.reason = '' OR coalesce(r.counts_against_availability, true))
    GROUP BY 1, 2, 3
),
stopc AS MATERIALIZED (
    SELECT st.site_id, st.equipment, st.hour, least(st.us, coalesce(p.us, 0)) AS us
    FROM stops st LEFT JOIN ppt p
      ON p.site_id = st.site_id AND p.equipment = st.equipment AND p.hour = st.hour
)",
        small_stop = shared_model::kpi::SMALL_STOP_SQL_INTERVAL,
    )
}

/// Production rows in the range with the ideal time of their counts.
pub(super) const PROD_CTES: &str = "
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
        Bound::Instant(t) => Some(crate::db::convert::ts(t)),
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

/// A result row: the values of the request's groups (`k0`, `k1`, …; `None` for SQL `NULL`),
/// then the report's typed row.
#[derive(Debug, Clone)]
pub struct Keyed<R> {
    pub keys: Vec<Option<String>>,
    pub row: R,
}

impl<R> Keyed<R> {
    pub fn map<T>(self, f: impl FnOnce(R) -> T) -> Keyed<T> {
        Keyed {
            keys: self.keys,
            row: f(self.row),
        }
    }
}

/// A sum column: `NULL` (a sum over no rows, as an ungrouped query over nothing answers) is 0.
pub fn sum(r: &PgRow, column: &str) -> Result<f64, sqlx::Error> {
    Ok(r.try_get::<Option<f64>, _>(column)?.unwrap_or(0.0))
}

/// Defines a report's row of sums from one field list, so a column is named once: the struct
/// (every field an `f64` sum, read from the column of its name, `NULL` as 0 — see [`sum`]),
/// its `FromRow`, the field-wise `Add`, and `total`, the field-wise sum of keyed rows (a
/// total that adds the groups' sums, never their ratios).
macro_rules! sums_row {
    (
        $(#[$m:meta])* $vis:vis struct $name:ident {
            $($(#[$fm:meta])* $fv:vis $f:ident: f64),+ $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq)]
        $vis struct $name {
            $($(#[$fm])* $fv $f: f64,)+
        }

        impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for $name {
            fn from_row(r: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
                Ok(Self {
                    $($f: $crate::reports::sql::sum(r, stringify!($f))?,)+
                })
            }
        }

        impl std::ops::Add for $name {
            type Output = Self;
            fn add(self, o: Self) -> Self {
                Self {
                    $($f: self.$f + o.$f,)+
                }
            }
        }

        impl $name {
            /// The field-wise sum of the rows.
            $vis fn total(rows: &[$crate::reports::sql::Keyed<Self>]) -> Self {
                rows.iter().fold(Self::default(), |acc, r| acc + r.row)
            }
        }
    };
}
pub(crate) use sums_row;

/// Runs a report statement over `sites` and the range of `query`; decodes `n_keys` group keys
/// and the typed row of each result row.
pub async fn run<R>(
    tx: &mut Transaction<'static, Postgres>,
    sql: String,
    sites: &[String],
    query: &Query,
    n_keys: usize,
) -> Result<Vec<Keyed<R>>, sqlx::Error>
where
    R: for<'r> FromRow<'r, PgRow>,
{
    // Built only from constant fragments and enum-chosen column expressions; every value is a
    // bind parameter.
    let rows = bind_range(crate::db::query(sqlx::AssertSqlSafe(sql)), sites, query)
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|r| {
            let keys = (0..n_keys)
                .map(|i| r.try_get::<Option<String>, _>(format!("k{i}").as_str()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Keyed {
                keys,
                row: R::from_row(r)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Keyed;

    super::sums_row! {
        /// Two sums, for the macro's test.
        struct Two {
            a: f64,
            b: f64,
        }
    }

    #[test]
    fn a_sums_row_totals_field_by_field() {
        let keyed = |a, b| Keyed {
            keys: vec![Some("k".to_owned())],
            row: Two { a, b },
        };
        assert_eq!(Two::total(&[]), Two::default());
        assert_eq!(
            Two::total(&[keyed(1.0, 10.0), keyed(2.0, 20.0)]),
            Two { a: 3.0, b: 30.0 }
        );
    }
    #[test]
    fn open_stops_are_small_by_the_model_s_threshold() {
        let sql = super::time_ctes();
        assert!(
            sql.contains("now() - c.at < interval '120 seconds'"),
            "{sql}"
        );
        assert_eq!(shared_model::kpi::SMALL_STOP_SECS, 120);
    }
}
