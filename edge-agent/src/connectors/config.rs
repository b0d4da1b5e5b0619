//! The `[[connector]]` tables of the edge's TOML file: read, checked whole, and turned into
//! typed specs. A file with any mistake is refused with the line and the reason, and the
//! running connectors keep going (`ConnectorSet::reload`).
//!
//! The raw tables carry every kind's fields as options (so `deny_unknown_fields` still names a
//! misspelt key) and the checks here say which fields a kind takes; the typed specs below are
//! what the drivers and the mapping see.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use shared_model::event::MachineState;
use shared_model::ids::{CharacteristicId, EquipmentId, MaterialId, ReasonCodeId};
use toml::Spanned;

/// Connectors one edge runs at most.
pub const CONNECTORS_MAX: usize = 64;
/// Tags one connector maps at most (the benchmark's 500 fit ten times over).
pub const TAGS_MAX: usize = 5_000;
/// Longest name of a connector or a tag: names go into event ids, metrics labels and the API.
pub const NAME_BYTES_MAX: usize = 64;
/// Entries of one state tag's value map.
pub const STATE_VALUES_MAX: usize = 256;
/// Shortest and longest polling interval (Modbus) and sampling interval (OPC UA).
pub const INTERVAL_MS_MIN: u64 = 10;
pub const INTERVAL_MS_MAX: u64 = 3_600_000;

/// A mistake in the file, at a line (1-based) of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ConfigError {
    pub line: usize,
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConnector {
    name: String,
    kind: String,
    #[serde(default = "yes")]
    enabled: bool,
    // MQTT and Sparkplug.
    url: Option<String>,
    client_id: Option<String>,
    protocol: Option<String>,
    username: Option<String>,
    password: Option<String>,
    ca_file: Option<String>,
    keep_alive_secs: Option<u64>,
    // Sparkplug.
    group: Option<String>,
    host_id: Option<String>,
    // OPC UA.
    endpoint: Option<String>,
    security_policy: Option<String>,
    security_mode: Option<String>,
    certificate: Option<String>,
    private_key: Option<String>,
    trusted_server_certificates: Option<Vec<String>>,
    // Modbus.
    address: Option<String>,
    unit_id: Option<u8>,
    poll_ms: Option<u64>,
    #[serde(default)]
    tag: Vec<Spanned<RawTag>>,
    #[serde(default)]
    write: Vec<Spanned<RawWrite>>,
}

/// Where an order started on a unit is written to its machine.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWrite {
    equipment: String,
    // MQTT.
    topic: Option<String>,
    // OPC UA.
    order_id_node: Option<String>,
    material_node: Option<String>,
    quantity_node: Option<String>,
    // OPC UA and Modbus: the planned quantity's type on the machine.
    quantity_type: Option<String>,
    // Sparkplug.
    node: Option<String>,
    device: Option<String>,
    order_id_metric: Option<String>,
    material_metric: Option<String>,
    quantity_metric: Option<String>,
    // Modbus.
    unit_id: Option<u8>,
    order_id_register: Option<String>,
    order_id_len: Option<u16>,
    material_register: Option<String>,
    material_len: Option<u16>,
    quantity_register: Option<String>,
    word_order: Option<String>,
    byte_order: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTag {
    name: String,
    map: String,
    equipment: String,
    // Where the value comes from (per kind).
    topic: Option<String>,
    path: Option<String>,
    timestamp_path: Option<String>,
    node: Option<String>,
    device: Option<String>,
    metric: Option<String>,
    sampling_ms: Option<u64>,
    queue_size: Option<u32>,
    deadband: Option<f64>,
    register: Option<String>,
    data_type: Option<String>,
    word_order: Option<String>,
    byte_order: Option<String>,
    scale: Option<f64>,
    // What it means.
    counts: Option<String>,
    modulus: Option<u64>,
    max_step: Option<u64>,
    states: Option<BTreeMap<String, String>>,
    characteristic: Option<String>,
    material: Option<String>,
    quantity: Option<f64>,
}

// ---------------------------------------------------------------------------------------------
// The checked specs.

/// One configured source of machine data.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorSpec {
    pub name: String,
    /// Where it starts in the file, for messages about it.
    pub line: usize,
    pub enabled: bool,
    pub kind: KindSpec,
    pub tags: Vec<TagSpec>,
    /// Where orders started on a unit are sent down to its machine.
    pub writes: Vec<WriteSpec>,
}

/// An order's id, material and planned quantity, written to a machine when the order starts
/// on its unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSpec {
    pub equipment: EquipmentId,
    pub line: usize,
    pub target: WriteTarget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteTarget {
    /// One JSON message `{"order_id", "material", "planned_quantity", "started_at"}` at QoS 1.
    Mqtt { topic: String },
    /// One Write service call: the id and the material as String, the quantity as
    /// `quantity_type`.
    OpcUa {
        order_id_node: Option<String>,
        material_node: Option<String>,
        quantity_node: Option<String>,
        quantity_type: UaNumber,
    },
    /// An NCMD (no device) or DCMD at QoS 0 with the named metrics.
    Sparkplug {
        node: String,
        device: Option<String>,
        order_id_metric: Option<String>,
        material_metric: Option<String>,
        quantity_metric: Option<String>,
    },
    /// Function 16 (write multiple registers) to holding registers: the texts as ASCII, two
    /// characters a register, the quantity as `quantity`'s type and order.
    Modbus {
        unit_id: u8,
        order_id: Option<TextRegisters>,
        material: Option<TextRegisters>,
        quantity: Option<NumberRegisters>,
    },
}

/// The OPC UA built-in type a quantity node holds (a server refuses a value of another type
/// with `BadTypeMismatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UaNumber {
    Int16,
    UInt16,
    Int32,
    UInt32,
    Int64,
    UInt64,
    Float,
    Double,
    String,
}

impl UaNumber {
    const NAMES: [(&'static str, UaNumber); 9] = [
        ("Int16", UaNumber::Int16),
        ("UInt16", UaNumber::UInt16),
        ("Int32", UaNumber::Int32),
        ("UInt32", UaNumber::UInt32),
        ("Int64", UaNumber::Int64),
        ("UInt64", UaNumber::UInt64),
        ("Float", UaNumber::Float),
        ("Double", UaNumber::Double),
        ("String", UaNumber::String),
    ];
}

/// Holding registers that receive a text: from `address`, `len` registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRegisters {
    pub address: u16,
    pub len: u16,
}

/// Holding registers that receive a number, laid out as a tag of that type is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberRegisters {
    pub address: u16,
    pub data_type: DataType,
    pub word_order: Order,
    pub byte_order: Order,
}

/// Registers one write request (function 16) carries at most.
pub const REGISTERS_PER_WRITE_MAX: u16 = 123;

impl ConnectorSpec {
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum KindSpec {
    Mqtt(MqttSpec),
    Sparkplug(SparkplugSpec),
    OpcUa(OpcUaSpec),
    Modbus(ModbusSpec),
}

impl KindSpec {
    pub fn name(&self) -> &'static str {
        match self {
            KindSpec::Mqtt(_) => "mqtt",
            KindSpec::Sparkplug(_) => "sparkplug",
            KindSpec::OpcUa(_) => "opcua",
            KindSpec::Modbus(_) => "modbus",
        }
    }
}

/// An MQTT broker connection, shared by plain MQTT and Sparkplug B.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSpec {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub client_id: String,
    pub v5: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<String>,
    pub keep_alive_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSpec {
    pub broker: BrokerSpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkplugSpec {
    pub broker: BrokerSpec,
    /// The Sparkplug group this host reads (`spBv1.0/<group>/#`).
    pub group: String,
    /// The primary host id published in `spBv1.0/STATE/<host_id>`.
    pub host_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpcUaSpec {
    pub endpoint: String,
    pub security_policy: String,
    pub security_mode: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub certificate: Option<String>,
    pub private_key: Option<String>,
    pub trusted_server_certificates: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModbusSpec {
    /// host:port of the Modbus TCP server.
    pub address: String,
    pub unit_id: u8,
    pub poll_ms: u64,
}

/// One tag: where its value comes from and what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct TagSpec {
    pub name: String,
    pub line: usize,
    pub equipment: EquipmentId,
    pub source: Source,
    pub mapping: Mapping,
}

/// Where a tag's value is read, per connector kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Mqtt {
        topic: String,
        /// Field path into the JSON payload (`a.b.c`); empty for a bare value.
        path: Vec<String>,
        /// Field path of the machine's timestamp (RFC 3339 or Unix milliseconds).
        timestamp_path: Option<Vec<String>>,
    },
    Sparkplug {
        /// The edge node id.
        node: String,
        /// The device id, or none for a node metric.
        device: Option<String>,
        metric: String,
    },
    OpcUa {
        node: String,
        sampling_ms: u64,
        queue_size: u32,
        deadband: Option<f64>,
    },
    Modbus {
        table: RegisterTable,
        address: u16,
        data_type: DataType,
        word_order: Order,
        byte_order: Order,
        scale: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterTable {
    Holding,
    Input,
    Coil,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
}

impl DataType {
    /// Registers the value spans.
    pub fn registers(self) -> u16 {
        match self {
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U16 | DataType::I16 | DataType::Bool => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Big,
    Little,
}

/// Which count a counter tag feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counts {
    Good,
    Scrap,
}

/// What a tag's values become.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapping {
    /// A machine counter: deltas become `production_count` events.
    Counter {
        counts: Counts,
        /// The value after the highest is 0 again (2^16 for a 16-bit counter).
        modulus: u64,
        /// The largest increase between two readings: a drop that a rollover cannot explain
        /// within it is a reset of the PLC's counter.
        max_step: u64,
    },
    /// A state code: each change becomes an `equipment_state` event.
    State {
        values: BTreeMap<String, (MachineState, Option<ReasonCodeId>)>,
    },
    /// A measurement: each value becomes a `quality_sample` (limits from the inspection plan).
    Sample { characteristic: CharacteristicId },
    /// A scanned lot: each new text becomes `material_consumed`.
    Scan { material: MaterialId, quantity: f64 },
}

// ---------------------------------------------------------------------------------------------
// Reading and checking.

/// The part of the edge's TOML file that is ours; the run configuration's own keys are checked
/// by `config::RunArgs` and ignored here.
#[derive(Debug, Default, Deserialize)]
struct ConnectorsPart {
    #[serde(default)]
    connector: Vec<Spanned<RawConnector>>,
}

/// Reads the `[[connector]]` tables of a whole edge TOML file. Every mistake is reported,
/// first line first.
pub fn parse(text: &str) -> Result<Vec<ConnectorSpec>, Vec<ConfigError>> {
    let part: ConnectorsPart = toml::from_str(text).map_err(|e| vec![toml_error(text, &e)])?;
    check(text, part.connector)
}

fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
    ConfigError {
        line,
        message: e.message().to_owned(),
    }
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Checker<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn err(&mut self, offset: usize, message: impl Into<String>) {
        self.errors.push(ConfigError {
            line: line_of(self.text, offset),
            message: message.into(),
        });
    }
}

fn check(
    text: &str,
    raw: Vec<Spanned<RawConnector>>,
) -> Result<Vec<ConnectorSpec>, Vec<ConfigError>> {
    let mut c = Checker {
        text,
        errors: Vec::new(),
    };
    if raw.len() > CONNECTORS_MAX {
        c.err(
            raw[CONNECTORS_MAX].span().start,
            format!("more than {CONNECTORS_MAX} connectors"),
        );
    }
    let mut names = BTreeSet::new();
    let mut specs = Vec::new();
    for r in raw {
        let at = r.span().start;
        let r = r.into_inner();
        if !names.insert(r.name.clone()) {
            c.err(at, format!("connector \"{}\" is defined twice", r.name));
        }
        if let Some(spec) = connector(&mut c, at, r) {
            specs.push(spec);
        }
    }
    if c.errors.is_empty() {
        Ok(specs)
    } else {
        c.errors.sort_by_key(|e| e.line);
        Err(c.errors)
    }
}

fn check_name(c: &mut Checker<'_>, at: usize, what: &str, name: &str) -> bool {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        c.err(
            at,
            format!(
                "{what} name \"{name}\" must be 1 to {NAME_BYTES_MAX} letters, digits, '-', '_' or '.'"
            ),
        );
    }
    ok
}

/// Fields a kind does not take, named so a misplaced key is not silently ignored.
fn refuse(c: &mut Checker<'_>, at: usize, kind: &str, fields: &[(&str, bool)]) {
    for (field, present) in fields {
        if *present {
            c.err(
                at,
                format!("`{field}` is not a setting of a {kind} connector"),
            );
        }
    }
}

fn connector(c: &mut Checker<'_>, at: usize, r: RawConnector) -> Option<ConnectorSpec> {
    let named = check_name(c, at, "connector", &r.name);
    let who = format!("connector \"{}\"", r.name);
    let mqtt_fields = [
        ("url", r.url.is_some()),
        ("client_id", r.client_id.is_some()),
        ("protocol", r.protocol.is_some()),
        ("ca_file", r.ca_file.is_some()),
        ("keep_alive_secs", r.keep_alive_secs.is_some()),
    ];
    let sparkplug_fields = [
        ("group", r.group.is_some()),
        ("host_id", r.host_id.is_some()),
    ];
    let opcua_fields = [
        ("endpoint", r.endpoint.is_some()),
        ("security_policy", r.security_policy.is_some()),
        ("security_mode", r.security_mode.is_some()),
        ("certificate", r.certificate.is_some()),
        ("private_key", r.private_key.is_some()),
        (
            "trusted_server_certificates",
            r.trusted_server_certificates.is_some(),
        ),
    ];
    let modbus_fields = [
        ("address", r.address.is_some()),
        ("unit_id", r.unit_id.is_some()),
        ("poll_ms", r.poll_ms.is_some()),
    ];
    let kind = match r.kind.as_str() {
        "mqtt" | "sparkplug" => {
            refuse(c, at, &r.kind, &opcua_fields);
            refuse(c, at, &r.kind, &modbus_fields);
            let broker = broker(c, at, &who, &r)?;
            if r.kind == "mqtt" {
                refuse(c, at, "mqtt", &sparkplug_fields);
                KindSpec::Mqtt(MqttSpec { broker })
            } else {
                let Some(group) = r.group.clone() else {
                    c.err(at, format!("{who}: a sparkplug connector needs `group`"));
                    return None;
                };
                if group.is_empty() || group.contains(['/', '+', '#']) {
                    c.err(
                        at,
                        format!("{who}: `group` must be a plain Sparkplug group id"),
                    );
                }
                let host_id = r.host_id.clone().unwrap_or_else(|| r.name.clone());
                KindSpec::Sparkplug(SparkplugSpec {
                    broker,
                    group,
                    host_id,
                })
            }
        }
        "opcua" => {
            refuse(c, at, "opcua", &mqtt_fields);
            refuse(c, at, "opcua", &sparkplug_fields);
            refuse(c, at, "opcua", &modbus_fields);
            let Some(endpoint) = r.endpoint.clone() else {
                c.err(
                    at,
                    format!(
                        "{who}: an opcua connector needs `endpoint` (opc.tcp://host:port/path)"
                    ),
                );
                return None;
            };
            if !endpoint.starts_with("opc.tcp://") {
                c.err(at, format!("{who}: `endpoint` must start with opc.tcp://"));
            }
            let policy = r.security_policy.clone().unwrap_or_else(|| "None".into());
            let mode = r.security_mode.clone().unwrap_or_else(|| "None".into());
            match (policy.as_str(), mode.as_str()) {
                ("None", "None") => {}
                ("Basic256Sha256" | "Aes128Sha256RsaOaep" | "Aes256Sha256RsaPss", "Sign" | "SignAndEncrypt") => {
                    if r.certificate.is_none() || r.private_key.is_none() {
                        c.err(at, format!("{who}: security policy {policy} needs the edge's `certificate` and `private_key` files"));
                    }
                }
                _ => c.err(
                    at,
                    format!("{who}: security_policy \"{policy}\" with security_mode \"{mode}\" is not offered: use None/None, or Basic256Sha256 (or Aes128Sha256RsaOaep, Aes256Sha256RsaPss) with Sign or SignAndEncrypt"),
                ),
            }
            if r.username.is_some() != r.password.is_some() {
                c.err(
                    at,
                    format!("{who}: give both `username` and `password`, or neither"),
                );
            }
            KindSpec::OpcUa(OpcUaSpec {
                endpoint,
                security_policy: policy,
                security_mode: mode,
                username: r.username.clone(),
                password: r.password.clone(),
                certificate: r.certificate.clone(),
                private_key: r.private_key.clone(),
                trusted_server_certificates: r
                    .trusted_server_certificates
                    .clone()
                    .unwrap_or_default(),
            })
        }
        "modbus" => {
            refuse(c, at, "modbus", &mqtt_fields);
            refuse(c, at, "modbus", &sparkplug_fields);
            refuse(c, at, "modbus", &opcua_fields);
            refuse(
                c,
                at,
                "modbus",
                &[
                    ("username", r.username.is_some()),
                    ("password", r.password.is_some()),
                ],
            );
            let Some(address) = r.address.clone() else {
                c.err(
                    at,
                    format!("{who}: a modbus connector needs `address` (host:port)"),
                );
                return None;
            };
            if host_port(&address, 502).is_none() {
                c.err(
                    at,
                    format!("{who}: `address` \"{address}\" is not host:port"),
                );
            }
            let poll_ms = r.poll_ms.unwrap_or(1_000);
            if !(INTERVAL_MS_MIN..=INTERVAL_MS_MAX).contains(&poll_ms) {
                c.err(
                    at,
                    format!("{who}: `poll_ms` must be {INTERVAL_MS_MIN} to {INTERVAL_MS_MAX}"),
                );
            }
            KindSpec::Modbus(ModbusSpec {
                address,
                unit_id: r.unit_id.unwrap_or(1),
                poll_ms,
            })
        }
        other => {
            c.err(
                at,
                format!(
                    "{who}: unknown kind \"{other}\", expected mqtt, sparkplug, opcua or modbus"
                ),
            );
            return None;
        }
    };
    if r.tag.len() > TAGS_MAX {
        c.err(at, format!("{who}: more than {TAGS_MAX} tags"));
    }
    let mut tag_names = BTreeSet::new();
    let mut tags = Vec::with_capacity(r.tag.len());
    for t in r.tag {
        let tat = t.span().start;
        let t = t.into_inner();
        if !tag_names.insert(t.name.clone()) {
            c.err(tat, format!("{who}: tag \"{}\" is defined twice", t.name));
        }
        if let Some(spec) = tag(c, tat, &kind, t) {
            tags.push(spec);
        }
    }
    let mut writes = Vec::with_capacity(r.write.len());
    for w in r.write {
        let wat = w.span().start;
        let w = w.into_inner();
        let equipment = match EquipmentId::new(w.equipment.clone()) {
            Ok(e) => e,
            Err(e) => {
                c.err(wat, format!("{who}: write: equipment: {e}"));
                continue;
            }
        };
        let Some(target) = write_target(c, wat, &who, &kind, w) else {
            continue;
        };
        writes.push(WriteSpec {
            equipment,
            line: line_of(c.text, wat),
            target,
        });
    }
    named.then_some(ConnectorSpec {
        name: r.name,
        line: line_of(c.text, at),
        enabled: r.enabled,
        kind,
        tags,
        writes,
    })
}

/// Where a `[[connector.write]]` table sends an order, per kind. Fields of another kind are
/// refused by name, like a tag's.
fn write_target(
    c: &mut Checker<'_>,
    at: usize,
    who: &str,
    kind: &KindSpec,
    w: RawWrite,
) -> Option<WriteTarget> {
    let who = format!("{who}: write for \"{}\"", w.equipment);
    let fields = [
        ("topic", w.topic.is_some()),
        ("order_id_node", w.order_id_node.is_some()),
        ("material_node", w.material_node.is_some()),
        ("quantity_node", w.quantity_node.is_some()),
        ("quantity_type", w.quantity_type.is_some()),
        ("node", w.node.is_some()),
        ("device", w.device.is_some()),
        ("order_id_metric", w.order_id_metric.is_some()),
        ("material_metric", w.material_metric.is_some()),
        ("quantity_metric", w.quantity_metric.is_some()),
        ("unit_id", w.unit_id.is_some()),
        ("order_id_register", w.order_id_register.is_some()),
        ("order_id_len", w.order_id_len.is_some()),
        ("material_register", w.material_register.is_some()),
        ("material_len", w.material_len.is_some()),
        ("quantity_register", w.quantity_register.is_some()),
        ("word_order", w.word_order.is_some()),
        ("byte_order", w.byte_order.is_some()),
    ];
    let allowed: &[&str] = match kind {
        KindSpec::Mqtt(_) => &["topic"],
        KindSpec::OpcUa(_) => &[
            "order_id_node",
            "material_node",
            "quantity_node",
            "quantity_type",
        ],
        KindSpec::Sparkplug(_) => &[
            "node",
            "device",
            "order_id_metric",
            "material_metric",
            "quantity_metric",
        ],
        KindSpec::Modbus(_) => &[
            "unit_id",
            "order_id_register",
            "order_id_len",
            "material_register",
            "material_len",
            "quantity_register",
            "quantity_type",
            "word_order",
            "byte_order",
        ],
    };
    let kname = kind.name();
    for (f, present) in fields {
        if present && !allowed.contains(&f) {
            c.err(
                at,
                format!("{who}: `{f}` is not a field of a {kname} write"),
            );
        }
    }
    let target = match kind {
        KindSpec::Mqtt(_) => match w.topic {
            Some(topic) if !topic.is_empty() && !topic.contains(['+', '#']) => {
                WriteTarget::Mqtt { topic }
            }
            _ => {
                c.err(
                    at,
                    format!("{who}: needs `topic`, one topic without wildcards"),
                );
                return None;
            }
        },
        KindSpec::OpcUa(_) => {
            for node in [&w.order_id_node, &w.material_node, &w.quantity_node]
                .into_iter()
                .flatten()
            {
                if <opcua::types::NodeId as std::str::FromStr>::from_str(node).is_err() {
                    c.err(at, format!("{who}: \"{node}\" is not an OPC UA node id (ns=2;s=Press1.OrderId, ns=3;i=1001)"));
                }
            }
            let quantity_type = match w.quantity_type.as_deref() {
                None => UaNumber::Int32,
                Some(t) => match UaNumber::NAMES.iter().find(|(n, _)| *n == t) {
                    Some((_, q)) => *q,
                    None => {
                        let names: Vec<&str> = UaNumber::NAMES.iter().map(|(n, _)| *n).collect();
                        c.err(
                            at,
                            format!(
                                "{who}: `quantity_type` \"{t}\" is not one of {}",
                                names.join(", ")
                            ),
                        );
                        UaNumber::Int32
                    }
                },
            };
            if w.quantity_type.is_some() && w.quantity_node.is_none() {
                c.err(
                    at,
                    format!("{who}: `quantity_type` without `quantity_node`"),
                );
            }
            WriteTarget::OpcUa {
                order_id_node: w.order_id_node,
                material_node: w.material_node,
                quantity_node: w.quantity_node,
                quantity_type,
            }
        }
        KindSpec::Sparkplug(_) => {
            let Some(node) = w.node else {
                c.err(
                    at,
                    format!("{who}: needs `node` (and `device` for a device's metrics)"),
                );
                return None;
            };
            for id in std::iter::once(&node).chain(&w.device) {
                if id.is_empty() || id.contains(['/', '+', '#']) {
                    c.err(
                        at,
                        format!("{who}: \"{id}\" is not a Sparkplug node or device id"),
                    );
                }
            }
            WriteTarget::Sparkplug {
                node,
                device: w.device,
                order_id_metric: w.order_id_metric,
                material_metric: w.material_metric,
                quantity_metric: w.quantity_metric,
            }
        }
        KindSpec::Modbus(m) => modbus_write(c, at, &who, m, w)?,
    };
    let (empty, needs) = match &target {
        WriteTarget::Mqtt { .. } => (false, ""),
        WriteTarget::OpcUa {
            order_id_node,
            material_node,
            quantity_node,
            ..
        } => (
            order_id_node.is_none() && material_node.is_none() && quantity_node.is_none(),
            "`order_id_node`, `material_node` or `quantity_node`",
        ),
        WriteTarget::Sparkplug {
            order_id_metric,
            material_metric,
            quantity_metric,
            ..
        } => (
            order_id_metric.is_none() && material_metric.is_none() && quantity_metric.is_none(),
            "`order_id_metric`, `material_metric` or `quantity_metric`",
        ),
        WriteTarget::Modbus {
            order_id,
            material,
            quantity,
            ..
        } => (
            order_id.is_none() && material.is_none() && quantity.is_none(),
            "`order_id_register`, `material_register` or `quantity_register`",
        ),
    };
    if empty {
        c.err(
            at,
            format!("{who}: names nothing to write: give at least one of {needs}"),
        );
        return None;
    }
    Some(target)
}

/// A Modbus write: holding registers only (function 16), the texts' lengths in registers, and
/// no two values on the same register.
fn modbus_write(
    c: &mut Checker<'_>,
    at: usize,
    who: &str,
    m: &ModbusSpec,
    w: RawWrite,
) -> Option<WriteTarget> {
    let holding = |c: &mut Checker<'_>, field: &str, v: &Option<String>| -> Option<u16> {
        let (table, address) = register_at(c, at, who, field, v.as_deref()?)?;
        if table != RegisterTable::Holding {
            c.err(
                at,
                format!(
                    "{who}: `{field}` must be a holding register: function 16 writes only those"
                ),
            );
        }
        Some(address)
    };
    let order_id_at = holding(c, "order_id_register", &w.order_id_register);
    let material_at = holding(c, "material_register", &w.material_register);
    let quantity_at = holding(c, "quantity_register", &w.quantity_register);
    let text = |c: &mut Checker<'_>, what: &str, at_reg: Option<u16>, len: Option<u16>| match (
        at_reg, len,
    ) {
        (None, None) => None,
        (None, Some(_)) => {
            c.err(at, format!("{who}: `{what}_len` without `{what}_register`"));
            None
        }
        (Some(_), None) => {
            c.err(
                at,
                format!(
                    "{who}: `{what}_register` needs `{what}_len` (registers, two characters each)"
                ),
            );
            None
        }
        (Some(address), Some(len)) => {
            if !(1..=REGISTERS_PER_WRITE_MAX).contains(&len) {
                c.err(
                    at,
                    format!("{who}: `{what}_len` must be 1 to {REGISTERS_PER_WRITE_MAX} registers"),
                );
            }
            Some(TextRegisters { address, len })
        }
    };
    let order_id = text(c, "order_id", order_id_at, w.order_id_len);
    let material = text(c, "material", material_at, w.material_len);
    let quantity = quantity_at.map(|address| NumberRegisters {
        address,
        data_type: data_type(
            c,
            at,
            who,
            "quantity_type",
            RegisterTable::Holding,
            w.quantity_type.as_deref(),
        ),
        word_order: order(c, at, who, "word_order", w.word_order.as_deref()),
        byte_order: order(c, at, who, "byte_order", w.byte_order.as_deref()),
    });
    if quantity.is_none() {
        for (f, present) in [
            ("quantity_type", w.quantity_type.is_some()),
            ("word_order", w.word_order.is_some()),
            ("byte_order", w.byte_order.is_some()),
        ] {
            if present {
                c.err(at, format!("{who}: `{f}` without `quantity_register`"));
            }
        }
    }
    // Each value's registers, to find overlaps and the end of the table.
    let mut spans: Vec<(u32, u32, &str)> = Vec::new();
    if let Some(t) = order_id {
        spans.push((u32::from(t.address), u32::from(t.len), "order id"));
    }
    if let Some(t) = material {
        spans.push((u32::from(t.address), u32::from(t.len), "material"));
    }
    if let Some(q) = quantity {
        spans.push((
            u32::from(q.address),
            u32::from(q.data_type.registers()),
            "quantity",
        ));
    }
    spans.sort_unstable();
    for (i, (start, len, what)) in spans.iter().enumerate() {
        if start + len > 65_536 {
            c.err(at, format!("{who}: the {what} runs past register 65535"));
        }
        if let Some((next, _, other)) = spans.get(i + 1)
            && start + len > *next
        {
            c.err(
                at,
                format!("{who}: the {what} and the {other} share registers"),
            );
        }
    }
    Some(WriteTarget::Modbus {
        unit_id: w.unit_id.unwrap_or(m.unit_id),
        order_id,
        material,
        quantity,
    })
}

/// Splits `host:port` (a bare host takes `default`).
pub fn host_port(s: &str, default: u16) -> Option<(String, u16)> {
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => {
            Some((h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?))
        }
        _ if !s.is_empty() && !s.contains('/') => Some((s.to_owned(), default)),
        _ => None,
    }
}

fn broker(c: &mut Checker<'_>, at: usize, who: &str, r: &RawConnector) -> Option<BrokerSpec> {
    let Some(url) = &r.url else {
        c.err(
            at,
            format!("{who}: needs `url` (mqtt://host:1883 or mqtts://host:8883)"),
        );
        return None;
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        c.err(
            at,
            format!("{who}: `url` must start with mqtt:// or mqtts://"),
        );
        return None;
    };
    let Some((host, port)) = host_port(rest.trim_end_matches('/'), if tls { 8883 } else { 1883 })
    else {
        c.err(at, format!("{who}: `url` \"{url}\" has no host:port"));
        return None;
    };
    let v5 = match r.protocol.as_deref() {
        None | Some("3.1.1") => false,
        Some("5") => true,
        Some(other) => {
            c.err(
                at,
                format!("{who}: `protocol` \"{other}\" is not offered: use \"3.1.1\" or \"5\""),
            );
            false
        }
    };
    if r.ca_file.is_some() && !tls {
        c.err(at, format!("{who}: `ca_file` needs an mqtts:// url"));
    }
    if r.password.is_some() && r.username.is_none() {
        c.err(at, format!("{who}: `password` without `username`"));
    }
    let keep_alive_secs = r.keep_alive_secs.unwrap_or(30);
    if !(5..=3600).contains(&keep_alive_secs) {
        c.err(at, format!("{who}: `keep_alive_secs` must be 5 to 3600"));
    }
    let client_id = r
        .client_id
        .clone()
        .unwrap_or_else(|| format!("mes-edge-{}", r.name));
    if client_id.is_empty() || client_id.len() > 23 * 4 {
        c.err(at, format!("{who}: `client_id` must be 1 to 92 bytes"));
    }
    Some(BrokerSpec {
        host,
        port,
        tls,
        client_id,
        v5,
        username: r.username.clone(),
        password: r.password.clone(),
        ca_file: r.ca_file.clone(),
        keep_alive_secs,
    })
}

fn field_path(s: &str) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').map(str::to_owned).collect()
    }
}

fn tag(c: &mut Checker<'_>, at: usize, kind: &KindSpec, t: RawTag) -> Option<TagSpec> {
    check_name(c, at, "tag", &t.name);
    let who = format!("tag \"{}\"", t.name);
    let equipment = match EquipmentId::new(t.equipment.clone()) {
        Ok(e) => Some(e),
        Err(e) => {
            c.err(at, format!("{who}: equipment: {e}"));
            None
        }
    };
    let mqtt = [
        ("topic", t.topic.is_some()),
        ("path", t.path.is_some()),
        ("timestamp_path", t.timestamp_path.is_some()),
    ];
    let sparkplug = [
        ("node", t.node.is_some()),
        ("device", t.device.is_some()),
        ("metric", t.metric.is_some()),
    ];
    let opcua = [
        ("sampling_ms", t.sampling_ms.is_some()),
        ("queue_size", t.queue_size.is_some()),
        ("deadband", t.deadband.is_some()),
    ];
    let modbus = [
        ("register", t.register.is_some()),
        ("data_type", t.data_type.is_some()),
        ("word_order", t.word_order.is_some()),
        ("byte_order", t.byte_order.is_some()),
        ("scale", t.scale.is_some()),
    ];
    let kname = kind.name();
    let refuse_tag = |c: &mut Checker<'_>, fields: &[(&str, bool)]| {
        for (f, present) in fields {
            if *present {
                c.err(at, format!("{who}: `{f}` is not a field of a {kname} tag"));
            }
        }
    };
    let source = match kind {
        KindSpec::Mqtt(_) => {
            refuse_tag(c, &sparkplug);
            refuse_tag(c, &opcua);
            refuse_tag(c, &modbus);
            let Some(topic) = t.topic.clone() else {
                c.err(at, format!("{who}: an mqtt tag needs `topic`"));
                return None;
            };
            if topic.is_empty() || topic.contains(['+', '#']) {
                c.err(
                    at,
                    format!("{who}: `topic` must be one topic, without wildcards"),
                );
            }
            Source::Mqtt {
                topic,
                path: field_path(t.path.as_deref().unwrap_or("")),
                timestamp_path: t.timestamp_path.as_deref().map(field_path),
            }
        }
        KindSpec::Sparkplug(_) => {
            refuse_tag(c, &mqtt);
            refuse_tag(c, &opcua);
            refuse_tag(c, &modbus);
            let (Some(node), Some(metric)) = (t.node.clone(), t.metric.clone()) else {
                c.err(at, format!("{who}: a sparkplug tag needs `node` and `metric` (and `device` for a device metric)"));
                return None;
            };
            Source::Sparkplug {
                node,
                device: t.device.clone(),
                metric,
            }
        }
        KindSpec::OpcUa(_) => {
            refuse_tag(c, &mqtt[..]);
            refuse_tag(
                c,
                &[
                    ("device", t.device.is_some()),
                    ("metric", t.metric.is_some()),
                ],
            );
            refuse_tag(c, &modbus);
            let Some(node) = t.node.clone() else {
                c.err(
                    at,
                    format!("{who}: an opcua tag needs `node` (e.g. \"ns=2;s=Press1.Good\")"),
                );
                return None;
            };
            if <opcua::types::NodeId as std::str::FromStr>::from_str(&node).is_err() {
                c.err(at, format!("{who}: `node` \"{node}\" is not an OPC UA node id (ns=2;s=Press1.Good, ns=3;i=1001)"));
            }
            let sampling_ms = t.sampling_ms.unwrap_or(100);
            if !(INTERVAL_MS_MIN..=INTERVAL_MS_MAX).contains(&sampling_ms) {
                c.err(
                    at,
                    format!("{who}: `sampling_ms` must be {INTERVAL_MS_MIN} to {INTERVAL_MS_MAX}"),
                );
            }
            let queue_size = t.queue_size.unwrap_or(100);
            if !(1..=10_000).contains(&queue_size) {
                c.err(at, format!("{who}: `queue_size` must be 1 to 10000"));
            }
            if t.deadband.is_some_and(|d| !(d.is_finite() && d >= 0.0)) {
                c.err(at, format!("{who}: `deadband` must be a number ≥ 0"));
            }
            Source::OpcUa {
                node,
                sampling_ms,
                queue_size,
                deadband: t.deadband,
            }
        }
        KindSpec::Modbus(_) => {
            refuse_tag(c, &mqtt);
            refuse_tag(c, &sparkplug);
            refuse_tag(c, &opcua);
            let Some(register) = t.register.clone() else {
                c.err(at, format!("{who}: a modbus tag needs `register` (\"holding:100\", \"input:3\" or \"coil:7\")"));
                return None;
            };
            let (table, address) = register_at(c, at, &who, "register", &register)?;
            let data_type = data_type(c, at, &who, "data_type", table, t.data_type.as_deref());
            if u32::from(address) + u32::from(data_type.registers()) > 65_536 {
                c.err(at, format!("{who}: the value runs past register 65535"));
            }
            let word_order = order(c, at, &who, "word_order", t.word_order.as_deref());
            let byte_order = order(c, at, &who, "byte_order", t.byte_order.as_deref());
            let scale = t.scale.unwrap_or(1.0);
            if !(scale.is_finite() && scale != 0.0) {
                c.err(
                    at,
                    format!("{who}: `scale` must be a finite number other than 0"),
                );
            }
            Source::Modbus {
                table,
                address,
                data_type,
                word_order,
                byte_order,
                scale,
            }
        }
    };
    let mapping = mapping(c, at, &who, &t)?;
    Some(TagSpec {
        name: t.name,
        line: line_of(c.text, at),
        equipment: equipment?,
        source,
        mapping,
    })
}

/// `holding:N`, `input:N` or `coil:N` (N 0 to 65535) of `field`.
fn register_at(
    c: &mut Checker<'_>,
    at: usize,
    who: &str,
    field: &str,
    register: &str,
) -> Option<(RegisterTable, u16)> {
    let parsed = register.split_once(':').and_then(|(t, a)| {
        let table = match t {
            "holding" => RegisterTable::Holding,
            "input" => RegisterTable::Input,
            "coil" => RegisterTable::Coil,
            _ => return None,
        };
        Some((table, a.parse::<u16>().ok()?))
    });
    if parsed.is_none() {
        c.err(
            at,
            format!(
                "{who}: `{field}` \"{register}\" is not holding:N, input:N or coil:N (N 0 to 65535)"
            ),
        );
    }
    parsed
}

/// A register value's `data_type` (a coil's is bool).
fn data_type(
    c: &mut Checker<'_>,
    at: usize,
    who: &str,
    field: &str,
    table: RegisterTable,
    v: Option<&str>,
) -> DataType {
    match (table, v) {
        (RegisterTable::Coil, None | Some("bool")) => DataType::Bool,
        (RegisterTable::Coil, Some(other)) => {
            c.err(at, format!("{who}: a coil is a bool, not {other}"));
            DataType::Bool
        }
        (_, None | Some("u16")) => DataType::U16,
        (_, Some("i16")) => DataType::I16,
        (_, Some("u32")) => DataType::U32,
        (_, Some("i32")) => DataType::I32,
        (_, Some("f32")) => DataType::F32,
        (_, Some(other)) => {
            c.err(
                at,
                format!("{who}: `{field}` \"{other}\" is not u16, i16, u32, i32 or f32"),
            );
            DataType::U16
        }
    }
}

/// A `word_order` or `byte_order`: big (the default) or little.
fn order(c: &mut Checker<'_>, at: usize, who: &str, field: &str, v: Option<&str>) -> Order {
    match v {
        None | Some("big") => Order::Big,
        Some("little") => Order::Little,
        Some(other) => {
            c.err(
                at,
                format!("{who}: `{field}` \"{other}\" is not big or little"),
            );
            Order::Big
        }
    }
}

fn mapping(c: &mut Checker<'_>, at: usize, who: &str, t: &RawTag) -> Option<Mapping> {
    let fields = [
        ("counts", t.counts.is_some()),
        ("modulus", t.modulus.is_some()),
        ("max_step", t.max_step.is_some()),
        ("states", t.states.is_some()),
        ("characteristic", t.characteristic.is_some()),
        ("material", t.material.is_some()),
        ("quantity", t.quantity.is_some()),
    ];
    let allowed: &[&str] = match t.map.as_str() {
        "counter" => &["counts", "modulus", "max_step"],
        "state" => &["states"],
        "sample" => &["characteristic"],
        "scan" => &["material", "quantity"],
        other => {
            c.err(
                at,
                format!("{who}: unknown map \"{other}\", expected counter, state, sample or scan"),
            );
            return None;
        }
    };
    for (f, present) in fields {
        if present && !allowed.contains(&f) {
            c.err(
                at,
                format!("{who}: `{f}` is not a field of a {} tag", t.map),
            );
        }
    }
    Some(match t.map.as_str() {
        "counter" => {
            let counts = match t.counts.as_deref() {
                None | Some("good") => Counts::Good,
                Some("scrap") => Counts::Scrap,
                Some(other) => {
                    c.err(
                        at,
                        format!("{who}: `counts` \"{other}\" is not good or scrap"),
                    );
                    Counts::Good
                }
            };
            let modulus = t.modulus.unwrap_or(1 << 32);
            if !(2..=(1u64 << 63)).contains(&modulus) {
                c.err(
                    at,
                    format!("{who}: `modulus` must be 2 to 2^63 (65536 for a 16-bit counter)"),
                );
            }
            // A reading may at most move a sixteenth of the counter's range: a 16-bit counter
            // read every second can count 4,096 parts a second before a reset is mistaken for
            // a rollover.
            let max_step = t.max_step.unwrap_or((modulus / 16).max(1));
            if modulus >= 2 && (max_step == 0 || max_step >= modulus) {
                c.err(at, format!("{who}: `max_step` must be 1 to modulus - 1"));
            }
            Mapping::Counter {
                counts,
                modulus,
                max_step,
            }
        }
        "state" => {
            let Some(states) = &t.states else {
                c.err(at, format!("{who}: a state tag needs `states`, e.g. {{ \"1\" = \"running\", \"2\" = \"down:DOWN.JAM\" }}"));
                return None;
            };
            if states.is_empty() || states.len() > STATE_VALUES_MAX {
                c.err(
                    at,
                    format!("{who}: `states` must map 1 to {STATE_VALUES_MAX} values"),
                );
            }
            let mut values = BTreeMap::new();
            for (value, meaning) in states {
                let (state, reason) = match meaning.split_once(':') {
                    Some((s, r)) => (s, Some(r)),
                    None => (meaning.as_str(), None),
                };
                let state = match state.parse::<MachineState>() {
                    Ok(MachineState::Unknown) | Err(_) => {
                        c.err(at, format!("{who}: state \"{state}\" for value \"{value}\" is not running, idle, down, setup or planned_stop"));
                        continue;
                    }
                    Ok(s) => s,
                };
                let reason = match reason.map(|r| ReasonCodeId::new(r.to_owned())).transpose() {
                    Ok(r) => r,
                    Err(e) => {
                        c.err(at, format!("{who}: reason for value \"{value}\": {e}"));
                        continue;
                    }
                };
                values.insert(value.clone(), (state, reason));
            }
            Mapping::State { values }
        }
        "sample" => {
            let Some(ch) = &t.characteristic else {
                c.err(at, format!("{who}: a sample tag needs `characteristic`"));
                return None;
            };
            match CharacteristicId::new(ch.clone()) {
                Ok(characteristic) => Mapping::Sample { characteristic },
                Err(e) => {
                    c.err(at, format!("{who}: characteristic: {e}"));
                    return None;
                }
            }
        }
        _ => {
            let Some(m) = &t.material else {
                c.err(at, format!("{who}: a scan tag needs `material`"));
                return None;
            };
            let quantity = t.quantity.unwrap_or(1.0);
            if !(quantity.is_finite() && quantity > 0.0) {
                c.err(at, format!("{who}: `quantity` must be a number > 0"));
            }
            match MaterialId::new(m.clone()) {
                Ok(material) => Mapping::Scan { material, quantity },
                Err(e) => {
                    c.err(at, format!("{who}: material: {e}"));
                    return None;
                }
            }
        }
    })
}

#[cfg(test)]
pub(crate) mod tests;
