//! Machine connectivity: the edge reads PLCs itself and turns tag values into events.
//!
//! * [`config`]: the `[[connector]]` tables of the edge's TOML file, checked whole.
//! * [`mapping`]: what a value means (counter deltas across rollover and reset, state codes,
//!   samples, scans), pure.
//! * [`store`]: readings into events in one transaction with each tag's memory ([`Sink`]).
//! * [`health`]: each connector's link, counts and errors.
//! * the drivers, one per protocol: [`mqtt`], [`modbus`].
//!
//! A driver reads its source and calls [`Sink::commit`]; it acknowledges the source only
//! after the commit, so what a machine sent is stored once whatever fails in between.
//! [`ConnectorSet`] runs the configured drivers and replaces them on reload (SIGHUP or
//! `POST /api/v1/connectors/reload`) only once the new file checked out whole.

pub mod broker;
pub mod config;
pub mod health;
pub mod mapping;
pub mod modbus;
pub mod mqtt;
pub mod opcua;
pub mod sparkplug;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared_model::Timestamp;
use shared_model::master::MasterKind;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{ConfigError, ConnectorSpec};
pub use health::{Health, Link, Snapshot};
pub use store::{Reading, Sink};

use crate::clock::Clock;
use crate::store::Store;

/// First wait before a driver reconnects; doubled per failure up to [`RETRY_MAX`], with
/// jitter, so a plant's worth of edges does not hammer a broker that comes back.
pub const RETRY_MIN: Duration = Duration::from_millis(500);
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a stopping driver may take to finish its commit before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Orders waiting to be written to one connector's machines.
const ORDER_QUEUE: usize = 64;

/// An order started on a unit, to be written down to the unit's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderStart {
    pub equipment: shared_model::EquipmentId,
    pub order_id: shared_model::WorkOrderId,
    pub material: shared_model::MaterialId,
    pub planned_quantity: u32,
    pub at: Timestamp,
}

/// What a driver gets: where to write, where to report, when to stop, what time it is, and
/// the orders to send down to its machines.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub sink: Sink,
    pub health: Arc<Health>,
    pub stop: watch::Receiver<bool>,
    pub clock: Arc<dyn Clock>,
    pub orders: Arc<tokio::sync::Mutex<mpsc::Receiver<OrderStart>>>,
}

impl Ctx {
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn spec(&self) -> &Arc<ConnectorSpec> {
        self.sink.spec()
    }

    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits `d`, or less when asked to stop; returns whether to stop.
    pub async fn sleep_or_stop(&mut self, d: Duration) -> bool {
        if self.stopping() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(d) => self.stopping(),
            _ = self.stop.changed() => true,
        }
    }

    /// Waits `d` while the link is down (less when asked to stop), failing each order that
    /// arrives meanwhile at once with `why`: an order is never held back for a link that may
    /// not return. Returns whether to stop.
    /// After a lost link: waits out the `attempt`th reconnect's backoff (refusing orders with
    /// `why` meanwhile), counts the attempt and says the link is connecting again; true when
    /// stopped. The one reconnect rhythm of every driver.
    pub async fn wait_to_reconnect(
        &mut self,
        attempt: &mut u32,
        orders: &mut mpsc::Receiver<OrderStart>,
        why: &str,
    ) -> bool {
        let wait = backoff(*attempt, jitter());
        if self.sleep_refusing_orders(wait, orders, why).await {
            return true;
        }
        *attempt = attempt.saturating_add(1);
        self.health.link(Link::Connecting, self.now());
        false
    }

    async fn sleep_refusing_orders(
        &mut self,
        d: Duration,
        orders: &mut mpsc::Receiver<OrderStart>,
        why: &str,
    ) -> bool {
        let until = tokio::time::Instant::now() + d;
        // Bounded: each turn takes one order off a bounded queue, and the wait ends at `until`.
        loop {
            if self.stopping() {
                return true;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => return self.stopping(),
                _ = self.stop.changed() => return true,
                Some(order) = orders.recv() => self.wrote(&order, Err(why.to_owned())).await,
            }
        }
    }

    /// Commits readings and reports the outcome; what the store refuses is an error of the
    /// driver's (it must not acknowledge its source).
    pub async fn commit(
        &self,
        readings: Vec<Reading>,
    ) -> Result<store::Committed, crate::store::StoreError> {
        self.deliver(vec![store::Delivery::readings(readings)])
            .await
    }

    /// [`Ctx::commit`] for messages that a broker may deliver again.
    pub async fn deliver(
        &self,
        deliveries: Vec<store::Delivery>,
    ) -> Result<store::Committed, crate::store::StoreError> {
        let source = deliveries
            .iter()
            .flat_map(|d| d.readings.iter().filter_map(|r| r.source_time))
            .max();
        let c = self.sink.deliver(deliveries, self.now()).await?;
        self.health.committed(&c, source, self.now());
        for n in &c.notices {
            tracing::warn!(connector = %self.spec().name, "{n}");
        }
        Ok(c)
    }

    /// Records how writing `order` went, for the API, the terminal and the log.
    pub async fn wrote(&self, order: &OrderStart, result: Result<(), String>) {
        let w = store::WriteResult {
            equipment: order.equipment.as_str().to_owned(),
            work_order: order.order_id.as_str().to_owned(),
            at: self.now(),
            ok: result.is_ok(),
            error: result.err(),
        };
        if let Some(e) = &w.error {
            tracing::warn!(connector = %self.spec().name, order = %w.work_order, equipment = %w.equipment, error = %e, "order not written to the machine");
        }
        self.health.wrote(w.clone());
        if let Err(e) = self.sink.record_write(w).await {
            tracing::error!(connector = %self.spec().name, error = %e, "cannot record an order write");
        }
    }

    /// The link to the machines is lost: their states become unknown.
    pub async fn link_lost(&self, error: &str) {
        let now = self.now();
        self.health.link(Link::Down, now);
        self.health.error(error, now);
        tracing::warn!(connector = %self.spec().name, error, "machine link down");
        if let Err(e) = self.sink.mark_unknown(None, now).await {
            tracing::error!(connector = %self.spec().name, error = %e, "cannot record the unknown state");
        }
    }
}

/// The backoff before the `attempt`th reconnect (0-based), with up to 25 % jitter from `jitter`
/// (0..=u32::MAX).
pub fn backoff(attempt: u32, jitter: u32) -> Duration {
    let base = RETRY_MIN
        .saturating_mul(1 << attempt.min(10))
        .min(RETRY_MAX);
    let extra = base.mul_f64(f64::from(jitter) / f64::from(u32::MAX) / 4.0);
    base + extra
}

/// Random bits for [`backoff`]'s jitter (0 when the system's RNG fails: no jitter is still a
/// backoff).
pub fn jitter() -> u32 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_le_bytes(b)
}

/// Waits for the next item and takes those already queued with it, up to `max`; false once
/// every sender is gone and the queue is empty. The drivers commit what arrived together in
/// one transaction.
pub async fn recv_batch<T>(rx: &mut mpsc::Receiver<T>, max: usize, batch: &mut Vec<T>) -> bool {
    let Some(first) = rx.recv().await else {
        return false;
    };
    batch.push(first);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => break,
        }
    }
    true
}

struct Running {
    spec: Arc<ConnectorSpec>,
    health: Arc<Health>,
    stop: watch::Sender<bool>,
    orders: mpsc::Sender<OrderStart>,
    task: Option<JoinHandle<()>>,
}

/// A connector that writes orders down: its spec (the writes), its health (the outcomes) and
/// its queue.
type Writer = (Arc<ConnectorSpec>, Arc<Health>, mpsc::Sender<OrderStart>);

/// Why a reload was refused; the running connectors are untouched.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the agent runs without a config file (--config): there is nothing to reload")]
    NoFile,
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },
    #[error("{path}: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        path: String,
        errors: Vec<ConfigError>,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
}

/// The running connectors.
pub struct ConnectorSet {
    store: Store,
    clock: Arc<dyn Clock>,
    config_path: Option<PathBuf>,
    running: tokio::sync::Mutex<Vec<Running>>,
    /// Snapshots are read by the API and metrics without waiting on a reload.
    health: Mutex<Vec<Arc<Health>>>,
    /// Where orders go, per connector with writes.
    writers: Mutex<Vec<Writer>>,
}

impl std::fmt::Debug for ConnectorSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorSet")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

impl ConnectorSet {
    pub fn new(store: Store, clock: Arc<dyn Clock>, config_path: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            config_path,
            running: tokio::sync::Mutex::new(Vec::new()),
            health: Mutex::new(Vec::new()),
            writers: Mutex::new(Vec::new()),
        })
    }

    /// Each connector's health, in the file's order.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|h| h.snapshot())
            .collect()
    }

    /// Reads and checks the config file; on success replaces the running set (connectors whose
    /// spec did not change keep running, untouched).
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let Some(path) = &self.config_path else {
            return Err(ReloadError::NoFile);
        };
        let shown = path.display().to_string();
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| ReloadError::Read {
                path: shown.clone(),
                error: e.to_string(),
            })?;
        let specs = self.check(&text).await.map_err(|errors| match errors {
            Checked::Invalid(errors) => ReloadError::Invalid {
                path: shown.clone(),
                errors,
            },
            Checked::Store(e) => ReloadError::Store(e),
        })?;
        Ok(self.replace(specs).await)
    }

    /// Parses `text` and checks what the store must know: each tag's equipment (and a scan's
    /// material) is in the master data.
    pub async fn check(&self, text: &str) -> Result<Vec<ConnectorSpec>, Checked> {
        let specs = config::parse(text).map_err(Checked::Invalid)?;
        let wanted: Vec<(usize, String, MasterKind, String)> = specs
            .iter()
            .flat_map(|c| {
                c.writes
                    .iter()
                    .map(|w| {
                        (
                            w.line,
                            "write: equipment".to_owned(),
                            MasterKind::Equipment,
                            w.equipment.as_str().to_owned(),
                        )
                    })
                    .collect::<Vec<_>>()
                    .into_iter()
                    .chain(c.tags.iter().flat_map(|t| {
                        let mut refs = vec![(
                            t.line,
                            format!("tag \"{}\": equipment", t.name),
                            MasterKind::Equipment,
                            t.equipment.as_str().to_owned(),
                        )];
                        if let config::Mapping::Scan { material, .. } = &t.mapping {
                            refs.push((
                                t.line,
                                format!("tag \"{}\": material", t.name),
                                MasterKind::Material,
                                material.as_str().to_owned(),
                            ));
                        }
                        refs
                    }))
            })
            .collect();
        let errors = self
            .store
            .read(move |conn| {
                let mut errors = Vec::new();
                for (line, what, kind, key) in wanted {
                    if !crate::store::master::exists(conn, kind, &key)? {
                        errors.push(ConfigError {
                            line,
                            message: format!("{what} \"{key}\" is not in this site's master data"),
                        });
                    }
                }
                Ok(errors)
            })
            .await
            .map_err(Checked::Store)?;
        if errors.is_empty() {
            Ok(specs)
        } else {
            Err(Checked::Invalid(errors))
        }
    }

    /// Runs exactly `specs`: stops the connectors not in it (or changed), starts the new ones.
    pub async fn replace(&self, specs: Vec<ConnectorSpec>) -> Reloaded {
        let mut running = self.running.lock().await;
        let mut out = Reloaded::default();
        let mut keep = Vec::new();
        let mut old: Vec<Running> = std::mem::take(&mut *running);
        for spec in specs {
            if let Some(i) = old.iter().position(|r| *r.spec == spec) {
                out.unchanged.push(spec.name.clone());
                keep.push(old.swap_remove(i));
            } else {
                out.started.push(spec.name.clone());
                keep.push(self.start(Arc::new(spec)));
            }
        }
        for r in old {
            out.stopped.push(r.spec.name.clone());
            stop(r).await;
        }
        // Keep the file's order for the API.
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) =
            keep.iter().map(|r| r.health.clone()).collect();
        *self.writers.lock().unwrap_or_else(|p| p.into_inner()) = keep
            .iter()
            .filter(|r| !r.spec.writes.is_empty())
            .map(|r| (r.spec.clone(), r.health.clone(), r.orders.clone()))
            .collect();
        *running = keep;
        out
    }

    fn start(&self, spec: Arc<ConnectorSpec>) -> Running {
        let now = self.clock.now();
        let equipment = {
            let mut e: Vec<String> = spec
                .tags
                .iter()
                .map(|t| t.equipment.as_str().to_owned())
                .chain(spec.writes.iter().map(|w| w.equipment.as_str().to_owned()))
                .collect();
            e.sort();
            e.dedup();
            e
        };
        let health = Arc::new(Health::new(
            &spec.name,
            spec.kind_name(),
            spec.tags.len(),
            equipment,
            now,
        ));
        let (stop, stop_rx) = watch::channel(false);
        let (orders, orders_rx) = mpsc::channel(ORDER_QUEUE);
        let task = if spec.enabled {
            let ctx = Ctx {
                sink: Sink::new(self.store.clone(), spec.clone()),
                health: health.clone(),
                stop: stop_rx,
                clock: self.clock.clone(),
                orders: Arc::new(tokio::sync::Mutex::new(orders_rx)),
            };
            Some(tokio::spawn(run_driver(ctx)))
        } else {
            health.link(Link::Disabled, now);
            None
        };
        Running {
            spec,
            health,
            stop,
            orders,
            task,
        }
    }

    /// An order started on a unit: each connector with a write for that unit sends it down.
    /// A full queue (the machine's link has been down for many starts) is a failed write.
    pub fn order_started(&self, order: OrderStart) {
        let writers = self
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (spec, health, tx) in writers {
            if !spec.writes.iter().any(|w| w.equipment == order.equipment) {
                continue;
            }
            if tx.try_send(order.clone()).is_err() {
                health.wrote(store::WriteResult {
                    equipment: order.equipment.as_str().to_owned(),
                    work_order: order.order_id.as_str().to_owned(),
                    at: self.clock.now(),
                    ok: false,
                    error: Some(
                        "the connector is not taking orders (stopped, or its queue is full)".into(),
                    ),
                });
            }
        }
    }

    /// Stops every connector (shutdown), each given a moment to finish its commit.
    pub async fn shutdown(&self) {
        let mut running = self.running.lock().await;
        for r in running.drain(..) {
            stop(r).await;
        }
    }
}

/// Why [`ConnectorSet::check`] refused a file.
#[derive(Debug)]
pub enum Checked {
    Invalid(Vec<ConfigError>),
    Store(crate::store::StoreError),
}

async fn stop(mut r: Running) {
    let _ = r.stop.send(true);
    if let Some(task) = r.task.take() {
        let abort = task.abort_handle();
        if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
            // Nothing is lost by the abort: an unacknowledged message is delivered again and a
            // value polled again; the commit in flight either happened or did not.
            abort.abort();
        }
    }
    r.health.link(
        Link::Stopped,
        Timestamp::from_micros(0).max(r.health.snapshot().since),
    );
}

async fn run_driver(ctx: Ctx) {
    let name = ctx.spec().name.clone();
    let result = match &ctx.spec().kind {
        config::KindSpec::Mqtt(_) => mqtt::run(ctx.clone()).await,
        config::KindSpec::Modbus(_) => modbus::run(ctx.clone()).await,
        config::KindSpec::Sparkplug(_) => sparkplug::run(ctx.clone()).await,
        config::KindSpec::OpcUa(_) => opcua::run(ctx.clone()).await,
    };
    if let Err(e) = result {
        tracing::error!(connector = %name, error = %format!("{e:#}"), "connector stopped");
        ctx.health.error(&format!("{e:#}"), ctx.now());
        ctx.health.link(Link::Stopped, ctx.now());
    }
}
