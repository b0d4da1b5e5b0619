//! Oracle tests of the reporting API (`docs/reports.md`).
//!
//! **Property test** (`reports_equal_direct_sql_over_raw_events`): random event sets for two
//! sites in different time zones (Berlin, and Kolkata at UTC+05:30 with a shift calendar whose
//! night shift starts on the previous UTC date), three pieces of equipment (one of another
//! class, one missing from the equipment master), released and unreleased work orders,
//! production counts, state changes (some at the same instant, some shorter than a small
//! stop), material movements, and corrections: before and after the events they correct,
//! double, of corrections, of events that never arrive, moving a count to other equipment.
//! They are ingested through the real ingest path in random batches and order, with re-sends
//! (batches of 8 or more without corrections as two concurrent halves, the path of a backlog's
//! large groups), and every report (`oee`, `production`, `scrap`, `downtime-pareto`, with and without planned
//! stops, over several `group_by` sets and two ranges) is compared with an **oracle**.
//!
//! The oracle is independent of the implementation: it reads no rollup, no master-data view,
//! and no merged work order. It decodes the rows the hub stored in `events` (postcard bodies)
//! into a plain table, applies the correction rules of the contract with ordinary SQL (the
//! correction with the greatest id wins, in place of the corrected event; corrections of
//! corrections do nothing), rebuilds state intervals with `lead()`, splits them at site-local
//! hours with `generate_series`, and computes planned production time, ideal times (routing
//! selection done in Rust from the test's own master data), shifts and days from the master
//! data as the test wrote it. Fine-grained rows come out of SQL; grouping them by the asked
//! keys and forming ratios from the summed components is plain Rust.
//!
//! `PROPTEST_CASES` sets the number of cases (default 12); a failure names the seed, and
//! `ORACLE_SEED=<seed>` replays that one case.
//!
//! **Hand-worked tests**: datasets whose expected figures are written out with their
//! arithmetic (the worked example of `domain.md`, roll-ups, Pareto, time zones, shifts, scrap,
//! on-time, genealogy, corrections), plus authorization and bad parameters.
//!
//! The property test's oracle is split by report (`production`, `scrap`, `downtime_pareto`,
//! `oee`) over a common core (`dataset`: the random cases; `oracle`: the reference tables and
//! the comparisons); the hand-worked datasets are one module each under `hand_worked`.

mod dataset;
mod downtime_pareto;
mod hand_worked;
mod oee;
mod oracle;
mod production;
mod property;
mod scrap;
