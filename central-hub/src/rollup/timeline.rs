//! Equipment state timelines, without a database: a timeline is a sorted list of state
//! changes ([`Point`]); each closed interval between two points is time in the first point's
//! state, split at the site's local hours into `state_hourly` buckets. A batch's edits
//! rewrite a window of the timeline ([`rewrite`]); the rollup receives the new window's
//! intervals minus the old window's ([`contribute`] with sign 1 and -1).

use std::collections::{BTreeMap, HashMap, HashSet};

use uuid::Uuid;

use super::SiteClock;
use super::facts::{Fact, FactBody};

pub(crate) const HOUR_MICROS: i64 = 3_600 * 1_000_000;

/// Whether a stored state is the one that is not a stop.
fn is_running(state: &str) -> bool {
    state == shared_model::event::MachineState::Running.as_str()
}

/// One point of a state timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub at: i64,
    pub id: Uuid,
    pub state: String,
    pub reason: Option<String>,
}

/// A point added (`insert`) or removed by a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    pub point: Point,
    pub insert: bool,
}

/// (equipment, hour, state, reason, small)
pub type Bucket = (String, i64, String, String, bool);

/// `state_hourly` deltas: bucket → (microseconds, starts).
pub type Deltas = HashMap<Bucket, (i64, i64)>;

/// The timeline order: by time, then by id (simultaneous changes).
fn sorted(points: &[Point]) -> bool {
    points
        .windows(2)
        .all(|w| (w[0].at, w[0].id) <= (w[1].at, w[1].id))
}

/// The state facts of a plan as edits per equipment: removals first, then insertions.
pub fn edits_by_equipment(adds: &[Fact], removes: &[Fact]) -> BTreeMap<String, Vec<Edit>> {
    let mut edits: BTreeMap<String, Vec<Edit>> = BTreeMap::new();
    for (insert, facts) in [(false, removes), (true, adds)] {
        for f in facts {
            if let FactBody::State {
                equipment,
                state,
                reason,
            } = &f.body
            {
                edits.entry(equipment.clone()).or_default().push(Edit {
                    point: Point {
                        at: f.at.as_micros(),
                        id: f.id,
                        state: (*state).to_owned(),
                        reason: reason.clone(),
                    },
                    insert,
                });
            }
        }
    }
    edits
}

/// The points removed by `edits`, as (time, id).
pub fn removed(edits: &[Edit]) -> HashSet<(i64, Uuid)> {
    edits
        .iter()
        .filter(|e| !e.insert)
        .map(|e| (e.point.at, e.point.id))
        .collect()
}

/// The window `old` (sorted) after `edits`: removed points gone, inserted ones added once.
pub fn rewrite(old: &[Point], edits: &[Edit]) -> Vec<Point> {
    debug_assert!(sorted(old), "a stored timeline window is sorted");
    let removed = removed(edits);
    let mut new: Vec<Point> = old
        .iter()
        .filter(|p| !removed.contains(&(p.at, p.id)))
        .cloned()
        .collect();
    for e in edits.iter().filter(|e| e.insert) {
        if !new.iter().any(|q| q.at == e.point.at && q.id == e.point.id) {
            new.push(e.point.clone());
        }
    }
    new.sort_by(|a, b| a.at.cmp(&b.at).then(a.id.cmp(&b.id)));
    debug_assert!(
        new.windows(2)
            .all(|w| (w[0].at, w[0].id) != (w[1].at, w[1].id)),
        "a timeline holds each point once"
    );
    new
}

/// Adds (sign 1) or subtracts (-1) the closed intervals of `points` (sorted) to `acc`. The
/// last point's interval is open and is not rolled up.
pub fn contribute(
    acc: &mut Deltas,
    clock: &SiteClock,
    equipment: &str,
    points: &[Point],
    sign: i64,
) {
    debug_assert!(
        sign == 1 || sign == -1,
        "a window is added or subtracted whole"
    );
    debug_assert!(sorted(points), "a timeline is sorted by time, then id");
    for w in points.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let (start, end) = (a.at, b.at);
        if end <= start {
            continue; // zero-length intervals are ignored
        }
        // A stop shorter than the model's threshold is a performance loss, not availability.
        let small = !is_running(&a.state) && shared_model::kpi::is_small_stop_micros(end - start);
        let reason = a.reason.clone().unwrap_or_default();
        let mut h = clock.hour_of(start);
        debug_assert!(
            h <= start && start - h < HOUR_MICROS,
            "hour_of is the hour's start"
        );
        let mut first = true;
        let mut total = 0;
        while h < end {
            let lo = start.max(h);
            let hi = end.min(h + HOUR_MICROS);
            // Each hour's share is a non-empty piece of the interval.
            debug_assert!(lo < hi, "an interval's share of an hour is not empty");
            total += hi - lo;
            let e = acc
                .entry((
                    equipment.to_owned(),
                    h,
                    a.state.clone(),
                    reason.clone(),
                    small,
                ))
                .or_insert((0, 0));
            e.0 += sign * (hi - lo);
            if first {
                e.1 += sign;
                first = false;
            }
            h += HOUR_MICROS;
        }
        // The hours' shares add up to the interval: no time lost or counted twice.
        debug_assert_eq!(total, end - start, "hour shares sum to the interval");
    }
}

/// The `state_hourly` change of replacing the window `old` by `new`, zero deltas dropped.
pub fn window_deltas(
    acc: &mut Deltas,
    clock: &SiteClock,
    equipment: &str,
    old: &[Point],
    new: &[Point],
) {
    contribute(acc, clock, equipment, old, -1);
    contribute(acc, clock, equipment, new, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(at_min: i64, state: &str) -> Point {
        Point {
            at: at_min * 60_000_000,
            id: Uuid::from_u128(at_min as u128),
            state: state.to_owned(),
            reason: None,
        }
    }

    fn key(h_min: i64, state: &str, small: bool) -> Bucket {
        (
            "E".to_owned(),
            h_min * 60_000_000,
            state.to_owned(),
            String::new(),
            small,
        )
    }

    #[test]
    fn intervals_split_at_local_hours() {
        // UTC+05:30: local hours start at hh:30 UTC.
        let clock = SiteClock::new("Asia/Kolkata".into(), 5 * 3600 + 1800);
        let mut acc = HashMap::new();
        // 00:10 .. 01:40 UTC down, then running: buckets 23:30, 00:30, 01:30.
        contribute(
            &mut acc,
            &clock,
            "E",
            &[p(10, "down"), p(100, "running")],
            1,
        );
        let get = |h_min: i64| acc.get(&key(h_min, "down", false)).copied();
        assert_eq!(get(-30), Some((20 * 60_000_000, 1)));
        assert_eq!(get(30), Some((60 * 60_000_000, 0)));
        assert_eq!(get(90), Some((10 * 60_000_000, 0)));
        assert_eq!(acc.len(), 3, "the open running interval is not rolled up");
    }

    #[test]
    fn short_stops_are_small_and_diffs_cancel() {
        let clock = SiteClock::utc();
        let mut acc = HashMap::new();
        let old = [p(0, "running"), p(60, "running")];
        let new = [
            p(0, "running"),
            p(30, "down"),
            p(31, "running"),
            p(60, "running"),
        ];
        window_deltas(&mut acc, &clock, "E", &old, &new);
        acc.retain(|_, (us, n)| *us != 0 || *n != 0);
        assert_eq!(
            acc.get(&key(0, "down", true)).copied(),
            Some((60_000_000, 1)),
            "a one-minute stop is a small stop"
        );
        // 60 min of running became 30 + 29 min: one minute less, one more start.
        assert_eq!(
            acc.get(&key(0, "running", false)).copied(),
            Some((-60_000_000, 1))
        );
    }

    #[test]
    fn the_small_stop_threshold_is_the_models_and_exclusive() {
        let clock = SiteClock::utc();
        let at = |min: i64, sec: i64| min * 60_000_000 + sec * 1_000_000;
        let pt = |us: i64, id: u128, state: &str| Point {
            at: us,
            id: Uuid::from_u128(id),
            state: state.to_owned(),
            reason: None,
        };
        // Just under the model's threshold: small; at it: not small.
        let limit = shared_model::kpi::SMALL_STOP_SECS as i64;
        for (secs, small) in [(limit - 1, true), (limit, false)] {
            let mut acc = HashMap::new();
            let pts = [pt(at(0, 0), 1, "down"), pt(at(0, secs), 2, "running")];
            contribute(&mut acc, &clock, "E", &pts, 1);
            assert_eq!(
                acc.get(&key(0, "down", small)).copied(),
                Some((secs * 1_000_000, 1)),
                "{secs} s"
            );
        }
    }

    #[test]
    fn rewrite_removes_then_inserts_once_in_order() {
        let old = [p(0, "running"), p(10, "down"), p(20, "running")];
        let edits = [
            Edit {
                point: p(10, "down"),
                insert: false,
            },
            Edit {
                point: p(15, "idle"),
                insert: true,
            },
            Edit {
                point: p(15, "idle"),
                insert: true,
            },
            Edit {
                point: p(5, "down"),
                insert: true,
            },
        ];
        let new = rewrite(&old, &edits);
        let at: Vec<i64> = new.iter().map(|q| q.at / 60_000_000).collect();
        assert_eq!(at, [0, 5, 15, 20]);
        assert_eq!(new[2].state, "idle");
    }

    #[test]
    fn a_window_replaced_by_itself_changes_nothing() {
        let clock = SiteClock::utc();
        let pts = [
            p(0, "down"),
            p(50, "running"),
            p(130, "down"),
            p(131, "running"),
        ];
        let mut acc = HashMap::new();
        window_deltas(&mut acc, &clock, "E", &pts, &pts);
        assert!(acc.values().all(|&(us, n)| us == 0 && n == 0));
    }
}
