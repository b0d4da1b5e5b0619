//! A cross-site roll-up, a Pareto, an on-time rate and a lot genealogy, worked out by hand.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use central_hub::serve::ReportSettings;
use serde_json::{Value, json};
use shared_model::event::MachineState;
use shared_model::{Event, MaterialId, SiteId, WorkOrderId};
use sync_protocol::store::HubStore;
use system_tests::hq::{Api, array_len, event, events_at, hq, movement, put_master, t};

use super::{corr, expect_rows, pareto, publish_order};

/// A work order as the site's edge reports it: one Automerge change from an actor of the site.
async fn site_order(
    store: &central_hub::ingest::PgHubStore,
    site: &str,
    id: &str,
    material: &str,
    due: &str,
    ended_at: Option<&str>,
) {
    let mut order = shared_model::work_order::WorkOrder::released(
        WorkOrderId::new(id).unwrap(),
        SiteId::new(site).unwrap(),
        MaterialId::new(material).unwrap(),
        100,
    );
    order.due = Some(t(due));
    if let Some(end) = ended_at {
        order.state = shared_model::work_order::WorkOrderState::Ended;
        order.actual_start = Some(t("2026-11-10T00:00:00Z"));
        order.actual_end = Some(t(end));
        order.good_count = 100;
    }
    publish_order(store, order).await;
}

/// Material movements of `site` on 2026-11-10 numbered from `first`: at each time of day (UTC,
/// `hh:mm`) whether consumed (or else produced), the lot, its material, the quantity and the
/// work order.
fn movements(
    site: &SiteId,
    first: u64,
    moves: &[(&str, bool, &str, &str, f64, &str)],
) -> Vec<Event> {
    (first..)
        .zip(moves)
        .map(|(n, &(at, consumed, lot, material, qty, order))| {
            let at = t(&format!("2026-11-10T{at}:00Z"));
            event(site, n, at, movement(consumed, lot, material, qty, order))
        })
        .collect()
}

/// A genealogy edge: from lot, to lot, work order, site, quantity, depth.
type Edge<'a> = (&'a str, &'a str, &'a str, &'a str, f64, i64);

/// The edges of genealogy answer `v`, sorted.
fn edges(v: &Value) -> Vec<Edge<'_>> {
    fn s<'a>(e: &'a Value, k: &str) -> &'a str {
        e[k].as_str().unwrap()
    }
    let mut edges: Vec<Edge<'_>> = v["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let (q, d) = (
                e["quantity"].as_f64().unwrap(),
                e["depth"].as_i64().unwrap(),
            );
            (
                s(e, "from_lot"),
                s(e, "to_lot"),
                s(e, "work_order"),
                s(e, "site"),
                q,
                d,
            )
        })
        .collect();
    edges.sort_by(|a, b| a.partial_cmp(b).unwrap());
    edges
}

/// The nodes of genealogy answer `v`, sorted: lot, material, depth.
fn nodes(v: &Value) -> Vec<(&str, Option<&str>, i64)> {
    let mut nodes: Vec<_> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let lot = n["lot"].as_str().unwrap();
            (lot, n["material"].as_str(), n["depth"].as_i64().unwrap())
        })
        .collect();
    nodes.sort();
    nodes
}

/// The genealogy answer to `path`, whose edges are asserted to be `want`; `what` names it.
async fn genealogy(api: &Api, path: &str, want: &[Edge<'_>], what: &str) -> Value {
    let v = api.json(path).await;
    assert_eq!(edges(&v), want, "{what}: {v}");
    v
}

/// Hand-worked figures, written out: a cross-site roll-up that differs from the average of
/// percentages, a Pareto with its order and cumulative shares, an on-time rate, and a lot
/// genealogy of three levels across two sites in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_worked_rollup_pareto_on_time_and_genealogy() {
    use system_tests::hq::{close, count, every, state};
    let h = hq(
        "hand",
        &[("SITE_X", "UTC"), ("SITE_Y", "UTC"), ("SITE_P", "UTC")],
    )
    .await;
    let (hub, base, http) = h.serve(ReportSettings::default()).await;
    let writer = h.token("hq:write", None).await;
    put_master(&http, &base, &writer, "routings", json!([
        {"material": "M1", "version": 1, "seq": 10, "operation_code": "PRESS", "work_center_class": "press",
         "ideal_cycle_time_ms": 1000, "setup_time_ms": 0}])).await;
    put_master(&http, &base, &writer, "reason-codes", json!([
        {"code": "JAM", "parent": null, "name": "Jam", "loss_category": "unplanned", "counts_against_availability": true},
        {"code": "WAIT", "parent": null, "name": "Waiting", "loss_category": "unplanned", "counts_against_availability": true},
        {"code": "BREAK", "parent": null, "name": "Break", "loss_category": "planned", "counts_against_availability": false}])).await;
    let (x, y, p) = (
        SiteId::new("SITE_X").unwrap(),
        SiteId::new("SITE_Y").unwrap(),
        SiteId::new("SITE_P").unwrap(),
    );
    // Orders: X-WO-1 due 02:00 ended 01:30 (on time), X-WO-2 due 03:00 ended 03:30 (late),
    // X-WO-3 due 03:30 still open; Y-WO-1 due next week (outside the range).
    for (site, id, due, ended_at) in [
        (
            "SITE_X",
            "SITE_X-WO-1",
            "2026-11-10T02:00:00Z",
            Some("2026-11-10T01:30:00Z"),
        ),
        (
            "SITE_X",
            "SITE_X-WO-2",
            "2026-11-10T03:00:00Z",
            Some("2026-11-10T03:30:00Z"),
        ),
        ("SITE_X", "SITE_X-WO-3", "2026-11-10T03:30:00Z", None),
        ("SITE_Y", "SITE_Y-WO-1", "2026-11-17T00:00:00Z", None),
    ] {
        site_order(&h.store, site, id, "M1", due, ended_at).await;
    }

    // Roll-up. SITE_X: running from 00:00, PPT 4 h = 14,400 s, 10,800 good at 1 s ideal → OEE
    // 0.75. SITE_Y: first reports at 03:00, PPT 3,600 s, 900 good → OEE 0.25. The average of
    // the two percentages would be 0.50; the roll-up sums components:
    // (10,800 + 900) × 1 s / (14,400 + 3,600) s = 11,700 / 18,000 = 0.65.
    let mut ex = vec![event(
        &x,
        1,
        t("2026-11-10T00:00:00Z"),
        state("PRESS-01", MachineState::Running, None),
    )];
    ex.extend(every(
        &x,
        10,
        "2026-11-10T00:00:00Z",
        2,
        108,
        &count("PRESS-01", "SITE_X-WO-1", 100, 0),
    ));
    h.store.ingest_events(&x, &ex).await.unwrap();
    let ey = events_at(
        &y,
        1,
        &[
            (
                "2026-11-10T03:00:00Z",
                state("PRESS-01", MachineState::Running, None),
            ),
            (
                "2026-11-10T03:30:00Z",
                count("PRESS-01", "SITE_Y-WO-1", 900, 0),
            ),
        ],
    );
    h.store.ingest_events(&y, &ey).await.unwrap();
    let api = Api::new(&http, &base, &h.token("hq:read", None).await);
    let range = "from=2026-11-10T00:00:00Z&to=2026-11-10T04:00:00Z";
    let v = api
        .json(&format!(
            "/api/v1/reports/oee?{range}&site=SITE_X&site=SITE_Y"
        ))
        .await;
    assert!(close(v["rows"][0]["oee"].as_f64().unwrap(), 0.75), "{v}");
    assert!(close(v["rows"][1]["oee"].as_f64().unwrap(), 0.25), "{v}");
    assert!(
        close(v["total"]["oee"].as_f64().unwrap(), 0.65),
        "summed, not averaged: {v}"
    );

    // Pareto at SITE_P: JAM 30 + 15 min (2 stops), WAIT 20 min, unassigned 5 min, a planned
    // BREAK of 30 min. Without planned stops (70 min in all): JAM 45/70 = 0.642857,
    // cumulative 0.642857; WAIT 20/70 → 0.928571; unassigned 5/70 → 1.0.
    // With them (100 min): JAM 0.45, BREAK 0.75, WAIT 0.95, unassigned 1.0.
    let changes = [
        ("00:00", MachineState::Running, None),
        ("00:10", MachineState::Down, Some("JAM")),
        ("00:40", MachineState::Running, None),
        ("01:00", MachineState::Down, Some("WAIT")),
        ("01:20", MachineState::Running, None),
        ("02:00", MachineState::Down, Some("JAM")),
        ("02:15", MachineState::Running, None),
        ("03:00", MachineState::PlannedStop, Some("BREAK")),
        ("03:30", MachineState::Down, None),
        ("03:35", MachineState::Running, None),
    ];
    let ep: Vec<Event> = changes
        .iter()
        .enumerate()
        .map(|(i, (at, s, r))| {
            event(
                &p,
                i as u64 + 1,
                t(&format!("2026-11-10T{at}:00Z")),
                state("PRESS-09", *s, *r),
            )
        })
        .collect();
    h.store.ingest_events(&p, &ep).await.unwrap();
    // Minutes, not seconds.
    let pareto = |v: &Value| -> Vec<(Option<String>, f64, i64, f64)> {
        pareto(v)
            .into_iter()
            .map(|(reason, seconds, stops, _, cumulative)| {
                (reason, seconds / 60.0, stops, cumulative)
            })
            .collect()
    };
    let v = api
        .json(&format!(
            "/api/v1/reports/downtime-pareto?{range}&site=SITE_P"
        ))
        .await;
    let got = pareto(&v);
    let want = [
        (Some("JAM"), 45.0, 2, 45.0 / 70.0),
        (Some("WAIT"), 20.0, 1, 65.0 / 70.0),
        (None, 5.0, 1, 1.0),
    ];
    assert_eq!(got.len(), want.len(), "{v}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            g.0.as_deref() == w.0 && close(g.1, w.1) && g.2 == w.2 && close(g.3, w.3),
            "{g:?} != {w:?}"
        );
    }
    let v = api
        .json(&format!(
            "/api/v1/reports/downtime-pareto?{range}&site=SITE_P&include_planned=true"
        ))
        .await;
    let got = pareto(&v);
    let order: Vec<Option<&str>> = got.iter().map(|g| g.0.as_deref()).collect();
    assert_eq!(order, vec![Some("JAM"), Some("BREAK"), Some("WAIT"), None]);
    let cumulative: Vec<f64> = got.iter().map(|g| g.3).collect();
    for (c, w) in cumulative.iter().zip([0.45, 0.75, 0.95, 1.0]) {
        assert!(close(*c, w), "{cumulative:?}");
    }
    // The stops lowered SITE_P's availability by 70 min of its 240 (the break did not).
    let v = api
        .json(&format!("/api/v1/reports/oee?{range}&site=SITE_P"))
        .await;
    assert!(
        close(
            v["rows"][0]["availability"].as_f64().unwrap(),
            170.0 / 240.0
        ),
        "{v}"
    );

    // On-time in [00:00, 04:00): three orders due, one on time → 1/3.
    let v = api.json(&format!("/api/v1/reports/on-time?{range}")).await;
    let row = &v["rows"][0];
    assert_eq!(
        (
            row["site"].as_str(),
            row["due"].as_i64(),
            row["on_time"].as_i64(),
            row["late"].as_i64(),
            row["open"].as_i64()
        ),
        (Some("SITE_X"), Some(3), Some(1), Some(1), Some(1)),
        "{v}"
    );
    assert!(close(row["on_time_rate"].as_f64().unwrap(), 1.0 / 3.0));
    expect_rows(&v, 1, "SITE_Y's order is due next week");

    // Genealogy: SITE_X's order 10 turns RAW-1 (12.5 kg) and RAW-2 (0.5 l) into SUB-1 (40);
    // SUB-1 goes to SITE_Y, whose order 20 turns SUB-1 (40) and HW-1 (80) into FG-1 (40), and
    // order 21 packs FG-1 (40) into PAL-1 (1).
    let gx = movements(
        &x,
        500,
        &[
            ("01:00", true, "RAW-1", "STEEL", 12.5, "SITE_X-WO-10"),
            ("01:00", true, "RAW-2", "PAINT", 0.5, "SITE_X-WO-10"),
            ("01:30", false, "SUB-1", "BLANK", 40.0, "SITE_X-WO-10"),
        ],
    );
    let gy = movements(
        &y,
        500,
        &[
            ("02:00", true, "SUB-1", "BLANK", 40.0, "SITE_Y-WO-20"),
            ("02:00", true, "HW-1", "SCREW", 80.0, "SITE_Y-WO-20"),
            ("02:30", false, "FG-1", "BRACKET", 40.0, "SITE_Y-WO-20"),
            ("03:00", true, "FG-1", "BRACKET", 40.0, "SITE_Y-WO-21"),
            ("03:30", false, "PAL-1", "KIT", 1.0, "SITE_Y-WO-21"),
        ],
    );
    h.store.ingest_events(&x, &gx).await.unwrap();
    h.store.ingest_events(&y, &gy).await.unwrap();
    let v = genealogy(
        &api,
        "/api/v1/reports/genealogy/PAL-1?direction=backward",
        &[
            ("FG-1", "HW-1", "SITE_Y-WO-20", "SITE_Y", 80.0, 2),
            ("FG-1", "SUB-1", "SITE_Y-WO-20", "SITE_Y", 40.0, 2),
            ("PAL-1", "FG-1", "SITE_Y-WO-21", "SITE_Y", 40.0, 1),
            ("SUB-1", "RAW-1", "SITE_X-WO-10", "SITE_X", 12.5, 3),
            ("SUB-1", "RAW-2", "SITE_X-WO-10", "SITE_X", 0.5, 3),
        ],
        "genealogy PAL-1 backward",
    )
    .await;
    assert_eq!(
        array_len(&v, "nodes"),
        6,
        "PAL-1 and five lots behind it: {v}"
    );
    genealogy(
        &api,
        "/api/v1/reports/genealogy/RAW-1?direction=forward",
        &[
            ("FG-1", "PAL-1", "SITE_Y-WO-21", "SITE_Y", 1.0, 3),
            ("RAW-1", "SUB-1", "SITE_X-WO-10", "SITE_X", 40.0, 1),
            ("SUB-1", "FG-1", "SITE_Y-WO-20", "SITE_Y", 40.0, 2),
        ],
        "genealogy RAW-1 forward",
    )
    .await;
    // A SITE_Y token sees SITE_Y's movements only: the walk stops at the plant's border.
    let y_api = Api::new(&http, &base, &h.token("hq:read", Some("SITE_Y")).await);
    let v = y_api.json("/api/v1/reports/genealogy/PAL-1").await;
    assert_eq!(edges(&v).len(), 3, "{v}");
    assert!(edges(&v).iter().all(|e| e.3 == "SITE_Y"));

    // Nodes: every lot once, with its material and its distance from the asked lot.
    let v = api.json("/api/v1/reports/genealogy/PAL-1").await;
    assert_eq!(
        nodes(&v),
        vec![
            ("FG-1", Some("BRACKET"), 1),
            ("HW-1", Some("SCREW"), 2),
            ("PAL-1", Some("KIT"), 0),
            ("RAW-1", Some("STEEL"), 3),
            ("RAW-2", Some("PAINT"), 3),
            ("SUB-1", Some("BLANK"), 2),
        ],
        "genealogy PAL-1 backward: nodes {v}"
    );
    assert_eq!(
        (v["lot"].as_str(), v["direction"].as_str()),
        (Some("PAL-1"), Some("backward")),
        "{v}"
    );
    let v = api
        .json("/api/v1/reports/genealogy/RAW-1?direction=forward")
        .await;
    assert_eq!(
        nodes(&v),
        vec![
            ("FG-1", Some("BRACKET"), 2),
            ("PAL-1", Some("KIT"), 3),
            ("RAW-1", Some("STEEL"), 0),
            ("SUB-1", Some("BLANK"), 1),
        ],
        "genealogy RAW-1 forward: nodes {v}"
    );

    // Corrections apply to movements: SITE_Y voids the HW-1 consumption, SITE_X corrects the
    // RAW-1 quantity from 12.5 to 13.0. Backward from PAL-1: HW-1 is gone, RAW-1 moved 13.0.
    let void_hw = event(
        &y,
        600,
        t("2026-11-10T05:00:00Z"),
        corr(gy[1].event_id, None),
    );
    let fix_raw = event(
        &x,
        600,
        t("2026-11-10T05:00:00Z"),
        corr(
            gx[0].event_id,
            Some(movement(true, "RAW-1", "STEEL", 13.0, "SITE_X-WO-10")),
        ),
    );
    h.store.ingest_events(&y, &[void_hw]).await.unwrap();
    h.store.ingest_events(&x, &[fix_raw]).await.unwrap();
    genealogy(
        &api,
        "/api/v1/reports/genealogy/PAL-1",
        &[
            ("FG-1", "SUB-1", "SITE_Y-WO-20", "SITE_Y", 40.0, 2),
            ("PAL-1", "FG-1", "SITE_Y-WO-21", "SITE_Y", 40.0, 1),
            ("SUB-1", "RAW-1", "SITE_X-WO-10", "SITE_X", 13.0, 3),
            ("SUB-1", "RAW-2", "SITE_X-WO-10", "SITE_X", 0.5, 3),
        ],
        "genealogy PAL-1 backward after corrections",
    )
    .await;
    // A SITE_X token walking forward from RAW-1 sees SITE_X's order only.
    let x_api = Api::new(&http, &base, &h.token("hq:read", Some("SITE_X")).await);
    genealogy(
        &x_api,
        "/api/v1/reports/genealogy/RAW-1?direction=forward",
        &[("RAW-1", "SUB-1", "SITE_X-WO-10", "SITE_X", 40.0, 1)],
        "genealogy RAW-1 forward with a SITE_X token",
    )
    .await;
    hub.stop().await.unwrap();
}
