//! `GET /api/v1/reports/production`: good and scrap counts per group, and the scrap rate.

use serde::Serialize;

use super::params::{Group, Query};
use shared_model::kpi::scrap_rate;

use super::spec::{ReadTx, SumsReport, SumsRow, int};
use super::sql::{self, BOUNDS, PROD_CTES, SHIFTS, keys, order_by, sums_row};

/// The report (listed in `registry::REPORTS`; unlisted, it is dead code).
#[derive(Debug)]
pub(crate) struct Production;

sums_row! {
    /// The counts of one group.
    pub struct Counts {
        pub good: f64,
        pub scrap: f64,
    }
}

/// One line of the answer (and the total): the columns in this order.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ProductionLine {
    pub good: i64,
    pub scrap: i64,
    pub total_count: i64,
    pub scrap_rate: Option<f64>,
}

impl SumsRow for Counts {
    type Line = ProductionLine;

    fn line(self) -> ProductionLine {
        let total = self.good + self.scrap;
        ProductionLine {
            good: int(self.good),
            scrap: int(self.scrap),
            total_count: int(total),
            scrap_rate: scrap_rate(self.good, self.scrap),
        }
    }
}

impl SumsReport for Production {
    const NAME: &'static str = "production";
    const GROUPS: &'static [Group] = &Group::ALL;
    type Row = Counts;

    fn sql(q: &Query) -> String {
        let k = keys(&q.groups, "x.material", "x.hour");
        format!(
            "WITH {BOUNDS}, {SHIFTS}, {PROD_CTES}
         SELECT {sel} sum(x.good)::float8 AS good, sum(x.scrap)::float8 AS scrap
         FROM prod x JOIN b ON b.site_id = x.site_id {joins} {group_by} {order}",
            sel = k.select,
            joins = k.joins,
            group_by = k.group_by,
            order = order_by(k.n),
        )
    }
}

/// Good and scrap over the whole range and sites, ungrouped (the scrap report's total).
pub async fn ungrouped(
    tx: &mut ReadTx,
    sites: &[String],
    q: &Query,
) -> Result<Counts, sqlx::Error> {
    let q = Query {
        groups: Vec::new(),
        ..q.clone()
    };
    let rows = sql::run::<Counts>(tx, Production::sql(&q), sites, &q, 0).await?;
    Ok(Counts::total(&rows))
}
