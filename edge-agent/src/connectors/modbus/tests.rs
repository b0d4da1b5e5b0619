use super::*;
use crate::connectors::config::parse;
use crate::connectors::mapping::{Interpreted, TagMemory, interpret};

use DataType::*;
use Order::{Big, Little};

fn d(t: DataType, word: Order, byte: Order, scale: f64, regs: &[u16]) -> Option<TagValue> {
    decode_registers(t, word, byte, scale, regs)
}

#[test]
fn sixteen_bit_values_in_both_byte_orders() {
    assert_eq!(
        d(U16, Big, Big, 1.0, &[0x1234]),
        Some(TagValue::Int(0x1234))
    );
    assert_eq!(
        d(U16, Big, Little, 1.0, &[0x1234]),
        Some(TagValue::Int(0x3412))
    );
    assert_eq!(
        d(U16, Big, Big, 1.0, &[0xFFFF]),
        Some(TagValue::Int(65_535))
    );
    assert_eq!(d(I16, Big, Big, 1.0, &[0xFFFF]), Some(TagValue::Int(-1)));
    assert_eq!(
        d(I16, Big, Big, 1.0, &[0x8000]),
        Some(TagValue::Int(-32_768))
    );
    assert_eq!(d(I16, Big, Little, 1.0, &[0xFEFF]), Some(TagValue::Int(-2)));
    // The word order means nothing for one register.
    assert_eq!(d(U16, Little, Big, 1.0, &[7]), Some(TagValue::Int(7)));
    // A bool in a register: anything but 0 is true.
    assert_eq!(d(Bool, Big, Big, 1.0, &[0]), Some(TagValue::Bool(false)));
    assert_eq!(
        d(Bool, Big, Big, 1.0, &[0x0100]),
        Some(TagValue::Bool(true))
    );
}

#[test]
fn thirty_two_bit_values_in_every_word_and_byte_order() {
    // 0x12345678 = 305419896, as four PLC layouts put it in two registers.
    let v = TagValue::Int(0x1234_5678);
    assert_eq!(d(U32, Big, Big, 1.0, &[0x1234, 0x5678]), Some(v.clone())); // ABCD
    assert_eq!(d(U32, Little, Big, 1.0, &[0x5678, 0x1234]), Some(v.clone())); // CDAB
    assert_eq!(d(U32, Big, Little, 1.0, &[0x3412, 0x7856]), Some(v.clone())); // BADC
    assert_eq!(d(U32, Little, Little, 1.0, &[0x7856, 0x3412]), Some(v)); // DCBA
    assert_eq!(
        d(U32, Big, Big, 1.0, &[0xFFFF, 0xFFFF]),
        Some(TagValue::Int(4_294_967_295))
    );
    assert_eq!(
        d(I32, Big, Big, 1.0, &[0xFFFF, 0xFFFE]),
        Some(TagValue::Int(-2))
    );
    assert_eq!(
        d(I32, Little, Big, 1.0, &[0x0000, 0x8000]),
        Some(TagValue::Int(i64::from(i32::MIN)))
    );
    assert_eq!(
        d(I32, Little, Little, 1.0, &[0xFEFF, 0xFFFF]),
        Some(TagValue::Int(-2))
    );
    // Too few registers is no value, not a panic.
    assert_eq!(d(U32, Big, Big, 1.0, &[1]), None);
    assert_eq!(d(U16, Big, Big, 1.0, &[]), None);
}

#[test]
fn floats_in_every_order_read_as_their_shortest_decimal() {
    // 10.1f32 = 0x4121999A.
    let v = Some(TagValue::Float(10.1));
    assert_eq!(d(F32, Big, Big, 1.0, &[0x4121, 0x999A]), v);
    assert_eq!(d(F32, Little, Big, 1.0, &[0x999A, 0x4121]), v);
    assert_eq!(d(F32, Big, Little, 1.0, &[0x2141, 0x9A99]), v);
    assert_eq!(d(F32, Little, Little, 1.0, &[0x9A99, 0x2141]), v);
    assert_eq!(
        d(F32, Big, Big, 1.0, &[0xC2F6, 0xE979]),
        Some(TagValue::Float(-123.456))
    );
    assert_eq!(
        d(F32, Big, Big, 2.0, &[0x4121, 0x999A]),
        Some(TagValue::Float(20.2))
    );
    // A NaN is passed on: the store rejects it as a sample (no panic, nothing stored).
    let Some(TagValue::Float(nan)) = d(F32, Big, Big, 1.0, &[0x7FC0, 0x0000]) else {
        panic!()
    };
    assert!(nan.is_nan());
    let i = interpret(
        &Mapping::Sample {
            characteristic: shared_model::ids::CharacteristicId::new("DIA".to_owned()).unwrap(),
        },
        &TagMemory::default(),
        &TagValue::Float(nan),
    );
    assert!(i.is_err(), "{i:?}");
}

#[test]
fn a_scale_keeps_whole_values_integers() {
    // A counter stays an integer with a scale of 1, and with a whole scale.
    assert_eq!(d(U16, Big, Big, 1.0, &[41]), Some(TagValue::Int(41)));
    assert_eq!(d(U16, Big, Big, 10.0, &[41]), Some(TagValue::Int(410)));
    assert_eq!(d(I16, Big, Big, 0.5, &[0xFFFC]), Some(TagValue::Int(-2)));
    assert_eq!(d(U16, Big, Big, 0.1, &[215]), Some(TagValue::Float(21.5)));
    assert_eq!(
        d(U32, Little, Big, 0.01, &[0x3039, 0]),
        Some(TagValue::Float(123.45))
    );
    // A counter read through the scale counts like the raw one.
    let counter = Mapping::Counter {
        counts: crate::connectors::config::Counts::Good,
        modulus: 65_536,
        max_step: 4_096,
    };
    let memory = TagMemory {
        counter: Some(65_530),
        last: None,
    };
    let Ok(Interpreted { facts, .. }) =
        interpret(&counter, &memory, &d(U16, Big, Big, 1.0, &[4]).unwrap())
    else {
        panic!()
    };
    assert_eq!(facts.len(), 1);
    assert!(matches!(
        facts[0],
        crate::connectors::mapping::Fact::Count { quantity: 10, .. }
    ));
}

fn tags(extra: &str) -> Vec<TagSpec> {
    let text = format!(
        r#"
[[connector]]
name = "plc"
kind = "modbus"
address = "127.0.0.1:502"
{extra}
"#
    );
    parse(&text).unwrap().remove(0).tags
}

fn tag(name: &str, register: &str, data_type: &str) -> String {
    format!(
        "[[connector.tag]]\nname = \"{name}\"\nmap = \"sample\"\nequipment = \"PRESS-01\"\ncharacteristic = \"DIA\"\nregister = \"{register}\"\ndata_type = \"{data_type}\"\n"
    )
}

fn coil(name: &str, register: &str) -> String {
    format!(
        "[[connector.tag]]\nname = \"{name}\"\nmap = \"state\"\nequipment = \"PRESS-01\"\nstates = {{ \"true\" = \"running\", \"false\" = \"idle\" }}\nregister = \"{register}\"\n"
    )
}

#[test]
fn adjacent_addresses_share_a_request_up_to_the_protocols_limit() {
    let t = tags(
        &[
            tag("a", "holding:10", "u16"),
            tag("b", "holding:11", "u32"), // 11..12
            tag("c", "holding:13", "i16"), // touches b
            tag("d", "holding:12", "u16"), // overlaps b
            tag("e", "holding:15", "u16"), // a gap: its own request
            tag("f", "input:10", "f32"),   // another table
            coil("g", "coil:3"),
            coil("h", "coil:4"),
            coil("i", "coil:9"),
        ]
        .concat(),
    );
    let p = plan(&t);
    let b = |table, start, count, tags: &[usize]| Block {
        table,
        start,
        count,
        tags: tags.to_vec(),
    };
    assert_eq!(
        p,
        vec![
            b(RegisterTable::Holding, 10, 4, &[0, 1, 3, 2]),
            b(RegisterTable::Holding, 15, 1, &[4]),
            b(RegisterTable::Input, 10, 2, &[5]),
            b(RegisterTable::Coil, 3, 2, &[6, 7]),
            b(RegisterTable::Coil, 9, 1, &[8]),
        ]
    );

    // 200 adjacent u16: 125 and 75. 70 adjacent u32 (140 registers): the split keeps each
    // value whole (62 values = 124 registers, then 8).
    let many: String = (0..200)
        .map(|i| tag(&format!("r{i}"), &format!("holding:{i}"), "u16"))
        .chain((0..70).map(|i| tag(&format!("w{i}"), &format!("input:{}", 1000 + 2 * i), "u32")))
        .chain((0..2500).map(|i| coil(&format!("c{i}"), &format!("coil:{i}"))))
        .collect();
    let p = plan(&tags(&many));
    let shape: Vec<(RegisterTable, u16, u16)> =
        p.iter().map(|b| (b.table, b.start, b.count)).collect();
    assert_eq!(
        shape,
        vec![
            (RegisterTable::Holding, 0, 125),
            (RegisterTable::Holding, 125, 75),
            (RegisterTable::Input, 1000, 124),
            (RegisterTable::Input, 1124, 16),
            (RegisterTable::Coil, 0, 2000),
            (RegisterTable::Coil, 2000, 500),
        ]
    );
    // The last addresses of the table still plan.
    let p = plan(&tags(&tag("top", "holding:65534", "u32")));
    assert_eq!((p[0].start, p[0].count), (65_534, 2));
}

#[test]
fn a_blocks_answer_becomes_each_tags_reading_at_the_poll_time() {
    let t = tags(
        &[
            tag("a", "holding:10", "u16"),
            tag("b", "holding:11", "i32"),
            coil("g", "coil:3"),
            coil("h", "coil:4"),
        ]
        .concat(),
    );
    let p = plan(&t);
    let at = shared_model::Timestamp::from_millis(1_793_000_000_000);
    let r = readings_of(&t, &p[0], &Data::Words(vec![5, 0xFFFF, 0xFFFD]), at);
    assert_eq!(
        r,
        vec![
            Reading {
                tag: 0,
                value: TagValue::Int(5),
                source_time: Some(at)
            },
            Reading {
                tag: 1,
                value: TagValue::Int(-3),
                source_time: Some(at)
            },
        ]
    );
    let r = readings_of(&t, &p[1], &Data::Bits(vec![true, false]), at);
    assert_eq!(
        r.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
        vec![TagValue::Bool(true), TagValue::Bool(false)]
    );
    // A short answer gives what it covers, no panic.
    let r = readings_of(&t, &p[0], &Data::Words(vec![5, 1]), at);
    assert_eq!(r.len(), 1);
    assert!(readings_of(&t, &p[1], &Data::Bits(vec![]), at).is_empty());
}

#[test]
fn texts_pack_as_ascii_two_characters_a_register_high_byte_first() {
    assert_eq!(pack_ascii("AB", 1), Ok(vec![0x4142]));
    // Zero-padded: an odd length leaves the last low byte 0, the rest of the space 0.
    assert_eq!(pack_ascii("ABC", 3), Ok(vec![0x4142, 0x4300, 0x0000]));
    assert_eq!(pack_ascii("", 2), Ok(vec![0, 0]));
    // Never cut: a longer text is an error that says how much room there is.
    let e = pack_ascii("SITE_001-WO-7", 4).unwrap_err();
    assert!(e.contains("13 characters") && e.contains("hold 8"), "{e}");
    assert!(pack_ascii("Müller", 8).unwrap_err().contains("not ASCII"));
}

#[test]
fn a_number_written_reads_back_the_same_in_every_order() {
    for t in [U16, I16, U32, I32, F32] {
        for word in [Big, Little] {
            for byte in [Big, Little] {
                for v in [0i64, 1, 250, 32_767, 65_535, 70_000, -2] {
                    let Ok(regs) = encode_registers(t, word, byte, v) else {
                        continue;
                    };
                    assert_eq!(regs.len(), usize::from(t.registers()));
                    let back = match decode_registers(t, word, byte, 1.0, &regs) {
                        Some(TagValue::Float(f)) => f as i64,
                        Some(TagValue::Int(i)) => i,
                        other => panic!("{other:?}"),
                    };
                    assert_eq!(back, v, "{t:?} {word:?} {byte:?}");
                }
            }
        }
    }
    // The wire layouts of 0x0001_1170: ABCD, CDAB, BADC, DCBA.
    assert_eq!(
        encode_registers(U32, Big, Big, 70_000),
        Ok(vec![0x0001, 0x1170])
    );
    assert_eq!(
        encode_registers(U32, Little, Big, 70_000),
        Ok(vec![0x1170, 0x0001])
    );
    assert_eq!(
        encode_registers(U32, Big, Little, 70_000),
        Ok(vec![0x0100, 0x7011])
    );
    assert_eq!(
        encode_registers(U32, Little, Little, 70_000),
        Ok(vec![0x7011, 0x0100])
    );
    // What the type cannot hold is refused.
    assert!(encode_registers(U16, Big, Big, 70_000).is_err());
    assert!(encode_registers(I16, Big, Big, 40_000).is_err());
    assert!(encode_registers(U32, Big, Big, -1).is_err());
}

#[test]
fn an_orders_values_go_in_as_few_requests_as_adjacency_allows() {
    let specs = parse(
        r#"
[[connector]]
name = "plc"
kind = "modbus"
address = "127.0.0.1:502"
[[connector.tag]]
name = "s"
map = "state"
equipment = "PRESS-01"
register = "holding:1"
states = { "1" = "running" }
[[connector.write]]
equipment = "PRESS-01"
order_id_register = "holding:100"
order_id_len = 8
material_register = "holding:108"
material_len = 5
quantity_register = "holding:200"
quantity_type = "u32"
word_order = "little"
"#,
    )
    .unwrap();
    let order = crate::connectors::config::tests::order(70_000);
    let target = &specs[0].writes[0].target;
    let r = write_requests(target, &order).unwrap();
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(
        (r[0].0, r[0].1.len()),
        (100, 13),
        "id and material in one request"
    );
    assert_eq!(r[0].1[0], u16::from_be_bytes(*b"SI"));
    assert_eq!(r[0].1[8], u16::from_be_bytes(*b"BR"));
    assert_eq!(r[1], (200, vec![0x1170, 0x0001]));
    // An id longer than its registers: the write fails before anything is sent.
    let long = OrderStart {
        order_id: shared_model::WorkOrderId::new("SITE_001-WO-0123456789abcdef").unwrap(),
        ..order
    };
    let e = write_requests(target, &long).unwrap_err();
    assert!(
        e.starts_with("order id \"SITE_001-WO-0123456789abcdef\" is 28 characters"),
        "{e}"
    );
}
