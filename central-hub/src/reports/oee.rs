//! `GET /api/v1/reports/oee`: availability × performance × quality per group, from planned
//! production time, stop time against availability, ideal time and counts.

use serde::Serialize;
use shared_model::kpi::OeeComponents;

use super::params::{Group, Query};
use super::spec::{SumsReport, SumsRow, int};
use super::sql::{BOUNDS, PROD_CTES, SHIFTS, keys, order_by, sums_row, time_ctes};

/// The report (listed in `registry::REPORTS`; unlisted, it is dead code).
#[derive(Debug)]
pub(crate) struct Oee;

sums_row! {
    /// The sums of one group, in microseconds and counts.
    pub struct OeeSums {
        pub ppt_us: f64,
        pub stop_us: f64,
        pub ideal_us: f64,
        pub good: f64,
        pub scrap: f64,
    }
}

/// One line of the answer (and the total): the columns in this order.
#[derive(Debug, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct OeeLine {
    pub planned_production_seconds: f64,
    pub run_seconds: f64,
    pub stop_seconds: f64,
    pub ideal_seconds: f64,
    pub good: i64,
    pub scrap: i64,
    pub total_count: i64,
    pub availability: Option<f64>,
    pub performance: Option<f64>,
    pub quality: Option<f64>,
    pub oee: Option<f64>,
}

impl SumsRow for OeeSums {
    type Line = OeeLine;

    fn line(self) -> OeeLine {
        let Self {
            ppt_us: ppt,
            stop_us: stop,
            ideal_us: ideal,
            good,
            scrap,
        } = self;
        // Stop time is clamped to planned time per equipment and hour in SQL (`stopc`), and
        // every group holds both for the same hours.
        debug_assert!(stop <= ppt, "stop time {stop} µs beyond planned {ppt} µs");
        let m = OeeComponents {
            planned_time: ppt,
            stop_time: stop,
            ideal_time: ideal,
            good,
            scrap,
        }
        .measures();
        OeeLine {
            planned_production_seconds: ppt / 1e6,
            run_seconds: m.run_time / 1e6,
            stop_seconds: stop / 1e6,
            ideal_seconds: ideal / 1e6,
            good: int(good),
            scrap: int(scrap),
            total_count: int(m.total_count),
            availability: m.availability,
            performance: m.performance,
            quality: m.quality,
            oee: m.oee,
        }
    }
}

impl SumsReport for Oee {
    const NAME: &'static str = "oee";
    const GROUPS: &'static [Group] = &[
        Group::Site,
        Group::WorkCenter,
        Group::Equipment,
        Group::Day,
        Group::Shift,
    ];
    type Row = OeeSums;

    fn sql(q: &Query) -> String {
        let k = keys(&q.groups, "NULL::text", "x.hour");
        format!(
            "WITH {BOUNDS}, {SHIFTS}, {time_ctes}, {PROD_CTES},
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
            time_ctes = time_ctes(),
            joins = k.joins,
            group_by = k.group_by,
            order = order_by(k.n),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_of_sums() {
        let l = OeeSums {
            ppt_us: 3_600e6,
            stop_us: 600e6,
            ideal_us: 2_400e6,
            good: 90.0,
            scrap: 10.0,
        }
        .line();
        assert_eq!(l.run_seconds, 3_000.0);
        assert_eq!(l.availability, Some(3_000.0 / 3_600.0));
        assert_eq!(l.performance, Some(0.8));
        assert_eq!(l.quality, Some(0.9));
        assert_eq!(l.total_count, 100);
        // No planned time: nothing to divide by.
        assert_eq!(OeeSums::default().line().oee, None);
        // Planned time but no run time: OEE 0, not null.
        let idle = OeeSums {
            ppt_us: 10.0,
            stop_us: 10.0,
            ..OeeSums::default()
        }
        .line();
        assert_eq!((idle.performance, idle.oee), (None, Some(0.0)));
    }
}
