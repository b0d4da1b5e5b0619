//! `bench-fleet`: the hub's memory (RSS) as the number of connected edges grows.
//!
//! 1. A fresh database with sites `SITE_0001`… (as many as the largest step), the hub's CA in
//!    a temporary state directory and one client certificate per site.
//! 2. The release `central-hub serve` as its own process (its RSS is what is measured), on
//!    ports the kernel picks, read back from the line it prints.
//! 3. Simulated edges in this process: each one a real QUIC client with its own site
//!    certificate and its own UDP socket (the edge agent's `client_endpoint`), running the
//!    real `EdgeSession` through `drive_edge` against an in-memory store, the same loop as
//!    `edge_agent::sync::connect_and_sync`. Each has [`EVENTS_PER_EDGE`] production counts in
//!    its outbox when it connects, so every session really ingests, and then stays connected
//!    and idle (pings every 10 s, answered by the hub).
//! 4. Phases: the hub's RSS with no edge, then at each step (default 30, 300, 1,000 connected
//!    edges, opened at most [`HANDSHAKES_MAX`] at a time): once the hub counts that many
//!    sessions (`mes_sync_edges_connected` of its `/metrics`), the sites table says so, every
//!    edge's outbox is acknowledged and every event is in `events`, it settles for
//!    [`SETTLE`] and VmRSS / VmHWM are read from `/proc/<pid>/status`.
//! 5. Edges close their sessions (`shutting_down`) and RSS is read again; then the whole fleet
//!    connects a second time (100 new events each) and closes again, with RSS read at both
//!    points: memory kept after the first close that a leak explains grows again, memory the
//!    allocator keeps for reuse does not. The hub gets SIGTERM, the temporary directory and
//!    the database are removed.
//!
//! ```text
//! bench-fleet [--edges 30,300,1000] [--quick] [--hub PATH] [--step-timeout SECS]
//! ```
//!
//! `--quick` runs the steps 3 and 10 (a smoke test). RSS is reported in MB as `bench-edge`
//! does (VmRSS's kB ÷ 1024); the per-edge figure in kB (VmRSS's unit). The load generator and
//! PostgreSQL share the machine's cores with the hub. Needs an open-files limit above the
//! largest step (one UDP socket per simulated edge): `ulimit -n 4096` if it is lower.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use central_hub::db::sites::add_site;
use central_hub::pki::Ca;
use shared_model::event::ProductionCount;
use shared_model::{
    BadgeId, EquipmentId, Event, EventBody, EventId, SiteId, Timestamp, WorkOrderId,
};
use sqlx::{Executor as _, PgPool};
use sync_protocol::driver::drive_edge;
use sync_protocol::memory::MemoryEdgeStore;
use sync_protocol::message::{EdgeStatus, ErrorCode};
use sync_protocol::session::{EdgeSession, SessionConfig};
use sync_protocol::store::EdgeStore;
use system_tests::benchout::figure;
use system_tests::pg::server;
use tokio::sync::{Semaphore, watch};

/// Production counts in each edge's outbox when it connects.
const EVENTS_PER_EDGE: u64 = 100;
/// Edges in their QUIC/TLS handshake and hello/welcome at once: a fleet reconnecting after a
/// hub restart does not all arrive in the same millisecond either.
const HANDSHAKES_MAX: usize = 50;
/// Quiet time after a step is complete before the RSS is read (allocator and timers settle).
const SETTLE: Duration = Duration::from_secs(3);
/// Default bound of one step (connect, ingest); `--step-timeout` changes it.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound of the hub's start (its line on stdout, then `/ready`).
const HUB_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of one edge's QUIC handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of the edges' closing and of the hub's exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest number of edges: the hub's own connection limit per instance.
const EDGES_MAX: usize = central_hub::sync::CONNECTIONS_MAX;
/// File descriptors beyond one UDP socket per edge: HTTP, PostgreSQL, the runtime.
const FDS_SPARE: u64 = 256;
/// Poll interval of the waits.
const POLL: Duration = Duration::from_millis(250);

struct Args {
    steps: Vec<usize>,
    hub: PathBuf,
    step_timeout: Duration,
    /// Connect/close cycles of the whole fleet after the first (default 1).
    cycles_more: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut quick = false;
    let mut edges: Option<Vec<usize>> = None;
    let mut hub: Option<PathBuf> = None;
    let mut step_timeout = STEP_TIMEOUT;
    let mut cycles_more = 1;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--quick" => quick = true,
            "--edges" => {
                let v = it
                    .next()
                    .context("--edges needs a list, e.g. 30,300,1000")?;
                edges = Some(
                    v.split(',')
                        .map(|s| s.trim().parse::<usize>())
                        .collect::<Result<_, _>>()
                        .with_context(|| format!("--edges {v}: expected e.g. 30,300,1000"))?,
                );
            }
            "--hub" => hub = Some(it.next().context("--hub needs a path")?.into()),
            "--step-timeout" => {
                let v = it.next().context("--step-timeout needs seconds")?;
                step_timeout = Duration::from_secs(
                    v.parse()
                        .with_context(|| format!("--step-timeout {v}: expected seconds"))?,
                );
            }
            "--cycles" => {
                let v = it.next().context("--cycles needs a number")?;
                let n: usize = v
                    .parse()
                    .with_context(|| format!("--cycles {v}: expected 2 to 10"))?;
                anyhow::ensure!((2..=10).contains(&n), "--cycles {v}: expected 2 to 10");
                cycles_more = n - 1;
            }
            other => bail!(
                "unknown flag {other}; usage: bench-fleet [--edges 30,300,1000] [--quick] \
                 [--hub PATH] [--step-timeout SECS] [--cycles N]"
            ),
        }
    }
    let steps = edges.unwrap_or_else(|| {
        if quick {
            vec![3, 10]
        } else {
            vec![30, 300, 1_000]
        }
    });
    anyhow::ensure!(
        !steps.is_empty() && steps.len() <= 20,
        "--edges: 1 to 20 steps"
    );
    anyhow::ensure!(
        steps[0] >= 1 && steps.windows(2).all(|w| w[0] < w[1]),
        "--edges: steps must be positive and increasing, got {steps:?}"
    );
    let last = steps[steps.len() - 1];
    anyhow::ensure!(
        last <= EDGES_MAX,
        "--edges: at most {EDGES_MAX} edges (the hub's connection limit), got {last}"
    );
    let hub = match hub {
        Some(h) => h,
        None => std::env::current_exe()
            .context("locating bench-fleet")?
            .parent()
            .context("bench-fleet has no directory")?
            .join("central-hub"),
    };
    Ok(Args {
        steps,
        hub,
        step_timeout,
        cycles_more,
    })
}

/// The soft limit of open files of this process (the hub inherits it).
fn open_files_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn site_id(index: usize) -> anyhow::Result<SiteId> {
    Ok(SiteId::new(format!("SITE_{index:04}"))?)
}

/// A typical production count (the shape of `bench-sync`'s); the site's index and `n` make
/// the event id unique across the fleet.
fn event(site: &SiteId, index: usize, n: u64, at: Timestamp) -> anyhow::Result<Event> {
    let mut rnd = [0u8; 10];
    // Bytes 0 and 2 carry the UUID's version and variant bits: leave them out.
    rnd[3..5].copy_from_slice(&(index as u16).to_be_bytes());
    rnd[5..10].copy_from_slice(&n.to_be_bytes()[3..]);
    Ok(Event {
        event_id: EventId::from_parts((at.as_micros() / 1000) as u64, rnd),
        site_id: site.clone(),
        occurred_at: at,
        recorded_at: at,
        operator: Some(BadgeId::new("B-0042")?),
        body: EventBody::ProductionCount(ProductionCount {
            equipment: EquipmentId::new(format!("PRESS-{:02}", n % 40 + 1))?,
            work_order: Some(WorkOrderId::new(format!("{site}-WO-{:06}", n % 10))?),
            good: 1 + (n % 5) as u32,
            scrap: u32::from(n.is_multiple_of(23)),
            rework: 0,
            scrap_reason: None,
        }),
    })
}

/// `(VmRSS, VmHWM)` of a process in kB (the kernel's kB: 1,024 bytes).
fn rss_kb(pid: u32) -> anyhow::Result<(f64, f64)> {
    let (rss, hwm) = system_tests::procs::rss_mb(pid);
    if rss.is_nan() || hwm.is_nan() {
        anyhow::bail!("no VmRSS or VmHWM in /proc/{pid}/status");
    }
    Ok((rss * 1024.0, hwm * 1024.0))
}

/// MB as `bench-edge` reports them.
fn mb(kb: f64) -> f64 {
    kb / 1024.0
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The hub as a child process; killed when dropped, whatever the exit path.
struct Hub {
    child: Child,
    pid: u32,
    quic: SocketAddr,
    http: String,
    log: PathBuf,
    exited: bool,
}

impl Hub {
    async fn start(
        bin: &Path,
        database_url: &str,
        state_dir: &Path,
        log: &Path,
    ) -> anyhow::Result<Hub> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--database-url")
            .arg(database_url)
            .arg("--state-dir")
            .arg(state_dir)
            // Port 0 everywhere: the kernel picks, the hub prints what it got (no race for
            // a "free" port). The enrollment listener cannot be switched off in the binary.
            .args(["--quic-listen", "127.0.0.1:0"])
            .args(["--http-listen", "127.0.0.1:0"])
            .args(["--enroll-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        // Nothing from the caller's environment may change the measured configuration
        // (a Redis, a read database, PgBouncer mode, OTLP export, another pool size).
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("HUB_")
                || k.starts_with("OTEL_")
                || k.ends_with("DATABASE_URL")
                || k == "REDIS_URL"
            {
                cmd.env_remove(&*k);
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let out = child.stdout.take().context("the hub's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut hub = Hub {
            child,
            pid,
            quic: "127.0.0.1:0".parse()?,
            http: String::new(),
            log: log.to_owned(),
            exited: false,
        };
        // "central-hub sync on quic://ADDR http on http://ADDR"
        let started = Instant::now();
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("central-hub sync on quic://") {
                        let (quic, http) = rest
                            .split_once(" http on http://")
                            .with_context(|| format!("unexpected line from the hub: {line}"))?;
                        hub.quic = quic
                            .parse()
                            .with_context(|| format!("the hub's QUIC address {quic}"))?;
                        hub.http = format!("http://{http}");
                        break;
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    hub.check_alive()?;
                    bail!("the hub closed its stdout before printing its addresses");
                }
            }
            hub.check_alive()?;
            if started.elapsed() > HUB_START_TIMEOUT {
                bail!(
                    "the hub printed no addresses within {HUB_START_TIMEOUT:?}; its log:\n{}",
                    tail(&hub.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(hub)
    }

    /// Fails with the hub's log when it is no longer running.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("waiting for the hub")? {
            self.exited = true;
            bail!(
                "the hub exited ({status}); its log:\n{}",
                tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// SIGTERM, as a service manager stops it; waits at most `limit`.
    async fn terminate(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        // `kill` the command: this crate forbids `unsafe`, so no libc::kill.
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("running kill -TERM")?;
        anyhow::ensure!(sent.success(), "kill -TERM {} failed", self.pid);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the hub")? {
                self.exited = true;
                return Ok(status);
            }
            if started.elapsed() > limit {
                bail!("the hub did not exit within {limit:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A directory removed when dropped (after the hub, which is declared later and so dropped
/// first).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the simulated edges report to the main task.
#[derive(Default)]
struct Fleet {
    /// Sessions that got the hub's welcome.
    welcomed: AtomicUsize,
    /// Edges whose whole outbox the hub acknowledged (committed).
    drained: AtomicUsize,
    /// Sessions closed cleanly at the end.
    closed: AtomicUsize,
    /// Any edge's failure: a benchmark with a lost edge is not a measurement.
    errors: Mutex<Vec<String>>,
}

impl Fleet {
    fn first_error(&self) -> Option<String> {
        let e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        e.first()
            .map(|first| format!("{} edge(s) failed; first: {first}", e.len()))
    }
}

/// One simulated edge, from its certificate to a clean close.
struct Edge {
    site: SiteId,
    index: usize,
    tls_dir: PathBuf,
    hub: SocketAddr,
}

impl Edge {
    /// The `index`-th edge, for `site`, with the certificate bundle under `state_dir`.
    fn new(site: &SiteId, index: usize, state_dir: &Path, hub: SocketAddr) -> Self {
        Edge {
            tls_dir: state_dir.join("sites").join(site.as_str()),
            site: site.clone(),
            index,
            hub,
        }
    }

    async fn run(self, fleet: Arc<Fleet>, handshakes: Arc<Semaphore>, stop: watch::Receiver<bool>) {
        let site = self.site.clone();
        if let Err(e) = self.session(&fleet, handshakes, stop).await {
            fleet
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("{site}: {e:#}"));
        }
    }

    async fn session(
        self,
        fleet: &Fleet,
        handshakes: Arc<Semaphore>,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        // The outbox is filled before connecting, as an edge that was offline for a while.
        let store = MemoryEdgeStore::new();
        let first_at = now_micros() - EVENTS_PER_EDGE as i64 * 60_000_000;
        for n in 0..EVENTS_PER_EDGE {
            let at = Timestamp::from_micros(first_at + n as i64 * 60_000_000);
            store.record_event(event(&self.site, self.index, n, at)?);
        }
        // Held until the welcome: bounds the handshakes in flight, not the sessions.
        let mut permit = Some(
            handshakes
                .acquire_owned()
                .await
                .context("handshake semaphore closed")?,
        );
        // Exactly the edge agent's client: TLS 1.3, its site certificate, ALPN, keep-alive
        // and idle timeout, its own UDP socket.
        let endpoint = edge_agent::sync::client_endpoint(&self.tls_dir)
            .map_err(|e| anyhow!("client endpoint from {}: {e}", self.tls_dir.display()))?;
        let result = self
            .sync(&endpoint, &store, fleet, &mut permit, &mut stop)
            .await;
        endpoint.close(0u32.into(), b"");
        let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
        result
    }

    /// The loop of `edge_agent::sync::connect_and_sync`, over the in-memory store, without
    /// the outbox polling (nothing is added after connecting) and without repair.
    async fn sync(
        &self,
        endpoint: &quinn::Endpoint,
        store: &MemoryEdgeStore,
        fleet: &Fleet,
        permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            endpoint
                .connect(self.hub, "127.0.0.1")
                .context("starting the QUIC connection")?,
        )
        .await
        .map_err(|_| anyhow!("no QUIC handshake within {CONNECT_TIMEOUT:?}"))?
        .context("QUIC handshake")?;
        let (mut send, mut recv) = conn.open_bi().await.context("opening the stream")?;
        let origin = Instant::now();
        let now = || origin.elapsed();
        let mut session =
            EdgeSession::new(SessionConfig::default(), store.down_cursor().await?, now());
        let mut buf = vec![0u8; edge_agent::sync::READ_BUFFER_BYTES];
        let mut out = Vec::new();
        let mut stopping = false;
        let mut drained = false;
        loop {
            let report = drive_edge(&mut session, store, now())
                .await
                .map_err(|e| anyhow!("edge store: {e}"))?;
            if report.connected {
                permit.take();
                fleet.welcomed.fetch_add(1, Ordering::Relaxed);
                // The hub learns the backlog at once, as from a real edge.
                let pending = store.pending() as u64;
                session.send_status(
                    now(),
                    EdgeStatus {
                        pending_events: pending,
                        pending_changes: 0,
                        oldest_pending_at: store.events().first().map(|e| e.recorded_at),
                    },
                );
            }
            if !drained && session.is_established() && store.pending() == 0 {
                drained = true;
                fleet.drained.fetch_add(1, Ordering::Relaxed);
            }
            out.clear();
            while let Some(frame) = session.poll_transmit() {
                out.extend_from_slice(&frame);
            }
            if !out.is_empty() {
                send.write_all(&out).await.context("writing to the hub")?;
            }
            if session.is_closed() {
                let reason = session.close_reason().cloned();
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                conn.close(0u32.into(), b"");
                if stopping {
                    fleet.closed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                bail!("session closed: {reason:?}");
            }
            let deadline = session
                .poll_timeout()
                .map(|t| origin + t)
                .unwrap_or_else(|| Instant::now() + edge_agent::sync::KEEP_ALIVE);
            tokio::select! {
                r = recv.read(&mut buf) => match r {
                    Ok(Some(n)) => session.handle_stream_bytes(now(), &buf[..n]),
                    Ok(None) => bail!("the hub finished the stream"),
                    Err(e) => bail!("reading from the hub: {e}"),
                },
                () = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(now()),
                changed = stop.changed(), if !stopping => {
                    // A dropped sender is a stop too.
                    let _ = changed;
                    stopping = true;
                    session.close(now(), ErrorCode::ShuttingDown, "benchmark done");
                }
            }
        }
    }
}

/// The hub's `mes_sync_edges_connected` (sessions open on the instance).
async fn hub_connected(http: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .context("GET /metrics")?
        .error_for_status()
        .context("GET /metrics")?
        .text()
        .await
        .context("reading /metrics")?;
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("mes_sync_edges_connected "))
        .context("no mes_sync_edges_connected in /metrics")?;
    Ok(v.trim()
        .parse::<f64>()
        .context("mes_sync_edges_connected")? as u64)
}

/// Sites whose events are counted in one query. A count over the whole `events` table takes
/// a lock on every partition of every site (and on their indexes) in one transaction: at
/// 1,000 sites that overflows PostgreSQL's shared lock table ("out of shared memory" with the
/// default `max_locks_per_transaction` of 64). A few sites per query keep it small.
const COUNT_SITES_PER_QUERY: usize = 25;

/// Events stored per site for `sites`, counted [`COUNT_SITES_PER_QUERY`] sites at a time.
async fn events_by_site(admin: &PgPool, sites: &[SiteId]) -> anyhow::Result<Vec<(String, i64)>> {
    let mut out = Vec::with_capacity(sites.len());
    for chunk in sites.chunks(COUNT_SITES_PER_QUERY) {
        // Site ids are validated (`[A-Z][A-Z0-9_]*`), so they are spelled into the statement
        // as literals: the planner prunes to their partitions (a parameter array might get a
        // generic plan that locks them all).
        let list = chunk
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(",");
        let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT site_id::text, count(*) FROM events WHERE site_id IN ({list}) GROUP BY site_id"
        )))
        .persistent(false)
        .fetch_all(admin)
        .await
        .context("counting events")?;
        out.extend(rows);
    }
    Ok(out)
}

/// Events stored at the hub for the connected sites. A site found with all its events is not
/// counted again: nothing deletes events during the run.
#[derive(Default)]
struct StoredEvents {
    complete: std::collections::HashSet<String>,
}

impl StoredEvents {
    async fn total(&mut self, admin: &PgPool, sites: &[SiteId]) -> anyhow::Result<i64> {
        let open: Vec<SiteId> = sites
            .iter()
            .filter(|s| !self.complete.contains(s.as_str()))
            .cloned()
            .collect();
        let mut total = self.complete.len() as i64 * EVENTS_PER_EDGE as i64;
        for (site, n) in events_by_site(admin, &open).await? {
            total += n;
            if n == EVENTS_PER_EDGE as i64 {
                self.complete.insert(site);
            }
        }
        Ok(total)
    }
}

/// One look at every counter of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    hub_sessions: u64,
    sites_connected: i64,
    welcomed: usize,
    drained: usize,
    events: i64,
}

impl Seen {
    async fn now(
        hub: &mut Hub,
        http: &reqwest::Client,
        admin: &PgPool,
        fleet: &Fleet,
        stored: &mut StoredEvents,
        sites: &[SiteId],
    ) -> anyhow::Result<Seen> {
        hub.check_alive()?;
        if let Some(e) = fleet.first_error() {
            bail!("{e}");
        }
        let sites_connected: i64 = sqlx::query_scalar("SELECT count(*) FROM sites WHERE connected")
            .fetch_one(admin)
            .await
            .context("counting connected sites")?;
        let events = stored.total(admin, sites).await?;
        Ok(Seen {
            hub_sessions: hub_connected(http, &hub.http).await?,
            sites_connected,
            welcomed: fleet.welcomed.load(Ordering::Relaxed),
            drained: fleet.drained.load(Ordering::Relaxed),
            events,
        })
    }

    fn connected(&self, n: usize) -> bool {
        self.hub_sessions == n as u64 && self.sites_connected == n as i64 && self.welcomed == n
    }

    fn complete(&self, n: usize) -> bool {
        self.connected(n) && self.drained == n && self.events == n as i64 * EVENTS_PER_EDGE as i64
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hub sessions {}, sites connected {}, welcomed {}, outboxes drained {}, events {}",
            self.hub_sessions, self.sites_connected, self.welcomed, self.drained, self.events
        )
    }
}

/// Tells every edge of a fleet to close its session, waits for them (at most
/// [`STOP_TIMEOUT`] in all) and then up to 10 s for the hub to count no session; returns the
/// hub's sessions left.
async fn close_fleet(
    stop: &watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    fleet: &Fleet,
    http: &reqwest::Client,
    hub_http: &str,
) -> anyhow::Result<u64> {
    let _ = stop.send(true);
    let closing = Instant::now();
    for t in tasks {
        let left = STOP_TIMEOUT.saturating_sub(closing.elapsed());
        if tokio::time::timeout(left, t).await.is_err() {
            bail!("the edges did not close within {STOP_TIMEOUT:?}");
        }
    }
    if let Some(e) = fleet.first_error() {
        bail!("closing: {e}");
    }
    let started = Instant::now();
    let mut open = hub_connected(http, hub_http).await?;
    while open > 0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(POLL).await;
        open = hub_connected(http, hub_http).await?;
    }
    Ok(open)
}

/// What one step measured.
struct Step {
    edges: usize,
    connect_s: f64,
    complete_s: f64,
    rss_kb: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args()?;
    if !a.hub.is_file() {
        bail!(
            "{} not found: build it with cargo build --release -p central-hub",
            a.hub.display()
        );
    }
    let last = a.steps[a.steps.len() - 1];
    match open_files_limit() {
        Some(limit) if limit < last as u64 + FDS_SPARE => bail!(
            "the open-files limit is {limit}; {last} edges need one UDP socket each: \
             raise it (ulimit -n {}) and run again",
            (last as u64 + FDS_SPARE).next_power_of_two()
        ),
        Some(_) => {}
        None => println!("note: could not read the open-files limit from /proc/self/limits"),
    }
    let root = TempDir(std::env::temp_dir().join(format!("bench-fleet-{}", std::process::id())));
    std::fs::create_dir_all(&root.0)?;
    let pg = server().await;
    let db = pg.fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url).await?;
    let result = run(&a, &root.0, &db, &admin).await;
    admin.close().await;
    // The database holds a partition set per site: dropped now rather than at the harness's
    // next start.
    if let Ok(pool) = central_hub::db::connect(pg.admin_url()).await {
        let _ = pool
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                db.name
            )))
            .await;
        pool.close().await;
    }
    result
}

async fn run(
    a: &Args,
    root: &Path,
    db: &system_tests::pg::TestDb,
    admin: &PgPool,
) -> anyhow::Result<()> {
    let last = a.steps[a.steps.len() - 1];
    println!(
        "bench-fleet: steps {:?} edges, {EVENTS_PER_EDGE} events each, at most {HANDSHAKES_MAX} handshakes at once",
        a.steps
    );

    // Sites and certificates.
    let state_dir = root.join("hub");
    let ca = Ca::load_or_create(&state_dir)?;
    let started = Instant::now();
    let mut sites = Vec::with_capacity(last);
    for i in 1..=last {
        let site = site_id(i)?;
        add_site(admin, &site, &format!("Plant {i}"), "EU", "UTC")
            .await
            .with_context(|| format!("adding {site}"))?;
        ca.write_site_bundle(&site, &state_dir.join("sites").join(site.as_str()))
            .with_context(|| format!("issuing {site}'s certificate"))?;
        sites.push(site);
        if i % 100 == 0 || i == last {
            println!(
                "  {i} of {last} sites registered with partitions and certificates ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }

    // The hub, as its own process.
    let mut hub = Hub::start(&a.hub, &db.hub_url, &state_dir, &root.join("hub.log")).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let started = Instant::now();
    loop {
        hub.check_alive()?;
        let ok = http
            .get(format!("{}/ready", hub.http))
            .send()
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
        if ok {
            break;
        }
        if started.elapsed() > HUB_START_TIMEOUT {
            bail!(
                "the hub was not ready within {HUB_START_TIMEOUT:?}; its log:\n{}",
                tail(&hub.log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "hub pid {} ready: quic {} http {} ({})",
        hub.pid,
        hub.quic,
        hub.http,
        a.hub.display()
    );
    tokio::time::sleep(SETTLE).await;
    let (rss0, _) = rss_kb(hub.pid)?;
    println!("hub RSS with no edge: {:.1} MB", mb(rss0));

    // The fleet, step by step.
    let fleet = Arc::new(Fleet::default());
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(last);
    let mut steps: Vec<Step> = Vec::new();
    let mut stored = StoredEvents::default();
    let mut from = 0;
    for &n in &a.steps {
        let t0 = Instant::now();
        for index in from + 1..=n {
            let edge = Edge::new(&sites[index - 1], index, &state_dir, hub.quic);
            tasks.push(tokio::spawn(edge.run(
                fleet.clone(),
                handshakes.clone(),
                stop_rx.clone(),
            )));
        }
        let mut connect_s = None;
        let mut last_print = Instant::now();
        let seen = loop {
            let seen = Seen::now(&mut hub, &http, admin, &fleet, &mut stored, &sites[..n]).await?;
            if connect_s.is_none() && seen.connected(n) {
                connect_s = Some(t0.elapsed().as_secs_f64());
            }
            if seen.complete(n) {
                break seen;
            }
            if t0.elapsed() > a.step_timeout {
                bail!(
                    "step {n}: not complete within {:?}: {seen}; the hub's log ends:\n{}",
                    a.step_timeout,
                    tail(&hub.log, 10)
                );
            }
            if last_print.elapsed() > Duration::from_secs(5) {
                println!("  … {:.0} s: {seen}", t0.elapsed().as_secs_f64());
                last_print = Instant::now();
            }
            tokio::time::sleep(POLL).await;
        };
        let complete_s = t0.elapsed().as_secs_f64();
        let connect_s = connect_s.unwrap_or(complete_s);
        let (before, _) = rss_kb(hub.pid)?;
        tokio::time::sleep(SETTLE).await;
        // Still the same fleet after the pause: no session dropped meanwhile.
        let again = Seen::now(&mut hub, &http, admin, &fleet, &mut stored, &sites[..n]).await?;
        anyhow::ensure!(
            again.complete(n),
            "step {n}: the fleet changed while settling: {again} (was {seen})"
        );
        let (rss, hwm) = rss_kb(hub.pid)?;
        // The growth over the previous step, per edge added: how linear the cost is.
        let prev_kb = steps.last().map_or(rss0, |s| s.rss_kb);
        println!(
            "{n} edges: connected in {connect_s:.1} s, all events stored in {complete_s:.1} s; \
             hub RSS {:.1} MB ({:.1} MB before the {} s pause), peak so far {:.1} MB; \
             {:+.1} kB per edge added in this step",
            mb(rss),
            mb(before),
            SETTLE.as_secs(),
            mb(hwm),
            (rss - prev_kb) / (n - from) as f64
        );
        steps.push(Step {
            edges: n,
            connect_s,
            complete_s,
            rss_kb: rss,
        });
        from = n;
    }
    // Counted afresh, every site.
    let events: i64 = events_by_site(admin, &sites)
        .await?
        .iter()
        .map(|(_, n)| n)
        .sum();

    // Clean stop: every edge closes its session, then the hub gets SIGTERM.
    let closing = Instant::now();
    let open = close_fleet(&stop, tasks, &fleet, &http, &hub.http).await?;
    let closed = fleet.closed.load(Ordering::Relaxed);
    let close_s = closing.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let (rss_after, mut hwm) = rss_kb(hub.pid)?;
    println!(
        "{closed} sessions closed by their edges in {:.1} s; hub sessions left {open}; \
         hub RSS after they closed {:.1} MB, peak {:.1} MB",
        close_s,
        mb(rss_after),
        mb(hwm)
    );

    // The same fleet once more (each edge with 100 new events). Memory still held after the
    // first close is either leaked or kept by the allocator for reuse: a leak grows by about as
    // much again over a second cycle, kept pages are reused and RSS stays where it was.
    let (mut rss_again, mut rss_after2) = (rss_after, rss_after);
    for cycle in 2..=1 + a.cycles_more {
        let fleet2 = Arc::new(Fleet::default());
        let (stop2, stop2_rx) = watch::channel(false);
        let t0 = Instant::now();
        let mut tasks2 = Vec::with_capacity(last);
        for (i, site) in sites.iter().enumerate() {
            let edge = Edge::new(site, i + 1, &state_dir, hub.quic);
            tasks2.push(tokio::spawn(edge.run(
                fleet2.clone(),
                handshakes.clone(),
                stop2_rx.clone(),
            )));
        }
        loop {
            hub.check_alive()?;
            if let Some(e) = fleet2.first_error() {
                bail!("cycle {cycle}: {e}");
            }
            let sessions = hub_connected(&http, &hub.http).await?;
            if sessions == last as u64
                && fleet2.welcomed.load(Ordering::Relaxed) == last
                && fleet2.drained.load(Ordering::Relaxed) == last
            {
                break;
            }
            if t0.elapsed() > a.step_timeout {
                bail!(
                    "cycle {cycle}: {sessions} sessions, {} outboxes drained after {:?}",
                    fleet2.drained.load(Ordering::Relaxed),
                    a.step_timeout
                );
            }
            tokio::time::sleep(POLL).await;
        }
        tokio::time::sleep(SETTLE).await;
        rss_again = rss_kb(hub.pid)?.0;
        close_fleet(&stop2, tasks2, &fleet2, &http, &hub.http)
            .await
            .with_context(|| format!("cycle {cycle}"))?;
        tokio::time::sleep(SETTLE).await;
        (rss_after2, hwm) = rss_kb(hub.pid)?;
        println!(
            "cycle {cycle}: {last} edges connected and drained in {:.1} s, hub RSS {:.1} MB \
             ({:+.1} MB against the first cycle); after they closed {:.1} MB ({:+.1} MB against the \
             first close), peak {:.1} MB",
            t0.elapsed().as_secs_f64(),
            mb(rss_again),
            mb(rss_again) - mb(steps.last().map_or(rss0, |s| s.rss_kb)),
            mb(rss_after2),
            mb(rss_after2) - mb(rss_after),
            mb(hwm)
        );
    }

    let status = hub.terminate(STOP_TIMEOUT).await?;
    println!("hub stopped on SIGTERM ({status})");

    // Figures.
    figure("fleet.rss_0_mb", mb(rss0), "MB");
    for s in &steps {
        figure(&format!("fleet.rss_{}_mb", s.edges), mb(s.rss_kb), "MB");
    }
    for s in &steps {
        figure(&format!("fleet.connect_{}_s", s.edges), s.connect_s, "s");
    }
    if let Some(top) = steps.last() {
        let per_edge = (top.rss_kb - rss0) / top.edges as f64;
        println!(
            "per connected edge: {per_edge:.1} kB ((RSS at {} − RSS at 0) ÷ {}); \
             {} events ingested; {} → {} edges took {:.1} s to connect, {:.1} s to store every event",
            top.edges,
            top.edges,
            events,
            steps.len().checked_sub(2).map_or(0, |i| steps[i].edges),
            top.edges,
            top.connect_s,
            top.complete_s
        );
        figure("fleet.per_edge_kb", per_edge, "kB");
    }
    figure("fleet.rss_peak_mb", mb(hwm), "MB");
    figure("fleet.rss_after_close_mb", mb(rss_after), "MB");
    figure("fleet.rss_second_cycle_mb", mb(rss_again), "MB");
    figure("fleet.rss_after_second_close_mb", mb(rss_after2), "MB");
    figure("fleet.events_ingested", events as f64, "events");
    anyhow::ensure!(
        events == last as i64 * EVENTS_PER_EDGE as i64,
        "{events} events stored, expected {}",
        last as i64 * EVENTS_PER_EDGE as i64
    );
    Ok(())
}
