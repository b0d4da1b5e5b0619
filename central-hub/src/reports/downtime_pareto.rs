//! `GET /api/v1/reports/downtime-pareto`: stop time and stops per group and reason, largest
//! first within each group, with each reason's share and the running (Pareto) share.
//! Planned stops are left out unless `include_planned=true`.

use serde::Serialize;
use shared_model::event::MachineState;
use shared_model::master::LossCategory;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};

use super::params::{Group, Query};
use super::spec::{ReadTx, ReportSpec, group_sums, int, ratio, sum_of};
use super::sql::{BOUNDS, Keyed, SHIFTS, group_by_first, keys, sum, time_ctes};

/// The report (listed in `registry::REPORTS`; unlisted, it is dead code).
#[derive(Debug)]
pub(crate) struct DowntimePareto;

/// Stop time of one group and reason.
#[derive(Debug, Clone, Default)]
pub struct ReasonStops {
    pub reason: Option<String>,
    pub reason_name: Option<String>,
    pub loss_category: Option<String>,
    pub us: f64,
    pub stops: f64,
}

impl<'r> FromRow<'r, PgRow> for ReasonStops {
    fn from_row(r: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            reason: r.try_get("reason")?,
            reason_name: r.try_get("reason_name")?,
            loss_category: r.try_get("loss_category")?,
            us: sum(r, "us")?,
            stops: sum(r, "stops")?,
        })
    }
}

/// One line of the answer: the columns in this order.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ParetoLine {
    pub reason: Option<String>,
    pub reason_name: Option<String>,
    pub loss_category: Option<String>,
    pub seconds: f64,
    pub stops: i64,
    /// Of the group's stop time.
    pub share: Option<f64>,
    /// This reason's and the larger ones' share of the group's stop time.
    pub cumulative_share: Option<f64>,
}

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ParetoTotal {
    pub seconds: f64,
    pub stops: i64,
}

impl ReportSpec for DowntimePareto {
    const NAME: &'static str = "downtime-pareto";
    /// Time-based, like OEE: by equipment and time, not by product.
    const GROUPS: &'static [Group] = super::oee::Oee::GROUPS;
    const DEFAULT_GROUPS: &'static [Group] = &[];
    type Row = ReasonStops;
    type Line = ParetoLine;
    type Total = ParetoTotal;

    fn sql(q: &Query) -> String {
        let k = keys(&q.groups, "NULL::text", "x.hour");
        let running = MachineState::Running;
        let n = k.n;
        let planned = if q.include_planned {
            String::new()
        } else {
            format!(
                "AND NOT (x.state = '{}' OR coalesce(r.loss_category, '') = '{}')",
                MachineState::PlannedStop,
                LossCategory::Planned,
            )
        };
        format!(
            "WITH {BOUNDS}, {SHIFTS}, {time_ctes}
         SELECT {sel} nullif(x.reason, '') AS reason, r.name AS reason_name,
                r.loss_category AS loss_category,
                sum(x.us)::float8 AS us, sum(x.starts)::float8 AS stops
         FROM stt x JOIN b ON b.site_id = x.site_id LEFT JOIN md_reasons r ON r.code = x.reason
         {joins}
         WHERE x.state <> '{running}' {planned}
         {gb}
         HAVING sum(x.us) > 0 OR sum(x.starts) > 0",
            sel = k.select,
            time_ctes = time_ctes(),
            joins = k.joins,
            gb = group_by_first(n + 3),
        )
    }

    fn lines(mut rows: Vec<Keyed<ReasonStops>>, n: usize) -> Vec<Keyed<ParetoLine>> {
        // Within each group: stop time descending, then reason with "no reason" last.
        rows.sort_by(|a, b| {
            a.keys[..n]
                .cmp(&b.keys[..n])
                .then(b.row.us.total_cmp(&a.row.us))
                .then(match (&a.row.reason, &b.row.reason) {
                    (Some(x), Some(y)) => x.cmp(y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                })
        });
        let totals = group_sums(&rows, n, |r| r.us);
        let mut out: Vec<Keyed<ParetoLine>> = Vec::with_capacity(rows.len());
        let mut cumulative = 0.0;
        for r in rows {
            if out.last().is_none_or(|last| last.keys[..n] != r.keys[..n]) {
                cumulative = 0.0;
            }
            let group_total = totals.get(&r.keys[..n]).copied().unwrap_or(0.0);
            cumulative += r.row.us;
            // Whole microseconds summed as f64 are exact; the slack is for safety only.
            debug_assert!(
                cumulative <= group_total * (1.0 + 1e-9),
                "a group's running stop time {cumulative} µs beyond its total {group_total} µs"
            );
            out.push(r.map(|s| ParetoLine {
                seconds: s.us / 1e6,
                stops: int(s.stops),
                share: ratio(s.us, group_total),
                cumulative_share: ratio(cumulative, group_total),
                reason: s.reason,
                reason_name: s.reason_name,
                loss_category: s.loss_category,
            }));
        }
        out
    }

    async fn total(
        _tx: &mut ReadTx,
        _sites: &[String],
        _q: &Query,
        rows: &[Keyed<ReasonStops>],
    ) -> Result<ParetoTotal, sqlx::Error> {
        Ok(ParetoTotal {
            seconds: sum_of(rows, |r| r.us) / 1e6,
            stops: int(sum_of(rows, |r| r.stops)),
        })
    }
}
