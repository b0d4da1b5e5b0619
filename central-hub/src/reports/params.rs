//! Parsing and checking report query parameters (`docs/reports.md`, "Parameters").

use shared_model::{SiteId, Timestamp};

/// Longest range a report may cover.
pub const RANGE_DAYS_MAX: i64 = 400;
/// Range when `from` is not given.
pub const DEFAULT_RANGE_DAYS: i64 = 7;
/// Most sites one request may name.
pub const SITES_MAX: usize = 1_000;

/// Which groups a report takes (from its `ReportSpec`).
#[derive(Debug, Clone, Copy)]
pub struct Grouping {
    pub report: &'static str,
    pub allowed: &'static [Group],
    /// When the request names none.
    pub default: &'static [Group],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Site,
    WorkCenter,
    Equipment,
    Product,
    Day,
    Shift,
}

impl Group {
    pub const ALL: [Group; 6] = [
        Group::Site,
        Group::WorkCenter,
        Group::Equipment,
        Group::Product,
        Group::Day,
        Group::Shift,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Group::Site => "site",
            Group::WorkCenter => "work_center",
            Group::Equipment => "equipment",
            Group::Product => "product",
            Group::Day => "day",
            Group::Shift => "shift",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

/// One end of the range: an instant, or a date meaning local midnight at each site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bound {
    Instant(Timestamp),
    Date(time::Date),
}

impl Bound {
    fn parse(field: &'static str, s: &str) -> Result<Self, ParamError> {
        let date_format = time::macros::format_description!("[year]-[month]-[day]");
        if s.len() == 10
            && let Ok(d) = time::Date::parse(s, &date_format)
        {
            return Ok(Bound::Date(d));
        }
        Timestamp::parse_rfc3339(s)
            .map(Bound::Instant)
            .map_err(|_| {
                ParamError::new(
                    field,
                    format!("{s:?} is neither an RFC 3339 instant nor a date YYYY-MM-DD"),
                )
            })
    }

    /// Approximate microseconds since the epoch, for range checks (dates at UTC midnight; the
    /// per-site shift is at most a day).
    fn approx_micros(self) -> i64 {
        match self {
            Bound::Instant(t) => t.as_micros(),
            Bound::Date(d) => {
                let secs = d.midnight().assume_utc().unix_timestamp();
                secs.saturating_mul(1_000_000)
            }
        }
    }

    pub fn to_json(self) -> String {
        match self {
            Bound::Instant(t) => t.to_rfc3339(),
            Bound::Date(d) => {
                let f = time::macros::format_description!("[year]-[month]-[day]");
                d.format(&f).unwrap_or_default()
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Csv,
}

impl Format {
    /// The values of `format=`.
    const SPELLINGS: &[(&str, Self)] = &[("json", Self::Json), ("csv", Self::Csv)];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Backward,
    Forward,
}

impl Direction {
    /// The values of `direction=`.
    const SPELLINGS: &[(&str, Self)] = &[("backward", Self::Backward), ("forward", Self::Forward)];
}

/// The values of a boolean parameter (`include_planned=`).
const BOOL_SPELLINGS: &[(&str, bool)] =
    &[("true", true), ("false", false), ("1", true), ("0", false)];

/// `v` as one of the spellings in `choices`; anything else is an error on `field` that lists
/// them, so the three enumerated parameters answer alike.
fn one_of<T: Copy>(field: &'static str, v: &str, choices: &[(&str, T)]) -> Result<T, ParamError> {
    choices
        .iter()
        .find(|(name, _)| *name == v)
        .map(|&(_, value)| value)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|&(name, _)| name).collect();
            ParamError::new(
                field,
                format!("unknown {field} {v:?}; use {}", names.join(" or ")),
            )
        })
}

/// A checked report request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Query {
    pub from: Bound,
    pub to: Bound,
    /// Empty: every site the caller may see.
    pub sites: Vec<SiteId>,
    pub groups: Vec<Group>,
    pub format: Format,
    pub include_planned: bool,
    pub direction: Direction,
    /// Whether `from` / `to` were given; a default is relative to now.
    pub from_given: bool,
    pub to_given: bool,
}

impl Query {
    /// What identifies the answer in a cache: the query with defaulted bounds written as
    /// "now" (such an answer is relative to when it was computed), and the sites resolved.
    pub fn cache_key(&self, sites: &[String]) -> String {
        let bound = |given: bool, b: Bound, default: &str| {
            if given {
                b.to_json()
            } else {
                default.to_owned()
            }
        };
        format!(
            "{}..{}|{}|{:?}|{:?}|{}|{:?}",
            bound(self.from_given, self.from, "now-7d"),
            bound(self.to_given, self.to, "now"),
            sites.join(","),
            self.groups,
            self.format,
            self.include_planned,
            self.direction
        )
    }
}

#[derive(Debug, Clone)]
pub struct ParamError {
    pub field: &'static str,
    pub message: String,
}

impl ParamError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Parses the raw query string. `report` is `None` for genealogy; `accept_csv` tells whether
/// the `Accept` header asked for CSV.
pub fn parse(
    report: Option<Grouping>,
    raw: Option<&str>,
    accept_csv: bool,
    now: Timestamp,
) -> Result<Query, ParamError> {
    let mut from = None;
    let mut to = None;
    let mut sites: Vec<SiteId> = Vec::new();
    let mut groups: Option<Vec<Group>> = None;
    let mut format = if accept_csv {
        Format::Csv
    } else {
        Format::Json
    };
    let mut include_planned = false;
    let mut direction = Direction::Backward;
    let raw = raw.unwrap_or("");
    if raw.len() > 8 * 1024 {
        return Err(ParamError::new(
            "query",
            "the query string is longer than 8 KiB",
        ));
    }
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        match &*k {
            "from" => from = Some(Bound::parse("from", &v)?),
            "to" => to = Some(Bound::parse("to", &v)?),
            "site" => {
                for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let id = SiteId::new(s)
                        .map_err(|e| ParamError::new("site", format!("{s:?}: {e}")))?;
                    if !sites.contains(&id) {
                        sites.push(id);
                    }
                }
                if sites.len() > SITES_MAX {
                    return Err(ParamError::new(
                        "site",
                        format!("at most {SITES_MAX} sites per request"),
                    ));
                }
            }
            "group_by" => {
                let list = groups.get_or_insert_with(Vec::new);
                for g in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let group = Group::parse(g).ok_or_else(|| {
                        ParamError::new(
                            "group_by",
                            format!(
                                "unknown group {g:?}; groups are site, work_center, equipment, product, day, shift"
                            ),
                        )
                    })?;
                    if let Some(r) = report
                        && !r.allowed.contains(&group)
                    {
                        let allowed: Vec<&str> = r.allowed.iter().map(|g| g.as_str()).collect();
                        return Err(ParamError::new(
                            "group_by",
                            format!(
                                "the {} report cannot be grouped by {g}; it can by {}",
                                r.report,
                                allowed.join(", ")
                            ),
                        ));
                    }
                    if !list.contains(&group) {
                        list.push(group);
                    }
                }
            }
            "format" => format = one_of("format", &v, Format::SPELLINGS)?,
            "include_planned" => include_planned = one_of("include_planned", &v, BOOL_SPELLINGS)?,
            "direction" => direction = one_of("direction", &v, Direction::SPELLINGS)?,
            // Cache busters and the like are harmless but unknown names are most often typos.
            other => {
                return Err(ParamError::new(
                    "query",
                    format!("unknown parameter {other:?}"),
                ));
            }
        }
    }
    let (from_given, to_given) = (from.is_some(), to.is_some());
    let to = to.unwrap_or(Bound::Instant(now));
    let from = match from {
        Some(f) => f,
        None => match to {
            Bound::Instant(t) => {
                Bound::Instant(t.saturating_add_micros(-DEFAULT_RANGE_DAYS * 24 * 3600 * 1_000_000))
            }
            Bound::Date(d) => Bound::Date(d - time::Duration::days(DEFAULT_RANGE_DAYS)),
        },
    };
    let (a, b) = (from.approx_micros(), to.approx_micros());
    if a >= b {
        return Err(ParamError::new("from", "from must be before to"));
    }
    if b - a > RANGE_DAYS_MAX * 24 * 3600 * 1_000_000 {
        return Err(ParamError::new(
            "to",
            format!("the range is longer than the maximum of {RANGE_DAYS_MAX} days"),
        ));
    }
    let groups = groups.unwrap_or_else(|| report.map(|r| r.default.to_vec()).unwrap_or_default());
    Ok(Query {
        from,
        to,
        sites,
        groups,
        format,
        include_planned,
        direction,
        from_given,
        to_given,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `format`, `include_planned` and `direction` take exactly their listed spellings; any
    /// other is refused on that field, naming the ones it takes.
    #[test]
    fn enumerated_parameters_take_their_spellings_and_list_them_when_wrong() {
        let now = Timestamp::from_micros(1_700_000_000_000_000);
        let ok = |raw: &str| parse(None, Some(raw), false, now).expect(raw);
        assert_eq!(ok("format=csv").format, Format::Csv);
        assert_eq!(ok("format=json").format, Format::Json);
        assert!(ok("include_planned=1").include_planned);
        assert!(!ok("include_planned=false").include_planned);
        assert_eq!(ok("direction=forward").direction, Direction::Forward);
        for (raw, field, message) in [
            (
                "format=xml",
                "format",
                r#"unknown format "xml"; use json or csv"#,
            ),
            (
                "include_planned=yes",
                "include_planned",
                r#"unknown include_planned "yes"; use true or false or 1 or 0"#,
            ),
            (
                "direction=up",
                "direction",
                r#"unknown direction "up"; use backward or forward"#,
            ),
        ] {
            let e = parse(None, Some(raw), false, now).expect_err(raw);
            assert_eq!((e.field, e.message.as_str()), (field, message), "{raw}");
        }
    }
}
