//! KPI arithmetic: OEE and its components, scrap rate, first pass yield, on-time delivery and
//! the downtime Pareto.
//!
//! Everything here is a pure function of counts and durations in milliseconds. Ratios come back
//! as `Option<f64>` in `0.0..=1.0` (performance may exceed 1.0, see
//! [`OeeComponents::performance`]): `None` means the denominator was zero, so a report can show
//! "n/a" instead of a NaN or a division panic.
//!
//! Roll-ups (machines → line → site → company, shifts → days → months) add the components and
//! divide once at the end. Averaging percentages is wrong: see [`OeeComponents`].

use std::collections::BTreeMap;
use std::iter::Sum;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// The time and count totals that OEE is computed from, for one machine and period or for any
/// roll-up of them.
///
/// # Why components, not percentages, are summed
///
/// A machine's OEE is a ratio, and the ratio of two sums is not the average of the ratios. A
/// 24-hour line at 80 % and a 1-hour test cell at 20 % did not run at 50 %: almost all of the
/// planned time was on the line, so the group ran at about 77.5 %. The correct group figure is
/// `OEE_group = Σ(good × ideal cycle time) / Σ planned production time`, which is what adding
/// these components and then calling [`OeeComponents::oee`] computes. An average (weighted or
/// not) of percentages also breaks the `OEE = A × P × Q` identity for the group, so the
/// dashboards would show factors that do not multiply to the headline number.
///
/// # Quality is weighted by ideal time
///
/// [`OeeComponents::quality`] is `good_ideal_time_ms / ideal_time_ms`. For one product (one
/// ideal cycle time) this is exactly `good / total`, the textbook definition. For a roll-up over
/// products with different cycle times, it weighs each scrapped part by the machine time it
/// wasted, which is what keeps `A × P × Q == oee()` true for every roll-up; a count-based
/// quality would not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OeeComponents {
    /// Shift time minus planned stops (breaks, planned maintenance, no orders scheduled).
    pub planned_time_ms: u64,
    /// Planned production time minus unplanned stops longer than a small stop.
    pub run_time_ms: u64,
    /// Ideal cycle time × total count: how long the output would have taken at rated speed.
    pub ideal_time_ms: u64,
    /// Ideal cycle time × good count: the fully productive time.
    pub good_ideal_time_ms: u64,
    /// Good plus scrap.
    pub total_count: u64,
    pub good_count: u64,
}

impl OeeComponents {
    /// The components for one machine (or one product on one machine) over one period.
    ///
    /// `down_time_ms` is the unplanned stop time that counts against availability; small stops
    /// (see [`is_small_stop`]) belong in neither `down_time_ms` nor `planned_time_ms`, because
    /// they already show up as lost performance. All arithmetic saturates, so absurd inputs give
    /// absurd ratios rather than a panic or a wrapped value.
    pub fn for_equipment(
        planned_time_ms: u64,
        down_time_ms: u64,
        ideal_cycle_time_ms: u64,
        good: u64,
        scrap: u64,
    ) -> Self {
        let total = good.saturating_add(scrap);
        Self {
            planned_time_ms,
            run_time_ms: planned_time_ms.saturating_sub(down_time_ms),
            ideal_time_ms: ideal_cycle_time_ms.saturating_mul(total),
            good_ideal_time_ms: ideal_cycle_time_ms.saturating_mul(good),
            total_count: total,
            good_count: good,
        }
    }

    /// Run time / planned production time.
    pub fn availability(&self) -> Option<f64> {
        ratio(self.run_time_ms, self.planned_time_ms)
    }

    /// Ideal time / run time. Above 1.0 means the machine ran faster than its ideal cycle time,
    /// which in practice means the master data's ideal cycle time is wrong (or counts are
    /// double-booked). It is deliberately not clamped: a clamp would hide the bad master data
    /// and make A × P × Q disagree with [`OeeComponents::oee`].
    pub fn performance(&self) -> Option<f64> {
        ratio(self.ideal_time_ms, self.run_time_ms)
    }

    /// Good ideal time / ideal time, which is good / total for a single product (see the type's
    /// docs for why it is time-weighted). When no ideal time is known (an ideal cycle time of
    /// zero) it falls back to good / total, so the scrap picture is still shown; performance
    /// and OEE are then 0, so the identity A × P × Q = OEE still holds.
    pub fn quality(&self) -> Option<f64> {
        if self.ideal_time_ms > 0 {
            ratio(self.good_ideal_time_ms, self.ideal_time_ms)
        } else {
            ratio(self.good_count, self.total_count)
        }
    }

    /// Good ideal time / planned production time, which equals availability × performance ×
    /// quality whenever all three are defined. Computed directly rather than as the product so
    /// it is defined even when the machine never ran (OEE 0 over a planned shift) and carries a
    /// single rounding step.
    pub fn oee(&self) -> Option<f64> {
        ratio(self.good_ideal_time_ms, self.planned_time_ms)
    }
}

/// Componentwise sum, saturating: a roll-up never panics or wraps, and u64 milliseconds would
/// take half a billion years of machine time to saturate anyway.
impl Add for OeeComponents {
    type Output = Self;

    fn add(self, rhs: Self) -> Self {
        Self {
            planned_time_ms: self.planned_time_ms.saturating_add(rhs.planned_time_ms),
            run_time_ms: self.run_time_ms.saturating_add(rhs.run_time_ms),
            ideal_time_ms: self.ideal_time_ms.saturating_add(rhs.ideal_time_ms),
            good_ideal_time_ms: self
                .good_ideal_time_ms
                .saturating_add(rhs.good_ideal_time_ms),
            total_count: self.total_count.saturating_add(rhs.total_count),
            good_count: self.good_count.saturating_add(rhs.good_count),
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

/// The small-stop threshold: an unplanned stop shorter than this (2 min) is a small stop.
/// Operators cannot be asked for a reason every time a jam clears in seconds, so these are
/// booked as a performance loss (the machine simply produced less in its run time) rather
/// than as availability loss. A stop of exactly this length or longer is a real stop.
pub const SMALL_STOP_MS_MAX: u64 = 120_000;

/// Whether an unplanned stop of this length is a small stop (performance loss) rather than
/// downtime (availability loss).
pub fn is_small_stop(duration_ms: u64) -> bool {
    duration_ms < SMALL_STOP_MS_MAX
}

/// Scrap / (good + scrap); `None` when nothing was produced.
pub fn scrap_rate(good: u64, scrap: u64) -> Option<f64> {
    ratio(scrap, good.saturating_add(scrap))
}

/// First pass yield of an operation: units that passed without rework / units started.
/// `None` when nothing was started. Not clamped: a value above 1.0 means more units passed
/// than were started, which is a counting error the report should show, not hide.
pub fn first_pass_yield(passed_without_rework: u64, started: u64) -> Option<f64> {
    ratio(passed_without_rework, started)
}

/// On-time delivery: orders ended by their due time / orders due in the period. `None` when no
/// order was due.
pub fn on_time_rate(ended_by_due: u64, due_in_period: u64) -> Option<f64> {
    ratio(ended_by_due, due_in_period)
}

/// `num / den` as a float, or `None` for a zero denominator. The u64 → f64 conversion loses
/// precision only above 2^53, far beyond any real count or millisecond total.
#[allow(clippy::cast_precision_loss)]
fn ratio(num: u64, den: u64) -> Option<f64> {
    (den != 0).then(|| num as f64 / den as f64)
}

/// Stop time booked against one downtime reason, as read from equipment-state events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DowntimeEntry {
    /// The reason code (or its display name); entries with the same reason are merged.
    pub reason: String,
    pub duration_ms: u64,
    /// How many stops this entry stands for.
    pub count: u64,
    /// A planned stop (break, planned maintenance): not a loss, so excluded by default.
    pub planned: bool,
}

/// One bar of the downtime Pareto chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParetoRow {
    pub reason: String,
    pub duration_ms: u64,
    pub count: u64,
    /// This reason's share of the total duration, `0.0..=1.0`.
    pub share: f64,
    /// The running share up to and including this row; the last row is exactly 1.0 (or 0.0
    /// when the total duration is zero).
    pub cumulative_share: f64,
}

/// The downtime Pareto: duration and count per reason, largest first, with each reason's share
/// and the cumulative share ("these three reasons are 80 % of our downtime").
///
/// Entries with the same `reason` are merged. Planned stops are left out unless
/// `include_planned` is set, because a lunch break is not a loss to attack; the filter applies
/// per entry before merging. Rows are sorted by duration (descending), then count
/// (descending), then reason (ascending), so equal inputs always give the same chart.
pub fn downtime_pareto(
    entries: impl IntoIterator<Item = DowntimeEntry>,
    include_planned: bool,
) -> Vec<ParetoRow> {
    // A BTreeMap, not a HashMap: the merge is then deterministic before the sort, too.
    let mut merged: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in entries {
        if e.planned && !include_planned {
            continue;
        }
        let slot = merged.entry(e.reason).or_insert((0, 0));
        slot.0 = slot.0.saturating_add(e.duration_ms);
        slot.1 = slot.1.saturating_add(e.count);
    }

    let mut rows: Vec<(String, u64, u64)> = merged
        .into_iter()
        .map(|(reason, (duration_ms, count))| (reason, duration_ms, count))
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));

    // Totals in u128 so the sum of many u64 durations cannot saturate, and the cumulative share
    // is computed from the integer running sum so the last row is exactly 1.0 (no float drift).
    let total: u128 = rows.iter().map(|r| u128::from(r.1)).sum();
    let mut running: u128 = 0;
    rows.into_iter()
        .map(|(reason, duration_ms, count)| {
            running += u128::from(duration_ms);
            ParetoRow {
                reason,
                duration_ms,
                count,
                share: share_of(u128::from(duration_ms), total),
                cumulative_share: share_of(running, total),
            }
        })
        .collect()
}

#[allow(clippy::cast_precision_loss)]
fn share_of(part: u128, total: u128) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    //! These tests prove the KPI arithmetic against the worked example in `domain.md` to four
    //! decimal places, show with two machines of very different sizes that a roll-up must sum
    //! components (the average of OEEs is a different, wrong number), check that every zero
    //! denominator gives `None`, and pin the Pareto's merging, ordering, shares and planned-stop
    //! filter. Two property tests then check, over random machines, that `oee()` equals
    //! A × P × Q and that a roll-up's OEE lies between its parts' lowest and highest OEE.

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
        assert_eq!(c.run_time_ms, 405 * MIN);
        assert_eq!(c.total_count, 10_800);
        assert_eq!(c.good_count, 10_584);
        assert!(close(c.availability(), 0.90), "{:?}", c.availability());
        assert!(close(c.performance(), 0.8889), "{:?}", c.performance());
        assert!(close(c.quality(), 0.98), "{:?}", c.quality());
        assert!(close(c.oee(), 0.784), "{:?}", c.oee());
        // OEE = 10,584 × 2 s / 27,000 s, and equals A × P × Q.
        assert!(close(c.oee(), 10_584.0 * 2.0 / 27_000.0));
        let apq = c.availability().unwrap() * c.performance().unwrap() * c.quality().unwrap();
        assert!(close(c.oee(), apq));
        assert!(close(scrap_rate(10_584, 216), 0.02));
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
        let expected = (10_584.0 * 2_000.0 + 90.0 * 10_000.0) / (450.0 * 60_000.0 + 3_600_000.0);
        assert!((group_oee - expected).abs() < TOLERANCE, "{group_oee}");
        assert!((group_oee - 0.7212).abs() < TOLERANCE, "{group_oee}");

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
        let nothing = OeeComponents::default();
        assert_eq!(nothing.availability(), None);
        assert_eq!(nothing.performance(), None);
        assert_eq!(nothing.quality(), None);
        assert_eq!(nothing.oee(), None);

        // Down the whole shift: availability and OEE are 0, performance is undefined.
        let down = OeeComponents::for_equipment(8 * 60 * MIN, 9 * 60 * MIN, 2_000, 0, 0);
        assert_eq!(down.run_time_ms, 0, "run time saturates at zero");
        assert_eq!(down.availability(), Some(0.0));
        assert_eq!(down.performance(), None);
        assert_eq!(down.quality(), None);
        assert_eq!(down.oee(), Some(0.0));

        // No ideal cycle time in the master data: quality falls back to counts.
        let no_ict = OeeComponents::for_equipment(60 * MIN, 0, 0, 9, 1);
        assert_eq!(no_ict.performance(), Some(0.0));
        assert!(close(no_ict.quality(), 0.9));
        assert_eq!(no_ict.oee(), Some(0.0));

        assert_eq!(scrap_rate(0, 0), None);
        assert_eq!(first_pass_yield(0, 0), None);
        assert_eq!(on_time_rate(0, 0), None);
        assert!(close(first_pass_yield(45, 50), 0.9));
        assert!(close(on_time_rate(3, 4), 0.75));
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
    fn small_stops() {
        assert!(is_small_stop(0));
        assert!(is_small_stop(30_000));
        assert!(is_small_stop(SMALL_STOP_MS_MAX - 1));
        assert!(!is_small_stop(SMALL_STOP_MS_MAX));
        assert!(!is_small_stop(45 * MIN));
    }

    fn entry(reason: &str, minutes: u64, count: u64, planned: bool) -> DowntimeEntry {
        DowntimeEntry {
            reason: reason.into(),
            duration_ms: minutes * MIN,
            count,
            planned,
        }
    }

    fn summary(rows: &[ParetoRow]) -> Vec<(&str, u64, u64)> {
        rows.iter()
            .map(|r| (r.reason.as_str(), r.duration_ms / MIN, r.count))
            .collect()
    }

    #[test]
    fn pareto_merges_sorts_and_accumulates() {
        let entries = vec![
            entry("jam", 10, 4, false),
            entry("tool_change", 30, 1, false),
            entry("lunch", 60, 1, true),
            entry("jam", 20, 6, false),
            entry("no_material", 30, 3, false),
            entry("cleaning", 10, 10, false),
        ];
        let rows = downtime_pareto(entries.clone(), false);
        // jam merges to 30 min over 10 stops; the three 30 min reasons are ordered by count;
        // lunch is a planned stop and left out.
        assert_eq!(
            summary(&rows),
            vec![
                ("jam", 30, 10),
                ("no_material", 30, 3),
                ("tool_change", 30, 1),
                ("cleaning", 10, 10),
            ]
        );
        let shares: Vec<f64> = rows.iter().map(|r| r.share).collect();
        assert_eq!(shares, vec![0.3, 0.3, 0.3, 0.1]);
        let cumulative: Vec<f64> = rows.iter().map(|r| r.cumulative_share).collect();
        for (actual, expected) in cumulative.iter().zip([0.3, 0.6, 0.9, 1.0]) {
            assert!((actual - expected).abs() < 1e-12, "{cumulative:?}");
        }
        assert_eq!(rows.last().unwrap().cumulative_share, 1.0);

        // Asked for, planned stops come in and take the top spot.
        let with_planned = downtime_pareto(entries, true);
        assert_eq!(with_planned[0].reason, "lunch");
        assert_eq!(with_planned.len(), 5);
        assert_eq!(with_planned.last().unwrap().cumulative_share, 1.0);
    }

    #[test]
    fn pareto_ties_break_on_reason_name() {
        let rows = downtime_pareto(
            vec![entry("b", 5, 1, false), entry("a", 5, 1, false)],
            false,
        );
        assert_eq!(summary(&rows), vec![("a", 5, 1), ("b", 5, 1)]);
    }

    #[test]
    fn pareto_edge_cases() {
        assert!(downtime_pareto(Vec::new(), false).is_empty());
        // Only planned stops, excluded: nothing to show.
        assert!(downtime_pareto(vec![entry("lunch", 30, 1, true)], false).is_empty());
        // Zero total duration: rows, but all shares are zero rather than NaN.
        let rows = downtime_pareto(
            vec![entry("x", 0, 2, false), entry("y", 0, 1, false)],
            false,
        );
        assert_eq!(summary(&rows), vec![("x", 0, 2), ("y", 0, 1)]);
        assert!(
            rows.iter()
                .all(|r| r.share == 0.0 && r.cumulative_share == 0.0)
        );
        // Durations near u64::MAX neither panic nor overflow the total.
        let rows = downtime_pareto(
            vec![
                DowntimeEntry {
                    reason: "a".into(),
                    duration_ms: u64::MAX,
                    count: 1,
                    planned: false,
                },
                DowntimeEntry {
                    reason: "b".into(),
                    duration_ms: u64::MAX,
                    count: 1,
                    planned: false,
                },
            ],
            false,
        );
        assert_eq!(rows[1].cumulative_share, 1.0);
        assert!((rows[0].share - 0.5).abs() < 1e-12);
    }

    #[test]
    fn serde_round_trips() {
        let c = worked_example();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<OeeComponents>(&json).unwrap(), c);
        let bytes = postcard::to_stdvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<OeeComponents>(&bytes).unwrap(), c);

        let rows = downtime_pareto(vec![entry("jam", 3, 2, false)], false);
        let json = serde_json::to_string(&rows).unwrap();
        assert_eq!(serde_json::from_str::<Vec<ParetoRow>>(&json).unwrap(), rows);
    }

    /// One machine over one shift, with realistic magnitudes: up to 24 h planned, up to 10 min
    /// ideal cycle time, up to 100,000 parts.
    fn machine() -> impl Strategy<Value = OeeComponents> {
        (
            1..=24 * 60 * MIN,
            0..=24 * 60 * MIN,
            0..=10 * MIN,
            0..=100_000u64,
            0..=10_000u64,
        )
            .prop_map(|(planned, down, ict, good, scrap)| {
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
        fn oee_is_a_times_p_times_q(c in machine()) {
            assert_identity(&c)?;
        }

        #[test]
        fn roll_up_is_consistent_and_bounded(parts in prop::collection::vec(machine(), 1..8)) {
            let group: OeeComponents = parts.iter().sum();
            assert_identity(&group)?;
            let oees: Vec<f64> = parts.iter().filter_map(OeeComponents::oee).collect();
            // Every generated part has planned time, so every part and the group have an OEE.
            prop_assert_eq!(oees.len(), parts.len());
            let lo = oees.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = oees.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let g = group.oee().unwrap();
            let slack = 1e-12 * hi.max(1.0);
            prop_assert!(lo - slack <= g && g <= hi + slack, "{g} outside [{lo}, {hi}]");
        }
    }
}
