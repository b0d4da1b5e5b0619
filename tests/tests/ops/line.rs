//! End to end through the machine connectors: the demo's simulated line (PRESS-01's counters
//! and state as JSON on the real Mosquitto broker, PRESS-03's as variables of async-opcua's OPC
//! UA server) becomes, through the edge's connectors, sync and the hub's rollups, the OEE the
//! simulator says the presses produced: the same good and scrap counts, the same stop time,
//! the same ideal time, and so the same A, P, Q and OEE.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::connectors::{broker_answers, unique};
use system_tests::demo::{self, Broker, IDEAL_CYCLE_MS, Options, SITES};
use system_tests::hq::{self, Api};

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The states the edge stored, for a failure's message: (equipment, unix ms, state).
fn states(dir: &std::path::Path) -> Vec<(String, i64, String)> {
    let c = rusqlite::Connection::open_with_flags(
        dir.join(edge_agent::store::DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = c
        .prepare("SELECT body FROM events ORDER BY occurred_at, event_id")
        .unwrap();
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
    rows.map(Result::unwrap)
        .filter_map(|b| {
            let e = edge_agent::store::decode_event(&b).unwrap();
            match e.body {
                shared_model::event::EventBody::EquipmentState(s) => Some((
                    s.equipment.to_string(),
                    e.occurred_at.as_micros() / 1000,
                    format!("{:?} {:?}", s.state, s.reason),
                )),
                _ => None,
            }
        })
        .collect()
}

fn num(row: &Value, k: &str) -> f64 {
    row[k]
        .as_f64()
        .unwrap_or_else(|| panic!("{k} is not a number in {row}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_line_becomes_the_oee_it_produced_at_the_hub() {
    hq::init_logs();
    broker_answers();
    let run = unique("line");
    let root = hq::temp_dir("line");
    let d = demo::start(Options {
        root: root.clone(),
        sites: vec![SITES[0].clone()],
        broker: Broker::At {
            host: "127.0.0.1".into(),
            port: 1883,
        },
        history_hours: 2,
        seed: 21,
        run,
    })
    .await
    .expect("starting the system with its line");
    let tallies = d.line.tallies();
    assert_eq!(tallies.len(), 2);
    let http = reqwest::Client::new();
    let api = Api::new(&http, &format!("http://{}", d.hub.http_addr), &d.hq_token);
    let query = format!(
        "/api/v1/reports/oee?group_by=equipment&from={}&to={}",
        rfc3339(d.start_ms),
        rfc3339(demo::now_ms() + 3_600_000)
    );
    // The edges read the machines and sync; wait until the hub counts everything.
    let deadline = Instant::now() + Duration::from_secs(120);
    let rows = loop {
        let (status, v, _) = api.get(&query).await;
        assert_eq!(status, 200, "{v}");
        let rows = v["rows"].as_array().cloned().unwrap_or_default();
        let complete = tallies.iter().all(|(_, eq, t)| {
            rows.iter().any(|r| {
                r["equipment"] == eq.as_str()
                    && r["good"].as_f64() == Some(t.good as f64)
                    && r["scrap"].as_f64() == Some(t.scrap as f64)
            })
        });
        if complete {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "the hub never counted what the line made: {tallies:?}\nhub: {v}\nedge: {:#?}",
            states(&root.join("site_001"))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let elapsed_s = (demo::now_ms() - d.start_ms) as f64 / 1000.0;
    for (_, eq, t) in &tallies {
        let row = rows.iter().find(|r| r["equipment"] == eq.as_str()).unwrap();
        let ppt = num(row, "planned_production_seconds");
        // Planned time runs from the line's first hour to now.
        assert!(
            (ppt - elapsed_s).abs() < 60.0,
            "{eq}: planned {ppt} s, the line ran {elapsed_s} s: {row}"
        );
        assert_eq!(num(row, "total_count"), t.total() as f64, "{eq}: {row}");
        assert_eq!(num(row, "stop_seconds"), t.stop_s as f64, "{eq}: {row}");
        let ideal = t.total() as f64 * IDEAL_CYCLE_MS as f64 / 1000.0;
        assert!(
            (num(row, "ideal_seconds") - ideal).abs() < 1e-6,
            "{eq}: {row}"
        );
        // The simulator's OEE over the hub's planned time.
        let run = ppt - t.stop_s as f64;
        let (a, p, q) = (run / ppt, ideal / run, t.good as f64 / t.total() as f64);
        for (k, want) in [
            ("availability", a),
            ("performance", p),
            ("quality", q),
            ("oee", a * p * q),
        ] {
            assert!(
                (num(row, k) - want).abs() < 1e-6,
                "{eq}: {k} {} at the hub, {want} from the simulator: {row}",
                num(row, k)
            );
        }
        assert!(
            t.stop_s > 0 && t.scrap > 0,
            "{eq}: a line without stops or scrap: {t:?}"
        );
    }
    // The stops by reason, as the PLCs' state codes map them (short stops are jams too).
    let (status, pareto, _) = api.get(&query.replace("/oee?", "/downtime-pareto?")).await;
    assert_eq!(status, 200, "{pareto}");
    for (_, eq, t) in &tallies {
        let seconds = |reason: &str| {
            pareto["rows"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["equipment"] == eq.as_str() && r["reason"] == reason)
                .map(|r| num(r, "seconds"))
                .sum::<f64>()
        };
        let of = |code: i32| {
            t.stops
                .iter()
                .filter(|(c, _)| *c == code)
                .map(|(_, s)| *s as f64)
                .sum::<f64>()
        };
        let jam = of(system_tests::line::JAM) + t.small_stop_s as f64;
        assert_eq!(seconds("DOWN.JAM"), jam, "{eq}: {pareto}");
        assert_eq!(
            seconds("DOWN.TOOL"),
            of(system_tests::line::TOOL),
            "{eq}: {pareto}"
        );
    }
    for e in d.edges {
        e.running.stop().await.unwrap();
    }
    d.hub.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}
