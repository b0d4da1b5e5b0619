//! Hand-worked datasets: figures written out with their arithmetic, and the helpers that read a
//! report's rows and compare them with the written figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use shared_model::event::{Correction, ProductionCount, Replacement};
use shared_model::{EquipmentId, EventBody, EventId, ReasonCodeId, WorkOrderId};

mod authorization;
mod local_time;
mod rollup;

pub(super) fn pcount(
    eq: &str,
    wo: Option<&str>,
    good: u32,
    scrap: u32,
    reason: Option<&str>,
) -> ProductionCount {
    ProductionCount {
        equipment: EquipmentId::new(eq).unwrap(),
        work_order: wo.map(|w| WorkOrderId::new(w).unwrap()),
        good,
        scrap,
        rework: 0,
        scrap_reason: reason.map(|r| ReasonCodeId::new(r).unwrap()),
    }
}

pub(super) fn pc(
    eq: &str,
    wo: Option<&str>,
    good: u32,
    scrap: u32,
    reason: Option<&str>,
) -> EventBody {
    EventBody::ProductionCount(pcount(eq, wo, good, scrap, reason))
}

pub(super) fn corr(of: EventId, replacement: Option<Replacement>) -> EventBody {
    EventBody::Correction(Correction {
        corrects: of,
        replacement,
        note: "oracle".into(),
    })
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
