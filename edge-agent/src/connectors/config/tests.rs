use super::*;

/// The order SITE_001-WO-7 of BRACKET-7, `planned_quantity` planned, started on PRESS-01.
pub(crate) fn order(planned_quantity: u32) -> crate::connectors::OrderStart {
    crate::connectors::OrderStart {
        equipment: EquipmentId::new("PRESS-01").unwrap(),
        order_id: shared_model::WorkOrderId::new("SITE_001-WO-7").unwrap(),
        material: MaterialId::new("BRACKET-7").unwrap(),
        planned_quantity,
        at: shared_model::Timestamp::from_millis(0),
    }
}

/// An MQTT connector "line1" with a 16-bit counter `good` (path "good", timestamp "ts") and a
/// state `state` (1 running, 2 down with DOWN.JAM) on `topic`, and `extra` tables after them.
pub(crate) fn mqtt_file(topic: &str, extra: &str) -> String {
    format!(
        r#"
[[connector]]
name = "line1"
kind = "mqtt"
url = "mqtt://127.0.0.1:1883"
[[connector.tag]]
name = "good"
map = "counter"
equipment = "PRESS-01"
topic = "{topic}"
path = "good"
timestamp_path = "ts"
modulus = 65536
[[connector.tag]]
name = "state"
map = "state"
equipment = "PRESS-01"
topic = "{topic}"
path = "state"
states = {{ "1" = "running", "2" = "down:DOWN.JAM" }}
{extra}"#
    )
}

const GOOD: &str = r#"
site = "SITE_001"

[[connector]]
name = "line1"
kind = "mqtt"
url = "mqtts://broker.plant:8883"
protocol = "5"
username = "edge"
password = "secret"

[[connector.tag]]
name = "press1.good"
map = "counter"
equipment = "PRESS-01"
topic = "plant/press1"
path = "good"
modulus = 65536

[[connector]]
name = "plc7"
kind = "modbus"
address = "10.0.0.7:502"
poll_ms = 250

[[connector.tag]]
name = "state"
map = "state"
equipment = "PRESS-01"
register = "holding:10"
states = { "1" = "running", "2" = "down:DOWN.JAM" }

[[connector.tag]]
name = "temp"
map = "sample"
equipment = "PRESS-01"
register = "input:4"
data_type = "f32"
word_order = "little"
characteristic = "TEMP"
"#;

#[test]
fn a_good_file_gives_typed_specs() {
    let specs = parse(GOOD).unwrap();
    assert_eq!(specs.len(), 2);
    let KindSpec::Mqtt(m) = &specs[0].kind else {
        panic!()
    };
    assert!(m.broker.tls && m.broker.v5);
    assert_eq!(
        (m.broker.host.as_str(), m.broker.port),
        ("broker.plant", 8883)
    );
    assert_eq!(specs[0].line, 4);
    assert_eq!(
        specs[0].tags[0].mapping,
        Mapping::Counter {
            counts: Counts::Good,
            modulus: 65_536,
            max_step: 4_096
        }
    );
    let Source::Modbus {
        table,
        address,
        data_type,
        word_order,
        ..
    } = &specs[1].tags[1].source
    else {
        panic!()
    };
    assert_eq!(
        (*table, *address, *data_type, *word_order),
        (RegisterTable::Input, 4, DataType::F32, Order::Little)
    );
    // A file without connectors has none.
    assert!(parse("site = \"SITE_001\"\n").unwrap().is_empty());
}

#[test]
fn a_bad_file_is_refused_with_each_line_and_reason() {
    let bad = GOOD
        .replace("modulus = 65536", "modulus = 1")
        .replace("register = \"holding:10\"", "register = \"holding:x\"")
        .replace(
            "kind = \"mqtt\"",
            "kind = \"mqtt\"\nendpoint = \"opc.tcp://x\"",
        );
    let errors = parse(&bad).unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 3, "{text:?}");
    assert!(
        text[0].starts_with("line 4:")
            && text[0].contains("`endpoint` is not a setting of a mqtt connector"),
        "{text:?}"
    );
    assert!(
        text[1].starts_with("line 13:") && text[1].contains("modulus"),
        "{text:?}"
    );
    assert!(
        text[2].starts_with("line 27:") && text[2].contains("holding:x"),
        "{text:?}"
    );
    // A syntax error names its line too.
    let e = parse("[[connector]]\nname = \"x\nkind = 1\n").unwrap_err();
    assert_eq!(e[0].line, 2, "{e:?}");
    // A misspelt key is not ignored.
    let e = parse(&GOOD.replace("poll_ms", "pol_ms")).unwrap_err();
    assert!(e[0].message.contains("pol_ms"), "{e:?}");
    // Names twice.
    let e = parse(&GOOD.replace("name = \"plc7\"", "name = \"line1\"")).unwrap_err();
    assert!(e[0].message.contains("defined twice"), "{e:?}");
}

/// The shipped examples stay valid.
#[test]
fn the_examples_parse() {
    for (name, text) in [
        (
            "mqtt.toml",
            include_str!("../../../../examples/connectors/mqtt.toml"),
        ),
        (
            "modbus.toml",
            include_str!("../../../../examples/connectors/modbus.toml"),
        ),
        (
            "sparkplug.toml",
            include_str!("../../../../examples/connectors/sparkplug.toml"),
        ),
        (
            "opcua.toml",
            include_str!("../../../../examples/connectors/opcua.toml"),
        ),
    ] {
        let specs = parse(text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(
            !specs.is_empty() && specs.iter().all(|c| !c.tags.is_empty()),
            "{name}"
        );
    }
}

/// A connector of `kind` (its own settings in `head`) with one state tag and `write` as its
/// `[[connector.write]]` table.
fn with_write(kind: &str, head: &str, tag_source: &str, write: &str) -> String {
    format!(
        r#"
[[connector]]
name = "c"
kind = "{kind}"
{head}
[[connector.tag]]
name = "s"
map = "state"
equipment = "PRESS-01"
{tag_source}
states = {{ "1" = "running" }}

[[connector.write]]
equipment = "PRESS-01"
{write}
"#
    )
}

const OPCUA: (&str, &str, &str) = (
    "opcua",
    "endpoint = \"opc.tcp://127.0.0.1:4840/\"",
    "node = \"ns=2;s=S\"",
);
const SPARKPLUG: (&str, &str, &str) = (
    "sparkplug",
    "url = \"mqtt://127.0.0.1:1883\"\ngroup = \"G\"",
    "node = \"N\"\nmetric = \"State\"",
);
const MODBUS: (&str, &str, &str) = (
    "modbus",
    "address = \"127.0.0.1:502\"",
    "register = \"holding:1\"",
);

#[test]
fn writes_of_each_kind_parse_into_their_targets() {
    let (k, h, t) = OPCUA;
    let s = parse(&with_write(
        k,
        h,
        t,
        "quantity_node = \"ns=2;s=Q\"\nquantity_type = \"Double\"",
    ))
    .unwrap();
    assert_eq!(
        s[0].writes[0].target,
        WriteTarget::OpcUa {
            order_id_node: None,
            material_node: None,
            quantity_node: Some("ns=2;s=Q".into()),
            quantity_type: UaNumber::Double
        }
    );
    assert_eq!(
        s[0].writes[0].line, 13,
        "the line of its [[connector.write]]"
    );
    let (k, h, t) = SPARKPLUG;
    let s = parse(&with_write(
        k,
        h,
        t,
        "node = \"N\"\norder_id_metric = \"Order/Id\"",
    ))
    .unwrap();
    assert!(matches!(
        &s[0].writes[0].target,
        WriteTarget::Sparkplug { node, device: None, order_id_metric: Some(m), .. } if node == "N" && m == "Order/Id"
    ));
    let (k, h, t) = MODBUS;
    let s = parse(&with_write(
        k,
        h,
        t,
        "order_id_register = \"holding:10\"\norder_id_len = 8\nquantity_register = \"holding:18\"\nquantity_type = \"i32\"\nbyte_order = \"little\"",
    ))
    .unwrap();
    assert_eq!(
        s[0].writes[0].target,
        WriteTarget::Modbus {
            unit_id: 1,
            order_id: Some(TextRegisters {
                address: 10,
                len: 8
            }),
            material: None,
            quantity: Some(NumberRegisters {
                address: 18,
                data_type: DataType::I32,
                word_order: Order::Big,
                byte_order: Order::Little
            })
        }
    );
}

/// Each bad write table is refused on its line with the reason.
#[test]
fn a_bad_write_is_refused_with_its_line_and_reason() {
    let cases: &[((&str, &str, &str), &str, &str)] = &[
        (
            OPCUA,
            "",
            "names nothing to write: give at least one of `order_id_node`",
        ),
        (
            OPCUA,
            "order_id_node = \"Press1.OrderId\"",
            "is not an OPC UA node id",
        ),
        (
            OPCUA,
            "quantity_node = \"ns=2;s=Q\"\nquantity_type = \"Integer\"",
            "`quantity_type` \"Integer\" is not one of Int16",
        ),
        (
            OPCUA,
            "order_id_node = \"ns=2;s=O\"\nquantity_type = \"Int32\"",
            "`quantity_type` without `quantity_node`",
        ),
        (
            OPCUA,
            "order_id_node = \"ns=2;s=O\"\ntopic = \"x\"",
            "`topic` is not a field of a opcua write",
        ),
        (SPARKPLUG, "order_id_metric = \"Order/Id\"", "needs `node`"),
        (SPARKPLUG, "node = \"N\"", "names nothing to write"),
        (
            SPARKPLUG,
            "node = \"N/1\"\nquantity_metric = \"Q\"",
            "is not a Sparkplug node or device id",
        ),
        (
            MODBUS,
            "order_id_register = \"holding:10\"",
            "`order_id_register` needs `order_id_len`",
        ),
        (
            MODBUS,
            "order_id_register = \"input:10\"\norder_id_len = 4",
            "must be a holding register",
        ),
        (
            MODBUS,
            "material_register = \"holding:10\"\nmaterial_len = 0",
            "`material_len` must be 1 to 123",
        ),
        (
            MODBUS,
            "order_id_register = \"holding:10\"\norder_id_len = 8\nquantity_register = \"holding:17\"",
            "the order id and the quantity share registers",
        ),
        (
            MODBUS,
            "quantity_register = \"holding:65535\"\nquantity_type = \"u32\"",
            "the quantity runs past register 65535",
        ),
        (
            MODBUS,
            "quantity_register = \"holding:1\"\nquantity_type = \"u64\"",
            "`quantity_type` \"u64\" is not u16",
        ),
        (
            MODBUS,
            "order_id_register = \"holding:1\"\norder_id_len = 2\nword_order = \"big\"",
            "`word_order` without `quantity_register`",
        ),
    ];
    for ((kind, head, tag), write, want) in cases {
        let text = with_write(kind, head, tag, write);
        let line = text
            .lines()
            .position(|l| l == "[[connector.write]]")
            .unwrap()
            + 1;
        let e = parse(&text).unwrap_err();
        assert!(
            e.iter().any(|e| e.line == line && e.message.contains(want)),
            "{kind} {write:?}: want line {line} {want:?}, got {e:?}"
        );
    }
}
