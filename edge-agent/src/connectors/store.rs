//! Readings into events, in the writer's transaction: the tag's memory, the events and the
//! notices commit together or not at all. A connector acknowledges its source (an MQTT PUBACK,
//! nothing for a poll) only after `Sink::commit` returned, so what a machine sent is stored
//! once even when the edge dies in between.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use shared_model::event::{
    EquipmentStateChange, MachineState, MaterialMovement, ProductionCount, QualitySample,
};
use shared_model::master::{InspectionPlan, MasterKind};
use shared_model::work_order::WorkOrderState;
use shared_model::{Event, EventBody, SiteId, Timestamp};

use super::config::{ConnectorSpec, Counts, Mapping, TagSpec};
use super::mapping::{self, Fact, Notice, TagMemory, TagValue};
use crate::records;
use crate::store::{Store, StoreError, events};

/// Notices kept per edge; older ones are dropped as new ones come.
pub const NOTICES_KEPT: i64 = 1_000;
/// Readings one commit takes at most (a driver splits larger bursts).
pub const READINGS_PER_COMMIT_MAX: usize = 1_000;

/// One value read from a tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Index into the connector's `tags`.
    pub tag: usize,
    pub value: TagValue,
    /// When the machine says it happened (OPC UA source timestamp, Sparkplug timestamp, a
    /// JSON field); the receive time when it says nothing.
    pub source_time: Option<Timestamp>,
}

/// How long a committed message's digest is kept to recognise its redelivery: far longer than
/// a broker keeps an unacknowledged message in flight for a session that comes back.
pub const MESSAGE_MEMORY_MICROS: i64 = 24 * 3_600 * 1_000_000;

/// One message's readings. A message a broker delivers again (MQTT's DUP flag) after the edge
/// died between commit and acknowledgement is recognised by its digest and not used twice.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Topic, packet id and payload, hashed: the same in-flight message has the same digest.
    pub digest: Option<[u8; 16]>,
    /// The broker says it may have sent this before.
    pub redelivered: bool,
    pub readings: Vec<Reading>,
}

impl Delivery {
    /// Readings that came without a message to recognise (a poll, a subscription's data
    /// change with its own timestamps).
    pub fn readings(readings: Vec<Reading>) -> Self {
        Self {
            digest: None,
            redelivered: false,
            readings,
        }
    }

    /// The digest of an MQTT message.
    pub fn digest_of(topic: &str, packet_id: u16, payload: &[u8]) -> [u8; 16] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&(topic.len() as u32).to_be_bytes());
        ctx.update(topic.as_bytes());
        ctx.update(&packet_id.to_be_bytes());
        ctx.update(payload);
        let mut d = [0u8; 16];
        d.copy_from_slice(&ctx.finish().as_ref()[..16]);
        d
    }
}

/// What a commit came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// Events stored now (a reading delivered again stores none).
    pub events: usize,
    /// Redelivered messages recognised as already committed.
    pub duplicates: usize,
    /// Readings that could not be used, with the tag and why; nothing of them is stored.
    pub rejected: Vec<(String, String)>,
    /// Notices written (counter resets, unmapped states), as text.
    pub notices: Vec<String>,
}

/// Writes a connector's readings through the store's single writer.
#[derive(Debug, Clone)]
pub struct Sink {
    store: Store,
    spec: Arc<ConnectorSpec>,
}

impl Sink {
    pub fn new(store: Store, spec: Arc<ConnectorSpec>) -> Self {
        Self { store, spec }
    }

    pub fn spec(&self) -> &Arc<ConnectorSpec> {
        &self.spec
    }

    /// Stores `readings` (received at `now`) and resolves after their transaction committed.
    pub async fn commit(
        &self,
        readings: Vec<Reading>,
        now: Timestamp,
    ) -> Result<Committed, StoreError> {
        self.deliver(vec![Delivery::readings(readings)], now).await
    }

    /// Stores messages' readings, skipping redeliveries of messages already committed.
    pub async fn deliver(
        &self,
        deliveries: Vec<Delivery>,
        now: Timestamp,
    ) -> Result<Committed, StoreError> {
        let spec = self.spec.clone();
        let site = self.store.site().clone();
        self.store
            .write(move |conn| commit(conn, &site, &spec, &deliveries, now))
            .await
    }

    /// Records how an order write went (the terminal and the API show a failed one).
    pub async fn record_write(&self, w: WriteResult) -> Result<(), StoreError> {
        let name = self.spec.name.clone();
        self.store
            .write(move |conn| record_write(conn, &name, &w))
            .await
    }

    /// The link to the machines is gone: each state tag whose machine is not already unknown
    /// gets an `unknown` state (only the tags in `tags`, or all when `None`).
    pub async fn mark_unknown(
        &self,
        tags: Option<Vec<usize>>,
        now: Timestamp,
    ) -> Result<Committed, StoreError> {
        let spec = self.spec.clone();
        let site = self.store.site().clone();
        self.store
            .write(move |conn| mark_unknown(conn, &site, &spec, tags.as_deref(), now))
            .await
    }
}

fn load(conn: &Connection, connector: &str, tag: &str) -> Result<TagMemory, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT counter, last FROM connector_tags WHERE connector = ?1 AND tag = ?2",
        )?
        .query_row(params![connector, tag], |r| {
            Ok(TagMemory {
                counter: r.get::<_, Option<i64>>(0)?.map(|c| c as u64),
                last: r.get(1)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}

fn save(
    conn: &Connection,
    connector: &str,
    tag: &str,
    memory: &TagMemory,
    now: Timestamp,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO connector_tags (connector, tag, counter, last, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (connector, tag) DO UPDATE
         SET counter = excluded.counter, last = excluded.last, updated_at = excluded.updated_at",
    )?
    .execute(params![
        connector,
        tag,
        memory.counter.map(|c| c as i64),
        memory.last,
        now.as_micros()
    ])?;
    Ok(())
}

fn notice(
    conn: &Connection,
    connector: &str,
    tag: &str,
    now: Timestamp,
    message: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO connector_notices (connector, tag, at, message) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![connector, tag, now.as_micros(), message])?;
    conn.prepare_cached(
        "DELETE FROM connector_notices WHERE id <= (SELECT max(id) FROM connector_notices) - ?1",
    )?
    .execute([NOTICES_KEPT])?;
    Ok(())
}

/// A notice as people read it.
fn notice_text(n: &Notice) -> String {
    match n {
        Notice::CounterReset { from, to, counted } => format!(
            "counter reset from {from} to {to}: {counted} counted since the reset; what the \
             machine counted between the last reading and the reset is not known"
        ),
        Notice::UnmappedState { value } => {
            format!("state code {value} is not in the tag's map: recorded as unknown")
        }
    }
}

/// How sending an order down to a machine went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WriteResult {
    pub equipment: String,
    pub work_order: String,
    pub at: Timestamp,
    pub ok: bool,
    pub error: Option<String>,
}

/// Keeps the outcome of the newest order write per connector and unit.
pub fn record_write(conn: &Connection, connector: &str, w: &WriteResult) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO connector_writes (connector, equipment, work_order, at, ok, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        connector,
        w.equipment,
        w.work_order,
        w.at.as_micros(),
        w.ok,
        w.error
    ])?;
    Ok(())
}

/// The newest order write per unit of a connector.
pub fn writes(conn: &Connection, connector: &str) -> Result<Vec<WriteResult>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT equipment, work_order, at, ok, error FROM connector_writes WHERE connector = ?1
         ORDER BY equipment",
    )?;
    let rows = stmt.query_map([connector], |r| {
        Ok(WriteResult {
            equipment: r.get(0)?,
            work_order: r.get(1)?,
            at: Timestamp::from_micros(r.get(2)?),
            ok: r.get(3)?,
            error: r.get(4)?,
        })
    })?;
    rows.map(|r| r.map_err(StoreError::from)).collect()
}

/// The notices of a connector, newest first.
pub fn notices(
    conn: &Connection,
    connector: &str,
    limit: usize,
) -> Result<Vec<(String, Timestamp, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT tag, at, message FROM connector_notices WHERE connector = ?1
         ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![connector, limit as i64], |r| {
        Ok((r.get(0)?, Timestamp::from_micros(r.get(1)?), r.get(2)?))
    })?;
    rows.map(|r| r.map_err(StoreError::from)).collect()
}

/// The time an event is recorded as having happened: the machine's, unless the machine's clock
/// is so far ahead that the event would be refused (then ours, and the reading still counts).
fn occurred_at(source: Option<Timestamp>, now: Timestamp) -> Timestamp {
    match source {
        Some(t) if t.micros_since(now) <= shared_model::event::FUTURE_SKEW_MICROS_MAX => t,
        _ => now,
    }
}

pub(crate) fn commit(
    conn: &Connection,
    site: &SiteId,
    spec: &ConnectorSpec,
    deliveries: &[Delivery],
    now: Timestamp,
) -> Result<Committed, StoreError> {
    let mut out = Committed::default();
    if deliveries.iter().any(|d| d.digest.is_some()) {
        conn.prepare_cached("DELETE FROM connector_messages WHERE at < ?1")?
            .execute([now.as_micros() - MESSAGE_MEMORY_MICROS])?;
    }
    for d in deliveries {
        if let Some(digest) = &d.digest {
            let seen = d.redelivered
                && conn
                    .prepare_cached(
                        "SELECT 1 FROM connector_messages WHERE connector = ?1 AND digest = ?2",
                    )?
                    .query_row(params![spec.name, &digest[..]], |_| Ok(()))
                    .optional()?
                    .is_some();
            if seen {
                out.duplicates += 1;
                continue;
            }
            conn.prepare_cached(
                "INSERT OR REPLACE INTO connector_messages (connector, digest, at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![spec.name, &digest[..], now.as_micros()])?;
        }
        commit_readings(conn, site, spec, &d.readings, now, &mut out)?;
    }
    Ok(out)
}

fn commit_readings(
    conn: &Connection,
    site: &SiteId,
    spec: &ConnectorSpec,
    readings: &[Reading],
    now: Timestamp,
    out: &mut Committed,
) -> Result<(), StoreError> {
    for r in readings {
        let Some(tag) = spec.tags.get(r.tag) else {
            return Err(StoreError::Corrupt(format!(
                "connector {} has no tag #{}",
                spec.name, r.tag
            )));
        };
        let memory = load(conn, &spec.name, &tag.name)?;
        let interpreted = match mapping::interpret(&tag.mapping, &memory, &r.value) {
            Ok(i) => i,
            Err(e) => {
                out.rejected.push((tag.name.clone(), e.to_string()));
                continue;
            }
        };
        let at = occurred_at(r.source_time, now);
        let mut batch = Vec::with_capacity(interpreted.facts.len());
        for fact in chunked(&interpreted.facts) {
            let body = body(conn, tag, &fact)?;
            let index = u8::try_from(batch.len()).unwrap_or(u8::MAX);
            batch.push(Event {
                event_id: mapping::event_id(&spec.name, &tag.name, at, &r.value, index),
                site_id: site.clone(),
                occurred_at: at,
                recorded_at: now,
                operator: None,
                body,
            });
        }
        if let Some(e) = batch.iter().find_map(|e| e.validate(now).err()) {
            out.rejected.push((tag.name.clone(), e.to_string()));
            continue;
        }
        if !insert(conn, &tag.name, &batch, now, out)? {
            continue;
        }
        for n in &interpreted.notices {
            let text = notice_text(n);
            notice(conn, &spec.name, &tag.name, now, &text)?;
            out.notices.push(format!("{}: {text}", tag.name));
        }
        save(conn, &spec.name, &tag.name, &interpreted.memory, now)?;
    }
    Ok(())
}

/// Stores a tag's events; whether they could be (false: rejected, noted in `out`, and the
/// caller leaves the tag's memory where it was).
fn insert(
    conn: &Connection,
    tag: &str,
    batch: &[Event],
    now: Timestamp,
    out: &mut Committed,
) -> Result<bool, StoreError> {
    match events::insert(conn, batch, None, now.as_micros(), |_| String::new()) {
        Ok(events::EventsOutcome::Stored { new, .. }) => out.events += new,
        Ok(events::EventsOutcome::Replayed(_)) => {}
        // Master data the tag names is missing (deleted since the file was checked): the
        // memory stays where it was, so a delta is counted once the reference is back.
        Err(StoreError::UnknownReference { field, value, .. }) => {
            out.rejected
                .push((tag.to_owned(), format!("unknown {field} {value}")));
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    Ok(true)
}

fn mark_unknown(
    conn: &Connection,
    site: &SiteId,
    spec: &ConnectorSpec,
    only: Option<&[usize]>,
    now: Timestamp,
) -> Result<Committed, StoreError> {
    let unknown = mapping::state_memory(MachineState::Unknown, None);
    let mut out = Committed::default();
    for (i, tag) in spec.tags.iter().enumerate() {
        if !matches!(tag.mapping, Mapping::State { .. }) || only.is_some_and(|o| !o.contains(&i)) {
            continue;
        }
        let mut memory = load(conn, &spec.name, &tag.name)?;
        if memory.last.as_deref() == Some(unknown.as_str()) {
            continue;
        }
        let event = Event {
            event_id: mapping::event_id(
                &spec.name,
                &tag.name,
                now,
                &TagValue::Text("link down".into()),
                0,
            ),
            site_id: site.clone(),
            occurred_at: now,
            recorded_at: now,
            operator: None,
            body: EventBody::EquipmentState(EquipmentStateChange {
                equipment: tag.equipment.clone(),
                state: MachineState::Unknown,
                reason: None,
            }),
        };
        if !insert(conn, &tag.name, &[event], now, &mut out)? {
            continue;
        }
        memory.last = Some(unknown.clone());
        save(conn, &spec.name, &tag.name, &memory, now)?;
    }
    Ok(out)
}

/// Most events one counter reading is split into (`COUNT_MAX` each): 64 million parts between
/// two readings is far past any machine, and the rest is clamped rather than stored as
/// thousands of events.
const COUNT_CHUNKS_MAX: u64 = 64;

/// The facts with every count cut to what one event may carry.
fn chunked(facts: &[Fact]) -> Vec<Fact> {
    let max = u64::from(shared_model::event::COUNT_MAX);
    let mut out = Vec::with_capacity(facts.len());
    for f in facts {
        match f {
            Fact::Count { counts, quantity } => {
                let mut left = (*quantity).min(max * COUNT_CHUNKS_MAX);
                while left > 0 {
                    let n = left.min(max);
                    out.push(Fact::Count {
                        counts: *counts,
                        quantity: n,
                    });
                    left -= n;
                }
            }
            other => out.push(other.clone()),
        }
    }
    out
}

/// The event body of one fact, with the unit's running order and the plan's limits.
fn body(conn: &Connection, tag: &TagSpec, fact: &Fact) -> Result<EventBody, StoreError> {
    let unit = tag.equipment.as_str();
    let running = || records::current_order(conn, unit, &[WorkOrderState::Running]);
    Ok(match fact {
        Fact::Count { counts, quantity } => {
            // `chunked` cut it to COUNT_MAX already.
            let n = u32::try_from(*quantity).unwrap_or(u32::MAX);
            let (good, scrap) = match counts {
                Counts::Good => (n, 0),
                Counts::Scrap => (0, n),
            };
            EventBody::ProductionCount(ProductionCount {
                equipment: tag.equipment.clone(),
                work_order: running()?.map(|o| o.order.id),
                good,
                scrap,
                rework: 0,
                scrap_reason: None,
            })
        }
        Fact::State { state, reason } => EventBody::EquipmentState(EquipmentStateChange {
            equipment: tag.equipment.clone(),
            state: *state,
            reason: reason.clone(),
        }),
        Fact::Sample { value } => {
            let Mapping::Sample { characteristic } = &tag.mapping else {
                return Err(StoreError::Corrupt(
                    "a sample from a tag that is not one".into(),
                ));
            };
            let order = running()?;
            let plan = match &order {
                Some(o) => plan(conn, o.order.material.as_str(), characteristic.as_str())?,
                None => None,
            };
            let (lower, upper) = plan
                .map(|p| (p.lower_limit, p.upper_limit))
                .unwrap_or((None, None));
            let pass = lower.is_none_or(|l| *value >= l) && upper.is_none_or(|u| *value <= u);
            EventBody::QualitySample(QualitySample {
                equipment: Some(tag.equipment.clone()),
                work_order: order.map(|o| o.order.id),
                lot: None,
                characteristic: characteristic.clone(),
                value: *value,
                lower_limit: lower,
                upper_limit: upper,
                pass,
            })
        }
        Fact::Scan { lot } => {
            let Mapping::Scan { material, quantity } = &tag.mapping else {
                return Err(StoreError::Corrupt(
                    "a scan from a tag that is not one".into(),
                ));
            };
            EventBody::MaterialConsumed(MaterialMovement {
                lot: lot.clone(),
                material: material.clone(),
                quantity: *quantity,
                work_order: running()?.map(|o| o.order.id),
                equipment: Some(tag.equipment.clone()),
            })
        }
    })
}

fn plan(
    conn: &Connection,
    material: &str,
    characteristic: &str,
) -> Result<Option<InspectionPlan>, StoreError> {
    let key = format!("{material}#{characteristic}");
    let Some(json) = crate::store::master::json(conn, MasterKind::InspectionPlan, &key)? else {
        return Ok(None);
    };
    serde_json::from_str(&json)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("inspection plan {key}: {e}")))
}

#[cfg(test)]
mod tests;
