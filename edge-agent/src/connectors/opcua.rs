//! OPC UA client: one session per connector, one subscription with a monitored item per tag
//! (sampling interval, queue size, an absolute deadband as a `DataChangeFilter`). Never polled:
//! the server reports each change, with its source timestamp.
//!
//! The session's event loop (async-opcua) is driven by this task. A data change reaches the
//! subscription callback while the loop is polled; the readings are committed before the loop
//! is polled again, so the next publish request, which acknowledges the notification, is sent
//! only after the commit. A lost connection marks the machines unknown; the library reconnects
//! (backoff from [`super::RETRY_MIN`] to [`super::RETRY_MAX`]), reactivates the old session
//! or transfers/recreates the subscription, and the driver then reads every node's current
//! value, so a change made while the edge was away is not missed (the tag memory makes a
//! value read again move nothing).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use opcua::client::{
    Client, ClientBuilder, DataChangeCallback, IdentityToken, MonitoredItem, Session,
    SessionPollResult,
};
use opcua::crypto::{CertificateStore, SecurityPolicy};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeTrigger, DataValue, DeadbandType, EndpointDescription,
    ExtensionObject, MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode,
    MonitoringParameters, NodeId, QualifiedName, ReadValueId, TimestampsToReturn, UserTokenPolicy,
    Variant, WriteValue,
};
use shared_model::Timestamp;

use super::config::{KindSpec, OpcUaSpec, Source, TagSpec, UaNumber, WriteTarget};
use super::mapping::TagValue;
use super::{ConnectorSpec, Ctx, Link, OrderStart, RETRY_MAX, RETRY_MIN, Reading, backoff};

/// Notifications per publish response; a response is committed before the next is asked for.
const NOTIFICATIONS_PER_PUBLISH: u32 = 1_000;
/// Readings waiting for their commit at most (one publish response, or one re-read).
const QUEUE_MAX: usize = 10_000;
/// Readings per transaction.
const READINGS_PER_COMMIT_MAX: usize = 1_000;
/// Nodes per Read request when re-reading after a reconnect.
const READ_CHUNK: usize = 500;
/// How long a request (connect, read, create) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// How long the server keeps a silent edge's subscription, and the changes it queued for it:
/// long enough to ride out an edge restart or a short network cut.
const SUBSCRIPTION_LIFETIME_MS: u64 = 60_000;
/// How often an idle subscription says it is alive, so a dead one is noticed.
const SUBSCRIPTION_KEEP_ALIVE_MS: u64 = 1_000;

/// The subscription's publishing interval and its lifetime and keep-alive counts (in
/// intervals). The interval is the fastest tag's sampling interval, because a change waits in
/// the server's queue until the next publish: publishing every 100 ms with 10 ms sampling would
/// add up to 100 ms to every change.
fn subscription_timing(fastest_sampling_ms: u64) -> (Duration, u32, u32) {
    let interval = fastest_sampling_ms.max(super::config::INTERVAL_MS_MIN);
    let count = |ms: u64| u32::try_from(ms.div_ceil(interval)).unwrap_or(u32::MAX);
    let keep_alive = count(SUBSCRIPTION_KEEP_ALIVE_MS).max(1);
    // The specification wants a lifetime of at least three keep-alives.
    let lifetime = count(SUBSCRIPTION_LIFETIME_MS).max(keep_alive.saturating_mul(3));
    (Duration::from_millis(interval), lifetime, keep_alive)
}

/// The tags' node ids, parsed; a monitored item's client handle is its tag's index + 1.
#[derive(Debug, Clone)]
struct Items {
    nodes: Vec<(usize, NodeId)>,
}

impl Items {
    fn new(tags: &[TagSpec]) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for (i, t) in tags.iter().enumerate() {
            if let Source::OpcUa { node, .. } = &t.source {
                let id = NodeId::from_str(node)
                    .map_err(|_| anyhow::anyhow!("tag \"{}\": bad node id \"{node}\"", t.name))?;
                nodes.push((i, id));
            }
        }
        Ok(Self { nodes })
    }

    fn create_requests(&self, tags: &[TagSpec]) -> Vec<MonitoredItemCreateRequest> {
        self.nodes
            .iter()
            .filter_map(|(i, id)| {
                let Source::OpcUa {
                    sampling_ms,
                    queue_size,
                    deadband,
                    ..
                } = &tags[*i].source
                else {
                    return None;
                };
                let filter = match deadband {
                    Some(d) if *d > 0.0 => ExtensionObject::from_message(DataChangeFilter {
                        trigger: DataChangeTrigger::StatusValue,
                        deadband_type: DeadbandType::Absolute as u32,
                        deadband_value: *d,
                    }),
                    _ => ExtensionObject::null(),
                };
                Some(MonitoredItemCreateRequest::new(
                    read_value_id(id),
                    MonitoringMode::Reporting,
                    MonitoringParameters {
                        client_handle: u32::try_from(*i + 1).unwrap_or(u32::MAX),
                        sampling_interval: *sampling_ms as f64,
                        filter,
                        queue_size: *queue_size,
                        discard_oldest: true,
                    },
                ))
            })
            .collect()
    }
}

fn read_value_id(id: &NodeId) -> ReadValueId {
    ReadValueId {
        node_id: id.clone(),
        attribute_id: AttributeId::Value as u32,
        index_range: Default::default(),
        data_encoding: QualifiedName::null(),
    }
}

/// A DataValue as a reading: its value (none when bad or of a type no tag can mean) and its
/// source timestamp (else the server's).
pub fn reading(tag: usize, dv: &DataValue) -> Option<Reading> {
    if dv.status.is_some_and(|s| s.is_bad()) {
        return None;
    }
    let value = tag_value(dv.value.as_ref()?)?;
    let time = dv
        .source_timestamp
        .filter(|t| !t.is_null())
        .or(dv.server_timestamp.filter(|t| !t.is_null()))
        .map(|t| Timestamp::from_micros(t.as_chrono().timestamp_micros()));
    Some(Reading {
        tag,
        value,
        source_time: time,
    })
}

fn tag_value(v: &Variant) -> Option<TagValue> {
    Some(match v {
        Variant::Boolean(b) => TagValue::Bool(*b),
        Variant::SByte(i) => TagValue::Int(i64::from(*i)),
        Variant::Byte(i) => TagValue::Int(i64::from(*i)),
        Variant::Int16(i) => TagValue::Int(i64::from(*i)),
        Variant::UInt16(i) => TagValue::Int(i64::from(*i)),
        Variant::Int32(i) => TagValue::Int(i64::from(*i)),
        Variant::UInt32(i) => TagValue::Int(i64::from(*i)),
        Variant::Int64(i) => TagValue::Int(*i),
        Variant::UInt64(i) => match i64::try_from(*i) {
            Ok(i) => TagValue::Int(i),
            Err(_) => TagValue::Text(i.to_string()),
        },
        Variant::Float(f) => TagValue::Float(f64::from(*f)),
        Variant::Double(f) => TagValue::Float(*f),
        Variant::String(s) => TagValue::Text(s.value().clone()?),
        Variant::LocalizedText(t) => TagValue::Text(t.text.value().clone()?),
        _ => return None,
    })
}

/// What the subscription callback hands the driver.
#[derive(Debug, Default)]
struct Inbox {
    readings: Vec<Reading>,
    /// Values that could not be used (bad status, a type no tag can mean, a full queue).
    dropped: u64,
    /// The queue was full: values were dropped, the nodes are read again.
    overflowed: bool,
}

type Shared = Arc<Mutex<Inbox>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Inbox> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn push(inbox: &Shared, r: Option<Reading>) {
    let mut b = lock(inbox);
    match r {
        Some(r) if b.readings.len() < QUEUE_MAX => b.readings.push(r),
        Some(_) => {
            b.dropped += 1;
            b.overflowed = true;
        }
        None => b.dropped += 1,
    }
}

pub async fn run(mut ctx: Ctx) -> anyhow::Result<()> {
    let spec = ctx.spec().clone();
    let KindSpec::OpcUa(o) = &spec.kind else {
        anyhow::bail!("not an opcua connector");
    };
    let items = Items::new(&spec.tags)?;
    let pki = Pki::new(&spec.name, o)?;
    let mut client = ClientBuilder::new()
        .application_name(format!("mes-edge {}", spec.name))
        .application_uri(format!("urn:mes-edge:{}", spec.name))
        .product_uri("urn:mes-edge")
        .pki_dir(pki.dir.clone())
        .certificate_path(pki.cert.clone())
        .private_key_path(pki.key.clone())
        .create_sample_keypair(false)
        .trust_server_certs(false)
        .verify_server_certs(true)
        .session_retry_limit(-1)
        .session_retry_initial(RETRY_MIN)
        .session_retry_max(RETRY_MAX)
        .keep_alive_interval(KEEP_ALIVE)
        .max_failed_keep_alive_count(2)
        .request_timeout(REQUEST_TIMEOUT)
        .session_timeout(60_000)
        .recreate_subscriptions(true)
        .client()
        .map_err(|e| anyhow::anyhow!("opcua client: {}", e.join("; ")))?;
    let mut state = State::default();
    let mut attempt = 0u32;
    let orders = ctx.orders.clone();
    let mut orders = orders.lock().await;
    loop {
        if ctx.stopping() {
            break;
        }
        match session(
            &mut ctx,
            &mut client,
            o,
            &items,
            &mut state,
            &mut attempt,
            &mut orders,
        )
        .await
        {
            Ok(()) => break,
            Err(e) => {
                ctx.link_lost(&format!("{e:#}")).await;
                if ctx
                    .wait_to_reconnect(&mut attempt, &mut orders, LINK_DOWN)
                    .await
                {
                    break;
                }
            }
        }
    }
    drop(pki);
    Ok(())
}

/// What the driver remembers across sessions: each tag's newest machine time committed, so a
/// value re-read after a reconnect never lands before a queued older notification.
#[derive(Debug, Default)]
struct State {
    newest: HashMap<usize, Timestamp>,
}

type SetupFuture = Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<Reading>>> + Send>>;
type WriteFuture = Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// Why an order is not written while the server is away.
const LINK_DOWN: &str = "the link to the OPC UA server is down";

/// One session (with its own reconnects) until stopped (`Ok`) or failed for good (`Err`).
/// Orders for its machines are written while it is up.
async fn session(
    ctx: &mut Ctx,
    client: &mut Client,
    o: &OpcUaSpec,
    items: &Items,
    state: &mut State,
    attempt: &mut u32,
    orders: &mut tokio::sync::mpsc::Receiver<OrderStart>,
) -> anyhow::Result<()> {
    let spec = ctx.spec().clone();
    let policy = SecurityPolicy::from_str(&o.security_policy)
        .map_err(|_| anyhow::anyhow!("unknown security policy {}", o.security_policy))?;
    let mode = match o.security_mode.as_str() {
        "Sign" => MessageSecurityMode::Sign,
        "SignAndEncrypt" => MessageSecurityMode::SignAndEncrypt,
        _ => MessageSecurityMode::None,
    };
    let (identity, token_policy) = match (&o.username, &o.password) {
        (Some(u), Some(p)) => (
            IdentityToken::new_user_name(u.clone(), p.clone()),
            UserTokenPolicy {
                token_type: opcua::types::UserTokenType::UserName,
                ..UserTokenPolicy::anonymous()
            },
        ),
        _ => (IdentityToken::Anonymous, UserTokenPolicy::anonymous()),
    };
    let endpoint: EndpointDescription =
        (o.endpoint.as_str(), policy.to_uri(), mode, token_policy).into();
    let connect = client.connect_to_matching_endpoint(endpoint, identity);
    let (session, event_loop) = tokio::select! {
        _ = ctx.stop.changed() => return Ok(()),
        r = tokio::time::timeout(REQUEST_TIMEOUT, connect) => r
            .map_err(|_| anyhow::anyhow!("{}: no answer within {REQUEST_TIMEOUT:?}", o.endpoint))?
            .with_context(|| format!("{}: no {} / {} endpoint", o.endpoint, o.security_policy, o.security_mode))?,
    };
    let inbox: Shared = Arc::default();
    let mut subscription: Option<u32> = None;
    let mut setup: Option<SetupFuture> = None;
    // One order is written at a time, while the session is up; the event loop keeps running.
    let mut up = false;
    let mut writing: Option<(OrderStart, WriteFuture)> = None;
    let stream = event_loop.enter();
    tokio::pin!(stream);
    let result = loop {
        tokio::select! {
            _ = ctx.stop.changed() => break Ok(()),
            Some(order) = orders.recv(), if writing.is_none() => {
                if !up {
                    ctx.wrote(&order, Err(LINK_DOWN.to_owned())).await;
                } else {
                    match write_values(&spec, &order) {
                        Ok(values) => {
                            let fut = write(session.clone(), values);
                            writing = Some((order, Box::pin(fut)));
                        }
                        Err(e) => ctx.wrote(&order, Err(e)).await,
                    }
                }
            }
            r = async { writing.as_mut().expect("guarded").1.as_mut().await }, if writing.is_some() => {
                if let Some((order, _)) = writing.take() {
                    ctx.wrote(&order, r).await;
                }
            }
            r = async { setup.as_mut().expect("guarded").await }, if setup.is_some() => {
                setup = None;
                match r {
                    Ok(readings) => {
                        for r in readings {
                            push(&inbox, Some(r));
                        }
                    }
                    Err(e) => break Err(e),
                }
            }
            ev = stream.next() => match ev {
                None => break Err(anyhow::anyhow!("the session closed")),
                Some(Err(code)) => break Err(anyhow::anyhow!("{}: {code}", o.endpoint)),
                Some(Ok(SessionPollResult::Reconnected(how))) => {
                    *attempt = 0;
                    up = true;
                    ctx.health.link(Link::Up, ctx.now());
                    tracing::info!(connector = %spec.name, ?how, "opc ua session up");
                    // The library transferred or recreated the subscription while
                    // connecting, before its new publish loop listened for the trigger that
                    // starts publishing: trigger it again.
                    session.trigger_publish_now();
                    let first = subscription.is_none();
                    if first {
                        let create = create_subscription(&session, &inbox, items, &spec.tags);
                        match polling(create, &mut stream).await {
                            Ok(id) => subscription = Some(id),
                            Err(e) => break Err(e),
                        }
                    }
                    // Whatever the server kept or not, the current values are read.
                    setup = Some(Box::pin(read_all(session.clone(), items.clone())));
                }
                Some(Ok(SessionPollResult::ConnectionLost(code))) => {
                    up = false;
                    ctx.link_lost(&format!("{}: connection lost ({code})", o.endpoint)).await;
                    ctx.health.link(Link::Connecting, ctx.now());
                    setup = None;
                }
                Some(Ok(SessionPollResult::ReconnectFailed(code))) => {
                    ctx.health.error(&format!("{}: reconnect failed ({code})", o.endpoint), ctx.now());
                }
                Some(Ok(_)) => {}
            }
        }
        if drain(ctx, &inbox, state).await {
            break Ok(());
        }
        if std::mem::take(&mut lock(&inbox).overflowed) && setup.is_none() {
            setup = Some(Box::pin(read_all(session.clone(), items.clone())));
        }
    };
    if let Some((order, _)) = writing.take() {
        ctx.wrote(
            &order,
            Err("the connector stopped or lost its session during the write".to_owned()),
        )
        .await;
    }
    // Commit what arrived before closing.
    let _ = drain(ctx, &inbox, state).await;
    session.disable_reconnects();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        tokio::select! {
            _ = session.disconnect() => {}
            _ = async { while stream.next().await.is_some() {} } => {}
        }
    })
    .await;
    result
}

/// The Write service's values that send `order` to the nodes of its unit's write tables: the
/// id and the material as String, the quantity as the configured type.
fn write_values(spec: &ConnectorSpec, order: &OrderStart) -> Result<Vec<WriteValue>, String> {
    let mut out = Vec::new();
    for w in spec
        .writes
        .iter()
        .filter(|w| w.equipment == order.equipment)
    {
        let WriteTarget::OpcUa {
            order_id_node,
            material_node,
            quantity_node,
            quantity_type,
        } = &w.target
        else {
            continue;
        };
        let q = order.planned_quantity;
        let too_big = || format!("planned quantity {q} does not fit a {quantity_type:?} node");
        let quantity = match quantity_type {
            UaNumber::Int16 => Variant::from(i16::try_from(q).map_err(|_| too_big())?),
            UaNumber::UInt16 => Variant::from(u16::try_from(q).map_err(|_| too_big())?),
            UaNumber::Int32 => Variant::from(i32::try_from(q).map_err(|_| too_big())?),
            UaNumber::UInt32 => Variant::from(q),
            UaNumber::Int64 => Variant::from(i64::from(q)),
            UaNumber::UInt64 => Variant::from(u64::from(q)),
            // Exact up to 2^24: no planned quantity goes beyond.
            UaNumber::Float => Variant::from(q as f32),
            UaNumber::Double => Variant::from(f64::from(q)),
            UaNumber::String => Variant::from(q.to_string()),
        };
        for (node, value) in [
            (order_id_node, Variant::from(order.order_id.as_str())),
            (material_node, Variant::from(order.material.as_str())),
            (quantity_node, quantity),
        ] {
            let Some(node) = node else { continue };
            let node_id = NodeId::from_str(node).map_err(|_| format!("bad node id \"{node}\""))?;
            out.push(WriteValue {
                node_id,
                attribute_id: AttributeId::Value as u32,
                index_range: Default::default(),
                // No timestamps: some servers refuse a written value that carries them.
                value: DataValue {
                    value: Some(value),
                    ..Default::default()
                },
            });
        }
    }
    Ok(out)
}

/// One Write service call; a node whose status is bad makes the write fail with the node and
/// the status's name.
async fn write(session: Arc<Session>, values: Vec<WriteValue>) -> Result<(), String> {
    let statuses = tokio::time::timeout(REQUEST_TIMEOUT, session.write(&values))
        .await
        .map_err(|_| format!("write: no answer within {} s", REQUEST_TIMEOUT.as_secs()))?
        .map_err(|e| format!("write: {e}"))?;
    if statuses.len() != values.len() {
        return Err(format!(
            "write: {} results for {} nodes",
            statuses.len(),
            values.len()
        ));
    }
    let bad: Vec<String> = values
        .iter()
        .zip(&statuses)
        .filter(|(_, s)| !s.is_good())
        .map(|(v, s)| format!("node {}: {s}", v.node_id))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// Runs `fut` while still polling the session's event loop (a request needs it to be sent and
/// answered); the loop's events meanwhile are only logged.
async fn polling<F, S>(fut: F, stream: &mut Pin<&mut S>) -> F::Output
where
    F: std::future::Future,
    S: futures_util::Stream,
{
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            ev = stream.next() => if ev.is_none() {
                return fut.await;
            }
        }
    }
}

async fn create_subscription(
    session: &Arc<Session>,
    inbox: &Shared,
    items: &Items,
    tags: &[TagSpec],
) -> anyhow::Result<u32> {
    let fastest = items
        .nodes
        .iter()
        .filter_map(|(i, _)| match &tags[*i].source {
            Source::OpcUa { sampling_ms, .. } => Some(*sampling_ms),
            _ => None,
        })
        .min()
        .unwrap_or(100);
    let (interval, lifetime, keep_alive) = subscription_timing(fastest);
    let cb = inbox.clone();
    let callback = DataChangeCallback::new(move |dv: DataValue, item: &MonitoredItem| {
        let tag = item.client_handle() as usize;
        push(&cb, tag.checked_sub(1).and_then(|t| reading(t, &dv)));
    });
    let id = tokio::time::timeout(
        REQUEST_TIMEOUT,
        session.create_subscription(
            interval,
            lifetime,
            keep_alive,
            NOTIFICATIONS_PER_PUBLISH,
            0,
            true,
            callback,
        ),
    )
    .await
    .context("create subscription: no answer")?
    .context("create subscription")?;
    for chunk in items.create_requests(tags).chunks(1_000) {
        let created = tokio::time::timeout(
            REQUEST_TIMEOUT,
            session.create_monitored_items(id, TimestampsToReturn::Both, chunk.to_vec()),
        )
        .await
        .context("create monitored items: no answer")?
        .context("create monitored items")?;
        for c in created {
            if c.result.status_code.is_bad() {
                let tag = (c.requested_parameters.client_handle as usize)
                    .checked_sub(1)
                    .and_then(|i| tags.get(i))
                    .map_or("?", |t| t.name.as_str());
                anyhow::bail!(
                    "tag \"{tag}\": node {}: {}",
                    c.item_to_monitor.node_id,
                    c.result.status_code
                );
            }
        }
    }
    Ok(id)
}

async fn read_all(session: Arc<Session>, items: Items) -> anyhow::Result<Vec<Reading>> {
    let mut out = Vec::with_capacity(items.nodes.len());
    for chunk in items.nodes.chunks(READ_CHUNK) {
        let ids: Vec<ReadValueId> = chunk.iter().map(|(_, id)| read_value_id(id)).collect();
        let values = tokio::time::timeout(
            REQUEST_TIMEOUT,
            session.read(&ids, TimestampsToReturn::Both, 0.0),
        )
        .await
        .context("read: no answer")?
        .context("read")?;
        for ((tag, _), dv) in chunk.iter().zip(values.iter()) {
            if let Some(r) = reading(*tag, dv) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Commits what the inbox holds; true when stopped while the store refused it (what was not
/// committed is read again at the next start).
async fn drain(ctx: &mut Ctx, inbox: &Shared, state: &mut State) -> bool {
    let (readings, dropped) = {
        let mut b = lock(inbox);
        (
            std::mem::take(&mut b.readings),
            std::mem::take(&mut b.dropped),
        )
    };
    if dropped > 0 {
        ctx.health.dropped(dropped);
    }
    if readings.is_empty() {
        return false;
    }
    let now = ctx.now();
    // Nothing older than what a tag already committed: a re-read value and a queued
    // notification may arrive in either order.
    let readings: Vec<Reading> = readings
        .into_iter()
        .filter(|r| {
            ctx.health.received(now);
            match (r.source_time, state.newest.get(&r.tag)) {
                (Some(t), Some(newest)) => t >= *newest,
                _ => true,
            }
        })
        .collect();
    for chunk in readings.chunks(READINGS_PER_COMMIT_MAX) {
        let mut attempt = 0u32;
        loop {
            match ctx.commit(chunk.to_vec()).await {
                Ok(_) => break,
                Err(e) => {
                    ctx.health.error(&format!("storing: {e}"), ctx.now());
                    tracing::error!(connector = %ctx.spec().name, error = %e, "cannot store machine data");
                    if ctx.sleep_or_stop(backoff(attempt, super::jitter())).await {
                        return true;
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        for r in chunk {
            if let Some(t) = r.source_time {
                let e = state.newest.entry(r.tag).or_insert(t);
                *e = (*e).max(t);
            }
        }
    }
    false
}

/// The client's PKI directory: a private directory of this process holding the trusted server
/// certificates (copied in by their thumbprint names, as async-opcua looks them up) and the
/// rejected ones; the edge's own certificate and key stay where the config says.
#[derive(Debug)]
struct Pki {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(name: &str, o: &OpcUaSpec) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "mes-edge-opcua-{}-{name}-{:08x}",
            std::process::id(),
            super::jitter()
        ));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pki = Self {
            cert: absolute(o.certificate.as_deref().unwrap_or("own/cert.der")),
            key: absolute(o.private_key.as_deref().unwrap_or("private/private.pem")),
            dir,
        };
        let trusted = pki.dir.join("trusted");
        std::fs::create_dir_all(&trusted)?;
        std::fs::create_dir_all(pki.dir.join("rejected"))?;
        for f in &o.trusted_server_certificates {
            let cert = CertificateStore::read_cert(Path::new(f))
                .map_err(|e| anyhow::anyhow!("trusted server certificate {f}: {e}"))?;
            let der = cert
                .to_der()
                .map_err(|e| anyhow::anyhow!("trusted server certificate {f}: {e}"))?;
            std::fs::write(trusted.join(CertificateStore::cert_file_name(&cert)), der)?;
        }
        if o.security_policy != "None" {
            CertificateStore::read_cert(&pki.cert)
                .map_err(|e| anyhow::anyhow!("certificate {}: {e}", pki.cert.display()))?;
            CertificateStore::read_pkey(&pki.key)
                .map_err(|e| anyhow::anyhow!("private_key {}: {e}", pki.key.display()))?;
        }
        Ok(pki)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn absolute(p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{DateTime, StatusCode};

    #[test]
    fn the_subscription_publishes_as_often_as_its_fastest_tag_samples() {
        // 10 ms: a keep-alive every 100 intervals (1 s), kept 60 s when the edge is silent.
        assert_eq!(
            subscription_timing(10),
            (Duration::from_millis(10), 6_000, 100)
        );
        assert_eq!(
            subscription_timing(100),
            (Duration::from_millis(100), 600, 10)
        );
        // An hourly tag: the lifetime is still three keep-alives.
        assert_eq!(
            subscription_timing(3_600_000),
            (Duration::from_millis(3_600_000), 3, 1)
        );
        assert_eq!(subscription_timing(1).0, Duration::from_millis(10));
    }

    #[test]
    fn a_data_value_becomes_a_reading_with_its_source_time() {
        let t = DateTime::parse_from_rfc3339("2026-11-02T08:00:00Z").unwrap();
        let dv = DataValue {
            value: Some(Variant::UInt32(17)),
            status: Some(StatusCode::Good),
            source_timestamp: Some(t),
            ..Default::default()
        };
        let r = reading(3, &dv).unwrap();
        assert_eq!(r.tag, 3);
        assert_eq!(r.value, TagValue::Int(17));
        assert_eq!(
            r.source_time,
            Some(Timestamp::parse_rfc3339("2026-11-02T08:00:00Z").unwrap())
        );
        let bad = DataValue {
            status: Some(StatusCode::BadNodeIdUnknown),
            ..dv.clone()
        };
        assert!(reading(0, &bad).is_none());
        let text = DataValue {
            value: Some(Variant::from("LOT-42")),
            source_timestamp: None,
            ..Default::default()
        };
        assert_eq!(
            reading(0, &text).unwrap().value,
            TagValue::Text("LOT-42".into())
        );
        assert_eq!(tag_value(&Variant::Double(2.5)), Some(TagValue::Float(2.5)));
        assert_eq!(tag_value(&Variant::Empty), None);
    }

    #[test]
    fn the_config_refuses_a_bad_node_id_and_a_secured_policy_without_files() {
        let text = |node: &str, security: &str| {
            format!(
                r#"
[[connector]]
name = "ua"
kind = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840/"
{security}
[[connector.tag]]
name = "good"
map = "counter"
equipment = "PRESS-01"
node = "{node}"
deadband = 1.5
"#
            )
        };
        let specs = crate::connectors::config::parse(&text("ns=2;s=Press1.Good", "")).unwrap();
        let items = Items::new(&specs[0].tags).unwrap();
        let req = items.create_requests(&specs[0].tags);
        assert_eq!(req.len(), 1);
        assert_eq!(req[0].requested_parameters.client_handle, 1);
        assert_eq!(req[0].requested_parameters.sampling_interval, 100.0);
        assert!(
            !req[0].requested_parameters.filter.is_null(),
            "the deadband filter"
        );
        let e = crate::connectors::config::parse(&text("Press1.Good", "")).unwrap_err();
        assert!(e[0].message.contains("not an OPC UA node id"), "{e:?}");
        let e = crate::connectors::config::parse(&text(
            "ns=2;i=7",
            "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"Sign\"",
        ))
        .unwrap_err();
        assert!(
            e[0].message.contains("`certificate` and `private_key`"),
            "{e:?}"
        );
    }
}
