use super::*;

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
