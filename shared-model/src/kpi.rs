//! KPI arithmetic: OEE and its components, scrap rate, on-time rate, and the small-stop
//! threshold. The hub's reports compute every ratio they show through this module.
//!
//! Everything here is a pure function of summed counts and durations. Ratios come back as
//! `Option<f64>`: `None` means the denominator was zero, so a report can show `null` ("n/a")
//! instead of a NaN or a division panic. Performance (and so OEE) may exceed 1.0, see
//! [`OeeComponents::performance`].
//!
//! Roll-ups (machines → line → site → company, hours → days → months) add the components and
//! divide once at the end. Averaging percentages is wrong: see [`OeeComponents`].

use std::iter::Sum;
use std::ops::{Add, AddAssign};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The small-stop threshold, in whole seconds: an unplanned stop shorter than this is a small
/// stop. Operators cannot be asked for a reason every time a jam clears in seconds, so these are
/// booked as a performance loss (the machine simply produced less in its run time) rather than
/// as availability loss. A stop of exactly this length or longer is a real stop.
pub const SMALL_STOP_SECS: u64 = 120;
/// [`SMALL_STOP_SECS`] as a [`Duration`].
pub const SMALL_STOP: Duration = Duration::from_secs(SMALL_STOP_SECS);
/// [`SMALL_STOP_SECS`] in microseconds, the unit of the hub's rollups and of [`Timestamp`].
///
/// [`Timestamp`]: crate::Timestamp
#[allow(clippy::cast_possible_wrap)] // 120 fits any integer type
pub const SMALL_STOP_MICROS: i64 = SMALL_STOP_SECS as i64 * 1_000_000;
/// [`SMALL_STOP_SECS`] as a PostgreSQL interval literal, for SQL that compares a stop's age
/// with `now()` (`now() - c.at < interval '120 seconds'`). A unit test keeps it equal to
/// [`SMALL_STOP_SECS`].
pub const SMALL_STOP_SQL_INTERVAL: &str = "interval '120 seconds'";

/// Whether an unplanned stop of this length is a small stop (performance loss) rather than
/// downtime (availability loss).
pub fn is_small_stop_micros(duration_micros: i64) -> bool {
    duration_micros < SMALL_STOP_MICROS
}

/// The summed components OEE is computed from, for one machine and period or for any roll-up of
/// them: the hub's report queries return exactly these sums.
///
/// Durations may be in any one unit (the hub uses microseconds), as long as all three use the
/// same: every result is a ratio of two of them or of two counts. They are `f64` because the
/// hub's SQL sums arrive as `float8`.
///
/// # Why components, not percentages, are summed
///
/// A machine's OEE is a ratio, and the ratio of two sums is not the average of the ratios. A
/// 24-hour line at 80 % and a 1-hour test cell at 20 % did not run at 50 %: almost all of the
/// planned time was on the line. Adding these components and then calling
/// [`OeeComponents::oee`] weighs each machine by its planned time; an average (weighted or not)
/// of percentages also breaks the `OEE = A × P × Q` identity for the group, so the dashboards
/// would show factors that do not multiply to the headline number.
///
/// # Quality counts parts
///
/// [`OeeComponents::quality`] is `good / total`, as `domain.md` and `product.md` define it, and
/// OEE is `A × P × Q = ideal time × Q / planned time`. For one product this is exactly the
/// "equivalently" form `good × ideal cycle time / planned time`. For a roll-up over products
/// with different ideal cycle times the two forms differ (a scrapped slow part and a scrapped
/// fast part weigh the same here); the reports oracle checks this count-based form.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct OeeComponents {
    /// Planned production time: shift time minus planned stops (breaks, planned maintenance).
    pub planned_time: f64,
    /// Stop time that counts against availability: unplanned stops that are not small stops.
    pub stop_time: f64,
    /// Ideal cycle time × total count: how long the output would have taken at rated speed.
    pub ideal_time: f64,
    pub good: f64,
    pub scrap: f64,
}

/// Every figure the OEE report shows for one set of components.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OeeMeasures {
    pub run_time: f64,
    pub total_count: f64,
    pub availability: Option<f64>,
    pub performance: Option<f64>,
    pub quality: Option<f64>,
    pub oee: Option<f64>,
}

impl OeeComponents {
    /// The components of one machine running one product over one period, from whole
    /// milliseconds and counts (the worked example's terms). `down_time_ms` is the unplanned
    /// stop time that counts against availability; small stops belong in neither it nor
    /// `planned_time_ms`, because they already show up as lost performance.
    #[allow(clippy::cast_precision_loss)] // exact below 2^53, far beyond any real total
    pub fn for_equipment(
        planned_time_ms: u64,
        down_time_ms: u64,
        ideal_cycle_time_ms: u64,
        good: u64,
        scrap: u64,
    ) -> Self {
        let total = good.saturating_add(scrap);
        Self {
            planned_time: planned_time_ms as f64,
            stop_time: down_time_ms as f64,
            ideal_time: ideal_cycle_time_ms.saturating_mul(total) as f64,
            good: good as f64,
            scrap: scrap as f64,
        }
    }

    /// Checks that every component is a finite, non-negative sum. A NaN or a negative count
    /// means a rollup went wrong upstream (a correction subtracted what was never added).
    fn debug_check(&self) {
        debug_assert!(
            [
                self.planned_time,
                self.stop_time,
                self.ideal_time,
                self.good,
                self.scrap,
            ]
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0),
            "OEE components must be finite and non-negative: {self:?}"
        );
    }

    /// Planned production time minus stop time, never below zero (stop time is clamped to the
    /// planned time per hour by the hub, but a roll-up is not trusted to keep that).
    pub fn run_time(&self) -> f64 {
        (self.planned_time - self.stop_time).max(0.0)
    }

    /// Good plus scrap.
    pub fn total_count(&self) -> f64 {
        self.good + self.scrap
    }

    /// Run time / planned production time.
    pub fn availability(&self) -> Option<f64> {
        ratio(self.run_time(), self.planned_time)
    }

    /// Ideal time / run time. Above 1.0 means the machine ran faster than its ideal cycle time,
    /// which in practice means the master data's ideal cycle time is wrong (or counts are
    /// double-booked). It is deliberately not clamped: a clamp would hide the bad master data
    /// and make A × P × Q disagree with [`OeeComponents::oee`].
    pub fn performance(&self) -> Option<f64> {
        ratio(self.ideal_time, self.run_time())
    }

    /// Good / total.
    pub fn quality(&self) -> Option<f64> {
        ratio(self.good, self.total_count())
    }

    /// A × P × Q when all three are defined. Otherwise, when there is planned time (the
    /// machine never ran, or nothing was counted), `ideal × Q / planned`, which is 0 without
    /// counts: OEE is still defined over a planned shift in which nothing was made.
    pub fn oee(&self) -> Option<f64> {
        self.measures().oee
    }

    /// Every figure at once, each computed once.
    pub fn measures(&self) -> OeeMeasures {
        self.debug_check();
        let (ppt, ideal, good) = (self.planned_time, self.ideal_time, self.good);
        let run = self.run_time();
        let total = self.total_count();
        let (a, p, q) = (self.availability(), self.performance(), self.quality());
        let oee = match (a, p, q) {
            (Some(a), Some(p), Some(q)) => Some(a * p * q),
            // With no run time at all, OEE is simply good × ideal / PPT = 0 when PPT > 0. The
            // expression is kept exactly as the reports have always computed it (same rounding).
            _ if ppt > 0.0 => Some(ideal * if total > 0.0 { good / total } else { 0.0 } / ppt),
            _ => None,
        };
        OeeMeasures {
            run_time: run,
            total_count: total,
            availability: a,
            performance: p,
            quality: q,
            oee,
        }
    }
}

/// Componentwise sum: what every roll-up does before dividing.
impl Add for OeeComponents {
    type Output = Self;

    fn add(self, rhs: Self) -> Self {
        Self {
            planned_time: self.planned_time + rhs.planned_time,
            stop_time: self.stop_time + rhs.stop_time,
            ideal_time: self.ideal_time + rhs.ideal_time,
            good: self.good + rhs.good,
            scrap: self.scrap + rhs.scrap,
        }
    }
}

impl AddAssign for OeeComponents {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

impl Sum for OeeComponents {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), Add::add)
    }
}

impl<'a> Sum<&'a OeeComponents> for OeeComponents {
    fn sum<I: Iterator<Item = &'a Self>>(iter: I) -> Self {
        iter.copied().sum()
    }
}

/// Planned production time: shift time minus planned stops (breaks, planned maintenance).
/// Saturates at zero when the planned stops cover the whole shift.
pub fn planned_production_time_ms(shift_ms: u64, planned_stops_ms: u64) -> u64 {
    shift_ms.saturating_sub(planned_stops_ms)
}

/// `num / den`, or `None` when `den` is not positive: the one division every report ratio
/// (shares, rates, OEE factors) goes through.
pub fn ratio(num: f64, den: f64) -> Option<f64> {
    (den > 0.0).then(|| num / den)
}

/// Scrap / (good + scrap); `None` when nothing was produced.
pub fn scrap_rate(good: f64, scrap: f64) -> Option<f64> {
    debug_assert!(
        good >= 0.0 && scrap >= 0.0,
        "counts must not be negative: good {good}, scrap {scrap}"
    );
    ratio(scrap, good + scrap)
}

/// On-time delivery: orders ended by their due time / orders due in the period. `None` when no
/// order was due.
pub fn on_time_rate(on_time: f64, due: f64) -> Option<f64> {
    debug_assert!(
        on_time <= due,
        "more orders on time ({on_time}) than due ({due})"
    );
    ratio(on_time, due)
}

#[cfg(test)]
mod tests {
    //! These tests prove the KPI arithmetic against the worked example in `domain.md` to four
    //! decimal places, show with two machines of very different sizes that a roll-up must sum
    //! components (the average of OEEs is a different, wrong number), check that every zero
    //! denominator gives `None`, and pin the small-stop threshold in all its units. Property
    //! tests then check, over random machines, that `oee()` equals A × P × Q and, for one
    //! product, `good × ideal cycle time / planned time`.

    use super::*;
    use proptest::prelude::*;

    const MIN: u64 = 60_000;
    const TOLERANCE: f64 = 1e-4;

    fn close(actual: Option<f64>, expected: f64) -> bool {
        actual.is_some_and(|a| (a - expected).abs() < TOLERANCE)
    }

    /// The domain notes' worked example: 480 min shift, 30 min break, 45 min down, ideal cycle
    /// 2.0 s, 10,800 made of which 216 scrap.
    fn worked_example() -> OeeComponents {
        let ppt = planned_production_time_ms(480 * MIN, 30 * MIN);
        assert_eq!(ppt, 450 * MIN);
        OeeComponents::for_equipment(ppt, 45 * MIN, 2_000, 10_800 - 216, 216)
    }

    #[test]
    fn worked_example_from_the_domain_notes() {
        let c = worked_example();
        let m = c.measures();
        assert_eq!(m.run_time, (405 * MIN) as f64);
        assert_eq!(m.total_count, 10_800.0);
        assert!(close(m.availability, 0.90), "{m:?}");
        assert!(close(m.performance, 0.8889), "{m:?}");
        assert!(close(m.quality, 0.98), "{m:?}");
        assert!(close(m.oee, 0.784), "{m:?}");
        // OEE = 10,584 × 2 s / 27,000 s, and equals A × P × Q.
        assert!(close(c.oee(), 10_584.0 * 2.0 / 27_000.0));
        assert_eq!(c.availability(), m.availability);
        assert_eq!(c.performance(), m.performance);
        assert_eq!(c.quality(), m.quality);
        assert!(close(scrap_rate(10_584.0, 216.0), 0.02));
        // The unit does not matter: the same shift in microseconds gives the same figures.
        let micros = OeeComponents {
            planned_time: c.planned_time * 1000.0,
            stop_time: c.stop_time * 1000.0,
            ideal_time: c.ideal_time * 1000.0,
            ..c
        };
        assert!(close(micros.oee(), 0.784));
    }

    #[test]
    fn roll_up_sums_components_instead_of_averaging() {
        // A full shift on the big line (OEE 78.4 %) and one hour on a small test cell running a
        // slow product at 25 %.
        let big = worked_example();
        let small = OeeComponents::for_equipment(60 * MIN, 30 * MIN, 10_000, 90, 10);
        assert!(close(small.oee(), 0.25));

        let group = big + small;
        let group_oee = group.oee().unwrap();
        // ideal × Q / PPT over the sums: 22,600 s × (10,674 / 10,900) / 30,600 s.
        let expected = (21_600.0 + 1_000.0) * (10_674.0 / 10_900.0) / (27_000.0 + 3_600.0);
        assert!((group_oee - expected).abs() < TOLERANCE, "{group_oee}");
        assert!((group_oee - 0.7232).abs() < TOLERANCE, "{group_oee}");

        let average = (big.oee().unwrap() + small.oee().unwrap()) / 2.0;
        assert!((average - 0.517).abs() < TOLERANCE, "{average}");
        assert!(
            (group_oee - average).abs() > 0.2,
            "averaging would be off by 20 points"
        );

        // The factors of the roll-up still multiply to its OEE, across two cycle times.
        let apq =
            group.availability().unwrap() * group.performance().unwrap() * group.quality().unwrap();
        assert!((apq - group_oee).abs() < 1e-12);

        // Sum, AddAssign and Add agree, and summing nothing is the zero roll-up.
        let mut acc = OeeComponents::default();
        acc += big;
        acc += small;
        assert_eq!(acc, group);
        assert_eq!([big, small].into_iter().sum::<OeeComponents>(), group);
        assert_eq!([big, small].iter().sum::<OeeComponents>(), group);
        assert_eq!(
            std::iter::empty::<OeeComponents>().sum::<OeeComponents>(),
            OeeComponents::default()
        );
    }

    #[test]
    fn zero_denominators_give_none() {
        let nothing = OeeComponents::default().measures();
        assert_eq!(nothing.availability, None);
        assert_eq!(nothing.performance, None);
        assert_eq!(nothing.quality, None);
        assert_eq!(nothing.oee, None);

        // Down the whole shift: availability and OEE are 0, performance is undefined.
        let down = OeeComponents::for_equipment(8 * 60 * MIN, 9 * 60 * MIN, 2_000, 0, 0);
        assert_eq!(down.run_time(), 0.0, "run time stops at zero");
        assert_eq!(down.availability(), Some(0.0));
        assert_eq!(down.performance(), None);
        assert_eq!(down.quality(), None);
        assert_eq!(down.oee(), Some(0.0));

        // Parts booked while the machine was down the whole hour: OEE is ideal × Q / PPT.
        let booked_while_down = OeeComponents::for_equipment(60 * MIN, 60 * MIN, 1_000, 9, 1);
        assert_eq!(booked_while_down.performance(), None);
        assert!(close(booked_while_down.oee(), 10_000.0 * 0.9 / 3_600_000.0));

        // No ideal cycle time in the master data: quality still shows, OEE is 0.
        let no_ict = OeeComponents::for_equipment(60 * MIN, 0, 0, 9, 1);
        assert_eq!(no_ict.performance(), Some(0.0));
        assert!(close(no_ict.quality(), 0.9));
        assert_eq!(no_ict.oee(), Some(0.0));

        assert_eq!(scrap_rate(0.0, 0.0), None);
        assert_eq!(on_time_rate(0.0, 0.0), None);
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, -1.0), None);
        assert!(close(on_time_rate(3.0, 4.0), 0.75));
        assert_eq!(planned_production_time_ms(10, 20), 0);
    }

    #[test]
    fn performance_above_one_is_not_hidden() {
        // An ideal cycle time set too slow in master data: 1,000 parts at a "10 s" ideal in
        // one hour of run time is impossible, and the 2.78 performance must say so.
        let c = OeeComponents::for_equipment(60 * MIN, 0, 10_000, 1_000, 0);
        assert!(close(c.performance(), 10_000_000.0 / 3_600_000.0));
        assert!(c.oee().unwrap() > 1.0);
    }

    #[test]
    fn small_stop_threshold_in_every_unit() {
        assert_eq!(SMALL_STOP.as_secs(), SMALL_STOP_SECS);
        assert_eq!(
            u128::try_from(SMALL_STOP_MICROS).unwrap(),
            SMALL_STOP.as_micros()
        );
        assert_eq!(
            SMALL_STOP_SQL_INTERVAL,
            format!("interval '{SMALL_STOP_SECS} seconds'")
        );
        assert!(is_small_stop_micros(0));
        assert!(is_small_stop_micros(30_000_000));
        assert!(is_small_stop_micros(SMALL_STOP_MICROS - 1));
        assert!(!is_small_stop_micros(SMALL_STOP_MICROS));
        assert!(!is_small_stop_micros(45 * 60 * 1_000_000));
    }

    #[test]
    fn serde_round_trips() {
        let c = worked_example();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<OeeComponents>(&json).unwrap(), c);
        let bytes = postcard::to_stdvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<OeeComponents>(&bytes).unwrap(), c);
    }

    /// One machine running one product over one shift, with realistic magnitudes: up to 24 h
    /// planned, up to 10 min ideal cycle time, up to 100,000 parts.
    fn machine(ict: u64) -> impl Strategy<Value = OeeComponents> {
        (
            1..=24 * 60 * MIN,
            0..=24 * 60 * MIN,
            0..=100_000u64,
            0..=10_000u64,
        )
            .prop_map(move |(planned, down, good, scrap)| {
                OeeComponents::for_equipment(planned, down, ict, good, scrap)
            })
    }

    fn assert_identity(c: &OeeComponents) -> Result<(), TestCaseError> {
        if let (Some(a), Some(p), Some(q), Some(oee)) =
            (c.availability(), c.performance(), c.quality(), c.oee())
        {
            // Relative to the magnitude: performance is unbounded when ideal time is wrong.
            let tolerance = 1e-9 * oee.abs().max(1.0);
            prop_assert!(
                (a * p * q - oee).abs() <= tolerance,
                "{c:?}: {a}*{p}*{q} != {oee}"
            );
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn oee_is_a_times_p_times_q(ict in 0..=10 * MIN, c in machine(1_000)) {
            assert_identity(&c)?;
            let c = OeeComponents { ideal_time: c.ideal_time * ict as f64 / 1_000.0, ..c };
            assert_identity(&c)?;
        }

        #[test]
        fn one_product_oee_is_good_ideal_time_over_planned(
            ict in 0..=10 * MIN,
            parts in prop::collection::vec(machine(1), 1..8),
        ) {
            // With one ideal cycle time, ideal × Q = good × ict, for one machine and for the
            // roll-up, and the roll-up lies between its parts.
            let parts: Vec<OeeComponents> = parts
                .into_iter()
                .map(|c| OeeComponents { ideal_time: c.ideal_time * ict as f64, ..c })
                .collect();
            let group: OeeComponents = parts.iter().sum();
            for c in parts.iter().chain([&group]) {
                assert_identity(c)?;
                let want = c.good * ict as f64 / c.planned_time;
                let got = c.oee().unwrap();
                prop_assert!((got - want).abs() <= 1e-9 * want.max(1.0), "{c:?}: {got} != {want}");
            }
            let oees: Vec<f64> = parts.iter().filter_map(OeeComponents::oee).collect();
            let lo = oees.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = oees.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let g = group.oee().unwrap();
            let slack = 1e-9 * hi.max(1.0);
            prop_assert!(lo - slack <= g && g <= hi + slack, "{g} outside [{lo}, {hi}]");
        }
    }
}
