//! `GET /api/v1/reports/scrap`: scrap per group and reason, largest first within each group,
//! with each reason's share of its group.

use serde::Serialize;
use shared_model::kpi::scrap_rate;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};

use super::params::{Group, Query};
use super::spec::{ReadTx, ReportSpec, group_sums, int, ratio};
use super::sql::{BOUNDS, Keyed, PROD_CTES, SHIFTS, group_by_first, keys, order_by, sum};

/// The report (listed in `registry::REPORTS`; unlisted, it is dead code).
#[derive(Debug)]
pub(crate) struct Scrap;

/// Scrap of one group and reason.
#[derive(Debug, Clone, Default)]
pub struct ReasonScrap {
    /// `None`: scrap recorded without a reason.
    pub reason: Option<String>,
    pub scrap: f64,
}

impl<'r> FromRow<'r, PgRow> for ReasonScrap {
    fn from_row(r: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            reason: r.try_get("reason")?,
            scrap: sum(r, "scrap")?,
        })
    }
}

/// One line of the answer: the columns in this order.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ScrapLine {
    pub reason: Option<String>,
    pub scrap: i64,
    /// Of the group's scrap.
    pub share: Option<f64>,
}

/// The total: all good and scrap in the range, whatever the reason.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ScrapTotal {
    pub good: i64,
    pub scrap: i64,
    pub scrap_rate: Option<f64>,
}

impl ReportSpec for Scrap {
    const NAME: &'static str = "scrap";
    const GROUPS: &'static [Group] = super::production::Production::GROUPS;
    type Row = ReasonScrap;
    type Line = ScrapLine;
    type Total = ScrapTotal;

    fn sql(q: &Query) -> String {
        let k = keys(&q.groups, "x.material", "x.hour");
        let n = k.n;
        format!(
            "WITH {BOUNDS}, {SHIFTS}, {PROD_CTES}
         SELECT {sel} nullif(x.scrap_reason, '') AS reason, sum(x.scrap)::float8 AS scrap
         FROM prod x JOIN b ON b.site_id = x.site_id {joins}
         WHERE x.scrap <> 0
         {gb}
         HAVING sum(x.scrap) <> 0 {order}",
            sel = k.select,
            joins = k.joins,
            gb = group_by_first(n + 1),
            order = order_by(n + 1),
        )
    }

    fn lines(mut rows: Vec<Keyed<ReasonScrap>>, n: usize) -> Vec<Keyed<ScrapLine>> {
        // Within each group: scrap descending, then reason.
        rows.sort_by(|a, b| {
            a.keys[..n]
                .cmp(&b.keys[..n])
                .then(b.row.scrap.total_cmp(&a.row.scrap))
                .then(a.row.reason.cmp(&b.row.reason))
        });
        let totals = group_sums(&rows, n, |r| r.scrap);
        rows.into_iter()
            .map(|r| {
                let group_total = totals.get(&r.keys[..n]).copied().unwrap_or(0.0);
                r.map(|s| ScrapLine {
                    scrap: int(s.scrap),
                    share: ratio(s.scrap, group_total),
                    reason: s.reason,
                })
            })
            .collect()
    }

    /// From production: scrap with its good count, so the rate has a denominator.
    async fn total(
        tx: &mut ReadTx,
        sites: &[String],
        q: &Query,
        _rows: &[Keyed<ReasonScrap>],
    ) -> Result<ScrapTotal, sqlx::Error> {
        let c = super::production::ungrouped(tx, sites, q).await?;
        Ok(ScrapTotal {
            good: int(c.good),
            scrap: int(c.scrap),
            scrap_rate: scrap_rate(c.good, c.scrap),
        })
    }
}
