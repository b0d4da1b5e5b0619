//! `GET /api/v1/reports/wip`: work in process now — released, running and interrupted orders
//! per group, their quantities, and the lots they have consumed.

use serde::Serialize;
use shared_model::work_order::WorkOrderState;

use super::params::{Group, Query};
use super::spec::{ReadTx, ReportSpec, int};
use super::sql::{self, BOUNDS, Keyed, keys, order_by, sums_row};

/// The report (listed in `registry::REPORTS`; unlisted, it is dead code).
#[derive(Debug)]
pub(crate) struct Wip;

sums_row! {
    /// The open orders of one group.
    pub struct OpenOrders {
        pub orders: f64,
        pub running: f64,
        pub interrupted: f64,
        pub planned_quantity: f64,
        pub good: f64,
        pub remaining: f64,
        pub lots_in_process: f64,
    }
}

/// One line of the answer (and the total): the columns in this order.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct WipLine {
    pub orders: i64,
    pub running: i64,
    pub interrupted: i64,
    pub planned_quantity: i64,
    pub good: i64,
    pub remaining: i64,
    pub lots_in_process: i64,
}

impl OpenOrders {
    pub fn line(self) -> WipLine {
        debug_assert!(self.running + self.interrupted <= self.orders);
        WipLine {
            orders: int(self.orders),
            running: int(self.running),
            interrupted: int(self.interrupted),
            planned_quantity: int(self.planned_quantity),
            good: int(self.good),
            remaining: int(self.remaining),
            lots_in_process: int(self.lots_in_process),
        }
    }
}

impl ReportSpec for Wip {
    const NAME: &'static str = "wip";
    const GROUPS: &'static [Group] = &[Group::Site, Group::Product];
    type Row = OpenOrders;
    type Line = WipLine;
    type Total = WipLine;

    fn sql(q: &Query) -> String {
        let k = keys(&q.groups, "x.material", "x.updated_at");
        // The names as stored, not spelled out here: open orders and the lots they consumed.
        let [allowed, running, interrupted] = [
            WorkOrderState::AllowedToStart,
            WorkOrderState::Running,
            WorkOrderState::Interrupted,
        ]
        .map(WorkOrderState::as_str);
        let consumed = crate::rollup::facts::Direction::Consumed.as_str();
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
        format!(
            "WITH {BOUNDS},
         w AS (SELECT * FROM work_orders wo
               WHERE wo.site_id = ANY($1) AND wo.state IN ('{allowed}', '{running}', '{interrupted}')),
         a AS (
            SELECT {sel} count(*)::float8 AS orders,
                   count(*) FILTER (WHERE x.state = '{running}')::float8 AS running,
                   count(*) FILTER (WHERE x.state = '{interrupted}')::float8 AS interrupted,
                   sum(x.planned_quantity)::float8 AS planned_quantity,
                   sum(x.good_count)::float8 AS good,
                   sum(greatest(0, x.planned_quantity - x.good_count))::float8 AS remaining
            FROM w x JOIN b ON b.site_id = x.site_id {joins} {group_by}),
         l AS (
            SELECT {sel} count(DISTINCT (lm.site_id, lm.lot))::float8 AS lots
            FROM w x JOIN b ON b.site_id = x.site_id
            JOIN lot_movements lm ON lm.site_id = x.site_id AND lm.work_order = x.id
                                 AND lm.direction = '{consumed}'
            {joins} {group_by})
         SELECT {a_keys} a.orders, a.running, a.interrupted, a.planned_quantity, a.good,
                a.remaining, coalesce(l.lots, 0) AS lots_in_process
         FROM a LEFT JOIN l ON {on} {order}",
            sel = k.select,
            joins = k.joins,
            group_by = k.group_by,
            order = order_by(k.n),
        )
    }

    fn lines(rows: Vec<Keyed<OpenOrders>>, _groups: usize) -> Vec<Keyed<WipLine>> {
        rows.into_iter().map(|r| r.map(OpenOrders::line)).collect()
    }

    /// Lots are counted once even when several groups share them, so the total asks again,
    /// ungrouped.
    async fn total(
        tx: &mut ReadTx,
        sites: &[String],
        q: &Query,
        _rows: &[Keyed<OpenOrders>],
    ) -> Result<WipLine, sqlx::Error> {
        let q = Query {
            groups: Vec::new(),
            ..q.clone()
        };
        let all = sql::run::<OpenOrders>(tx, Self::sql(&q), sites, &q, 0).await?;
        Ok(OpenOrders::total(&all).line())
    }
}
