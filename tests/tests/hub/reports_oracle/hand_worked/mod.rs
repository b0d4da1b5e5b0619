//! Hand-worked datasets: figures written out with their arithmetic, and the helpers that read a
//! report's rows and compare them with the written figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use shared_model::event::ProductionCount;
use shared_model::{EquipmentId, EventBody, EventId, ReasonCodeId, WorkOrderId};
use system_tests::hq::array_len;

mod authorization;
mod local_time;
mod rollup;

pub(super) fn pc(
    eq: &str,
    wo: Option<&str>,
    good: u32,
    scrap: u32,
    reason: Option<&str>,
) -> EventBody {
    EventBody::ProductionCount(ProductionCount {
        equipment: EquipmentId::new(eq).unwrap(),
        work_order: wo.map(|w| WorkOrderId::new(w).unwrap()),
        good,
        scrap,
        rework: 0,
        scrap_reason: reason.map(|r| ReasonCodeId::new(r).unwrap()),
    })
}

/// The body of a correction of event `of`: its new body `replacement`, or a void without one.
pub(super) fn corr(of: EventId, replacement: Option<EventBody>) -> EventBody {
    system_tests::hq::correction(of, replacement, "oracle")
}

/// An HQ with SITE_B in Berlin and SITE_K in Kolkata (named after `name`), its hub serving
/// with the default report settings, the API's base URL and a client.
pub(super) async fn berlin_and_kolkata(
    name: &str,
) -> (
    system_tests::hq::Hq,
    central_hub::serve::Running,
    String,
    reqwest::Client,
) {
    let sites = [("SITE_B", "Europe/Berlin"), ("SITE_K", "Asia/Kolkata")];
    let h = system_tests::hq::hq(name, &sites).await;
    let (hub, base, http) = h.serve(central_hub::serve::ReportSettings::default()).await;
    (h, hub, base, http)
}

/// The row of a report whose group keys are `keys` (a `None` key is JSON null); panics naming
/// the report and the group when there is none.
pub(super) fn row_of<'a>(v: &'a Value, report: &str, keys: &[(&str, Option<&str>)]) -> &'a Value {
    v["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{report}: no rows: {v}"))
        .iter()
        .find(|r| keys.iter().all(|(k, want)| r[*k].as_str() == *want))
        .unwrap_or_else(|| panic!("{report}: no row for {keys:?} in {v}"))
}

/// Asserts the numeric `field` of `row` (absolute tolerance 1e-4), naming report and group.
pub(super) fn expect(report: &str, group: &str, row: &Value, field: &str, want: f64) {
    let got = row[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{report} [{group}] {field}: not a number in {row}"));
    assert!(
        (got - want).abs() < 1e-4,
        "{report} [{group}] {field}: api {got}, hand-worked {want} (row {row})"
    );
}

/// [`expect`] for each of `fields` with its hand-worked figure.
pub(super) fn expect_all(report: &str, group: &str, row: &Value, fields: &[(&str, f64)]) {
    for &(field, want) in fields {
        expect(report, group, row, field, want);
    }
}

/// [`expect_all`] on the row of report `v` whose group keys are `keys` (see [`row_of`]); returns
/// the row.
pub(super) fn expect_row<'a>(
    v: &'a Value,
    report: &str,
    keys: &[(&str, Option<&str>)],
    fields: &[(&str, f64)],
) -> &'a Value {
    let row = row_of(v, report, keys);
    let group: Vec<String> = keys
        .iter()
        .map(|(k, want)| format!("{k}={}", want.unwrap_or("null")))
        .collect();
    expect_all(report, &group.join(","), row, fields);
    row
}

/// The group keys of a report row (a `None` key is JSON null), and figures of that row.
pub(super) type Keys<'a> = &'a [(&'a str, Option<&'a str>)];
pub(super) type Figures<'a> = &'a [(&'a str, f64)];

/// [`expect_row`] for each row (by its keys) and its figures.
pub(super) fn expect_each(v: &Value, report: &str, rows: &[(Keys<'_>, Figures<'_>)]) {
    for (keys, fields) in rows {
        expect_row(v, report, keys, fields);
    }
}

/// Asserts a table of hand-worked figures: the row of report `v` whose `key` is a table row's
/// key has that row's figures in the `columns`.
pub(super) fn expect_table(
    v: &Value,
    report: &str,
    key: &str,
    columns: &[&str],
    table: &[(Option<&str>, &[f64])],
) {
    for (k, figures) in table {
        assert_eq!(columns.len(), figures.len(), "{report}: table row {k:?}");
        let fields: Vec<(&str, f64)> = columns
            .iter()
            .copied()
            .zip(figures.iter().copied())
            .collect();
        expect_row(v, report, &[(key, *k)], &fields);
    }
}

/// Each row of report `v`, read by `f`.
pub(super) fn rows<T>(v: &Value, f: impl Fn(&Value) -> T) -> Vec<T> {
    v["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {v}"))
        .iter()
        .map(f)
        .collect()
}

/// A downtime Pareto row: reason, seconds, stops, share and cumulative share.
pub(super) type ParetoRow<R> = (Option<R>, f64, i64, f64, f64);

/// The rows of downtime Pareto `v`, in their order.
pub(super) fn pareto(v: &Value) -> Vec<ParetoRow<String>> {
    rows(v, |r| {
        (
            r["reason"].as_str().map(str::to_owned),
            r["seconds"].as_f64().unwrap(),
            r["stops"].as_i64().unwrap(),
            r["share"].as_f64().unwrap(),
            r["cumulative_share"].as_f64().unwrap(),
        )
    })
}

/// Asserts that downtime Pareto `v` has the rows `want`, in that order (numbers to 1e-4).
pub(super) fn expect_pareto(what: &str, v: &Value, want: &[ParetoRow<&str>]) {
    let got = pareto(v);
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: api {got:?}, hand-worked {want:?}"
    );
    for (g, w) in got.iter().zip(want) {
        assert!(
            g.0.as_deref() == w.0
                && (g.1 - w.1).abs() < 1e-4
                && g.2 == w.2
                && (g.3 - w.3).abs() < 1e-4
                && (g.4 - w.4).abs() < 1e-4,
            "{what}: api {g:?}, hand-worked {w:?}"
        );
    }
}

/// Asserts that report `v` has `n` rows, naming `what` it is.
pub(super) fn expect_rows(v: &Value, n: usize, what: &str) {
    assert_eq!(array_len(v, "rows"), n, "{what}: {v}");
}

pub(super) fn expect_null(report: &str, group: &str, row: &Value, field: &str) {
    assert!(
        row[field].is_null(),
        "{report} [{group}] {field}: expected null (denominator 0), got {row}"
    );
}

/// `order` as its site's edge reports it: one Automerge change from an actor of the site,
/// applied to the hub's store.
pub(super) async fn publish_order(
    store: &central_hub::ingest::PgHubStore,
    order: shared_model::work_order::WorkOrder,
) {
    use sync_protocol::message::{RecordChange, RecordId, RecordKind};
    use sync_protocol::store::HubStore;
    let (site, id) = (order.site_id.clone(), order.id.clone());
    let mut doc = automerge::AutoCommit::new();
    sync_protocol::records::write_all(
        &mut doc,
        &sync_protocol::records::WorkOrderView {
            order,
            work_unit: None,
        },
    )
    .unwrap();
    doc.commit();
    let change = RecordChange::new(
        RecordId::new(RecordKind::WorkOrder, id.as_str()).unwrap(),
        doc.get_last_local_change().unwrap().raw_bytes().to_vec(),
    )
    .unwrap();
    store.apply_changes(&site, &[change]).await.unwrap();
}
