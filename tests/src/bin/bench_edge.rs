//! `bench-edge`: the edge agent's durable write path under load.
//!
//! Starts the release `edge-agent` as its own process on a fresh data directory, then:
//! A. closed loop: `--clients` tasks each post one event at a time, as fast as answers come;
//! B. open loop: the same clients post at a fixed total `--rate`, latency measured from each
//!    request's scheduled time (no coordinated omission);
//! C. batches: 50 clients post 100 events per request.
//! Every 201 is counted and checked against the rows in SQLite afterwards. The agent's RSS is
//! read from /proc. Beside it, on the same disk in the same run, a plain rusqlite loop inserts
//! the same rows durably one per transaction and 1,000 per transaction, for the ratio.
//! The load generator shares the machine's cores with the agent.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use system_tests::benchout::figure;
use system_tests::procs::rss_mb;

use anyhow::{Context, bail};

struct Args {
    agent: PathBuf,
    clients: usize,
    seconds: u64,
    rate: u64,
}

fn args() -> anyhow::Result<Args> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut a = Args {
        agent: root.join("target/release/edge-agent"),
        clients: 200,
        seconds: 10,
        rate: 6_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--agent" => a.agent = value.into(),
            "--clients" => a.clients = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            "--rate" => a.rate = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

struct Phase {
    name: &'static str,
    events: u64,
    errors: u64,
    seconds: f64,
    latencies_us: Vec<u32>,
}

impl Phase {
    fn report(&mut self) -> String {
        self.latencies_us.sort_unstable();
        let l = &self.latencies_us;
        format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            self.name,
            self.events as f64 / self.seconds,
            percentile(l, 0.50),
            percentile(l, 0.90),
            percentile(l, 0.99),
            percentile(l, 0.999),
            l.last().map_or(f64::NAN, |m| f64::from(*m) / 1000.0),
            self.errors
        )
    }
}

fn event_body(n: u64) -> String {
    format!(
        r#"{{"type":"production_count","equipment":"PRESS-{:02}","good":1}}"#,
        n % 40 + 1
    )
}

fn batch_body(n: u64) -> String {
    let events: Vec<String> = (0..100).map(|i| event_body(n * 100 + i)).collect();
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

async fn closed_loop(
    client: reqwest::Client,
    url: String,
    key: String,
    clients: usize,
    duration: Duration,
    batch: bool,
    name: &'static str,
) -> Phase {
    let stop = Instant::now() + duration;
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, key, counter) =
            (client.clone(), url.clone(), key.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut ok, mut err) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < stop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let body = if batch { batch_body(n) } else { event_body(n) };
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        ok += if batch { 100 } else { 1 };
                    }
                    _ => err += 1,
                }
            }
            (lat, ok, err)
        }));
    }
    let started = Instant::now();
    let mut phase = Phase {
        name,
        events: 0,
        errors: 0,
        seconds: 0.0,
        latencies_us: Vec::new(),
    };
    for t in tasks {
        if let Ok((lat, ok, err)) = t.await {
            phase.latencies_us.extend(lat);
            phase.events += ok;
            phase.errors += err;
        }
    }
    phase.seconds = started.elapsed().as_secs_f64();
    phase
}

async fn open_loop(
    client: reqwest::Client,
    url: String,
    key: String,
    clients: usize,
    duration: Duration,
    rate: u64,
) -> Phase {
    let per_client = Duration::from_secs_f64(clients as f64 / rate as f64);
    let start = Instant::now() + Duration::from_millis(100);
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, url, key, counter) =
            (client.clone(), url.clone(), key.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut ok, mut err) = (Vec::new(), 0u64, 0u64);
            // Spread the clients' schedules over one period.
            let mut scheduled = start + per_client.mul_f64(c as f64 / clients as f64);
            while scheduled < start + duration {
                tokio::time::sleep_until(scheduled.into()).await;
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(event_body(n))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let _ = r.bytes().await;
                        lat.push(scheduled.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        ok += 1;
                    }
                    _ => err += 1,
                }
                scheduled += per_client;
            }
            (lat, ok, err)
        }));
    }
    let mut phase = Phase {
        name: "B open loop",
        events: 0,
        errors: 0,
        seconds: 0.0,
        latencies_us: Vec::new(),
    };
    for t in tasks {
        if let Ok((lat, ok, err)) = t.await {
            phase.latencies_us.extend(lat);
            phase.events += ok;
            phase.errors += err;
        }
    }
    phase.seconds = start
        .elapsed()
        .as_secs_f64()
        .min(duration.as_secs_f64())
        .max(0.001);
    phase
}

/// Plain rusqlite on the same disk: the agent's events table, durable inserts.
fn plain_sqlite(dir: &Path, seconds: u64, per_tx: usize) -> anyhow::Result<f64> {
    let path = dir.join(format!("plain-{per_tx}.db"));
    let mut c = rusqlite::Connection::open(&path)?;
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.execute_batch(
        "CREATE TABLE events (event_id TEXT PRIMARY KEY, kind TEXT NOT NULL, occurred_at INTEGER NOT NULL,
           recorded_at INTEGER NOT NULL, equipment TEXT, work_order TEXT, body BLOB NOT NULL,
           acked INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
         CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT);",
    )?;
    let body = vec![7u8; 120];
    let stop = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut n: u64 = 0;
    while Instant::now() < stop {
        let tx = c.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO events (event_id, kind, occurred_at, recorded_at, equipment, body) VALUES (?1, 'production_count', ?2, ?2, 'PRESS-01', ?3)",
            )?;
            let mut out = tx.prepare_cached("INSERT INTO outbox (event_id) VALUES (?1)")?;
            for _ in 0..per_tx {
                let id = uuid::Uuid::now_v7().to_string();
                ins.execute(rusqlite::params![id, n as i64, body])?;
                out.execute([&id])?;
                n += 1;
            }
        }
        tx.commit()?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args()?;
    if !a.agent.is_file() {
        bail!(
            "{} not found: build it with cargo build --release -p edge-agent",
            a.agent.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("bench-edge-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("agent");
    let mut equipment = vec![
        r#"{"id":"SITE_001","parent":null,"level":"site","name":"Plant","class":"site"}"#
            .to_owned(),
    ];
    for i in 1..=40 {
        equipment.push(format!(
            r#"{{"id":"PRESS-{i:02}","parent":"SITE_001","level":"work_unit","name":"Press {i}","class":"press"}}"#
        ));
    }
    let md = dir.join("md.json");
    std::fs::write(&md, format!(r#"{{"equipment":[{}]}}"#, equipment.join(",")))?;
    let ok = Command::new(&a.agent)
        .args(["import-master-data"])
        .arg(&md)
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .status()?;
    if !ok.success() {
        bail!("import-master-data failed");
    }
    let out = Command::new(&a.agent)
        .args(["api-key", "create", "--name", "bench", "--data-dir"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()?;
    let key = String::from_utf8(out.stdout)?.trim().to_owned();
    let mut child = Command::new(&a.agent)
        .args([
            "run",
            "--site",
            "SITE_001",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let stdout = child.stdout.take().context("agent stdout")?;
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().next()
    })
    .await?
    .context("agent exited")??;
    let base = line
        .strip_prefix("edge-agent listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_owned();
    let url = format!("{base}/api/v1/events");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients)
        .timeout(Duration::from_secs(30))
        .build()?;
    let d = Duration::from_secs(a.seconds);
    println!(
        "agent pid {pid} at {base}; {} clients, {} s per phase",
        a.clients, a.seconds
    );
    let mut phases = vec![
        closed_loop(
            client.clone(),
            url.clone(),
            key.clone(),
            a.clients,
            d,
            false,
            "A closed loop, 1 event/request",
        )
        .await,
    ];
    phases.push(
        open_loop(
            client.clone(),
            url.clone(),
            key.clone(),
            a.clients,
            d,
            a.rate,
        )
        .await,
    );
    let (rss, hwm) = rss_mb(pid);
    phases.push(
        closed_loop(
            client.clone(),
            url.clone(),
            key.clone(),
            50,
            d,
            true,
            "C closed loop, 100 events/request",
        )
        .await,
    );
    let acknowledged: u64 = phases.iter().map(|p| p.events).sum();
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
    let rows: i64 = rusqlite::Connection::open(data.join("edge.db"))?.query_row(
        "SELECT count(*) FROM events",
        [],
        |r| r.get(0),
    )?;
    let per_row = plain_sqlite(&dir, a.seconds.min(5), 1)?;
    let per_1000 = plain_sqlite(&dir, a.seconds.min(5), 1000)?;
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Measured {} on {cores} cores; command: {}",
        String::from_utf8_lossy(&date.stdout).trim(),
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!();
    println!("| phase | events/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    for p in &mut phases {
        println!("{}", p.report());
    }
    let a_rate = phases[0].events as f64 / phases[0].seconds;
    for (p, key) in phases.iter().zip(["a", "b", "c"]) {
        let l = &p.latencies_us;
        figure(
            &format!("edge.{key}_events_per_s"),
            p.events as f64 / p.seconds,
            "events/s",
        );
        figure(&format!("edge.{key}_p50_ms"), percentile(l, 0.50), "ms");
        figure(&format!("edge.{key}_p99_ms"), percentile(l, 0.99), "ms");
        figure(&format!("edge.{key}_errors"), p.errors as f64, "requests");
    }
    figure("edge.raw_1_row_per_tx_per_s", per_row, "events/s");
    figure("edge.raw_1000_rows_per_tx_per_s", per_1000, "events/s");
    figure("edge.api_a_over_raw_1_row", a_rate / per_row, "ratio");
    println!();
    println!("| baseline (same disk, WAL, synchronous=FULL) | events/s | API phase A / baseline |");
    println!("|---|---|---|");
    println!(
        "| plain rusqlite, 1 row per transaction | {per_row:.0} | {:.2} |",
        a_rate / per_row
    );
    println!(
        "| plain rusqlite, 1,000 rows per transaction | {per_1000:.0} | {:.2} |",
        a_rate / per_1000
    );
    println!();
    println!(
        "agent RSS after phase B: {rss:.1} MB (peak {hwm:.1} MB); rows stored {rows}, acknowledged {acknowledged}"
    );
    figure("edge.rss_mb", rss, "MB");
    figure("edge.rss_peak_mb", hwm, "MB");
    figure(
        "edge.lost_events",
        acknowledged as f64 - rows as f64,
        "events",
    );
    let _ = std::fs::remove_dir_all(&dir);
    if rows as u64 != acknowledged {
        bail!("MISMATCH: {acknowledged} events acknowledged but {rows} rows stored");
    }
    Ok(())
}
