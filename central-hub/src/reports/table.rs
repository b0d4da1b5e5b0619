//! A computed report as a table (group columns, then the line's fields), and its two
//! renderings: the JSON document and CSV.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::params::{Format, Query};
use super::sql::Keyed;
use crate::http::cache::{self, Cached};

/// A finished table: column names, rows of cells in column order, and the total.
#[derive(Debug)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub total: Value,
}

impl Table {
    /// `groups` names the key columns; the other columns are the fields of `L`.
    pub fn build<L: Serialize + Default, T: Serialize>(
        groups: Vec<String>,
        lines: Vec<Keyed<L>>,
        total: &T,
    ) -> Table {
        let measures = field_names::<L>();
        let n = groups.len();
        let mut columns = groups;
        columns.extend(measures.iter().cloned());
        let rows = lines
            .into_iter()
            .map(|line| {
                debug_assert_eq!(line.keys.len(), n, "one key per group column");
                let mut cells: Vec<Value> = line
                    .keys
                    .into_iter()
                    .map(|k| k.map_or(Value::Null, Value::String))
                    .collect();
                cells.extend(cells_of(&line.row, &measures));
                debug_assert_eq!(cells.len(), columns.len());
                cells
            })
            .collect();
        Table {
            columns,
            rows,
            total: serde_json::to_value(total).unwrap_or(Value::Null),
        }
    }
}

/// The field names of `L`, in declaration order (those of `L::default()` as serialized).
pub fn field_names<L: Serialize + Default>() -> Vec<String> {
    ordered_fields(&L::default())
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// The cells of `line` for the columns `names`.
fn cells_of<L: Serialize>(line: &L, names: &[String]) -> Vec<Value> {
    let Ok(Value::Object(mut m)) = serde_json::to_value(line) else {
        debug_assert!(false, "a report line serializes as an object");
        return vec![Value::Null; names.len()];
    };
    let cells = names
        .iter()
        .map(|n| {
            let cell = m.remove(n);
            debug_assert!(cell.is_some(), "a line has every field, {n} is missing");
            cell.unwrap_or(Value::Null)
        })
        .collect();
    debug_assert!(m.is_empty(), "a line has only its fields: {m:?}");
    cells
}

/// An object's entries in the order they were written (serde_json's `Map` sorts them).
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry::<String, Value>()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

fn ordered_fields<T: Serialize>(value: &T) -> Vec<(String, Value)> {
    serde_json::to_vec(value)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Ordered>(&bytes).ok())
        .map(|o| o.0)
        .unwrap_or_default()
}

fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// RFC 4180 CSV with CRLF line ends: the header, then the rows.
pub fn csv(columns: &[String], rows: &[Vec<Value>]) -> Vec<u8> {
    let mut out = String::new();
    out.push_str(
        &columns
            .iter()
            .map(|c| csv_field(&Value::String(c.clone())))
            .collect::<Vec<_>>()
            .join(","),
    );
    out.push_str("\r\n");
    for r in rows {
        out.push_str(&r.iter().map(csv_field).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out.into_bytes()
}

/// The rows as JSON objects, column name → cell.
pub fn row_objects(columns: &[String], rows: Vec<Vec<Value>>) -> Vec<Value> {
    rows.into_iter()
        .map(|cells| {
            let mut m = Map::new();
            for (c, v) in columns.iter().zip(cells) {
                m.insert(c.clone(), v);
            }
            Value::Object(m)
        })
        .collect()
}

/// The JSON answer of a report (`rows` are objects of `columns`; the line and total types of
/// each report are in the document's components).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Report)]
pub struct ReportDoc {
    pub report: String,
    pub from: String,
    pub to: String,
    pub sites: Vec<String>,
    pub group_by: Vec<String>,
    pub columns: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Value>,
    #[schema(value_type = Object)]
    pub total: Value,
    pub generated_at: String,
}

/// `value` as JSON with every object's keys sorted: the bytes the answers had when they were
/// built with `json!` (serde_json's map is sorted), whatever order a struct declares.
pub fn sorted_json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_value(value)
        .and_then(|v| serde_json::to_vec(&v))
        .unwrap_or_default()
}

/// The report as a cache entry in the requested format.
pub fn render(report: &str, q: &Query, sites: &[String], t: Table) -> Cached {
    let (content_type, body) = match q.format {
        Format::Csv => ("text/csv; charset=utf-8", csv(&t.columns, &t.rows)),
        Format::Json => {
            let doc = ReportDoc {
                report: report.to_owned(),
                from: q.from.to_json(),
                to: q.to.to_json(),
                sites: sites.to_vec(),
                group_by: q.groups.iter().map(|g| g.as_str().to_owned()).collect(),
                rows: row_objects(&t.columns, t.rows),
                columns: t.columns,
                total: t.total,
                generated_at: crate::http::state::now().to_rfc3339(),
            };
            ("application/json", sorted_json_bytes(&doc))
        }
    };
    Cached {
        content_type: content_type.into(),
        body: body.into(),
        computed_ms: cache::unix_ms(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Serialize, Default)]
    struct Line {
        zeta: i64,
        alpha: Option<f64>,
        mid: String,
    }

    #[test]
    fn columns_are_fields_in_declaration_order_and_json_keys_sorted() {
        assert_eq!(field_names::<Line>(), ["zeta", "alpha", "mid"]);
        let t = Table::build(
            vec!["site".into()],
            vec![Keyed {
                keys: vec![Some("A".into())],
                row: Line {
                    zeta: 2,
                    alpha: None,
                    mid: "m,n".into(),
                },
            }],
            &Line::default(),
        );
        assert_eq!(t.columns, ["site", "zeta", "alpha", "mid"]);
        assert_eq!(
            String::from_utf8(csv(&t.columns, &t.rows)).unwrap(),
            "site,zeta,alpha,mid\r\nA,2,,\"m,n\"\r\n"
        );
        let objects = row_objects(&t.columns, t.rows);
        assert_eq!(
            String::from_utf8(sorted_json_bytes(&objects)).unwrap(),
            r#"[{"alpha":null,"mid":"m,n","site":"A","zeta":2}]"#
        );
    }
}
