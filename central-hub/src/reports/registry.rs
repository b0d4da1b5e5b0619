//! The list of reports: `GET /api/v1/reports/{name}` finds a report here, the OpenAPI
//! document names them from here.

use super::spec::Report;
use super::{downtime_pareto, oee, on_time, production, scrap, wip};

/// Every report, in the order the API documents them. A report's file is reachable only
/// through this list (a `ReportSpec` left out of it is dead code, which the build refuses).
pub static REPORTS: &[&dyn Report] = &[
    &oee::Oee,
    &production::Production,
    &scrap::Scrap,
    &downtime_pareto::DowntimePareto,
    &on_time::OnTime,
    &wip::Wip,
];

/// The report named `name` in `GET /api/v1/reports/{name}`.
pub fn find(name: &str) -> Option<&'static dyn Report> {
    REPORTS.iter().copied().find(|r| r.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_have_distinct_names_and_their_groups_include_the_defaults() {
        let mut names: Vec<&str> = REPORTS.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REPORTS.len());
        for r in REPORTS {
            let g = r.grouping();
            assert!(find(r.name()).is_some());
            assert!(
                g.default.iter().all(|d| g.allowed.contains(d)),
                "{}",
                r.name()
            );
            assert!(!r.measure_columns().is_empty(), "{}", r.name());
        }
        // The genealogy walk is `/reports/genealogy/{lot}`, not a report of this list.
        assert!(find("genealogy").is_none());
    }

    #[test]
    fn each_report_takes_its_documented_groups() {
        // The two documented group sets of the machine-time and the count reports.
        const BY_MACHINE: &[&str] = &["site", "work_center", "equipment", "day", "shift"];
        const BY_PRODUCT: &[&str] = &[
            "site",
            "work_center",
            "equipment",
            "product",
            "day",
            "shift",
        ];
        let table: [(&str, &[&str], &[&str]); 6] = [
            ("oee", BY_MACHINE, &["site"]),
            ("production", BY_PRODUCT, &["site"]),
            ("scrap", BY_PRODUCT, &["site"]),
            ("downtime-pareto", BY_MACHINE, &[]),
            ("on-time", &["site", "product", "day"], &["site"]),
            ("wip", &["site", "product"], &["site"]),
        ];
        assert_eq!(REPORTS.len(), table.len());
        for (r, (name, allowed, default)) in REPORTS.iter().zip(table) {
            let g = r.grouping();
            let names = |gs: &[crate::reports::params::Group]| -> Vec<&str> {
                gs.iter().map(|g| g.as_str()).collect()
            };
            assert_eq!(
                (r.name(), names(g.allowed), names(g.default)),
                (name, allowed.to_vec(), default.to_vec())
            );
        }
    }

    /// Every report (`impl ReportSpec for …` or `impl SumsReport for …` at the start of a line) in this directory is listed in [`REPORTS`] (the build
    /// also warns of an unlisted one as never constructed).
    #[test]
    fn every_report_file_is_registered() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/reports");
        let registry = std::fs::read_to_string(dir.join("registry.rs")).unwrap_or_default();
        let listed = &registry[registry.find("pub static REPORTS").unwrap_or(0)..];
        let mut specs = 0;
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let src = std::fs::read_to_string(entry.path()).unwrap_or_default();
            // Only at the start of a line: an impl, not a mention in a comment.
            for rest in src.lines().filter_map(|l| {
                l.strip_prefix("impl ReportSpec for ")
                    .or_else(|| l.strip_prefix("impl SumsReport for "))
            }) {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let file = entry
                    .path()
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                assert!(
                    listed.contains(&format!("&{file}::{name},")),
                    "{file}.rs implements ReportSpec for {name}: add `&{file}::{name},` to REPORTS"
                );
                specs += 1;
            }
        }
        assert_eq!(specs, REPORTS.len(), "every entry of REPORTS has its file");
    }
}

/// The query-string checks of [`super::params`] with each report's groups from the registry
/// (here, not in `params`, which sits below the registry).
#[cfg(test)]
mod params_tests {
    #![allow(clippy::unwrap_used)]
    use super::find;
    use crate::reports::params::*;
    use shared_model::Timestamp;

    fn report(name: &str) -> Option<Grouping> {
        Some(find(name).unwrap().grouping())
    }

    fn now() -> Timestamp {
        Timestamp::parse_rfc3339("2026-11-28T12:00:00Z").unwrap()
    }

    #[test]
    fn defaults_and_lists() {
        let q = parse(
            report("production"),
            Some("site=A,B&site=C&group_by=site,day&from=2026-11-01&to=2026-11-02"),
            false,
            now(),
        )
        .unwrap();
        assert_eq!(q.sites.len(), 3);
        assert_eq!(q.groups, vec![Group::Site, Group::Day]);
        assert!(matches!(q.from, Bound::Date(_)));
        let q = parse(report("downtime-pareto"), None, true, now()).unwrap();
        assert!(q.groups.is_empty());
        assert_eq!(q.format, Format::Csv);
    }

    #[test]
    fn bad_parameters_name_their_field() {
        for (name, raw, field) in [
            ("oee", "from=2026-11-02&to=2026-11-01", "from"),
            ("oee", "from=2024-01-01&to=2026-01-01", "to"),
            ("oee", "group_by=colour", "group_by"),
            ("oee", "group_by=product", "group_by"),
            ("wip", "group_by=shift", "group_by"),
            ("oee", "from=yesterday", "from"),
            ("oee", "site=lower", "site"),
            ("oee", "format=xml", "format"),
            ("oee", "sight=A", "query"),
        ] {
            let e = parse(report(name), Some(raw), false, now()).unwrap_err();
            assert_eq!(e.field, field, "{raw}: {}", e.message);
        }
    }
}
