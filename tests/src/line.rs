//! A simulated press line: presses that run a little below their ideal rate, jam, break a tool,
//! stop for a moment and make some scrap, exposed the way a real line's PLCs are — JSON on an
//! MQTT broker and variables on an OPC UA server ([`outputs`]) — while keeping their own tally
//! of what they did, so a test can hold the hub's OEE against what the machines produced.
//!
//! The model is pure and deterministic (a seed, one-second ticks, times given by the caller):
//! the demo runs it from a few hours back up to now in one go, then live, and the end-to-end
//! test runs the same code for its history only.

pub mod outputs;

use crate::rng::Rng;

/// The state codes a press's PLC shows, and what the edge's state maps say they mean.
pub const RUNNING: i32 = 1;
pub const JAM: i32 = 2;
pub const TOOL: i32 = 3;
/// The `states` table of a state tag for these codes (TOML inline table).
pub const STATE_MAP: &str = r#"{ "1" = "running", "2" = "down:DOWN.JAM", "3" = "down:DOWN.TOOL" }"#;

/// The hub's small-stop threshold (docs/reports.md): a stop shorter than this is a
/// performance loss, not an availability loss. The model never draws a stop near it, so the
/// tally cannot disagree with the hub about which side a stop falls on.
pub const SMALL_STOP_S: u64 = 120;

/// How a press behaves. Rates are per second of running; durations in seconds.
#[derive(Debug, Clone)]
pub struct PressSpec {
    pub equipment: String,
    /// The routing's ideal cycle time, the hub's yardstick for performance.
    pub ideal_cycle_ms: u64,
    /// Parts per second while running, as a fraction of the ideal rate.
    pub speed: f64,
    pub scrap_per_million: u64,
    /// Mean running seconds between jams, tool breaks and short stops.
    pub jam_every_s: u64,
    pub tool_every_s: u64,
    pub small_every_s: u64,
}

impl PressSpec {
    /// A press of the demo's plants: OEE around 70 % (availability ~88 %, performance ~83 %,
    /// quality ~97.5 %), varied a little by `variant`.
    pub fn typical(equipment: &str, ideal_cycle_ms: u64, variant: u64) -> Self {
        let v = (variant % 5) as f64;
        Self {
            equipment: equipment.to_owned(),
            ideal_cycle_ms,
            speed: 0.90 + 0.015 * v,
            scrap_per_million: 18_000 + 3_000 * (variant % 4),
            jam_every_s: 2_400 + 300 * (variant % 3),
            tool_every_s: 4 * 3600,
            small_every_s: 420 + 60 * (variant % 4),
        }
    }
}

/// What the press's PLC shows at one instant: its counters (free-running, 16-bit) and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub at_ms: i64,
    pub good: u16,
    pub scrap: u16,
    pub state: i32,
}

/// What the press really did: the figures the hub should arrive at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub good: u64,
    pub scrap: u64,
    /// Seconds stopped in stops of at least [`SMALL_STOP_S`] (availability losses).
    pub stop_s: u64,
    /// Seconds in shorter stops (performance losses).
    pub small_stop_s: u64,
    /// Stops of at least [`SMALL_STOP_S`] by state code.
    pub stops: Vec<(i32, u64)>,
}

impl Tally {
    pub fn total(&self) -> u64 {
        self.good + self.scrap
    }
}

#[derive(Debug, Clone)]
pub struct Press {
    pub spec: PressSpec,
    rng: Rng,
    /// The instant the model has reached, on a whole second.
    now_ms: i64,
    state: i32,
    /// Seconds left in the current stop.
    stop_left: u64,
    /// Parts begun but not finished, in millionths of a part.
    progress: u64,
    /// The PLC's counters as they read (they start somewhere, as a real PLC's do).
    good_counter: u16,
    scrap_counter: u16,
    tally: Tally,
    /// When the current state began.
    since_ms: i64,
}

impl Press {
    /// A press running from `start_ms` (rounded down to a whole second).
    pub fn new(spec: PressSpec, seed: u64, start_ms: i64) -> Self {
        let mut rng = Rng::new(seed);
        let start = start_ms - start_ms.rem_euclid(1000);
        let good_counter = rng.below(65_536) as u16;
        let scrap_counter = rng.below(1_000) as u16;
        Self {
            spec,
            rng,
            now_ms: start,
            state: RUNNING,
            stop_left: 0,
            progress: 0,
            good_counter,
            scrap_counter,
            tally: Tally::default(),
            since_ms: start,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            at_ms: self.now_ms,
            good: self.good_counter,
            scrap: self.scrap_counter,
            state: self.state,
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    pub fn state(&self) -> i32 {
        self.state
    }

    /// The tally up to now, the current stop counted as far as it has gone.
    pub fn tally(&self) -> Tally {
        let mut t = self.tally.clone();
        if self.state != RUNNING {
            close_stop(&mut t, self.state, self.now_ms - self.since_ms);
        }
        t
    }

    /// Runs the model up to `until_ms`, a second at a time; returns what the PLC showed at each
    /// state change, at least every `every_s` seconds and at the end (never two snapshots in
    /// one second, so a server sampling every few hundred milliseconds reports each of them).
    pub fn advance(&mut self, until_ms: i64, every_s: u64) -> Vec<Snapshot> {
        let mut out = Vec::new();
        let mut last_out = self.now_ms;
        while self.now_ms + 1000 <= until_ms {
            let before = self.state;
            self.tick();
            let due = (self.now_ms - last_out) as u64 >= every_s.max(1) * 1000;
            if self.state != before || due {
                out.push(self.snapshot());
                last_out = self.now_ms;
            }
        }
        // The PLC shows where it stands now, not where it stood at the last periodic snapshot.
        if last_out < self.now_ms {
            out.push(self.snapshot());
        }
        out
    }

    /// Ends a stop a second from now, if one is going on (for a run that must finish running,
    /// so that the last interval is not still open when figures are compared). A second on, so
    /// that it is not in the same second as the snapshot [`Press::advance`] ended with.
    pub fn end_stop(&mut self) -> Option<Snapshot> {
        if self.state == RUNNING {
            return None;
        }
        self.now_ms += 1000;
        self.change(RUNNING);
        self.stop_left = 0;
        Some(self.snapshot())
    }

    fn change(&mut self, to: i32) {
        if self.state != RUNNING {
            close_stop(&mut self.tally, self.state, self.now_ms - self.since_ms);
        }
        self.state = to;
        self.since_ms = self.now_ms;
    }

    fn tick(&mut self) {
        self.now_ms += 1000;
        if self.state != RUNNING {
            self.stop_left = self.stop_left.saturating_sub(1);
            if self.stop_left == 0 {
                self.change(RUNNING);
            }
            return;
        }
        // Parts: the ideal rate times the press's speed, ±5 % from one second to the next.
        let per_s = 1e6 * 1000.0 / self.spec.ideal_cycle_ms as f64 * self.spec.speed;
        let wobble = 0.95 + self.rng.below(101) as f64 / 1000.0;
        self.progress += (per_s * wobble) as u64;
        while self.progress >= 1_000_000 {
            self.progress -= 1_000_000;
            if self.rng.chance(self.spec.scrap_per_million) {
                self.scrap_counter = self.scrap_counter.wrapping_add(1);
                self.tally.scrap += 1;
            } else {
                self.good_counter = self.good_counter.wrapping_add(1);
                self.tally.good += 1;
            }
        }
        // Stops, each drawn well clear of the small-stop threshold.
        let per_s = |every: u64| 1_000_000 / every.max(1);
        if self.rng.chance(per_s(self.spec.tool_every_s)) {
            self.stop_left = self.rng.between(600, 1_200);
            self.change(TOOL);
        } else if self.rng.chance(per_s(self.spec.jam_every_s)) {
            self.stop_left = self.rng.between(SMALL_STOP_S + 30, 480);
            self.change(JAM);
        } else if self.rng.chance(per_s(self.spec.small_every_s)) {
            self.stop_left = self.rng.between(15, SMALL_STOP_S - 30);
            self.change(JAM);
        }
    }
}

fn close_stop(t: &mut Tally, state: i32, ms: i64) {
    let s = (ms / 1000) as u64;
    if s >= SMALL_STOP_S {
        t.stop_s += s;
        match t.stops.iter_mut().find(|(c, _)| *c == state) {
            Some((_, n)) => *n += s,
            None => t.stops.push((state, s)),
        }
    } else {
        t.small_stop_s += s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shift_of_a_typical_press_looks_like_a_plant() {
        let spec = PressSpec::typical("PRESS-01", 1000, 1);
        let mut p = Press::new(spec, 7, 0);
        let snaps = p.advance(8 * 3600 * 1000, 30);
        p.end_stop();
        let t = p.tally();
        let ppt = 8.0 * 3600.0;
        let run = ppt - t.stop_s as f64;
        let (a, perf, q) = (
            run / ppt,
            t.total() as f64 / run,
            t.good as f64 / t.total() as f64,
        );
        let oee = a * perf * q;
        assert!(
            (0.60..=0.85).contains(&oee),
            "OEE {oee:.3} (A {a:.3} P {perf:.3} Q {q:.3})"
        );
        assert!(
            t.scrap > 0 && !t.stops.is_empty() && t.small_stop_s > 0,
            "{t:?}"
        );
        // Snapshots are on whole, strictly increasing seconds.
        assert!(snaps.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        assert!(snaps.iter().all(|s| s.at_ms % 1000 == 0));
    }

    #[test]
    fn counters_move_by_what_the_tally_counted() {
        let mut p = Press::new(PressSpec::typical("P", 500, 0), 3, 1_000);
        let first = p.snapshot();
        let snaps = p.advance(3 * 3600 * 1000, 10);
        let last = snaps.last().copied().unwrap_or(first);
        let t = p.tally();
        assert_eq!(
            u64::from(last.good.wrapping_sub(first.good)),
            t.good % 65_536
        );
        assert_eq!(
            u64::from(last.scrap.wrapping_sub(first.scrap)),
            t.scrap % 65_536
        );
    }
}
