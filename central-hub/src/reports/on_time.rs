//! `GET /api/v1/reports/on-time`: work orders due in the range per group — ended on time,
//! ended late, still open — and the on-time rate.

use serde::Serialize;

use super::params::{Group, Query};
use shared_model::kpi::on_time_rate;
use shared_model::work_order::WorkOrderState;

use super::spec::{SumsReport, SumsRow, int};
use super::sql::{BOUNDS, keys, order_by, sums_row};

/// The report (listed in `registry::REPORTS`; unlisted, it is dead code).
#[derive(Debug)]
pub(crate) struct OnTime;

sums_row! {
    /// The order counts of one group.
    pub struct DueCounts {
        pub due: f64,
        pub on_time: f64,
        pub late: f64,
        pub open: f64,
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

impl SumsRow for DueCounts {
    type Line = OnTimeLine;

    fn line(self) -> OnTimeLine {
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

impl SumsReport for OnTime {
    const NAME: &'static str = "on-time";
    const GROUPS: &'static [Group] = &[Group::Site, Group::Product, Group::Day];
    type Row = DueCounts;

    fn sql(q: &Query) -> String {
        // The state names as stored (`WorkOrderState::as_str`), not spelled out here.
        let (ended, aborted) = (
            WorkOrderState::Ended.as_str(),
            WorkOrderState::Aborted.as_str(),
        );
        let k = keys(&q.groups, "x.material", "x.due");
        format!(
            "WITH {BOUNDS}
         SELECT {sel} count(*)::float8 AS due,
                count(*) FILTER (WHERE x.state = '{ended}' AND x.actual_end <= x.due)::float8 AS on_time,
                count(*) FILTER (WHERE x.state = '{ended}'
                                   AND (x.actual_end IS NULL OR x.actual_end > x.due))::float8 AS late,
                count(*) FILTER (WHERE x.state <> '{ended}')::float8 AS open
         FROM work_orders x JOIN b ON b.site_id = x.site_id {joins}
         WHERE x.due >= b.lo AND x.due < b.hi AND x.state <> '{aborted}'
         {group_by} {order}",
            sel = k.select,
            joins = k.joins,
            group_by = k.group_by,
            order = order_by(k.n),
        )
    }
}
