//! What a tag's value means: pure arithmetic, no I/O, no clock.
//!
//! A connector hands each value it reads to `interpret` with what the tag last left behind
//! (`TagMemory`, kept in SQLite in the same transaction as the events it produces), and gets
//! back the facts to record and the memory to keep. Because the memory commits with the events,
//! a value read twice (a broker's redelivery after a crash, a re-read after a reconnect) moves
//! nothing the second time, and a restart neither loses nor repeats a counter's delta.

use shared_model::Timestamp;
use shared_model::event::MachineState;
use shared_model::ids::{EventId, LotId, ReasonCodeId};

use super::config::{Counts, Mapping};

/// A value as a machine gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum TagValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl TagValue {
    /// The value as the key of a state map: integers and integral floats as decimal digits
    /// ("3" whether the PLC sent 3 or 3.0), booleans as "true"/"false", text as it is.
    pub fn key(&self) -> String {
        match self {
            TagValue::Int(i) => i.to_string(),
            TagValue::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => (*f as i64).to_string(),
            TagValue::Float(f) => f.to_string(),
            TagValue::Bool(b) => b.to_string(),
            TagValue::Text(s) => s.clone(),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            TagValue::Int(i) => Some(*i as f64),
            TagValue::Float(f) if f.is_finite() => Some(*f),
            TagValue::Float(_) => None,
            // Gateways often send numbers as text.
            TagValue::Text(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
            TagValue::Bool(b) => Some(f64::from(u8::from(*b))),
        }
    }

    /// The value as a counter reading: a whole number ≥ 0.
    fn as_counter(&self) -> Option<u64> {
        match self {
            TagValue::Int(i) => u64::try_from(*i).ok(),
            TagValue::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19 => Some(*f as u64),
            TagValue::Text(s) => s.trim().parse().ok(),
            TagValue::Float(_) | TagValue::Bool(_) => None,
        }
    }
}

/// What a tag left behind: the counter's last reading, or the last state/scan value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagMemory {
    pub counter: Option<u64>,
    pub last: Option<String>,
}

/// How a counter moved between two readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterStep {
    /// The first reading ever: it only sets the baseline (the PLC's history is not ours).
    Baseline,
    Unchanged,
    Up(u64),
    /// It went past the modulus and started again from 0.
    Rollover(u64),
    /// It dropped in a way a rollover cannot explain: the PLC reset it. What it counted since
    /// the reset (`counted`, assuming a reset to 0) is kept; what it counted between our last
    /// reading and the reset is unknowable and is reported instead.
    Reset {
        from: u64,
        to: u64,
        counted: u64,
    },
}

/// The step from `prev` to `new` for a counter of `modulus` that moves at most `max_step`
/// between readings.
pub fn counter_step(prev: Option<u64>, new: u64, modulus: u64, max_step: u64) -> CounterStep {
    let Some(prev) = prev else {
        return CounterStep::Baseline;
    };
    if new == prev {
        return CounterStep::Unchanged;
    }
    if new > prev {
        // A large jump up could be a reset to a preset, but counting it is the lesser harm
        // than dropping real production, and a jump past max_step is reported by the caller.
        return CounterStep::Up(new - prev);
    }
    let wrapped = (modulus - prev) + new;
    if prev < modulus && wrapped <= max_step {
        CounterStep::Rollover(wrapped)
    } else {
        CounterStep::Reset {
            from: prev,
            to: new,
            counted: if new <= max_step { new } else { 0 },
        }
    }
}

/// One fact a reading yields, before the store adds the order, the limits and the id.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    Count {
        counts: Counts,
        quantity: u64,
    },
    State {
        state: MachineState,
        reason: Option<ReasonCodeId>,
    },
    Sample {
        value: f64,
    },
    Scan {
        lot: LotId,
    },
}

/// Something worth telling the people who run the line, kept beside the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    CounterReset {
        from: u64,
        to: u64,
        counted: u64,
    },
    /// A state code the map does not know: recorded as `unknown`.
    UnmappedState {
        value: String,
    },
}

/// Why a reading cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("counter value {value} is not a whole number from 0 to {max}")]
    NotACounter { value: String, max: u64 },
    #[error("sample value {0} is not a finite number")]
    NotANumber(String),
    #[error("scan value is not a lot id: {0}")]
    NotAScan(String),
}

/// What one reading comes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Interpreted {
    pub facts: Vec<Fact>,
    pub notices: Vec<Notice>,
    pub memory: TagMemory,
}

/// Interprets `value` for a tag mapped by `mapping`, given what the tag left behind.
pub fn interpret(
    mapping: &Mapping,
    memory: &TagMemory,
    value: &TagValue,
) -> Result<Interpreted, Rejected> {
    let mut out = Interpreted {
        facts: Vec::new(),
        notices: Vec::new(),
        memory: memory.clone(),
    };
    match mapping {
        Mapping::Counter {
            counts,
            modulus,
            max_step,
        } => {
            let new = value.as_counter().filter(|v| v < modulus).ok_or_else(|| {
                Rejected::NotACounter {
                    value: value.key(),
                    max: modulus - 1,
                }
            })?;
            let quantity = match counter_step(memory.counter, new, *modulus, *max_step) {
                CounterStep::Baseline | CounterStep::Unchanged => 0,
                CounterStep::Up(n) | CounterStep::Rollover(n) => n,
                CounterStep::Reset { from, to, counted } => {
                    out.notices.push(Notice::CounterReset { from, to, counted });
                    counted
                }
            };
            if quantity > 0 {
                out.facts.push(Fact::Count {
                    counts: *counts,
                    quantity,
                });
            }
            out.memory.counter = Some(new);
        }
        Mapping::State { values } => {
            let key = value.key();
            let (state, reason) = match values.get(&key) {
                Some((s, r)) => (*s, r.clone()),
                None => {
                    out.notices
                        .push(Notice::UnmappedState { value: key.clone() });
                    (MachineState::Unknown, None)
                }
            };
            // The memory is the meaning, not the code: two codes that mean the same state
            // and reason are one state.
            let meaning = state_memory(state, reason.as_ref());
            if memory.last.as_deref() != Some(meaning.as_str()) {
                out.facts.push(Fact::State { state, reason });
                out.memory.last = Some(meaning);
            }
        }
        Mapping::Sample { .. } => {
            let v = value
                .as_f64()
                .ok_or_else(|| Rejected::NotANumber(value.key()))?;
            out.facts.push(Fact::Sample { value: v });
        }
        Mapping::Scan { .. } => {
            let TagValue::Text(lot) = value else {
                return Err(Rejected::NotAScan(value.key()));
            };
            let lot = lot.trim();
            // A reader's tag holds the last code read: a new code is a new scan; an empty
            // tag (cleared by the PLC) is not a scan.
            if !lot.is_empty() && memory.last.as_deref() != Some(lot) {
                let id = LotId::new(lot.to_owned())
                    .map_err(|e| Rejected::NotAScan(format!("{lot:?}: {e}")))?;
                out.facts.push(Fact::Scan { lot: id });
                out.memory.last = Some(lot.to_owned());
            }
        }
    }
    Ok(out)
}

/// The memory a state tag keeps once its machine is marked unknown (a link went down), so the
/// first value after the link returns is recorded even when it equals the one before.
pub fn state_memory(state: MachineState, reason: Option<&ReasonCodeId>) -> String {
    match reason {
        Some(r) => format!("{}:{}", state.as_str(), r.as_str()),
        None => state.as_str().to_owned(),
    }
}

/// The event id of the `index`th fact from a reading: the same connector, tag, source time and
/// value always give the same id, so a value delivered twice is one event. It is a UUIDv7 whose
/// time is the source time, so ids still sort by when things happened.
pub fn event_id(connector: &str, tag: &str, at: Timestamp, value: &TagValue, index: u8) -> EventId {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [connector.as_bytes(), tag.as_bytes(), value.key().as_bytes()] {
        ctx.update(&(part.len() as u32).to_be_bytes());
        ctx.update(part);
    }
    ctx.update(&at.as_micros().to_be_bytes());
    ctx.update(&[index]);
    let digest = ctx.finish();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest.as_ref()[..10]);
    let millis = u64::try_from(at.as_micros().div_euclid(1_000)).unwrap_or(0);
    EventId::from_parts(millis, random)
}

#[cfg(test)]
mod tests;
