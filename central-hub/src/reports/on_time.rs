//! `GET /api/v1/reports/on-time`: work orders due in the range per group — ended on time,
//! ended late, still open — and the on-time rate.

use serde::Serialize;
use sqlx::FromRow;
use sqlx::postgres::PgRow;

use super::params::{Group, Query};
use shared_model::kpi::on_time_rate;

use super::spec::{ReadTx, ReportSpec, int, sum_of};
use super::sql::{BOUNDS, Keyed, keys, order_by, sum};

/// The report (listed in `registry::REPORTS`; unlisted, it is dead code).
#[derive(Debug)]
pub(crate) struct OnTime;

/// The order counts of one group.
#[derive(Debug, Clone, Copy, Default)]
pub struct DueCounts {
    pub due: f64,
    pub on_time: f64,
    pub late: f64,
    pub open: f64,
}

impl<'r> FromRow<'r, PgRow> for DueCounts {
    fn from_row(r: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            due: sum(r, "due")?,
            on_time: sum(r, "on_time")?,
            late: sum(r, "late")?,
            open: sum(r, "open")?,
        })
    }
}

/// One line of the answer (and the total): the columns in this order.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct OnTimeLine {
    pub due: i64,
    pub on_time: i64,
    pub late: i64,
    pub open: i64,
    pub on_time_rate: Option<f64>,
}

impl DueCounts {
    pub fn line(self) -> OnTimeLine {
        // Every order not aborted is ended (on time or late) or open.
        debug_assert_eq!(self.due, self.on_time + self.late + self.open);
        OnTimeLine {
            due: int(self.due),
            on_time: int(self.on_time),
            late: int(self.late),
            open: int(self.open),
            on_time_rate: on_time_rate(self.on_time, self.due),
        }
    }
}

impl ReportSpec for OnTime {
    const NAME: &'static str = "on-time";
    const GROUPS: &'static [Group] = &[Group::Site, Group::Product, Group::Day];
    type Row = DueCounts;
    type Line = OnTimeLine;
    type Total = OnTimeLine;

    fn sql(q: &Query) -> String {
        let k = keys(&q.groups, "x.material", "x.due");
        format!(
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
        )
    }

    fn lines(rows: Vec<Keyed<DueCounts>>, _groups: usize) -> Vec<Keyed<OnTimeLine>> {
        rows.into_iter().map(|r| r.map(DueCounts::line)).collect()
    }

    async fn total(
        _tx: &mut ReadTx,
        _sites: &[String],
        _q: &Query,
        rows: &[Keyed<DueCounts>],
    ) -> Result<OnTimeLine, sqlx::Error> {
        Ok(DueCounts {
            due: sum_of(rows, |r| r.due),
            on_time: sum_of(rows, |r| r.on_time),
            late: sum_of(rows, |r| r.late),
            open: sum_of(rows, |r| r.open),
        }
        .line())
    }
}
