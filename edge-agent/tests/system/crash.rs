//! `kill -9` at random moments loses no acknowledged write and never corrupts the store.
//!
//! The agent is started again and again on the same data directory. In each round sixteen
//! writers post small batches (1 to 5 events), every event carrying a client-chosen UUIDv7
//! `event_id`, and remember every id the agent answered `201` for. After a random delay
//! (50 to 400 ms, from a seeded xorshift so a failing seed can be replayed) the process gets
//! SIGKILL: no shutdown path runs, exactly as with a power cut. Requests in flight at that
//! moment may fail; they were never acknowledged, so they may or may not be stored. After the
//! last round the agent must start again on the directory, SQLite's `PRAGMA integrity_check`
//! must say `ok`, and every acknowledged id must be in `events` exactly once.
//!
//! SIGKILL leaves the operating system's page cache intact, so this proves that the agent
//! answers only after its transaction is committed and that a torn process never damages the
//! file; losing power (what `synchronous=FULL` is for) needs a machine-level test instead.
//! A second test sends SIGTERM under the same load: the agent must exit 0 by itself, with
//! every acknowledged event stored, as the contract's graceful shutdown promises.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{self, DataDir, events_count, open_db_read_only};

const ROUNDS: u64 = 20;
const WRITERS: usize = 16;
const BATCH_EVENTS_MIN: u64 = 1;
const BATCH_EVENTS_MAX: u64 = 5;
const KILL_DELAY_MS_MIN: u64 = 50;
const KILL_DELAY_MS_MAX: u64 = 400;
/// Fixed so that a failure can be replayed; each round derives its own stream from it.
const SEED: u64 = 0x0003_C4A5_11ED_5EED;
/// A request that takes longer than this is treated as failed (never as acknowledged).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the writers may take to notice the process is gone.
const WRITERS_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// xorshift64: tiny, deterministic, good enough to pick delays and batch sizes.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Zero is xorshift's one fixed point.
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// What one writer saw in one round.
#[derive(Default)]
struct WriterLog {
    acknowledged: Vec<String>,
    /// Answers other than `201` to valid requests: never expected, reported at the end.
    unexpected: Vec<String>,
}

async fn writer(
    client: reqwest::Client,
    url: String,
    mut rng: XorShift,
    stop: Arc<AtomicBool>,
) -> WriterLog {
    let mut log = WriterLog::default();
    while !stop.load(Ordering::Relaxed) {
        let n = rng.range(BATCH_EVENTS_MIN, BATCH_EVENTS_MAX);
        let ids: Vec<String> = (0..n).map(|_| Uuid::now_v7().to_string()).collect();
        let events: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({"type": "production_count", "equipment": "PRESS-01",
                       "good": rng.range(1, 10), "event_id": id})
            })
            .collect();
        let sent = client
            .post(&url)
            .timeout(REQUEST_TIMEOUT)
            .json(&json!({"events": events}))
            .send()
            .await;
        // A transport error means the process is gone (or going): not acknowledged, and no
        // point in trying again this round.
        let Ok(resp) = sent else { break };
        let status = resp.status();
        let Ok(text) = resp.text().await else { break };
        if status == StatusCode::CREATED {
            let body: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    log.unexpected
                        .push(format!("201 with a non-JSON body ({e}): {text}"));
                    continue;
                }
            };
            let answered = support::event_ids(&body);
            if answered == ids {
                log.acknowledged.extend(ids);
            } else {
                log.unexpected.push(format!(
                    "201 with other ids than sent: sent {ids:?}, got {body}"
                ));
            }
        } else {
            log.unexpected.push(format!("{status}: {text}"));
        }
    }
    log
}

/// [`WRITERS`] writers posting to `url` until `stop`, each with its own generator drawn from
/// `rng`.
fn spawn_writers(
    client: &reqwest::Client,
    url: &str,
    rng: &mut XorShift,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinSet<WriterLog> {
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        writers.spawn(writer(
            client.clone(),
            url.to_owned(),
            XorShift::new(rng.next()),
            Arc::clone(stop),
        ));
    }
    writers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_kill_9_and_the_store_stays_intact() {
    println!("crash test: seed {SEED:#018x}, {ROUNDS} rounds, {WRITERS} writers");
    let test_started = Instant::now();
    let data = DataDir::prepare("crash");
    let client = support::client(data.key());
    let mut acknowledged: Vec<String> = Vec::new();
    let mut unexpected: Vec<String> = Vec::new();

    for round in 0..ROUNDS {
        let mut rng = XorShift::new(SEED ^ (round + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let delay_ms = rng.range(KILL_DELAY_MS_MIN, KILL_DELAY_MS_MAX);
        let mut agent = data.start();
        let url = agent.url("/api/v1/events");
        let stop = Arc::new(AtomicBool::new(false));

        let writers = spawn_writers(&client, &url, &mut rng, &stop);
        // The delay is the experiment's random kill moment, not a wait for some condition.
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        agent.kill();
        stop.store(true, Ordering::Relaxed);

        let logs = tokio::time::timeout(WRITERS_STOP_TIMEOUT, writers.join_all())
            .await
            .unwrap_or_else(|_| panic!("round {round}: writers still busy after the kill"));
        let before = acknowledged.len();
        for log in logs {
            acknowledged.extend(log.acknowledged);
            unexpected.extend(
                log.unexpected
                    .into_iter()
                    .map(|u| format!("round {round}: {u}")),
            );
        }
        println!(
            "round {round:2}: killed after {delay_ms:3} ms, {:4} events acknowledged",
            acknowledged.len() - before
        );
    }

    // The agent must come up again on what the last kill left, and count what is there.
    let db = data.db_path();
    {
        let agent = data.start();
        let resp = client
            .get(agent.url("/api/v1/sync/status"))
            .send()
            .await
            .expect("sync status after the last crash");
        let (status, body) = support::json_response(resp).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let rows = support::events_count(&db);
        assert_eq!(
            body["pending_events"], rows,
            "pending_events disagrees with the events table"
        );
    }

    let conn = open_db_read_only(&db);
    let integrity: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(integrity, vec!["ok".to_owned()], "integrity_check");

    drop(conn);
    let wrong = not_stored_once(&db, &acknowledged);
    let rows = support::events_count(&db);
    println!(
        "crash test: checked {} acknowledged writes over {ROUNDS} rounds ({rows} events stored) \
         in {:.1} s",
        acknowledged.len(),
        test_started.elapsed().as_secs_f64()
    );
    assert!(
        !acknowledged.is_empty(),
        "no write was acknowledged in any round"
    );
    assert!(
        wrong.is_empty(),
        "{} of {} acknowledged events are not stored exactly once (seed {SEED:#x}):\n{}",
        wrong.len(),
        acknowledged.len(),
        wrong.join("\n")
    );
    assert!(
        unexpected.is_empty(),
        "{} unexpected answers to valid batches:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}

/// Ids in `acknowledged` that are not in `events` exactly once.
fn not_stored_once(db: &std::path::Path, acknowledged: &[String]) -> Vec<String> {
    let conn = open_db_read_only(db);
    let mut stmt = conn
        .prepare("SELECT count(*) FROM events WHERE event_id = ?1")
        .unwrap();
    acknowledged
        .iter()
        .filter_map(|id| {
            let n: i64 = stmt.query_row([id], |r| r.get(0)).unwrap();
            (n != 1).then(|| format!("{id}: {n} rows"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_exits_0_with_every_acknowledged_event_stored() {
    const EVENTS_BEFORE_TERM: i64 = 200;
    let data = DataDir::prepare("sigterm");
    let client = support::client(data.key());
    let db = data.db_path();
    let mut agent = data.start();
    let url = agent.url("/api/v1/events");
    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = XorShift::new(SEED ^ 0x5167_7E4D);
    let writers = spawn_writers(&client, &url, &mut rng, &stop);

    // Terminate under load: once the writers have demonstrably stored something.
    let deadline = Instant::now() + Duration::from_secs(20);
    while events_count(&db) < EVENTS_BEFORE_TERM {
        assert!(
            Instant::now() < deadline,
            "writers stored fewer than {EVENTS_BEFORE_TERM} events in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    agent.terminate();
    let exit = agent.wait_exit(Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    let logs = tokio::time::timeout(WRITERS_STOP_TIMEOUT, writers.join_all())
        .await
        .expect("writers still busy after the agent exited");
    let stderr = agent.stderr_text();
    match exit {
        Some(status) => assert!(status.success(), "exit after SIGTERM: {status}\n{stderr}"),
        None => panic!("the agent did not exit within 20 s of SIGTERM\n{stderr}"),
    }

    let mut acknowledged = Vec::new();
    let mut unexpected = Vec::new();
    for log in logs {
        acknowledged.extend(log.acknowledged);
        // While shutting down, `503 unavailable` is a documented answer.
        unexpected.extend(log.unexpected.into_iter().filter(|u| !u.starts_with("503")));
    }
    let wrong = not_stored_once(&db, &acknowledged);
    println!(
        "sigterm test: checked {} acknowledged writes, {} events stored",
        acknowledged.len(),
        events_count(&db)
    );
    assert!(
        wrong.is_empty(),
        "{} acknowledged events not stored exactly once after SIGTERM:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        unexpected.is_empty(),
        "unexpected answers:\n{}",
        unexpected.join("\n")
    );
    let integrity: String = open_db_read_only(&db)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    // And it starts again on what it left.
    drop(data.start());
}
