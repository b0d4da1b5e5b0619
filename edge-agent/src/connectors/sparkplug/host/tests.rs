use prost::Message;

use super::*;
use crate::connectors::OrderStart;
use crate::connectors::config::{ConnectorSpec, WriteSpec, WriteTarget, parse};
use crate::connectors::mapping::TagValue;
use crate::connectors::sparkplug::payload::{Value, datatype};

const T0: i64 = 1_790_000_000_000;

fn spec() -> ConnectorSpec {
    parse(
        r#"
[[connector]]
name = "sp"
kind = "sparkplug"
url = "mqtt://127.0.0.1:1883"
group = "Plant1"

[[connector.tag]]
name = "press.good"
map = "counter"
equipment = "PRESS-01"
node = "Line1"
device = "Press1"
metric = "Counters/Good"

[[connector.tag]]
name = "press.state"
map = "state"
equipment = "PRESS-01"
node = "Line1"
device = "Press1"
metric = "State"
states = { "1" = "running" }

[[connector.tag]]
name = "line.state"
map = "state"
equipment = "LINE-01"
node = "Line1"
metric = "Line/State"
states = { "1" = "running" }
"#,
    )
    .unwrap()
    .remove(0)
}

fn now(s: i64) -> Timestamp {
    Timestamp::from_millis(T0 + s * 1_000)
}

fn metric(name: Option<&str>, alias: Option<u64>, datatype: Option<u32>, v: Value) -> Metric {
    Metric {
        name: name.map(str::to_owned),
        alias,
        datatype,
        value: Some(v),
        ..Metric::default()
    }
}

fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(T0 as u64),
        metrics,
        seq,
        ..Payload::default()
    }
    .encode_to_vec()
}

fn nbirth(bd: u64) -> Vec<u8> {
    payload(
        Some(0),
        vec![
            metric(
                Some("bdSeq"),
                None,
                Some(datatype::UINT64),
                Value::LongValue(bd),
            ),
            metric(
                Some("Line/State"),
                Some(1),
                Some(datatype::INT32),
                Value::IntValue(1),
            ),
            metric(
                Some("Node Control/Rebirth"),
                Some(2),
                Some(datatype::BOOLEAN),
                Value::BooleanValue(false),
            ),
        ],
    )
}

fn dbirth(seq: u64) -> Vec<u8> {
    payload(
        Some(seq),
        vec![
            metric(
                Some("Counters/Good"),
                Some(10),
                Some(datatype::UINT32),
                Value::LongValue(100),
            ),
            metric(
                Some("State"),
                Some(11),
                Some(datatype::INT16),
                Value::IntValue(1),
            ),
        ],
    )
}

const NBIRTH: &str = "spBv1.0/Plant1/NBIRTH/Line1";
const NDEATH: &str = "spBv1.0/Plant1/NDEATH/Line1";
const DBIRTH: &str = "spBv1.0/Plant1/DBIRTH/Line1/Press1";
const DDATA: &str = "spBv1.0/Plant1/DDATA/Line1/Press1";
const DDEATH: &str = "spBv1.0/Plant1/DDEATH/Line1/Press1";
const NCMD: &str = "spBv1.0/Plant1/NCMD/Line1";

fn born(h: &mut Host) {
    let o = h.handle(NBIRTH, &nbirth(3), false, now(0));
    assert_eq!(o.readings.len(), 1, "{o:?}");
    assert_eq!(o.readings[0].tag, 2);
    let o = h.handle(DBIRTH, &dbirth(1), false, now(0));
    assert_eq!(o.readings.len(), 2, "{o:?}");
    assert_eq!(o.rebirth, None);
}

#[test]
fn births_give_aliases_and_data_resolves_by_alias_with_its_time() {
    let s = spec();
    let mut h = Host::new("Plant1", &s.tags);
    assert_eq!(h.subscription(), "spBv1.0/Plant1/#");
    born(&mut h);
    let mut m = metric(None, Some(10), None, Value::LongValue(105));
    m.timestamp = Some(T0 as u64 + 500);
    let o = h.handle(
        DDATA,
        &payload(
            Some(2),
            vec![m, metric(None, Some(11), None, Value::IntValue(0xFFFF))],
        ),
        false,
        now(1),
    );
    assert_eq!(o.rebirth, None, "{o:?}");
    assert!(!o.dropped);
    assert_eq!(
        o.readings,
        vec![
            Reading {
                tag: 0,
                value: TagValue::Int(105),
                source_time: Some(Timestamp::from_millis(T0 + 500)),
            },
            // No metric timestamp: the payload's. The birth's Int16 reads 0xFFFF as -1.
            Reading {
                tag: 1,
                value: TagValue::Int(-1),
                source_time: Some(Timestamp::from_millis(T0)),
            },
        ]
    );
    // By name as well; an alias no tag reads is skipped; a message with nothing read is
    // dropped.
    let o = h.handle(
        DDATA,
        &payload(
            Some(3),
            vec![metric(
                Some("Counters/Good"),
                None,
                None,
                Value::IntValue(7),
            )],
        ),
        false,
        now(1),
    );
    assert_eq!(o.readings[0].value, TagValue::Int(7));
    let o = h.handle(
        DDATA,
        &payload(
            Some(4),
            vec![metric(None, Some(99), None, Value::IntValue(7))],
        ),
        false,
        now(1),
    );
    assert!(o.readings.is_empty() && o.dropped && o.rebirth.is_none());
    // Other nodes, commands and other groups are not ours.
    for t in [
        "spBv1.0/Plant1/NDATA/Other",
        NCMD,
        "spBv1.0/Plant2/NDATA/Line1",
        "spBv1.0/STATE/host",
    ] {
        assert_eq!(h.handle(t, b"junk", false, now(1)), Outcome::default());
    }
}

#[test]
fn a_seq_gap_asks_for_a_rebirth_once_and_the_birth_resets_it() {
    let s = spec();
    let mut h = Host::new("Plant1", &s.tags);
    born(&mut h);
    let data = |seq| {
        payload(
            Some(seq),
            vec![metric(None, Some(10), None, Value::IntValue(1))],
        )
    };
    assert_eq!(h.handle(DDATA, &data(2), false, now(1)).rebirth, None);
    // The same message again, redelivered: no gap.
    assert_eq!(h.handle(DDATA, &data(2), true, now(1)).rebirth, None);
    // 3 is lost.
    let o = h.handle(DDATA, &data(4), false, now(1));
    assert_eq!(o.rebirth.as_deref(), Some(NCMD));
    assert_eq!(
        o.readings.len(),
        1,
        "the values of the message are still good"
    );
    // Another gap within the interval: not asked twice.
    assert_eq!(h.handle(DDATA, &data(9), false, now(2)).rebirth, None);
    // Later, it is.
    assert_eq!(
        h.handle(DDATA, &data(20), false, now(8)).rebirth.as_deref(),
        Some(NCMD)
    );
    // The node answers: births from seq 0, then data in sequence.
    born(&mut h);
    assert_eq!(h.handle(DDATA, &data(2), false, now(9)).rebirth, None);
    // seq wraps from 255 to 0.
    for seq in 3..=255 {
        assert_eq!(h.handle(DDATA, &data(seq), false, now(9)).rebirth, None);
    }
    assert_eq!(h.handle(DDATA, &data(0), false, now(9)).rebirth, None);
    assert_eq!(h.handle(DDATA, &data(1), false, now(9)).rebirth, None);
}

#[test]
fn data_before_a_birth_is_not_read_and_asks_for_one() {
    let s = spec();
    let mut h = Host::new("Plant1", &s.tags);
    let data = payload(
        Some(5),
        vec![metric(None, Some(10), None, Value::IntValue(1))],
    );
    let o = h.handle(DDATA, &data, false, now(0));
    assert_eq!(o.rebirth.as_deref(), Some(NCMD));
    assert!(o.readings.is_empty());
    // The edge's (re)connect asks every configured node.
    assert_eq!(h.connected(now(10)), vec![NCMD.to_owned()]);
    // After the node's birth, a device that has not been born again is not read either.
    h.handle(NBIRTH, &nbirth(0), false, now(11));
    let o = h.handle(DDATA, &payload(Some(1), vec![]), false, now(11));
    assert!(o.readings.is_empty());
    assert_eq!(
        o.rebirth.as_deref(),
        Some(NCMD),
        "a device's data before its birth"
    );
}

#[test]
fn deaths_make_machines_unknown_only_with_the_births_bd_seq() {
    let s = spec();
    let mut h = Host::new("Plant1", &s.tags);
    born(&mut h);
    let death = |bd: u64| {
        payload(
            None,
            vec![metric(
                Some("bdSeq"),
                None,
                Some(datatype::UINT64),
                Value::LongValue(bd),
            )],
        )
    };
    // A stale death (an earlier connection's will) leaves the node alone.
    let o = h.handle(NDEATH, &death(2), false, now(1));
    assert!(o.unknown.is_empty(), "{o:?}");
    // A device's death: its tags.
    let o = h.handle(DDEATH, &payload(Some(2), vec![]), false, now(1));
    assert_eq!(o.unknown, vec![0, 1]);
    let o = h.handle(NDEATH, &death(3), false, now(2));
    let mut u = o.unknown.clone();
    u.sort();
    assert_eq!(u, vec![0, 1, 2]);
    // Dead: data is not read until a birth.
    let o = h.handle(
        DDATA,
        &payload(
            Some(3),
            vec![metric(None, Some(10), None, Value::IntValue(1))],
        ),
        false,
        now(3),
    );
    assert!(o.readings.is_empty());
    assert_eq!(o.rebirth.as_deref(), Some(NCMD));
    // A payload that is not Sparkplug is dropped, without panic.
    let o = h.handle(NBIRTH, &[0xff, 0xff, 0x01], false, now(3));
    assert!(o.dropped && o.readings.is_empty());
}

#[test]
fn state_messages() {
    let on = state(true, Timestamp::from_millis(T0));
    let v: serde_json::Value = serde_json::from_slice(&on).unwrap();
    assert_eq!(v, serde_json::json!({"online": true, "timestamp": T0}));
    assert!(!says_offline(&on));
    assert!(says_offline(&state(false, Timestamp::from_millis(T0))));
    assert!(!says_offline(b"garbage"));
}

fn order() -> OrderStart {
    crate::connectors::config::tests::order(70_000)
}

fn write_target(device: Option<&str>) -> WriteTarget {
    WriteTarget::Sparkplug {
        node: "Line1".into(),
        device: device.map(str::to_owned),
        order_id_metric: Some("Order/Id".into()),
        material_metric: None,
        quantity_metric: Some("Order/Quantity".into()),
    }
}

#[test]
fn an_order_is_a_command_by_the_births_aliases_and_types_and_none_to_a_dead_node() {
    let s = spec();
    let writes = vec![WriteSpec {
        equipment: shared_model::EquipmentId::new("PRESS-01").unwrap(),
        line: 1,
        target: write_target(Some("Press1")),
    }];
    let mut h = Host::new("Plant1", &s.tags).with_writes(&writes);
    // Before any birth the node is offline: nothing is sent.
    let e = h
        .command(&write_target(Some("Press1")), &order(), now(1))
        .unwrap_err();
    assert!(e.contains("edge node Line1 is offline"), "{e}");
    born(&mut h);
    // This DBIRTH did not declare the order metrics: by name, String and UInt64.
    let (topic, bytes) = h
        .command(&write_target(Some("Press1")), &order(), now(1))
        .unwrap();
    assert_eq!(topic, "spBv1.0/Plant1/DCMD/Line1/Press1");
    let p = payload::decode(&bytes).unwrap();
    assert_eq!(p.seq, None, "commands carry no seq");
    assert_eq!(p.metrics.len(), 2);
    assert_eq!(p.metrics[0].name.as_deref(), Some("Order/Id"));
    assert_eq!(
        p.metrics[0].value,
        Some(Value::StringValue("SITE_001-WO-7".into()))
    );
    assert_eq!(p.metrics[1].datatype, Some(datatype::UINT64));
    assert_eq!(p.metrics[1].value, Some(Value::LongValue(70_000)));
    // A DBIRTH that declares them: by alias only, with its types.
    let mut birth = payload::decode(&dbirth(2)).unwrap();
    birth.metrics.push(metric(
        Some("Order/Id"),
        Some(20),
        Some(datatype::STRING),
        Value::StringValue(String::new()),
    ));
    birth.metrics.push(metric(
        Some("Order/Quantity"),
        Some(22),
        Some(datatype::INT32),
        Value::IntValue(0),
    ));
    h.handle(DBIRTH, &birth.encode_to_vec(), false, now(2));
    let (_, bytes) = h
        .command(&write_target(Some("Press1")), &order(), now(3))
        .unwrap();
    let p = payload::decode(&bytes).unwrap();
    assert_eq!(
        (p.metrics[0].name.as_deref(), p.metrics[0].alias),
        (None, Some(20))
    );
    assert_eq!(
        (
            p.metrics[1].alias,
            p.metrics[1].datatype,
            p.metrics[1].value.clone()
        ),
        (
            Some(22),
            Some(datatype::INT32),
            Some(Value::IntValue(70_000))
        )
    );
    // A quantity the declared type cannot hold is refused, not cut.
    let mut birth16 = birth.clone();
    birth16.seq = Some(3);
    birth16.metrics.last_mut().unwrap().datatype = Some(datatype::INT16);
    h.handle(DBIRTH, &birth16.encode_to_vec(), false, now(4));
    let e = h
        .command(&write_target(Some("Press1")), &order(), now(5))
        .unwrap_err();
    assert!(e.contains("Order/Quantity"), "{e}");
    // Without a device: an NCMD to the node.
    let (topic, _) = h.command(&write_target(None), &order(), now(5)).unwrap();
    assert_eq!(topic, NCMD);
    // The device's death: offline.
    h.handle(DDEATH, &payload(Some(4), vec![]), false, now(6));
    let e = h
        .command(&write_target(Some("Press1")), &order(), now(7))
        .unwrap_err();
    assert!(e.contains("device Line1/Press1 is offline"), "{e}");
    // The node's death: offline.
    h.handle(
        NDEATH,
        &payload(
            None,
            vec![metric(
                Some("bdSeq"),
                None,
                Some(datatype::UINT64),
                Value::LongValue(3),
            )],
        ),
        false,
        now(8),
    );
    let e = h
        .command(&write_target(None), &order(), now(9))
        .unwrap_err();
    assert!(e.contains("offline"), "{e}");
}
