//! The wall clock for system tests that need "now": the hub creates month partitions from the
//! current month on, so a test that expects an event in a month partition dates the event
//! from the clock and derives the partition's name from that date, never from a fixed month
//! (those tests broke when the calendar left November 2026).

use shared_model::Timestamp;

/// The current time.
pub fn now() -> Timestamp {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    Timestamp::from_micros(micros)
}

/// The name of the month partition that holds `site`'s events at `at`
/// (`events_p_site_a_202612`).
pub fn month_partition(site: &str, at: Timestamp) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(at.as_micros() as i128 * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "events_p_{}_{:04}{:02}",
        site.to_ascii_lowercase(),
        t.year(),
        t.month() as u8
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_follow_the_utc_month() {
        for (at, name) in [
            ("2026-11-30T23:59:59.999999Z", "events_p_site_a_202611"),
            ("2026-12-01T00:00:00Z", "events_p_site_a_202612"),
            ("2001-01-01T00:00:00Z", "events_p_site_a_200101"),
        ] {
            let at = Timestamp::parse_rfc3339(at).unwrap();
            assert_eq!(month_partition("SITE_A", at), name);
        }
    }
}
