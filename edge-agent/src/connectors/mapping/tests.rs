use std::collections::BTreeMap;

use super::*;
use crate::connectors::config::Mapping;

fn counter(modulus: u64) -> Mapping {
    Mapping::Counter {
        counts: Counts::Good,
        modulus,
        max_step: modulus / 16,
    }
}

fn count_of(i: &Interpreted) -> u64 {
    i.facts
        .iter()
        .map(|f| match f {
            Fact::Count { quantity, .. } => *quantity,
            _ => 0,
        })
        .sum()
}

#[test]
fn a_counter_counts_up_over_rollover_and_from_zero_after_a_reset() {
    let m = counter(1 << 16);
    let mut mem = TagMemory::default();
    let mut total = 0;
    // The first reading is a baseline: the PLC's earlier production is not this edge's.
    for (value, expect) in [(65_000, 0), (65_530, 530), (10, 16), (10, 0), (200, 190)] {
        let i = interpret(&m, &mem, &TagValue::Int(value)).unwrap();
        assert_eq!(count_of(&i), expect, "reading {value}");
        assert!(i.notices.is_empty());
        total += count_of(&i);
        mem = i.memory;
    }
    assert_eq!(total, 736);
    // 200 → 7 is no rollover (65,343 > max_step): a reset, counting the 7 since.
    let i = interpret(&m, &mem, &TagValue::Int(7)).unwrap();
    assert_eq!(count_of(&i), 7);
    assert_eq!(
        i.notices,
        vec![Notice::CounterReset {
            from: 200,
            to: 7,
            counted: 7
        }]
    );
    // A reset to a high preset counts nothing rather than thousands of phantom parts.
    let i = interpret(&m, &i.memory, &TagValue::Int(3)).unwrap();
    let i = interpret(&m, &i.memory, &TagValue::Int(1)).unwrap();
    let i2 = interpret(&m, &i.memory, &TagValue::Int(1)).unwrap();
    assert_eq!(count_of(&i2), 0);
}

#[test]
fn a_counter_refuses_what_is_not_a_reading() {
    let m = counter(1 << 16);
    let mem = TagMemory {
        counter: Some(5),
        last: None,
    };
    for bad in [
        TagValue::Int(-1),
        TagValue::Int(65_536),
        TagValue::Float(2.5),
        TagValue::Text("twelve".into()),
        TagValue::Bool(true),
    ] {
        assert!(
            matches!(interpret(&m, &mem, &bad), Err(Rejected::NotACounter { .. })),
            "{bad:?}"
        );
    }
    // An integral float (OPC UA Double, JSON 12.0) is a reading.
    assert_eq!(
        count_of(&interpret(&m, &mem, &TagValue::Float(12.0)).unwrap()),
        7
    );
}

/// The exactness check in the small: a million increments of a 16-bit counter read at
/// random moments, with PLC resets and restarts (the memory is all that survives), sum to
/// the increments minus what each reset discarded before it was read — the part the reset
/// notices say cannot be known.
///
/// A reset while the last reading stood within `max_step` of the top is indistinguishable from
/// a rollover (both are a small drop across the modulus) and is counted as one: that limit is
/// documented in docs/connectors.md and pinned by the next test, so the simulated PLC here
/// resets only below it.
#[test]
fn a_million_increments_sum_exactly_across_rollovers_resets_and_restarts() {
    let modulus = 1u64 << 16;
    let max_step = modulus / 16;
    let m = counter(modulus);
    let mut rng = Lcg(0x5eed);
    let mut plc: u64 = 40_000;
    let mut mem = interpret(&m, &TagMemory::default(), &TagValue::Int(plc as i64))
        .unwrap()
        .memory;
    let (mut increments, mut counted, mut discarded, mut resets) = (0u64, 0u64, 0u64, 0u64);
    while increments < 1_000_000 {
        let step = (rng.next() % 3_000).min(1_000_000 - increments);
        let before = plc;
        plc = (plc + step) % modulus;
        increments += step;
        match rng.next() % 50 {
            // A PLC reset after this step: the step is lost to everyone, and it counts on.
            0 if before < modulus - max_step => {
                discarded += step;
                resets += 1;
                let after = rng.next() % 50;
                plc = after;
                increments += after;
            }
            // A restart of the edge: only the persisted memory carries over.
            1 => {
                mem = TagMemory {
                    counter: mem.counter,
                    last: None,
                }
            }
            _ => {}
        }
        let i = interpret(&m, &mem, &TagValue::Int(plc as i64)).unwrap();
        // The same reading delivered again moves nothing.
        let again = interpret(&m, &i.memory, &TagValue::Int(plc as i64)).unwrap();
        assert_eq!(count_of(&again), 0);
        counted += count_of(&i);
        mem = i.memory;
    }
    assert!(resets > 0, "the run had resets");
    assert_eq!(counted + discarded, increments);
}

#[test]
fn a_reset_near_the_top_reads_as_a_rollover() {
    let m = counter(1 << 16);
    let mem = TagMemory {
        counter: Some(65_000),
        last: None,
    };
    let i = interpret(&m, &mem, &TagValue::Int(20)).unwrap();
    assert_eq!(count_of(&i), 556);
    assert!(i.notices.is_empty());
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

#[test]
fn a_state_tag_records_changes_of_meaning_and_unknown_codes() {
    let mut values = BTreeMap::new();
    values.insert("1".to_owned(), (MachineState::Running, None));
    values.insert(
        "2".to_owned(),
        (MachineState::Down, Some("DOWN.JAM".parse().unwrap())),
    );
    values.insert("3".to_owned(), (MachineState::Running, None));
    let m = Mapping::State { values };
    let i = interpret(&m, &TagMemory::default(), &TagValue::Float(1.0)).unwrap();
    assert_eq!(
        i.facts,
        vec![Fact::State {
            state: MachineState::Running,
            reason: None
        }]
    );
    // Code 3 also means running: no new event.
    let i = interpret(&m, &i.memory, &TagValue::Int(3)).unwrap();
    assert!(i.facts.is_empty());
    let i = interpret(&m, &i.memory, &TagValue::Int(2)).unwrap();
    assert_eq!(i.facts.len(), 1);
    let i = interpret(&m, &i.memory, &TagValue::Int(9)).unwrap();
    assert_eq!(
        i.facts,
        vec![Fact::State {
            state: MachineState::Unknown,
            reason: None
        }]
    );
    assert_eq!(i.notices, vec![Notice::UnmappedState { value: "9".into() }]);
}

#[test]
fn a_scan_is_a_new_code_and_a_sample_every_value() {
    let scan = Mapping::Scan {
        material: "RM-STEEL".parse().unwrap(),
        quantity: 1.0,
    };
    let i = interpret(
        &scan,
        &TagMemory::default(),
        &TagValue::Text(" LOT-1 ".into()),
    )
    .unwrap();
    assert_eq!(
        i.facts,
        vec![Fact::Scan {
            lot: "LOT-1".parse().unwrap()
        }]
    );
    assert!(
        interpret(&scan, &i.memory, &TagValue::Text("LOT-1".into()))
            .unwrap()
            .facts
            .is_empty()
    );
    assert!(
        interpret(&scan, &i.memory, &TagValue::Text("".into()))
            .unwrap()
            .facts
            .is_empty()
    );
    assert!(interpret(&scan, &i.memory, &TagValue::Int(4)).is_err());
    let sample = Mapping::Sample {
        characteristic: "DIA".parse().unwrap(),
    };
    let i = interpret(&sample, &TagMemory::default(), &TagValue::Float(10.02)).unwrap();
    assert_eq!(i.facts, vec![Fact::Sample { value: 10.02 }]);
    assert!(interpret(&sample, &TagMemory::default(), &TagValue::Float(f64::NAN)).is_err());
}

#[test]
fn event_ids_are_the_same_for_the_same_reading_and_sort_by_source_time() {
    let at = Timestamp::from_micros(1_800_000_000_000_000);
    let v = TagValue::Int(42);
    let a = event_id("line1", "press.good", at, &v, 0);
    assert_eq!(a, event_id("line1", "press.good", at, &v, 0));
    assert_ne!(a, event_id("line1", "press.good", at, &v, 1));
    assert_ne!(a, event_id("line1", "press.scrap", at, &v, 0));
    assert_ne!(
        a,
        event_id("line1", "press.good", at, &TagValue::Int(43), 0)
    );
    let later = event_id(
        "line1",
        "press.good",
        Timestamp::from_micros(1_800_000_000_001_000),
        &v,
        0,
    );
    assert!(later.as_bytes() > a.as_bytes());
    assert_eq!(a.as_uuid().get_version_num(), 7);
}
