//! What a report is: [`ReportSpec`], implemented once per report file (`oee.rs`, …), and
//! [`Report`], the object-safe face the handler and the OpenAPI document use through the
//! registry (`registry::REPORTS`).
//!
//! A report names itself and its groups, gives its SQL, decodes each result row into its typed
//! `Row` (`sqlx::FromRow`), turns rows into answer lines (`Line`: a `Serialize` struct whose
//! fields, in declaration order, are the columns after the group columns) and computes its
//! `Total`. Nothing lines up by position: a column is a field name.

use std::future::Future;

use futures_util::future::BoxFuture;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Postgres, Transaction};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::params::{Group, Grouping, Query};
use super::sql::{self, Keyed};
use super::table::{Table, field_names};

/// A report's read transaction (reporting role, statement timeout, maybe one site).
pub type ReadTx = Transaction<'static, Postgres>;

pub trait ReportSpec: Sync + 'static {
    /// The path segment: `GET /api/v1/reports/{NAME}`.
    const NAME: &'static str;
    /// The groups (`group_by`) the report can be split by.
    const GROUPS: &'static [Group];
    /// The groups when the request names none.
    const DEFAULT_GROUPS: &'static [Group] = &[Group::Site];
    /// One result row of [`ReportSpec::sql`] after its group keys `k0`, `k1`, ….
    type Row: for<'r> FromRow<'r, PgRow> + Send + Sync + Unpin;
    /// One line of the answer after the group columns. Its fields are the columns, in
    /// declaration order; it must serialize as a flat object with every field present.
    type Line: Serialize + Default + utoipa::ToSchema;
    /// The `total` object of the JSON answer.
    type Total: Serialize + Send + utoipa::ToSchema;

    /// The statement: binds `$1` sites and `$2`..`$5` the range (see `sql::BOUNDS`), selects
    /// `k0`.. for `q.groups`, then the columns `Row` reads.
    fn sql(q: &Query) -> String;

    /// The answer's lines from the rows, in answer order.
    fn lines(rows: Vec<Keyed<Self::Row>>, groups: usize) -> Vec<Keyed<Self::Line>>;

    /// The total; `rows` are those the lines come from (a total that must count things once
    /// across groups queries again in the same transaction).
    fn total(
        tx: &mut ReadTx,
        sites: &[String],
        q: &Query,
        rows: &[Keyed<Self::Row>],
    ) -> impl Future<Output = Result<Self::Total, sqlx::Error>> + Send;
}

/// A row of sums (declared with `sql::sums_row!`) whose line comes from its sums alone, so the
/// line of all rows summed is the total: ratios of summed sums, never averaged ratios.
pub trait SumsRow:
    for<'r> FromRow<'r, PgRow> + Copy + Default + std::ops::Add<Output = Self> + Send + Sync + Unpin
{
    type Line: Serialize + Default + utoipa::ToSchema + Send;
    fn line(self) -> Self::Line;
}

/// The common report: one line per row of sums, and the total is the line of the rows summed.
/// Implementing it makes a [`ReportSpec`]; a report with other lines or another total (a
/// share within a group, a total that must count things once) implements `ReportSpec` itself.
pub trait SumsReport: Sync + 'static {
    /// See [`ReportSpec::NAME`].
    const NAME: &'static str;
    /// See [`ReportSpec::GROUPS`].
    const GROUPS: &'static [Group];
    type Row: SumsRow;
    /// See [`ReportSpec::sql`].
    fn sql(q: &Query) -> String;
}

impl<S: SumsReport> ReportSpec for S {
    const NAME: &'static str = <S as SumsReport>::NAME;
    const GROUPS: &'static [Group] = <S as SumsReport>::GROUPS;
    type Row = S::Row;
    type Line = <S::Row as SumsRow>::Line;
    type Total = <S::Row as SumsRow>::Line;

    fn sql(q: &Query) -> String {
        <S as SumsReport>::sql(q)
    }

    fn lines(rows: Vec<Keyed<S::Row>>, _groups: usize) -> Vec<Keyed<Self::Line>> {
        rows.into_iter().map(|r| r.map(SumsRow::line)).collect()
    }

    async fn total(
        _tx: &mut ReadTx,
        _sites: &[String],
        _q: &Query,
        rows: &[Keyed<S::Row>],
    ) -> Result<Self::Line, sqlx::Error> {
        Ok(rows
            .iter()
            .fold(S::Row::default(), |acc, r| acc + r.row)
            .line())
    }
}

/// A registered report, as the handler and the OpenAPI document see it.
pub trait Report: Sync {
    fn name(&self) -> &'static str;
    fn grouping(&self) -> Grouping;
    /// The columns after the group columns.
    fn measure_columns(&self) -> Vec<String>;
    /// The OpenAPI schemas of its line and total, named after their types.
    fn schemas(&self) -> Vec<(String, RefOr<Schema>)>;
    fn compute<'a>(
        &'a self,
        tx: &'a mut ReadTx,
        sites: &'a [String],
        q: &'a Query,
    ) -> BoxFuture<'a, Result<Table, sqlx::Error>>;
}

impl<S: ReportSpec> Report for S {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn grouping(&self) -> Grouping {
        Grouping {
            report: S::NAME,
            allowed: S::GROUPS,
            default: S::DEFAULT_GROUPS,
        }
    }

    fn measure_columns(&self) -> Vec<String> {
        field_names::<S::Line>()
    }

    fn schemas(&self) -> Vec<(String, RefOr<Schema>)> {
        vec![
            (S::Line::name().into_owned(), S::Line::schema()),
            (S::Total::name().into_owned(), S::Total::schema()),
        ]
    }

    fn compute<'a>(
        &'a self,
        tx: &'a mut ReadTx,
        sites: &'a [String],
        q: &'a Query,
    ) -> BoxFuture<'a, Result<Table, sqlx::Error>> {
        Box::pin(compute::<S>(tx, sites, q))
    }
}

async fn compute<S: ReportSpec>(
    tx: &mut ReadTx,
    sites: &[String],
    q: &Query,
) -> Result<Table, sqlx::Error> {
    let n = q.groups.len();
    let rows = sql::run::<S::Row>(tx, S::sql(q), sites, q, n).await?;
    let total = S::total(tx, sites, q, &rows).await?;
    let lines = S::lines(rows, n);
    let groups = q.groups.iter().map(|g| g.as_str().to_owned()).collect();
    Ok(Table::build(groups, lines, &total))
}

/// `num / den`, or `None` (JSON `null`) when there is nothing to divide by: the model's one
/// division for every report ratio.
pub use shared_model::kpi::ratio;

/// A count summed as `float8` by SQL, as the integer it is.
pub fn int(v: f64) -> i64 {
    v.round() as i64
}

/// Sums `f` over the rows.
pub fn sum_of<R>(rows: &[Keyed<R>], f: impl Fn(&R) -> f64) -> f64 {
    rows.iter().map(|r| f(&r.row)).sum()
}

/// Each group's sum of `f` (the key is the group's values), for shares within a group.
pub fn group_sums<R>(
    rows: &[Keyed<R>],
    groups: usize,
    f: impl Fn(&R) -> f64,
) -> std::collections::HashMap<Vec<Option<String>>, f64> {
    let mut sums = std::collections::HashMap::new();
    for r in rows {
        *sums.entry(r.keys[..groups].to_vec()).or_insert(0.0) += f(&r.row);
    }
    sums
}
