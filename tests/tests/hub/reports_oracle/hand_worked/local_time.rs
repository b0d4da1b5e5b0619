//! Site-local time and corrections, worked out by hand: the domain's worked example at a
//! UTC+05:30 plant, site-local days and shifts, scrap by reason, small stops, on-time by local
//! due date and corrections; a correction's place among simultaneous changes; the 25-hour day
//! at the end of daylight saving time; and the present, counted up to now.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use central_hub::serve::ReportSettings;
use serde_json::{Value, json};
use shared_model::event::MachineState;
use shared_model::{Event, EventId, MaterialId, SiteId, WorkOrderId};
use sync_protocol::store::HubStore;
use system_tests::hq::{Api, Hq, hq, put_master, put_materials, release_order, t};

use super::super::oracle::num;
use super::{
    berlin_and_kolkata, corr, expect, expect_all, expect_each, expect_null, expect_pareto,
    expect_row, expect_rows, expect_table, pc, publish_order, row_of, rows,
};

/// A work order in any state, as the site's edge reports it (one Automerge change).
async fn order_record(
    store: &central_hub::ingest::PgHubStore,
    site: &str,
    id: &str,
    due: &str,
    state: shared_model::work_order::WorkOrderState,
    ended_at: Option<&str>,
) {
    let mut order = shared_model::work_order::WorkOrder::released(
        WorkOrderId::new(id).unwrap(),
        SiteId::new(site).unwrap(),
        MaterialId::new("BRACKET-7").unwrap(),
        100,
    );
    order.due = Some(t(due));
    order.state = state;
    order.actual_end = ended_at.map(t);
    publish_order(store, order).await;
}

/// An HQ with the one site `site` in zone `tz` (named after `name`), its hub serving with the
/// default report settings, a reader of its API and the site's id; the stop reasons `reasons`
/// (code, name) in the master data, unplanned and counting against availability.
async fn one_site(
    name: &str,
    site: &str,
    tz: &str,
    reasons: &[(&str, &str)],
) -> (Hq, central_hub::serve::Running, Api, SiteId) {
    let h = hq(name, &[(site, tz)]).await;
    let (hub, base, http) = h.serve(ReportSettings::default()).await;
    let writer = h.token("hq:write", None).await;
    let codes: Vec<Value> = reasons
        .iter()
        .map(|(code, name)| {
            json!({"code": code, "parent": null, "name": name, "loss_category": "unplanned",
                   "counts_against_availability": true})
        })
        .collect();
    put_master(&http, &base, &writer, "reason-codes", json!(codes)).await;
    let api = Api::new(&http, &base, &h.token("hq:read", None).await);
    (h, hub, api, SiteId::new(site).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_worked_time_zones_scrap_small_stops_on_time_and_corrections() {
    use shared_model::work_order::WorkOrderState;
    use system_tests::hq::{event, events_at, state, timeline};
    let (h, hub, base, http) = berlin_and_kolkata("hand2").await;
    let writer = h.token("hq:write", None).await;
    let api = Api::new(&http, &base, &h.token("hq:read", None).await);
    put_materials(&http, &base, &writer, &[("BRACKET-7", "Bracket")]).await;
    // The ideal cycle time on a press is that of v1 seq 10 (2.0 s): the press step of the lowest
    // version, although a saw step comes first and version 2 is faster.
    put_master(
        &http,
        &base,
        &writer,
        "routings",
        json!([
        {"material": "BRACKET-7", "version": 1, "seq": 5, "operation_code": "SAW",
         "work_center_class": "saw", "ideal_cycle_time_ms": 9000, "setup_time_ms": 0},
        {"material": "BRACKET-7", "version": 1, "seq": 10, "operation_code": "PRESS",
         "work_center_class": "press", "ideal_cycle_time_ms": 2000, "setup_time_ms": 0},
        {"material": "BRACKET-7", "version": 2, "seq": 1, "operation_code": "PRESS",
         "work_center_class": "press", "ideal_cycle_time_ms": 500, "setup_time_ms": 0}]),
    )
    .await;
    // PRESS-K2 is not in the equipment master: work centre null, no class.
    put_master(&http, &base, &writer, "equipment", json!([
        {"id": "PRESS-K1", "parent": "WC-K", "level": "work_unit", "name": "Press K1", "class": "press"},
        {"id": "PRESS-B2", "parent": "WC-B", "level": "work_unit", "name": "Press B2", "class": "press"}])).await;
    put_master(&http, &base, &writer, "reason-codes", json!([
        {"code": "DOWN.JAM", "parent": null, "name": "Material jam", "loss_category": "unplanned", "counts_against_availability": true},
        {"code": "DOWN.WAIT", "parent": null, "name": "Waiting", "loss_category": "unplanned", "counts_against_availability": true},
        {"code": "PLAN.END", "parent": null, "name": "End of shift", "loss_category": "planned", "counts_against_availability": false},
        {"code": "SCRAP.BURR", "parent": null, "name": "Burr", "loss_category": "quality", "counts_against_availability": false},
        {"code": "SCRAP.CRACK", "parent": null, "name": "Crack", "loss_category": "quality", "counts_against_availability": false}])).await;
    // Kolkata (UTC+05:30): the early shift 06:00–14:00 local = 00:30–08:30 UTC on 2026-11-03,
    // break 10:00–10:30 local = 04:30–05:00 UTC. Berlin has no calendar (around the clock).
    put_master(&http, &base, &writer, "shift-calendars", json!([
        {"site_id": "SITE_K", "name": "main", "shifts": [
            {"name": "Early", "start": "2026-11-03T00:30:00Z", "end": "2026-11-03T08:30:00Z",
             "planned_breaks": [{"start": "2026-11-03T04:30:00Z", "end": "2026-11-03T05:00:00Z"}]}]}])).await;
    for site in ["SITE_K", "SITE_B"] {
        let order = json!({"id": format!("{site}-WO-1"), "material": "BRACKET-7", "planned_quantity": 12000});
        release_order(&http, &base, &writer, site, &order).await;
    }

    // ---- SITE_K: the worked example of domain.md on PRESS-K1 --------------------------------
    let k = SiteId::new("SITE_K").unwrap();
    let mut ek = timeline(
        &k,
        1,
        "PRESS-K1",
        &[
            ("2026-11-03T00:30:00Z", MachineState::Running, None),
            ("2026-11-03T02:00:00Z", MachineState::Down, Some("DOWN.JAM")),
            ("2026-11-03T02:45:00Z", MachineState::Running, None),
            // A 90 s stop without a reason: a small stop (Pareto yes, availability no).
            ("2026-11-03T06:00:00Z", MachineState::Down, None),
            ("2026-11-03T06:01:30Z", MachineState::Running, None),
            // End of shift: planned stop until 06:00 local next morning (closed explicitly).
            (
                "2026-11-03T08:30:00Z",
                MachineState::PlannedStop,
                Some("PLAN.END"),
            ),
            ("2026-11-04T00:30:00Z", MachineState::Running, None),
        ],
    );
    // 108 counts of 98 good + 2 scrap every 4 min from 00:30 UTC (last 07:38): 10,584 good, 216
    // scrap. Scrap reasons: count 0 none (2), counts 3, 6, …, 105 BURR (35 × 2 = 70), the other
    // 72 CRACK (144).
    for i in 0..108u64 {
        let reason = match i {
            0 => None,
            i if i % 3 == 0 => Some("SCRAP.BURR"),
            _ => Some("SCRAP.CRACK"),
        };
        let at = t("2026-11-03T00:30:00Z").saturating_add_micros(i as i64 * 4 * 60_000_000);
        ek.push(event(
            &k,
            100 + i,
            at,
            pc("PRESS-K1", Some("SITE_K-WO-1"), 98, 2, reason),
        ));
    }
    // PRESS-K2 (no order, no master): 3 good at 00:10 UTC (05:40 local, bucket 23:30 UTC the day
    // before, before the shift), 5 at 18:15 UTC (23:45 local 11-03), 7 at 18:45 UTC (00:15 local
    // 11-04).
    ek.extend(events_at(
        &k,
        300,
        &[
            ("2026-11-03T00:10:00Z", pc("PRESS-K2", None, 3, 0, None)),
            ("2026-11-03T18:15:00Z", pc("PRESS-K2", None, 5, 0, None)),
            ("2026-11-03T18:45:00Z", pc("PRESS-K2", None, 7, 0, None)),
        ],
    ));
    // Two batches, overlapping: the re-sent events must not count twice.
    h.store.ingest_events(&k, &ek[..80]).await.unwrap();
    h.store.ingest_events(&k, &ek[50..]).await.unwrap();

    // ---- SITE_B: Berlin (UTC+01:00 in November) day boundary on PRESS-B1 --------------------
    let bsite = SiteId::new("SITE_B").unwrap();
    // 23:59 local on 11-03, then 00:00 local on 11-04 (both on 11-03 in UTC).
    let eb = events_at(
        &bsite,
        1,
        &[
            ("2026-11-03T22:59:00Z", pc("PRESS-B1", None, 10, 0, None)),
            ("2026-11-03T23:00:00Z", pc("PRESS-B1", None, 20, 0, None)),
        ],
    );
    h.store.ingest_events(&bsite, &eb).await.unwrap();

    // (1) OEE of the worked example, per equipment at SITE_K over the local day 11-03
    // ([2026-11-02T18:30Z, 2026-11-03T18:30Z)).
    // PRESS-K1: PPT 8 h − 30 min = 27,000 s; stop 45 min = 2,700 s (the 90 s stop is small);
    // run 24,300 s; ideal 10,800 × 2 s = 21,600 s; A 24,300/27,000 = 0.9, P 21,600/24,300 =
    // 0.888889, Q 10,584/10,800 = 0.98, OEE 0.784.
    // PRESS-K2: seen since 23:30 UTC, so PPT 27,000 s, no stops; 8 good without an order: ideal
    // 0 → A 1, P 0, Q 1, OEE 0.
    // Site total from summed components: PPT 54,000, stop 2,700, run 51,300, ideal 21,600, good
    // 10,592, scrap 216 → A 0.95, P 21,600/51,300 = 0.421053, Q 10,592/10,808 = 0.980015,
    // OEE = 21,600 × 0.980015 / 54,000 = 0.392006.
    let day_k = "from=2026-11-03&to=2026-11-04&site=SITE_K";
    let (s, v, _) = api
        .get(&format!("/api/v1/reports/oee?{day_k}&group_by=equipment"))
        .await;
    assert_eq!(s, 200, "oee: {v}");
    assert_eq!(
        (v["from"].as_str(), v["to"].as_str()),
        (Some("2026-11-03"), Some("2026-11-04")),
        "dates echo as dates: {v}"
    );
    expect_row(
        &v,
        "oee",
        &[("equipment", Some("PRESS-K1"))],
        &[
            ("planned_production_seconds", 27_000.0),
            ("stop_seconds", 2_700.0),
            ("run_seconds", 24_300.0),
            ("ideal_seconds", 21_600.0),
            ("good", 10_584.0),
            ("scrap", 216.0),
            ("total_count", 10_800.0),
            ("availability", 0.9),
            ("performance", 21_600.0 / 24_300.0),
            ("quality", 0.98),
            ("oee", 0.784),
        ],
    );
    expect_row(
        &v,
        "oee",
        &[("equipment", Some("PRESS-K2"))],
        &[
            ("planned_production_seconds", 27_000.0),
            ("stop_seconds", 0.0),
            ("ideal_seconds", 0.0),
            ("good", 8.0),
            ("availability", 1.0),
            ("performance", 0.0),
            ("quality", 1.0),
            ("oee", 0.0),
        ],
    );
    let total = &v["total"];
    expect_all(
        "oee",
        "total",
        total,
        &[
            ("planned_production_seconds", 54_000.0),
            ("stop_seconds", 2_700.0),
            ("run_seconds", 51_300.0),
            ("ideal_seconds", 21_600.0),
            ("good", 10_592.0),
            ("scrap", 216.0),
            ("availability", 0.95),
            ("performance", 21_600.0 / 51_300.0),
            ("quality", 10_592.0 / 10_808.0),
            ("oee", 21_600.0 * (10_592.0 / 10_808.0) / 54_000.0),
        ],
    );
    // By work centre: WC-K is PRESS-K1 alone; PRESS-K2 (not in the master) is the null group.
    let v = api
        .json(&format!("/api/v1/reports/oee?{day_k}&group_by=work_center"))
        .await;
    expect_each(
        &v,
        "oee",
        &[
            (&[("work_center", Some("WC-K"))], &[("oee", 0.784)]),
            (&[("work_center", None)], &[("good", 8.0)]),
        ],
    );

    // (5) Shifts: every bucket of PRESS-K1 lies in "2026-11-03 Early" (labelled with the local
    // date of the shift start); PRESS-K2's counts at 23:30 and 17:30 UTC buckets are in no shift.
    // Early: PPT 54,000, stop 2,700, ideal 21,600, good 10,584, scrap 216 → OEE 21,600 × 0.98 /
    // 54,000 = 0.392. No shift: PPT 0, 8 good → A and OEE null.
    let v = api
        .json(&format!("/api/v1/reports/oee?{day_k}&group_by=shift"))
        .await;
    expect_row(
        &v,
        "oee",
        &[("shift", Some("2026-11-03 Early"))],
        &[
            ("planned_production_seconds", 54_000.0),
            ("stop_seconds", 2_700.0),
            ("ideal_seconds", 21_600.0),
            ("good", 10_584.0),
            ("scrap", 216.0),
            ("oee", 0.392),
        ],
    );
    let r = expect_row(
        &v,
        "oee",
        &[("shift", None)],
        &[("planned_production_seconds", 0.0), ("good", 8.0)],
    );
    expect_null("oee", "shift=null", r, "availability");
    expect_null("oee", "shift=null", r, "oee");
    expect_rows(&v, 2, "oee by shift");

    // (5) Site-local days, both sites, from=2026-11-03&to=2026-11-05 (each site's own midnights).
    // SITE_B: 10 on 11-03 (23:59 local), 20 on 11-04 (00:00 local).
    // SITE_K: 10,584 + 3 + 5 = 10,592 good and 216 scrap on 11-03; 7 on 11-04 (00:15 local).
    let v = api
        .json("/api/v1/reports/production?from=2026-11-03&to=2026-11-05&group_by=site,day")
        .await;
    let got: Vec<(String, String, i64, i64)> = rows(&v, |r| {
        (
            r["site"].as_str().unwrap().to_owned(),
            r["day"].as_str().unwrap().to_owned(),
            r["good"].as_i64().unwrap(),
            r["scrap"].as_i64().unwrap(),
        )
    });
    let want: Vec<(String, String, i64, i64)> = [
        ("SITE_B", "2026-11-03", 10, 0),
        ("SITE_B", "2026-11-04", 20, 0),
        ("SITE_K", "2026-11-03", 10_592, 216),
        ("SITE_K", "2026-11-04", 7, 0),
    ]
    .iter()
    .map(|(s, d, g, x)| ((*s).to_owned(), (*d).to_owned(), *g, *x))
    .collect();
    assert_eq!(got, want, "production by site, day: {v}");
    // An instant range takes the buckets that start in it: [11-03T00:00Z, 11-04T00:00Z) has
    // both Berlin counts (buckets 22:00 and 23:00 UTC) and at SITE_K PRESS-K2's 18:15 and
    // 18:45 UTC counts (buckets 17:30 and 18:30) but not the 00:10 UTC one (bucket 23:30 UTC
    // the day before): 5 + 7 = 12.
    let v = api.json("/api/v1/reports/production?from=2026-11-03T00:00:00Z&to=2026-11-04T00:00:00Z&group_by=site,equipment").await;
    expect_each(
        &v,
        "production",
        &[
            (
                &[("site", Some("SITE_B")), ("equipment", Some("PRESS-B1"))],
                &[("good", 30.0)],
            ),
            (
                &[("site", Some("SITE_K")), ("equipment", Some("PRESS-K1"))],
                &[("good", 10_584.0)],
            ),
            (
                &[("site", Some("SITE_K")), ("equipment", Some("PRESS-K2"))],
                &[("good", 12.0)],
            ),
        ],
    );

    // (3) Scrap rate and scrap by reason, SITE_K local day 11-03.
    // Production: good 10,592, scrap 216, total 10,808, scrap rate 216/10,808 = 0.019985;
    // PRESS-K1 alone 216/10,800 = 0.02; by product: BRACKET-7 10,584, null (no order) 8.
    let v = api
        .json(&format!("/api/v1/reports/production?{day_k}"))
        .await;
    expect_row(
        &v,
        "production",
        &[("site", Some("SITE_K"))],
        &[
            ("good", 10_592.0),
            ("scrap", 216.0),
            ("total_count", 10_808.0),
            ("scrap_rate", 216.0 / 10_808.0),
        ],
    );
    let v = api
        .json(&format!(
            "/api/v1/reports/production?{day_k}&group_by=equipment"
        ))
        .await;
    expect_each(
        &v,
        "production",
        &[
            (&[("equipment", Some("PRESS-K1"))], &[("scrap_rate", 0.02)]),
            (&[("equipment", Some("PRESS-K2"))], &[("scrap_rate", 0.0)]),
        ],
    );
    let v = api
        .json(&format!(
            "/api/v1/reports/production?{day_k}&group_by=product"
        ))
        .await;
    expect_each(
        &v,
        "production",
        &[
            (&[("product", Some("BRACKET-7"))], &[("good", 10_584.0)]),
            (&[("product", None)], &[("good", 8.0)]),
        ],
    );
    // By reason: CRACK 144 (0.666667), BURR 70 (0.324074), unassigned 2 (0.009259), in that order.
    let v = api.json(&format!("/api/v1/reports/scrap?{day_k}")).await;
    let got: Vec<(Option<String>, i64, f64)> = rows(&v, |r| {
        (
            r["reason"].as_str().map(str::to_owned),
            r["scrap"].as_i64().unwrap(),
            r["share"].as_f64().unwrap(),
        )
    });
    let want = [
        (Some("SCRAP.CRACK"), 144, 144.0 / 216.0),
        (Some("SCRAP.BURR"), 70, 70.0 / 216.0),
        (None, 2, 2.0 / 216.0),
    ];
    assert_eq!(got.len(), want.len(), "scrap rows: {v}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            g.0.as_deref() == w.0 && g.1 == w.1 && (g.2 - w.2).abs() < 1e-4,
            "scrap by reason: api {g:?}, hand-worked {w:?}"
        );
    }
    expect_all(
        "scrap",
        "total",
        &v["total"],
        &[
            ("good", 10_592.0),
            ("scrap", 216.0),
            ("scrap_rate", 216.0 / 10_808.0),
        ],
    );

    // (4) Pareto at SITE_K, local day 11-03. Without planned stops: JAM 2,700 s (1 stop, share
    // 2,700/2,790 = 0.967742), unassigned 90 s (the small stop, 0.032258, cumulative 1).
    // With them: PLAN.END 08:30–18:30 UTC = 36,000 s (the rest of the day falls on 11-04):
    // total 38,790 → 0.928074, then JAM cumulative 0.997680, then unassigned 1.0.
    let v = api
        .json(&format!("/api/v1/reports/downtime-pareto?{day_k}"))
        .await;
    expect_pareto(
        "pareto SITE_K",
        &v,
        &[
            (
                Some("DOWN.JAM"),
                2_700.0,
                1,
                2_700.0 / 2_790.0,
                2_700.0 / 2_790.0,
            ),
            (None, 90.0, 1, 90.0 / 2_790.0, 1.0),
        ],
    );
    let jam = row_of(&v, "downtime-pareto", &[("reason", Some("DOWN.JAM"))]);
    assert_eq!(
        (jam["reason_name"].as_str(), jam["loss_category"].as_str()),
        (Some("Material jam"), Some("unplanned")),
        "{jam}"
    );
    let v = api
        .json(&format!(
            "/api/v1/reports/downtime-pareto?{day_k}&include_planned=true"
        ))
        .await;
    expect_pareto(
        "pareto SITE_K include_planned",
        &v,
        &[
            (
                Some("PLAN.END"),
                36_000.0,
                1,
                36_000.0 / 38_790.0,
                36_000.0 / 38_790.0,
            ),
            (
                Some("DOWN.JAM"),
                2_700.0,
                1,
                2_700.0 / 38_790.0,
                38_700.0 / 38_790.0,
            ),
            (None, 90.0, 1, 90.0 / 38_790.0, 1.0),
        ],
    );
    // By local day over 11-03..11-04: the planned stop's remaining 6 h (18:30–00:30 UTC) belong
    // to 11-04, without a stop (it began on 11-03); cumulative shares restart per group.
    let v = api.json("/api/v1/reports/downtime-pareto?from=2026-11-03&to=2026-11-05&site=SITE_K&include_planned=true&group_by=day").await;
    expect_row(
        &v,
        "downtime-pareto",
        &[("day", Some("2026-11-04")), ("reason", Some("PLAN.END"))],
        &[
            ("seconds", 21_600.0),
            ("stops", 0.0),
            ("cumulative_share", 1.0),
        ],
    );
    expect_row(
        &v,
        "downtime-pareto",
        &[("day", Some("2026-11-03")), ("reason", Some("PLAN.END"))],
        &[("seconds", 36_000.0), ("stops", 1.0)],
    );
    expect_rows(&v, 4, "pareto by day");

    // (6) On-time by the local date of `due` at SITE_K (11-03..11-04 local):
    // K-WO-2 due 18:00 UTC (23:30 local 11-03), ended 18:10 → late;
    // K-WO-3 due 19:00 UTC (00:30 local 11-04), ended 18:00 → on time;
    // K-WO-4 due 20:00 UTC (11-04), still running → open; K-WO-5 due 11-04, aborted → not counted.
    // 11-03: due 1, late 1 → rate 0; 11-04: due 2, on time 1, open 1 → 0.5; total 1/3.
    for (id, due, state, ended_at) in [
        (
            "SITE_K-WO-2",
            "2026-11-03T18:00:00Z",
            WorkOrderState::Ended,
            Some("2026-11-03T18:10:00Z"),
        ),
        (
            "SITE_K-WO-3",
            "2026-11-03T19:00:00Z",
            WorkOrderState::Ended,
            Some("2026-11-03T18:00:00Z"),
        ),
        (
            "SITE_K-WO-4",
            "2026-11-03T20:00:00Z",
            WorkOrderState::Running,
            None,
        ),
        (
            "SITE_K-WO-5",
            "2026-11-03T21:00:00Z",
            WorkOrderState::Aborted,
            Some("2026-11-03T20:30:00Z"),
        ),
    ] {
        order_record(&h.store, "SITE_K", id, due, state, ended_at).await;
    }
    let v = api
        .json("/api/v1/reports/on-time?from=2026-11-03&to=2026-11-05&site=SITE_K&group_by=day")
        .await;
    expect_table(
        &v,
        "on-time",
        "day",
        &["due", "on_time", "late", "open", "on_time_rate"],
        &[
            (Some("2026-11-03"), &[1.0, 0.0, 1.0, 0.0, 0.0]),
            (Some("2026-11-04"), &[2.0, 1.0, 0.0, 1.0, 0.5]),
        ],
    );
    expect_rows(&v, 2, "on-time by day");
    expect_all(
        "on-time",
        "total",
        &v["total"],
        &[("due", 3.0), ("on_time", 1.0), ("on_time_rate", 1.0 / 3.0)],
    );

    // ---- (8) Corrections at SITE_B on 2026-11-06 (local day) --------------------------------
    // PRESS-B2, order SITE_B-WO-1:
    //  X1 100 good, corrected by C1 to 90 good + 10 scrap (CRACK)          → 90 / 10
    //  X2 50 good, its correction C2 (→ 40) arrives a batch earlier         → 40
    //  X3 70 good, C3b (→ 65, later id) arrives before C3a (→ 60)           → 65 (latest id wins)
    //  X4 30 good, voided by C4; C5 corrects C4 (→ 1,000), arriving first   → 0 (no effect)
    //  X5 25 good; C6 corrects an event that never arrives                 → 25
    //  X6 11 good, C7 books it on PRESS-B3 instead                          → PRESS-B3 11
    // PRESS-B2: good 90 + 40 + 65 + 0 + 25 = 220, scrap 10 (without corrections: 286 / 0).
    // PRESS-B4 states: running 08:00, down JAM 08:10 (C8 makes it WAIT), running 08:40, down
    // JAM 09:00 voided by C9 which arrives first, running 09:30 → WAIT 1,800 s, 1 stop, no JAM.
    let wo = Some("SITE_B-WO-1");
    let at0 = t("2026-11-06T00:00:00Z");
    let x: Vec<Event> = [
        (500, "10:00", pc("PRESS-B2", wo, 100, 0, None)),
        (501, "10:05", pc("PRESS-B2", wo, 50, 0, None)),
        (502, "10:10", pc("PRESS-B2", wo, 70, 0, None)),
        (503, "10:15", pc("PRESS-B2", wo, 30, 0, None)),
        (504, "10:20", pc("PRESS-B2", wo, 25, 0, None)),
        (505, "10:25", pc("PRESS-B2", wo, 11, 0, None)),
        (510, "08:00", state("PRESS-B4", MachineState::Running, None)),
        (
            511,
            "08:10",
            state("PRESS-B4", MachineState::Down, Some("DOWN.JAM")),
        ),
        (512, "08:40", state("PRESS-B4", MachineState::Running, None)),
        (
            513,
            "09:00",
            state("PRESS-B4", MachineState::Down, Some("DOWN.JAM")),
        ),
        (514, "09:30", state("PRESS-B4", MachineState::Running, None)),
    ]
    .into_iter()
    .map(|(n, at, body)| event(&bsite, n, t(&format!("2026-11-06T{at}:00Z")), body))
    .collect();
    // The id of event `n` (ids depend on `n` only).
    let id = |n: u64| event(&bsite, n, at0, corr(x[0].event_id, None)).event_id;
    let rep = |eq: &str, good: u32, scrap: u32, reason: Option<&str>| {
        Some(pc(eq, wo, good, scrap, reason))
    };
    let at = t("2026-11-07T12:00:00Z");
    let c1 = event(
        &bsite,
        600,
        at,
        corr(id(500), rep("PRESS-B2", 90, 10, Some("SCRAP.CRACK"))),
    );
    let c2 = event(&bsite, 601, at, corr(id(501), rep("PRESS-B2", 40, 0, None)));
    let c3a = event(&bsite, 602, at, corr(id(502), rep("PRESS-B2", 60, 0, None)));
    let c3b = event(&bsite, 603, at, corr(id(502), rep("PRESS-B2", 65, 0, None)));
    let c4 = event(&bsite, 604, at, corr(id(503), None));
    let c5 = event(
        &bsite,
        605,
        at,
        corr(c4.event_id, rep("PRESS-B2", 1000, 0, None)),
    );
    let c6 = event(
        &bsite,
        606,
        at,
        corr(
            EventId::from_parts(1_790_000_000_999, [7; 10]),
            rep("PRESS-B2", 500, 0, None),
        ),
    );
    let c7 = event(&bsite, 607, at, corr(id(505), rep("PRESS-B3", 11, 0, None)));
    let c8 = event(
        &bsite,
        608,
        at,
        corr(
            id(511),
            Some(state("PRESS-B4", MachineState::Down, Some("DOWN.WAIT"))),
        ),
    );
    let c9 = event(&bsite, 609, at, corr(id(513), None));
    for batch in [
        vec![c2.clone(), c3b.clone(), c6.clone(), c5.clone(), c9.clone()],
        x.clone(),
        vec![c1.clone(), c3a.clone(), c4.clone(), c7.clone(), c8.clone()],
        vec![
            x[0].clone(),
            c1.clone(),
            x[1].clone(),
            c2.clone(),
            c8.clone(),
        ], // re-sent
    ] {
        h.store.ingest_events(&bsite, &batch).await.unwrap();
    }
    let day_b = "from=2026-11-06&to=2026-11-07&site=SITE_B";
    let v = api
        .json(&format!(
            "/api/v1/reports/production?{day_b}&group_by=equipment"
        ))
        .await;
    expect_row(
        &v,
        "production",
        &[("equipment", Some("PRESS-B2"))],
        &[("good", 220.0), ("scrap", 10.0)],
    );
    expect_row(
        &v,
        "production (corrections)",
        &[("equipment", Some("PRESS-B3"))],
        &[("good", 11.0)],
    );
    expect_rows(&v, 2, "production (corrections) rows");
    let v = api.json(&format!("/api/v1/reports/scrap?{day_b}")).await;
    expect_row(
        &v,
        "scrap (corrections)",
        &[("reason", Some("SCRAP.CRACK"))],
        &[("scrap", 10.0), ("share", 1.0)],
    );
    expect_rows(&v, 1, "scrap (corrections) rows");
    let v = api
        .json(&format!("/api/v1/reports/downtime-pareto?{day_b}"))
        .await;
    expect_pareto(
        "pareto (corrections)",
        &v,
        &[(Some("DOWN.WAIT"), 1_800.0, 1, 1.0, 1.0)],
    );
    hub.stop().await.unwrap();
}

/// A correction takes the corrected event's place (`docs/reports.md`, Corrections), also among
/// state changes at the same instant, which are "ordered by event id".
///
/// PRESS-T at 10:00 UTC: E1 down (no reason), then E2 running at the same instant with a
/// greater id: E1's interval has zero length and the press runs from 10:00. At 11:00 it waits
/// (WAIT) until 11:30. The supervisor then corrects E1's reason to JAM (correction C, whose id
/// is greater than E2's). In E1's place the replacement still precedes E2, so nothing changes:
/// the Pareto of [10:00, 12:00) is WAIT 1,800 s (1 stop) alone, and availability is
/// (7,200 − 1,800) / 7,200 = 0.75. Were C ordered by its own id, the press would be down on JAM
/// from 10:00 to 11:00 (JAM 3,600 s, availability 0.25) merely because a reason was fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_keeps_the_corrected_events_place_among_simultaneous_changes() {
    use system_tests::hq::{event, state, timeline};
    let (h, hub, api, site) = one_site(
        "sameinstant",
        "SITE_T",
        "UTC",
        &[("JAM", "Jam"), ("WAIT", "Waiting")],
    )
    .await;
    let es = timeline(
        &site,
        1,
        "PRESS-T",
        &[
            ("2026-11-12T10:00:00Z", MachineState::Down, None),
            ("2026-11-12T10:00:00Z", MachineState::Running, None),
            ("2026-11-12T11:00:00Z", MachineState::Down, Some("WAIT")),
            ("2026-11-12T11:30:00Z", MachineState::Running, None),
        ],
    );
    let (e1, e2) = (&es[0], &es[1]);
    let c = event(
        &site,
        10,
        t("2026-11-12T13:00:00Z"),
        corr(
            e1.event_id,
            Some(state("PRESS-T", MachineState::Down, Some("JAM"))),
        ),
    );
    assert!(e2.event_id < c.event_id && e1.event_id < e2.event_id);
    h.store.ingest_events(&site, &es).await.unwrap();
    let range = "from=2026-11-12T10:00:00Z&to=2026-11-12T12:00:00Z";
    let pareto = |v: &Value| -> Vec<(Option<String>, f64, i64)> {
        rows(v, |r| {
            (
                r["reason"].as_str().map(str::to_owned),
                num(r, "seconds"),
                r["stops"].as_i64().unwrap(),
            )
        })
    };
    let want = vec![(Some("WAIT".to_owned()), 1_800.0, 1)];
    let v = api
        .json(&format!("/api/v1/reports/downtime-pareto?{range}"))
        .await;
    assert_eq!(
        pareto(&v),
        want,
        "downtime-pareto before the correction: {v}"
    );
    h.store.ingest_events(&site, &[c]).await.unwrap();
    let v = api
        .json(&format!("/api/v1/reports/downtime-pareto?{range}"))
        .await;
    assert_eq!(
        pareto(&v),
        want,
        "downtime-pareto after correcting the reason of the first of two simultaneous changes: {v}"
    );
    let v = api.json(&format!("/api/v1/reports/oee?{range}")).await;
    expect_row(
        &v,
        "oee",
        &[("site", Some("SITE_T"))],
        &[("availability", 0.75)],
    );
    hub.stop().await.unwrap();
}

/// Site-local hours and days across the end of daylight saving time: Berlin's 2026-10-25 has
/// 25 hours (02:00–03:00 local twice: 00:00–01:00 UTC in CEST and 01:00–02:00 UTC in CET).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_worked_daylight_saving_day_has_25_hours() {
    use system_tests::hq::{count, events_at, state};
    let (h, hub, api, site) = one_site("dst", "SITE_D", "Europe/Berlin", &[("JAM", "Jam")]).await;
    // Running from local midnight (22:00 UTC the day before), down on JAM 02:30 CEST (00:30 UTC)
    // to 02:30 CET (01:30 UTC): one hour spanning both 02:00 hours, running again after.
    // Counts at 02:30 CEST (10) and 02:30 CET (20), and at 23:30 CET (22:30 UTC, 5).
    let events = events_at(
        &site,
        1,
        &[
            (
                "2026-10-24T22:00:00Z",
                state("PRESS-D", MachineState::Running, None),
            ),
            (
                "2026-10-25T00:30:00Z",
                state("PRESS-D", MachineState::Down, Some("JAM")),
            ),
            (
                "2026-10-25T01:30:00Z",
                state("PRESS-D", MachineState::Running, None),
            ),
            (
                "2026-10-25T00:30:00Z",
                count("PRESS-D", "SITE_D-WO-1", 10, 0),
            ),
            (
                "2026-10-25T01:30:00Z",
                count("PRESS-D", "SITE_D-WO-1", 20, 0),
            ),
            (
                "2026-10-25T22:30:00Z",
                count("PRESS-D", "SITE_D-WO-1", 5, 0),
            ),
        ],
    );
    h.store.ingest_events(&site, &events).await.unwrap();
    // The local day 10-25 is [2026-10-24T22:00Z, 2026-10-25T23:00Z): PPT 25 h = 90,000 s
    // (no calendar: around the clock), stop 3,600 s → A = 86,400 / 90,000 = 0.96.
    let v = api
        .json("/api/v1/reports/oee?from=2026-10-25&to=2026-10-26&group_by=day")
        .await;
    expect_row(
        &v,
        "oee",
        &[("day", Some("2026-10-25"))],
        &[
            ("planned_production_seconds", 90_000.0),
            ("stop_seconds", 3_600.0),
            ("availability", 0.96),
            ("good", 35.0),
        ],
    );
    expect_rows(&v, 1, "oee by day");
    // The two 02:00 hours are two buckets: 10 in the first, 20 in the second (by equipment and
    // an instant range over each UTC hour).
    for (from, to, good) in [
        ("2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z", 10.0),
        ("2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z", 20.0),
    ] {
        let v = api
            .json(&format!("/api/v1/reports/production?from={from}&to={to}"))
            .await;
        expect_row(
            &v,
            "production",
            &[("site", Some("SITE_D"))],
            &[("good", good)],
        );
        let v = api
            .json(&format!("/api/v1/reports/oee?from={from}&to={to}"))
            .await;
        let r = row_of(&v, "oee", &[("site", Some("SITE_D"))]);
        expect_all(
            "oee",
            &format!("[{from}, {to})"),
            r,
            &[
                ("planned_production_seconds", 3_600.0),
                ("stop_seconds", 1_800.0),
            ],
        );
    }
    let v = api
        .json("/api/v1/reports/downtime-pareto?from=2026-10-25&to=2026-10-26")
        .await;
    expect_row(
        &v,
        "downtime-pareto",
        &[("reason", Some("JAM"))],
        &[("seconds", 3_600.0), ("stops", 1.0)],
    );
    hub.stop().await.unwrap();
}

/// The present: the open last state interval lasts until now, and the bucket that has not
/// ended counts up to now. PRESS-N (no calendar) runs from two hours before the current hour
/// and has been down on JAM for the last 30 minutes. Whatever the clock says when the report
/// is computed, run time = PPT − stop = (now − from) − (now − down) = down − from exactly, and
/// the JAM stop is about 1,800 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_present_counts_up_to_now() {
    use shared_model::Timestamp;
    use system_tests::hq::{event, state};
    let (h, hub, api, site) = one_site("present", "SITE_N", "UTC", &[("JAM", "Jam")]).await;
    let clock = || {
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros(),
        )
        .unwrap()
    };
    const HOUR: i64 = 3_600_000_000;
    let now = clock();
    let from = now - now.rem_euclid(HOUR) - 2 * HOUR;
    let down = now - 1_800_000_000;
    h.store
        .ingest_events(
            &site,
            &[
                event(
                    &site,
                    1,
                    Timestamp::from_micros(from),
                    state("PRESS-N", MachineState::Running, None),
                ),
                event(
                    &site,
                    2,
                    Timestamp::from_micros(down),
                    state("PRESS-N", MachineState::Down, Some("JAM")),
                ),
            ],
        )
        .await
        .unwrap();
    let range = format!(
        "from={}&to={}",
        Timestamp::from_micros(from).to_rfc3339(),
        Timestamp::from_micros(from + 3 * HOUR).to_rfc3339()
    );
    let before = clock();
    let (status, v, _) = api.get(&format!("/api/v1/reports/oee?{range}")).await;
    let after = clock();
    assert_eq!(status, 200, "{v}");
    let r = row_of(&v, "oee", &[("site", Some("SITE_N"))]);
    let secs = |us: i64| us as f64 / 1e6;
    let ppt = num(r, "planned_production_seconds");
    assert!(
        ppt >= secs(before - from) - 2.0 && ppt <= secs(after - from) + 2.0,
        "oee [site=SITE_N] planned_production_seconds {ppt}: not now − from ({} .. {})",
        secs(before - from),
        secs(after - from)
    );
    expect("oee", "site=SITE_N", r, "run_seconds", secs(down - from));
    let stop = num(r, "stop_seconds");
    assert!(
        stop >= 1_800.0 - 2.0 && stop <= secs(after - down) + 2.0,
        "oee [site=SITE_N] stop_seconds {stop}: not now − down"
    );
    let v = api
        .json(&format!("/api/v1/reports/downtime-pareto?{range}"))
        .await;
    let r = row_of(&v, "downtime-pareto", &[("reason", Some("JAM"))]);
    let jam = num(r, "seconds");
    assert!(
        jam >= 1_800.0 - 2.0 && jam <= secs(clock() - down) + 2.0,
        "downtime-pareto [reason=JAM] seconds {jam}: not now − down"
    );
    expect("downtime-pareto", "reason=JAM", r, "stops", 1.0);
    hub.stop().await.unwrap();
}
