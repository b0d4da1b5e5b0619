//! Sparkplug B (3.0) host application: reads a group's edge nodes and devices through the
//! broker session of [`super::broker`], publishes the host's STATE (retained, with a last will
//! saying it went offline), and acknowledges each message only after what it carried is
//! committed.
//!
//! The protocol's state (births, aliases, sequence numbers) is [`host::Host`], pure; this file
//! is its I/O: messages in order through one commit loop, NCMD rebirths out.

pub mod host;
pub mod payload;

use std::time::Duration;

use shared_model::Timestamp;
use tokio::sync::mpsc;

use super::broker::{Acks, Broker, Handle, Message, Polled, Will};
use super::config::KindSpec;
use super::mqtt::LINK_DOWN;
use super::store::Delivery;
use super::{Ctx, Link, OrderStart, backoff};
use host::{Host, NAMESPACE};

/// Messages received and waiting for their commit (the broker holds the rest back).
const QUEUE_MAX: usize = 2_000;
/// Messages committed together at most.
const BATCH_MAX: usize = 250;
/// How long a stopping driver drives the session to send its last acks, its offline STATE and
/// its DISCONNECT.
const GOODBYE: Duration = Duration::from_secs(2);

/// What the receiving loop hands the commit loop, in the order it happened.
#[derive(Debug)]
enum Item {
    /// The broker accepted the session (again).
    Connected,
    Message(Box<Message>),
    /// An order to send down as a command, after the messages received before it (a birth
    /// among them gives the metrics' aliases and types).
    Order(OrderStart),
}

fn state_topic(host_id: &str) -> String {
    format!("{NAMESPACE}/STATE/{host_id}")
}

pub async fn run(mut ctx: Ctx) -> anyhow::Result<()> {
    let spec = ctx.spec().clone();
    let KindSpec::Sparkplug(s) = &spec.kind else {
        anyhow::bail!("not a sparkplug connector");
    };
    let host = Host::new(&s.group, &spec.tags).with_writes(&spec.writes);
    let state = state_topic(&s.host_id);
    // Sparkplug 3.0: the STATE birth carries the timestamp of the will set in the CONNECT; the
    // will is the same for every reconnect of this session, so is the timestamp.
    let since = ctx.now();
    let will = Will {
        topic: state.clone(),
        payload: host::state(false, since),
        retain: true,
    };
    let mut broker = Broker::new(&s.broker, Some(will))?;
    let handle = broker.handle();
    let subscriptions = vec![host.subscription(), state.clone()];
    let (tx, rx) = mpsc::channel::<Item>(QUEUE_MAX);
    let committer = tokio::spawn(commit_loop(
        ctx.clone(),
        handle.clone(),
        rx,
        host,
        state.clone(),
        since,
    ));
    let mut attempt = 0u32;
    let orders = ctx.orders.clone();
    let mut orders = orders.lock().await;
    let mut up = false;
    loop {
        let polled = tokio::select! {
            _ = ctx.stop.changed() => break,
            Some(order) = orders.recv() => {
                if !up {
                    ctx.wrote(&order, Err(LINK_DOWN.to_owned())).await;
                } else if tx.send(Item::Order(order)).await.is_err() {
                    break;
                }
                continue;
            }
            p = broker.poll() => p,
        };
        match polled {
            Ok(Polled::Connected) => {
                attempt = 0;
                up = true;
                ctx.health.link(Link::Up, ctx.now());
                handle.subscribe(&subscriptions).await?;
                handle
                    .publish(&state, host::state(true, since), true)
                    .await?;
                if tx.send(Item::Connected).await.is_err() {
                    break;
                }
            }
            Ok(Polled::Message(msg)) => {
                ctx.health.received(ctx.now());
                if tx.send(Item::Message(Box::new(msg))).await.is_err() {
                    break;
                }
            }
            Ok(Polled::Other) => {}
            Err(e) => {
                up = false;
                ctx.link_lost(&e).await;
                if ctx
                    .wait_to_reconnect(&mut attempt, &mut orders, LINK_DOWN)
                    .await
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    // What was received is committed and acknowledged; then the host says it goes offline
    // and the session is driven until the broker has heard it all (bounded).
    let _ = committer.await;
    let _ = handle
        .publish(&state, host::state(false, since), true)
        .await;
    handle.disconnect().await;
    let _ = tokio::time::timeout(GOODBYE, async { while broker.poll().await.is_ok() {} }).await;
    Ok(())
}

/// Sends `order` to each write target of its unit as an NCMD or DCMD at QoS 0 (Sparkplug's
/// rule for commands). Success is the command published on a live session to a node (and
/// device) with a current birth.
async fn write_order(
    ctx: &Ctx,
    handle: &Handle,
    host: &Host,
    order: &OrderStart,
) -> Result<(), String> {
    let spec = ctx.spec();
    for w in spec
        .writes
        .iter()
        .filter(|w| w.equipment == order.equipment)
    {
        let (topic, payload) = host.command(&w.target, order, ctx.now())?;
        handle
            .command(&topic, payload)
            .await
            .map_err(|e| format!("publishing to {topic}: {e}"))?;
    }
    Ok(())
}

/// Commits what `deliveries` hold, retrying until the store takes them or the driver stops
/// (then nothing more is acknowledged: the broker keeps the messages). Returns whether to go on.
async fn commit(ctx: &mut Ctx, deliveries: &mut Vec<Delivery>) -> bool {
    if deliveries.is_empty() {
        return true;
    }
    let mut attempt = 0u32;
    loop {
        match ctx.deliver(deliveries.clone()).await {
            Ok(_) => {
                deliveries.clear();
                return true;
            }
            Err(e) => {
                ctx.health.error(&format!("storing: {e}"), ctx.now());
                tracing::error!(connector = %ctx.spec().name, error = %e, "cannot store machine data");
                if ctx.sleep_or_stop(backoff(attempt, super::jitter())).await {
                    return false;
                }
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Marks machines unknown, retrying like [`commit`]. Returns whether to go on.
async fn mark_unknown(ctx: &mut Ctx, tags: Vec<usize>) -> bool {
    let mut attempt = 0u32;
    loop {
        match ctx.sink.mark_unknown(Some(tags.clone()), ctx.now()).await {
            Ok(c) => {
                ctx.health.committed(&c, None, ctx.now());
                return true;
            }
            Err(e) => {
                ctx.health.error(&format!("storing: {e}"), ctx.now());
                tracing::error!(connector = %ctx.spec().name, error = %e, "cannot record the unknown state");
                if ctx.sleep_or_stop(backoff(attempt, super::jitter())).await {
                    return false;
                }
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Takes the received messages in order through the host's state, commits their readings
/// (and a death's unknown states, after the readings before it), asks nodes for rebirths, and
/// acknowledges the messages in the order they came once all they carried is committed.
async fn commit_loop(
    mut ctx: Ctx,
    handle: Handle,
    mut rx: mpsc::Receiver<Item>,
    mut host: Host,
    state: String,
    since: Timestamp,
) {
    let name = ctx.spec().name.clone();
    let mut batch: Vec<Item> = Vec::with_capacity(BATCH_MAX);
    let mut acks = Acks::default();
    while acks
        .next_batch(&handle, &mut rx, BATCH_MAX, &mut batch)
        .await
    {
        let mut deliveries: Vec<Delivery> = Vec::new();
        let mut rebirths: Vec<String> = Vec::new();
        for item in &batch {
            let m = match item {
                Item::Connected => {
                    rebirths.extend(host.connected(ctx.now()));
                    continue;
                }
                Item::Message(m) => m,
                Item::Order(order) => {
                    let result = write_order(&ctx, &handle, &host, order).await;
                    ctx.wrote(order, result).await;
                    continue;
                }
            };
            if m.topic == state {
                // A will of an earlier connection of ours, retained after our birth: say
                // again that the host is online.
                if host::says_offline(&m.payload) {
                    let _ = handle.publish(&state, host::state(true, since), true).await;
                }
                continue;
            }
            let out = host.handle(&m.topic, &m.payload, m.redelivered(), ctx.now());
            if let Some(note) = &out.note {
                tracing::info!(connector = %name, "{note}");
                if !out.unknown.is_empty() {
                    // A death is what the people at the line must see in the connector's
                    // health: its machines' states are unknown from now on.
                    ctx.health.error(note, ctx.now());
                }
            }
            if out.dropped {
                ctx.health.dropped(1);
            }
            rebirths.extend(out.rebirth);
            deliveries.push(Delivery {
                digest: Some(Delivery::digest_of(&m.topic, m.packet_id(), &m.payload)),
                redelivered: m.redelivered(),
                readings: out.readings,
            });
            if !out.unknown.is_empty() {
                // The readings before the death are committed first, then the machines'
                // states become unknown.
                if !commit(&mut ctx, &mut deliveries).await
                    || !mark_unknown(&mut ctx, out.unknown).await
                {
                    return;
                }
            }
        }
        if !commit(&mut ctx, &mut deliveries).await {
            return;
        }
        for topic in rebirths {
            tracing::info!(connector = %name, topic, "asking for a rebirth");
            if let Err(e) = handle
                .publish(&topic, payload::rebirth(ctx.now()), false)
                .await
            {
                tracing::debug!(connector = %name, error = %e, "rebirth not sent");
            }
        }
        for item in batch.drain(..) {
            if let Item::Message(m) = item {
                acks.push(*m);
            }
        }
        acks.flush(&handle);
    }
}
