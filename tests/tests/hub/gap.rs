//! The hub's gap queries (`central_hub::ingest::gap`) on a real PostgreSQL, as the hub role.
//!
//! Proves: the digest the SQL computes is `sync_protocol::gap::event_digest` (the pinned id,
//! and 1,000 random UUIDv7 ids each alone in its own span); summaries over many spans (hours,
//! empty spans, an inverted one, one covering everything) equal the summaries computed in Rust
//! over the ids ingested, and another site's events at the same instants never count; spans
//! are matched on `recorded_at`, not `occurred_at`; paging through a span's ids returns each
//! once, ascending; over-limit calls are refused. Also measures (prints) one summary over a
//! site of 200,000 events, inserted in bulk as the owner.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use central_hub::db::connect;
use central_hub::db::sites::add_site;
use central_hub::ingest::PgHubStore;
use central_hub::ingest::gap::{GAP_IDS_MAX, GAP_SPANS_MAX, event_ids_in, summaries};
use shared_model::event::ProductionCount;
use shared_model::{EquipmentId, Event, EventBody, EventId, SiteId, Timestamp};
use sqlx::PgPool;
use sync_protocol::gap::{HOUR_MICROS, Span, Summary, event_digest};
use sync_protocol::store::HubStore;
use system_tests::pg::{TestDb, server};
use system_tests::rng::Rng;

fn site(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}

/// 2026-11-17T04:00:00Z, on the hour: the data's first hour.
const BASE: Timestamp = Timestamp::from_micros(1_795_406_400_000_000);

fn span(from: Timestamp, to: Timestamp) -> Span {
    Span { from, to }
}

fn hour(n: i64) -> Timestamp {
    BASE.saturating_add_micros(n * HOUR_MICROS)
}

/// A random UUIDv7 (its time part anywhere in 2020–2030) from `rng`.
fn random_id(rng: &mut Rng) -> EventId {
    let millis = rng.between(1_577_836_800_000, 1_893_456_000_000);
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
    random[8..].copy_from_slice(&rng.next_u64().to_be_bytes()[..2]);
    EventId::from_parts(millis, random)
}

/// A production count of `site` with id `id`, recorded at `recorded_at` and having occurred
/// `occurred_before_micros` earlier (the spans must go by the recording time).
fn event(site: &SiteId, id: EventId, recorded_at: Timestamp, occurred_before_micros: i64) -> Event {
    Event {
        event_id: id,
        site_id: site.clone(),
        occurred_at: recorded_at.saturating_add_micros(-occurred_before_micros),
        recorded_at,
        operator: None,
        body: EventBody::ProductionCount(ProductionCount::good(
            EquipmentId::new("PRESS-01").unwrap(),
            1,
        )),
    }
}

/// A migrated database with SITE_A and SITE_B; the owner's pool, and the hub role's.
async fn setup() -> (TestDb, PgPool, PgPool) {
    let db = server().await.fresh_database().await;
    db.migrate().await;
    let admin = connect(&db.admin_url).await.unwrap();
    for s in ["SITE_A", "SITE_B"] {
        add_site(&admin, &site(s), "Plant", "EU", "UTC")
            .await
            .unwrap();
    }
    let hub = connect(&db.hub_url).await.unwrap();
    (db, admin, hub)
}

/// Ingests `events` through the hub's own ingest path, in batches.
async fn ingest(hub: &PgPool, site: &SiteId, events: &[Event]) {
    let store = PgHubStore::new(hub.clone());
    for batch in events.chunks(500) {
        let r = store.ingest_events(site, batch).await.unwrap();
        assert_eq!(r.inserted, batch.len() as u64);
    }
}

/// The summary of the events of `events` recorded in `span`, computed in Rust.
fn expected(events: &[Event], s: Span) -> Summary {
    events
        .iter()
        .filter(|e| s.contains(e.recorded_at))
        .map(|e| &e.event_id)
        .collect()
}

#[tokio::test]
async fn the_sql_digest_is_event_digest() {
    let (_db, _admin, hub) = setup().await;
    let a = site("SITE_A");
    let pinned: EventId = "0190f5c4-8a2b-7c3d-9e4f-a1b2c3d4e5f6".parse().unwrap();
    // Each event alone in its second of recording time, so each span sums exactly one id.
    let mut rng = Rng::new(22);
    let mut events = vec![event(&a, pinned, BASE, 0)];
    for i in 1..=1_000 {
        events.push(event(
            &a,
            random_id(&mut rng),
            BASE.saturating_add_micros(i * 1_000_000),
            0,
        ));
    }
    ingest(&hub, &a, &events).await;

    let got = summaries(&hub, &a, &[span(BASE, BASE.saturating_add_micros(1))])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![Summary {
            events: 1,
            digest: 0xf668_efff_0736_a189
        }]
    );
    let mut checked = 0;
    for chunk in events.chunks(GAP_SPANS_MAX) {
        let spans: Vec<Span> = chunk
            .iter()
            .map(|e| {
                span(
                    e.recorded_at,
                    e.recorded_at.saturating_add_micros(1_000_000),
                )
            })
            .collect();
        let got = summaries(&hub, &a, &spans).await.unwrap();
        assert_eq!(got.len(), chunk.len());
        for (e, s) in chunk.iter().zip(got) {
            assert_eq!(
                s,
                Summary {
                    events: 1,
                    digest: event_digest(&e.event_id)
                },
                "{}",
                e.event_id
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 1_001);
}

#[tokio::test]
async fn summaries_over_spans_equal_those_computed_over_the_ids() {
    let (_db, admin, hub) = setup().await;
    let (a, b) = (site("SITE_A"), site("SITE_B"));
    let mut rng = Rng::new(2022);
    // 3,000 events of A and 1,000 of B over the same 48 hours; they occurred up to two hours
    // before they were recorded, so occurred_at and recorded_at fall in different hours.
    let mut make = |s: &SiteId, n: usize| -> Vec<Event> {
        (0..n)
            .map(|_| {
                let at = BASE.saturating_add_micros(rng.below(48 * HOUR_MICROS as u64) as i64);
                let before = rng.below(2 * HOUR_MICROS as u64) as i64;
                event(s, random_id(&mut rng), at, before)
            })
            .collect()
    };
    let events_a = make(&a, 3_000);
    let events_b = make(&b, 1_000);
    ingest(&hub, &a, &events_a).await;
    ingest(&hub, &b, &events_b).await;

    // Every hour from two before the data to two after it (the first and last two empty), one
    // span over everything, one inverted span, one of a single microsecond at an event,
    // odd-sized spans across hour boundaries: 60 spans.
    let mut spans: Vec<Span> = (-2..50).map(|h| span(hour(h), hour(h + 1))).collect();
    let everything = span(
        Timestamp::from_micros(i64::MIN),
        Timestamp::from_micros(i64::MAX),
    );
    spans.push(everything);
    spans.push(span(hour(10), hour(5)));
    let one = events_a[17].recorded_at;
    spans.push(span(one, one.saturating_add_micros(1)));
    for (from, to) in [
        (0.5, 3.25),
        (7.1, 7.2),
        (20.0, 47.999),
        (-100.0, 0.001),
        (47.5, 1e6),
    ] {
        let at = |h: f64| BASE.saturating_add_micros((h * HOUR_MICROS as f64) as i64);
        spans.push(span(at(from), at(to)));
    }
    assert_eq!(spans.len(), 60);

    let got = summaries(&hub, &a, &spans).await.unwrap();
    assert_eq!(got.len(), spans.len());
    for (i, (g, s)) in got.iter().zip(&spans).enumerate() {
        assert_eq!(*g, expected(&events_a, *s), "span {i}: {s:?}");
    }
    // The span over everything holds all of A, and nothing of B.
    assert_eq!(got[52].events, 3_000);
    assert_eq!(
        got[52],
        events_a.iter().map(|e| &e.event_id).collect::<Summary>()
    );
    for i in [0, 1, 50, 51, 53] {
        assert_eq!(got[i], Summary::default(), "span {i} is empty");
    }
    assert_eq!(got[54].events, 1);
    // B's own summaries, from the same spans: its events and only its.
    let got_b = summaries(&hub, &b, &spans).await.unwrap();
    for (i, (g, s)) in got_b.iter().zip(&spans).enumerate() {
        assert_eq!(*g, expected(&events_b, *s), "site B span {i}");
    }
    assert_eq!(got_b[52].events, 1_000);
    // A site without events: everything empty.
    add_site(&admin, &site("SITE_C"), "Plant", "EU", "UTC")
        .await
        .unwrap();
    let got_c = summaries(&hub, &site("SITE_C"), &spans).await.unwrap();
    assert!(got_c.iter().all(|s| *s == Summary::default()));
    assert_eq!(summaries(&hub, &a, &[]).await.unwrap(), vec![]);
}

#[tokio::test]
async fn paging_returns_every_id_of_a_span_once_in_order() {
    let (_db, _admin, hub) = setup().await;
    let (a, b) = (site("SITE_A"), site("SITE_B"));
    let mut rng = Rng::new(7);
    let mut events_a = Vec::new();
    let mut events_b = Vec::new();
    for i in 0..1_000i64 {
        let at = BASE.saturating_add_micros(i * 60_000_000);
        events_a.push(event(&a, random_id(&mut rng), at, 0));
        events_b.push(event(&b, random_id(&mut rng), at, 0));
    }
    ingest(&hub, &a, &events_a).await;
    ingest(&hub, &b, &events_b).await;

    for (s, page) in [
        (span(hour(-1), hour(100)), 97),
        (span(hour(3), hour(5)), 10),
        (span(hour(3), hour(5)), 1_000),
        (span(hour(100), hour(101)), 5),
    ] {
        let mut got: Vec<EventId> = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let ids = event_ids_in(&hub, &a, s, after, page).await.unwrap();
            assert!(ids.len() <= page);
            pages += 1;
            let Some(last) = ids.last() else { break };
            after = Some(*last);
            got.extend(ids);
        }
        let mut want: Vec<EventId> = events_a
            .iter()
            .filter(|e| s.contains(e.recorded_at))
            .map(|e| e.event_id)
            .collect();
        want.sort();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "ascending, each once");
        assert_eq!(got, want, "{s:?} by {page}");
        // Full pages, the last partial one, and the empty page that ends the listing.
        assert_eq!(pages, want.len().div_ceil(page) + 1);
    }
}

#[tokio::test]
async fn over_limit_calls_are_refused() {
    let (_db, _admin, hub) = setup().await;
    let a = site("SITE_A");
    let s = span(hour(0), hour(1));
    assert_eq!(
        summaries(&hub, &a, &[s; GAP_SPANS_MAX])
            .await
            .unwrap()
            .len(),
        GAP_SPANS_MAX
    );
    let err = summaries(&hub, &a, &[s; GAP_SPANS_MAX + 1])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 64"), "{err}");
    let err = event_ids_in(&hub, &a, s, None, GAP_IDS_MAX + 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 10000"), "{err}");
}

/// Not a pass/fail timing: prints how long one summary over a whole site of 200,000 events
/// takes (events has no index on `recorded_at`, so this is a scan of the site's partitions),
/// and checks it against the digest computed in Rust over the ids read back.
#[tokio::test]
async fn a_summary_over_200k_events_is_measured() {
    let (_db, admin, hub) = setup().await;
    let a = site("SITE_A");
    const N: i64 = 200_000;
    let start = Instant::now();
    // Ids in UUIDv7 form (version 7, variant 10) from md5 of the number; one event every
    // 100 ms from BASE, as the owner, bypassing ingest.
    sqlx::query(
        "INSERT INTO events (site_id, event_id, occurred_at, recorded_at, kind, equipment, good, scrap, body)
         SELECT 'SITE_A',
                (substr(h, 1, 12) || '7' || substr(h, 14, 3) || '8' || substr(h, 18, 15))::uuid,
                t, t, 'production_count', 'PRESS-01', 1, 0, '\\x00'::bytea
         FROM generate_series(1, $1::int8) AS i,
              LATERAL (SELECT md5(i::text) AS h,
                              to_timestamp($2::float8) + i * interval '100 milliseconds' AS t) AS x",
    )
    .bind(N)
    .bind(BASE.as_micros() as f64 / 1e6)
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query("ANALYZE events").execute(&admin).await.unwrap();
    let inserted = start.elapsed();

    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM events WHERE site_id = 'SITE_A'")
            .fetch_all(&admin)
            .await
            .unwrap();
    assert_eq!(ids.len() as i64, N);
    let want: Summary = ids
        .iter()
        .map(|u| EventId::new(*u).unwrap())
        .collect::<Vec<_>>()
        .iter()
        .collect();
    let everything = span(Timestamp::from_micros(0), hour(1_000_000));
    let mut took = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let got = summaries(&hub, &a, &[everything]).await.unwrap();
        took.push(t.elapsed());
        assert_eq!(got, vec![want]);
    }
    // 64 hour spans over the same data (the shape of one comparison round).
    let spans: Vec<Span> = (0..64).map(|h| span(hour(h), hour(h + 1))).collect();
    let t = Instant::now();
    let got = summaries(&hub, &a, &spans).await.unwrap();
    let took_64 = t.elapsed();
    assert_eq!(got.iter().map(|s| s.events).sum::<u64>(), N as u64);
    println!(
        "gap summaries over {N} events of one site: insert {inserted:?}; one span over everything \
         {:?} (first), {:?}, {:?}; 64 hour spans {took_64:?}",
        took[0], took[1], took[2]
    );
}
