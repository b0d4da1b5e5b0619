//! The Sparkplug B host application's view of a group, without I/O: each message in, what to
//! store, which machines became unknown and which edge node to ask for a rebirth out.
//!
//! Per configured edge node it keeps the `bdSeq` of its NBIRTH (a death counts only with the
//! same one), the aliases and data types its NBIRTH and each DBIRTH gave (only for the metrics
//! some tag reads), and the last `seq` (0..=255), so a lost or reordered message shows as a
//! gap and the node is asked, by an NCMD `Node Control/Rebirth`, to say everything again.

use std::collections::HashMap;

use shared_model::Timestamp;

use super::payload::{self, Metric, Payload};
use crate::connectors::config::{Source, TagSpec, WriteSpec, WriteTarget};
use crate::connectors::{OrderStart, Reading};

/// The Sparkplug B topic namespace.
pub const NAMESPACE: &str = "spBv1.0";
/// A node asked for a rebirth is not asked again within this time unless a birth came.
pub const REBIRTH_EVERY_MICROS: i64 = 5_000_000;

/// What one message comes to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub readings: Vec<Reading>,
    /// Tags whose machines are unknown now (a death), to record after the readings.
    pub unknown: Vec<usize>,
    /// The NCMD topic of a node to ask for its births (publish [`payload::rebirth`]).
    pub rebirth: Option<String>,
    /// A data message of a configured node that gave no reading, or a payload that is not
    /// Sparkplug.
    pub dropped: bool,
    /// What happened, for the log.
    pub note: Option<String>,
}

/// The metrics of a node or of one of its devices.
#[derive(Debug, Default)]
struct Scope {
    /// Metric name → the tags that read it (from the config).
    routes: HashMap<String, Vec<usize>>,
    /// Every tag of the scope.
    tags: Vec<usize>,
    /// Metrics an order is written to (DCMD/NCMD).
    commands: Vec<String>,
    /// From the last birth: alias → name and name → data type, for routed and commanded
    /// metrics only.
    aliases: HashMap<u64, String>,
    types: HashMap<String, u32>,
    born: bool,
}

impl Scope {
    fn birth(&mut self, metrics: &[Metric]) {
        self.aliases.clear();
        self.types.clear();
        for m in metrics {
            let Some(name) = &m.name else { continue };
            if !self.routes.contains_key(name) && !self.commands.contains(name) {
                continue;
            }
            if let Some(alias) = m.alias {
                self.aliases.insert(alias, name.clone());
            }
            if let Some(t) = m.datatype {
                self.types.insert(name.clone(), t);
            }
        }
        self.born = true;
    }

    fn readings(&self, p: &Payload, out: &mut Vec<Reading>) {
        let sent = payload::time(p.timestamp);
        for m in &p.metrics {
            let name = match (&m.name, m.alias) {
                (Some(n), _) => n,
                (None, Some(a)) => match self.aliases.get(&a) {
                    Some(n) => n,
                    None => continue,
                },
                (None, None) => continue,
            };
            let Some(tags) = self.routes.get(name) else {
                continue;
            };
            let Some(value) = m.tag_value(self.types.get(name).copied()) else {
                continue;
            };
            let source_time = payload::time(m.timestamp).or(sent);
            for &tag in tags {
                out.push(Reading {
                    tag,
                    value: value.clone(),
                    source_time,
                });
            }
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    metrics: Scope,
    devices: HashMap<String, Scope>,
    /// Every tag of the node and its devices.
    tags: Vec<usize>,
    bd_seq: Option<u64>,
    /// The last `seq` seen; none until an NBIRTH.
    seq: Option<u64>,
    rebirth_asked: Option<Timestamp>,
}

/// The host's state for one Sparkplug group.
#[derive(Debug)]
pub struct Host {
    group: String,
    nodes: HashMap<String, Node>,
}

/// A message's type, from its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NBirth,
    NDeath,
    NData,
    DBirth,
    DDeath,
    DData,
    Command,
}

impl Host {
    /// The state for `group`, reading the nodes and metrics `tags` name.
    pub fn new(group: &str, tags: &[TagSpec]) -> Self {
        let mut nodes: HashMap<String, Node> = HashMap::new();
        for (i, t) in tags.iter().enumerate() {
            let Source::Sparkplug {
                node,
                device,
                metric,
            } = &t.source
            else {
                continue;
            };
            let n = nodes.entry(node.clone()).or_default();
            n.tags.push(i);
            let scope = match device {
                Some(d) => n.devices.entry(d.clone()).or_default(),
                None => &mut n.metrics,
            };
            scope.tags.push(i);
            scope.routes.entry(metric.clone()).or_default().push(i);
        }
        Self {
            group: group.to_owned(),
            nodes,
        }
    }

    /// Also keeps, from the births, the aliases and data types of the metrics `writes` send
    /// orders to (and asks their nodes for births like those of its tags).
    pub fn with_writes(mut self, writes: &[WriteSpec]) -> Self {
        for w in writes {
            let WriteTarget::Sparkplug {
                node,
                device,
                order_id_metric,
                material_metric,
                quantity_metric,
            } = &w.target
            else {
                continue;
            };
            let n = self.nodes.entry(node.clone()).or_default();
            let scope = match device {
                Some(d) => n.devices.entry(d.clone()).or_default(),
                None => &mut n.metrics,
            };
            scope.commands.extend(
                [order_id_metric, material_metric, quantity_metric]
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        self
    }

    /// The command that writes `order` to `target`: its topic (`DCMD` to a device, `NCMD` to
    /// a node) and payload. The id and the material are strings, the quantity an unsigned
    /// 64-bit integer, unless the birth declared another type for the metric; a metric the
    /// birth gave an alias is sent by its alias only, as Sparkplug asks. A node or device
    /// without a current birth is offline: nothing is sent to it.
    pub fn command(
        &self,
        target: &WriteTarget,
        order: &OrderStart,
        now: Timestamp,
    ) -> Result<(String, Vec<u8>), String> {
        let WriteTarget::Sparkplug {
            node,
            device,
            order_id_metric,
            material_metric,
            quantity_metric,
        } = target
        else {
            return Err("not a sparkplug write".to_owned());
        };
        let n = self
            .nodes
            .get(node)
            .filter(|n| n.seq.is_some())
            .ok_or_else(|| format!("edge node {node} is offline (no birth since its death or since the host started)"))?;
        let (scope, topic) = match device {
            Some(d) => (
                n.devices.get(d).filter(|s| s.born).ok_or_else(|| {
                    format!("device {node}/{d} is offline (no birth since its death)")
                })?,
                format!("{NAMESPACE}/{}/DCMD/{node}/{d}", self.group),
            ),
            None => (&n.metrics, self.ncmd(node)),
        };
        let ms = u64::try_from(now.as_millis()).unwrap_or(0);
        let mut metrics = Vec::with_capacity(3);
        for (name, value) in [
            (order_id_metric, Command::Text(order.order_id.as_str())),
            (material_metric, Command::Text(order.material.as_str())),
            (quantity_metric, Command::Quantity(order.planned_quantity)),
        ] {
            let Some(name) = name else { continue };
            let declared = scope.types.get(name).copied();
            let (datatype, value) = value.encode(declared).ok_or_else(|| {
                format!(
                    "metric {name}: its birth declares data type {}, which cannot hold {value}",
                    declared.unwrap_or(0)
                )
            })?;
            let alias = scope
                .aliases
                .iter()
                .find(|(_, n)| *n == name)
                .map(|(a, _)| *a);
            metrics.push(Metric {
                name: if alias.is_some() {
                    None
                } else {
                    Some(name.clone())
                },
                alias,
                timestamp: Some(ms),
                datatype: Some(datatype),
                value: Some(value),
                ..Metric::default()
            });
        }
        Ok((topic, payload::command(metrics, now)))
    }

    /// What the host subscribes to: its group.
    pub fn subscription(&self) -> String {
        format!("{NAMESPACE}/{}/#", self.group)
    }

    fn ncmd(&self, node: &str) -> String {
        format!("{NAMESPACE}/{}/NCMD/{node}", self.group)
    }

    /// The session (re)started: every configured node is asked for its births, whose values
    /// are the machines' current ones (what changed while the host was away is in them).
    pub fn connected(&mut self, now: Timestamp) -> Vec<String> {
        let mut names: Vec<String> = self.nodes.keys().cloned().collect();
        names.sort();
        for n in &names {
            if let Some(node) = self.nodes.get_mut(n) {
                node.rebirth_asked = Some(now);
            }
        }
        names.iter().map(|n| self.ncmd(n)).collect()
    }

    /// Asks `node` for a rebirth unless it was asked a moment ago.
    fn ask_rebirth(&mut self, name: &str, now: Timestamp, out: &mut Outcome) {
        let topic = self.ncmd(name);
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        if node
            .rebirth_asked
            .is_some_and(|t| now.micros_since(t) < REBIRTH_EVERY_MICROS && t <= now)
        {
            return;
        }
        node.rebirth_asked = Some(now);
        out.rebirth = Some(topic);
    }

    /// One message of the group. `redelivered` is the broker's DUP flag.
    pub fn handle(
        &mut self,
        topic: &str,
        bytes: &[u8],
        redelivered: bool,
        now: Timestamp,
    ) -> Outcome {
        let mut out = Outcome::default();
        let parts: Vec<&str> = topic.split('/').collect();
        if parts.len() < 4 || parts[0] != NAMESPACE || parts[1] != self.group {
            return out;
        }
        let kind = match (parts[2], parts.len()) {
            ("NBIRTH", 4) => Kind::NBirth,
            ("NDEATH", 4) => Kind::NDeath,
            ("NDATA", 4) => Kind::NData,
            ("DBIRTH", 5) => Kind::DBirth,
            ("DDEATH", 5) => Kind::DDeath,
            ("DDATA", 5) => Kind::DData,
            ("NCMD", 4) | ("DCMD", 5) => Kind::Command,
            _ => return out,
        };
        let name = parts[3];
        let device = parts.get(4).copied();
        if kind == Kind::Command || !self.nodes.contains_key(name) {
            return out;
        }
        let p = match payload::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                out.dropped = true;
                out.note = Some(format!("{topic}: not a Sparkplug B payload: {e}"));
                return out;
            }
        };
        match kind {
            Kind::NBirth => {
                let Some(node) = self.nodes.get_mut(name) else {
                    return out;
                };
                node.bd_seq = bd_seq(&p);
                node.seq = Some(p.seq.unwrap_or(0));
                node.rebirth_asked = None;
                node.metrics.birth(&p.metrics);
                for d in node.devices.values_mut() {
                    // Its devices are born again after the node.
                    d.born = false;
                }
                node.metrics.readings(&p, &mut out.readings);
                return out;
            }
            Kind::NDeath => {
                let Some(node) = self.nodes.get_mut(name) else {
                    return out;
                };
                let said = bd_seq(&p);
                if node.bd_seq.is_some() && said.is_some() && node.bd_seq != said {
                    out.note = Some(format!(
                        "{topic}: a death of bdSeq {said:?}, not of the birth's {:?}: ignored",
                        node.bd_seq
                    ));
                    return out;
                }
                node.seq = None;
                node.metrics.born = false;
                for d in node.devices.values_mut() {
                    d.born = false;
                }
                out.unknown = node.tags.clone();
                out.note = Some(format!("edge node {name} is offline"));
                return out;
            }
            _ => {}
        }
        // Every other message follows the node's birth, in sequence.
        let Some(node) = self.nodes.get_mut(name) else {
            return out;
        };
        let Some(last) = node.seq else {
            out.dropped = matches!(kind, Kind::NData | Kind::DData);
            out.note = Some(format!("{topic} before the node's birth: rebirth asked"));
            self.ask_rebirth(name, now, &mut out);
            return out;
        };
        let expected = (last + 1) % 256;
        let mut gap = false;
        match p.seq {
            Some(s) if s == expected => node.seq = Some(s),
            Some(s) if s == last && redelivered => {}
            Some(s) if s < 256 => {
                gap = true;
                node.seq = Some(s);
            }
            _ => gap = true,
        }
        if gap {
            out.note = Some(format!(
                "{topic}: seq {:?} where {expected} was due: rebirth asked",
                p.seq
            ));
        }
        let mut configured = false;
        match kind {
            Kind::NData => {
                configured = !node.metrics.routes.is_empty();
                node.metrics.readings(&p, &mut out.readings);
            }
            Kind::DBirth | Kind::DDeath | Kind::DData => {
                if let Some(d) = device.and_then(|d| node.devices.get_mut(d)) {
                    configured = true;
                    match kind {
                        Kind::DBirth => {
                            d.birth(&p.metrics);
                            d.readings(&p, &mut out.readings);
                        }
                        Kind::DDeath => {
                            d.born = false;
                            out.unknown = d.tags.clone();
                            out.note
                                .get_or_insert_with(|| format!("device {topic} is offline"));
                        }
                        _ if d.born => d.readings(&p, &mut out.readings),
                        _ => {
                            gap = true;
                            out.note.get_or_insert_with(|| {
                                format!("{topic} before the device's birth: rebirth asked")
                            });
                        }
                    }
                }
            }
            _ => {}
        }
        out.dropped =
            configured && matches!(kind, Kind::NData | Kind::DData) && out.readings.is_empty();
        if gap {
            self.ask_rebirth(name, now, &mut out);
        }
        out
    }
}

/// A value of an order to send in a command.
#[derive(Debug, Clone, Copy)]
enum Command<'a> {
    Text(&'a str),
    Quantity(u32),
}

impl std::fmt::Display for Command<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Text(t) => write!(f, "the text \"{t}\""),
            Command::Quantity(q) => write!(f, "the quantity {q}"),
        }
    }
}

impl Command<'_> {
    /// The data type and the value as the metric's declared type (`None`: not in a birth)
    /// holds it; none when it cannot.
    fn encode(self, declared: Option<u32>) -> Option<(u32, payload::Value)> {
        use payload::{Value, datatype as dt};
        Some(match (self, declared) {
            (Command::Text(t), None | Some(dt::STRING)) => {
                (dt::STRING, Value::StringValue(t.to_owned()))
            }
            (Command::Text(t), Some(dt::TEXT)) => (dt::TEXT, Value::StringValue(t.to_owned())),
            (Command::Text(_), Some(_)) => return None,
            (Command::Quantity(q), None | Some(dt::UINT64)) => {
                (dt::UINT64, Value::LongValue(u64::from(q)))
            }
            (Command::Quantity(q), Some(t)) => {
                let int = |max: u32| (q <= max).then_some((t, Value::IntValue(q)));
                match t {
                    dt::INT8 => int(i8::MAX as u32)?,
                    dt::UINT8 => int(u32::from(u8::MAX))?,
                    dt::INT16 => int(i16::MAX as u32)?,
                    dt::UINT16 => int(u32::from(u16::MAX))?,
                    dt::INT32 => int(i32::MAX as u32)?,
                    dt::UINT32 => int(u32::MAX)?,
                    dt::INT64 => (t, Value::LongValue(u64::from(q))),
                    dt::FLOAT => (t, Value::FloatValue(q as f32)),
                    dt::DOUBLE => (t, Value::DoubleValue(f64::from(q))),
                    dt::STRING | dt::TEXT => (t, Value::StringValue(q.to_string())),
                    _ => return None,
                }
            }
        })
    }
}

/// The `bdSeq` metric of a birth or death.
fn bd_seq(p: &Payload) -> Option<u64> {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(payload::BD_SEQ))
        .and_then(Metric::as_u64)
}

/// The host's STATE message (Sparkplug 3.0: JSON, retained).
pub fn state(online: bool, timestamp: Timestamp) -> Vec<u8> {
    serde_json::json!({ "online": online, "timestamp": timestamp.as_millis() })
        .to_string()
        .into_bytes()
}

/// Whether a STATE message says the host is offline (a will of an earlier connection).
pub fn says_offline(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("online").and_then(serde_json::Value::as_bool))
        == Some(false)
}

#[cfg(test)]
mod tests;
