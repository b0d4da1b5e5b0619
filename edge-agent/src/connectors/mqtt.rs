//! Plain MQTT: JSON (or bare) payloads on configured topics, a field path per tag, QoS 1 with
//! the PUBACK sent only after the events a message produced are committed.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use shared_model::Timestamp;
use tokio::sync::mpsc;

use super::broker::{Acks, Broker, Handle, Message, Polled};
use super::config::{KindSpec, Source, TagSpec};
use super::mapping::TagValue;
use super::store::Delivery;
use super::{Ctx, Link, Reading, backoff};

/// Messages received and waiting for their commit; the broker holds the rest back (its
/// in-flight window) since they are not acknowledged.
const QUEUE_MAX: usize = 2_000;
/// Messages committed together at most.
const BATCH_MAX: usize = 500;
/// Messages per transaction (a message holds few readings; the store's own cap is per reading).
const DELIVERIES_PER_COMMIT_MAX: usize = 250;

/// Why an order is not written while the broker is away.
pub const LINK_DOWN: &str = "the broker link is down";

/// Which tags read which topic.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    by_topic: HashMap<String, Vec<usize>>,
}

impl Routes {
    pub fn new(tags: &[TagSpec]) -> Self {
        let mut by_topic: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, t) in tags.iter().enumerate() {
            if let Source::Mqtt { topic, .. } = &t.source {
                by_topic.entry(topic.clone()).or_default().push(i);
            }
        }
        Self { by_topic }
    }

    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.by_topic.keys().cloned().collect();
        t.sort();
        t
    }

    /// The readings in one message: each tag of its topic whose field is present. A payload
    /// that is not JSON is one bare value (text, or a number if it reads as one).
    pub fn decode(&self, tags: &[TagSpec], topic: &str, payload: &[u8]) -> Vec<Reading> {
        let Some(indices) = self.by_topic.get(topic) else {
            return Vec::new();
        };
        let json: Value = serde_json::from_slice(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).trim().to_owned()));
        let mut out = Vec::with_capacity(indices.len());
        for &i in indices {
            let Source::Mqtt {
                path,
                timestamp_path,
                ..
            } = &tags[i].source
            else {
                continue;
            };
            let Some(value) = at_path(&json, path).and_then(tag_value) else {
                continue;
            };
            let source_time = timestamp_path
                .as_ref()
                .and_then(|p| at_path(&json, p))
                .and_then(timestamp);
            out.push(Reading {
                tag: i,
                value,
                source_time,
            });
        }
        out
    }
}

fn at_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| match v {
        Value::Object(m) => m.get(key),
        Value::Array(a) => a.get(key.parse::<usize>().ok()?),
        _ => None,
    })
}

fn tag_value(v: &Value) -> Option<TagValue> {
    match v {
        Value::Bool(b) => Some(TagValue::Bool(*b)),
        Value::Number(n) => n
            .as_i64()
            .map(TagValue::Int)
            .or_else(|| n.as_f64().map(TagValue::Float)),
        Value::String(s) => Some(TagValue::Text(s.clone())),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// A machine timestamp: RFC 3339 text, or Unix milliseconds.
fn timestamp(v: &Value) -> Option<Timestamp> {
    match v {
        Value::String(s) => Timestamp::parse_rfc3339(s).ok(),
        Value::Number(n) => n.as_i64().map(Timestamp::from_millis),
        _ => None,
    }
}

pub async fn run(mut ctx: Ctx) -> anyhow::Result<()> {
    let spec = ctx.spec().clone();
    let KindSpec::Mqtt(m) = &spec.kind else {
        anyhow::bail!("not an mqtt connector");
    };
    let routes = Arc::new(Routes::new(&spec.tags));
    let mut broker = Broker::new(&m.broker, None)?;
    let handle = broker.handle();
    let (tx, rx) = mpsc::channel::<Message>(QUEUE_MAX);
    let committer = tokio::spawn(commit_loop(ctx.clone(), handle.clone(), rx, routes.clone()));
    let mut attempt = 0u32;
    let orders = ctx.orders.clone();
    let mut orders = orders.lock().await;
    let mut up = false;
    loop {
        let polled = tokio::select! {
            _ = ctx.stop.changed() => break,
            Some(order) = orders.recv() => {
                let result = if up {
                    write_order(&spec, &handle, &order).await
                } else {
                    Err(LINK_DOWN.to_owned())
                };
                ctx.wrote(&order, result).await;
                continue;
            }
            p = broker.poll() => p,
        };
        match polled {
            Ok(Polled::Connected) => {
                attempt = 0;
                up = true;
                ctx.health.link(Link::Up, ctx.now());
                // The session is persistent, but a broker that lost it (restarted without
                // persistence) must hear the subscriptions again.
                handle.subscribe(&routes.topics()).await?;
            }
            Ok(Polled::Message(msg)) => {
                ctx.health.received(ctx.now());
                if tx.send(msg).await.is_err() {
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
    // What was received is committed and acknowledged before the session closes.
    let _ = committer.await;
    handle.disconnect().await;
    Ok(())
}

/// Publishes an order to each write topic of its unit: one JSON message at QoS 1. Success is
/// the broker link taking it; the broker's PUBACK follows on the same session.
async fn write_order(
    spec: &super::ConnectorSpec,
    handle: &Handle,
    order: &super::OrderStart,
) -> Result<(), String> {
    let body = serde_json::json!({
        "order_id": order.order_id.as_str(),
        "material": order.material.as_str(),
        "planned_quantity": order.planned_quantity,
        "started_at": order.at,
    })
    .to_string();
    for w in spec
        .writes
        .iter()
        .filter(|w| w.equipment == order.equipment)
    {
        let super::config::WriteTarget::Mqtt { topic } = &w.target else {
            continue;
        };
        handle
            .publish(topic, body.clone().into_bytes(), false)
            .await
            .map_err(|e| format!("publishing to {topic}: {e}"))?;
    }
    Ok(())
}

/// Takes received messages in order, commits their readings, then acknowledges them in the
/// order they came (as MQTT asks of PUBACKs).
async fn commit_loop(
    mut ctx: Ctx,
    handle: Handle,
    mut rx: mpsc::Receiver<Message>,
    routes: Arc<Routes>,
) {
    let spec = ctx.spec().clone();
    let mut batch: Vec<Message> = Vec::with_capacity(BATCH_MAX);
    let mut acks = Acks::default();
    while acks
        .next_batch(&handle, &mut rx, BATCH_MAX, &mut batch)
        .await
    {
        let mut deliveries = Vec::with_capacity(batch.len());
        for m in &batch {
            let readings = routes.decode(&spec.tags, &m.topic, &m.payload);
            if readings.is_empty() {
                ctx.health.dropped(1);
            }
            deliveries.push(Delivery {
                digest: Some(Delivery::digest_of(&m.topic, m.packet_id(), &m.payload)),
                redelivered: m.redelivered(),
                readings,
            });
        }
        let mut attempt = 0u32;
        let mut chunks = deliveries.chunks(DELIVERIES_PER_COMMIT_MAX).peekable();
        while let Some(chunk) = chunks.peek() {
            match ctx.deliver(chunk.to_vec()).await {
                Ok(_) => {
                    chunks.next();
                }
                Err(e) => {
                    // The store could not commit (a full disk, say): nothing is acknowledged,
                    // and the same readings are tried again until it can, or until stopped,
                    // when the broker keeps them for the next session.
                    ctx.health.error(&format!("storing: {e}"), ctx.now());
                    tracing::error!(connector = %spec.name, error = %e, "cannot store machine data");
                    if ctx.sleep_or_stop(backoff(attempt, super::jitter())).await {
                        return;
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        for m in batch.drain(..) {
            acks.push(m);
        }
        acks.flush(&handle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::config::parse;

    #[test]
    fn a_message_yields_each_present_field_with_its_time() {
        let specs = parse(&crate::connectors::config::tests::mqtt_file(
            "plant/press1",
            "\n[[connector.tag]]\nname = \"scan\"\nmap = \"scan\"\nequipment = \"PRESS-01\"\ntopic = \"plant/press1/scan\"\nmaterial = \"RM-1\"\n",
        ))
        .unwrap();
        let tags = &specs[0].tags;
        let routes = Routes::new(tags);
        assert_eq!(routes.topics(), vec!["plant/press1", "plant/press1/scan"]);
        let r = routes.decode(
            tags,
            "plant/press1",
            br#"{"good":17,"ts":"2026-11-02T08:00:00Z"}"#,
        );
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].value, TagValue::Int(17));
        assert_eq!(
            r[0].source_time,
            Some(Timestamp::parse_rfc3339("2026-11-02T08:00:00Z").unwrap())
        );
        let r = routes.decode(tags, "plant/press1", br#"{"state":1,"good":18}"#);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|r| r.source_time.is_none()));
        let r = routes.decode(tags, "plant/press1/scan", b"LOT-42\n");
        assert_eq!(r[0].value, TagValue::Text("LOT-42".into()));
        assert!(routes.decode(tags, "plant/other", b"1").is_empty());
        assert!(routes.decode(tags, "plant/press1", b"not json").is_empty());
    }
}
