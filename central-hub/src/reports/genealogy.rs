//! `GET /api/v1/reports/genealogy/{lot}`: the lots a lot was made from (backward) or went
//! into (forward), across sites, walked breadth first over `lot_movements`.

use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};

use super::params::{Direction, Format};
use super::spec::ReadTx;
use super::sql::Keyed;
use super::table::{Table, csv, row_objects, sorted_json_bytes};
use crate::http::cache::{self, Cached};

/// Deepest genealogy walk.
pub const GENEALOGY_DEPTH_MAX: i32 = 20;
/// Most genealogy edges in one answer (and so most lots visited).
pub const GENEALOGY_EDGES_MAX: i64 = 10_000;
/// Longest lot id accepted in a path.
pub const LOT_BYTES_MAX: usize = 100;

/// One result row of a walk step: an edge (its depth is the step's) and the material of the
/// lot it reaches.
struct StepRow {
    edge: Edge,
    material: Option<String>,
}

impl<'r> FromRow<'r, PgRow> for StepRow {
    fn from_row(r: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            edge: Edge {
                from_lot: r.try_get("from_lot")?,
                to_lot: r.try_get("to_lot")?,
                work_order: r.try_get("work_order")?,
                site: r.try_get("site_id")?,
                quantity: r.try_get::<Option<f64>, _>("quantity")?.unwrap_or(0.0),
                depth: 0,
            },
            material: r.try_get("material")?,
        })
    }
}

/// One edge of a genealogy walk: a line of the answer, the columns in this order.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Edge {
    pub from_lot: String,
    pub to_lot: String,
    pub work_order: String,
    pub site: String,
    pub quantity: f64,
    pub depth: i32,
}

#[derive(Debug)]
pub struct Genealogy {
    pub root_material: Option<String>,
    pub materials: Vec<(String, Option<String>)>,
    pub edges: Vec<Edge>,
}

/// Walks lot genealogy from `lot`. `None` when the lot has no movements at all.
pub async fn walk(
    tx: &mut ReadTx,
    lot: &str,
    direction: Direction,
) -> Result<Option<Genealogy>, sqlx::Error> {
    let root: Option<Option<String>> = crate::db::query_scalar(
        "SELECT max(material) FROM lot_movements WHERE lot = $1 HAVING count(*) > 0",
    )
    .bind(lot)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(root_material) = root else {
        return Ok(None);
    };
    // Backward: the orders that produced a lot, and the lots they consumed. Forward: the orders
    // that consumed it, and the lots they produced.
    let (walk_dir, next_dir) = match direction {
        Direction::Backward => ("produced", "consumed"),
        Direction::Forward => ("consumed", "produced"),
    };
    // Breadth first over lots, each lot expanded once at its least depth: a recursion that
    // carries whole paths grows with the number of paths (3^depth rows when every order
    // blends three lots), a walk over visited lots with the number of lots. One statement per
    // depth, each bounded by the edges still allowed.
    let step = format!(
        "WITH g AS (
            SELECT DISTINCT a.lot AS from_lot, c.lot AS to_lot, a.work_order, c.site_id
            FROM lot_movements a
            JOIN lot_movements c ON c.site_id = a.site_id AND c.work_order = a.work_order
                                AND c.direction = '{next_dir}'
            WHERE a.lot = ANY($1) AND a.direction = '{walk_dir}' AND a.work_order IS NOT NULL
         )
         SELECT g.from_lot, g.to_lot, g.work_order, g.site_id,
                (SELECT sum(m.quantity) FROM lot_movements m
                 WHERE m.site_id = g.site_id AND m.work_order = g.work_order AND m.lot = g.to_lot
                   AND m.direction = '{next_dir}')::float8 AS quantity,
                (SELECT max(m.material) FROM lot_movements m WHERE m.lot = g.to_lot) AS material
         FROM g ORDER BY g.from_lot, g.to_lot, g.work_order, g.site_id
         LIMIT $2"
    );
    let mut edges = Vec::new();
    let mut materials: Vec<(String, Option<String>)> = Vec::new();
    let mut visited: std::collections::HashSet<String> = std::collections::HashSet::new();
    visited.insert(lot.to_owned());
    let mut frontier = vec![lot.to_owned()];
    let mut depth = 0;
    while !frontier.is_empty() && depth < GENEALOGY_DEPTH_MAX {
        depth += 1;
        let room = GENEALOGY_EDGES_MAX - edges.len() as i64;
        if room <= 0 {
            break;
        }
        let rows = crate::db::query_as::<StepRow>(sqlx::AssertSqlSafe(step.clone()))
            .bind(&frontier)
            .bind(room)
            .fetch_all(&mut **tx)
            .await?;
        debug_assert!(rows.len() as i64 <= room, "LIMIT $2 bounds a step");
        let mut next = Vec::new();
        for StepRow { edge, material } in rows {
            let to_lot = edge.to_lot.clone();
            if !materials.iter().any(|(l, _)| l == &to_lot) {
                materials.push((to_lot.clone(), material));
            }
            if visited.insert(to_lot.clone()) {
                next.push(to_lot);
            }
            edges.push(Edge { depth, ..edge });
        }
        frontier = next;
    }
    debug_assert!(edges.len() as i64 <= GENEALOGY_EDGES_MAX);
    Ok(Some(Genealogy {
        root_material,
        materials,
        edges,
    }))
}

// Fields in wire order, alphabetical (see crate::http::wire).
/// A lot of the answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Node {
    /// The least depth it was reached at (0: the lot asked about).
    pub depth: i32,
    pub lot: String,
    pub material: Option<String>,
}

/// The JSON answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Genealogy)]
pub struct GenealogyDoc {
    #[schema(value_type = String)]
    pub direction: &'static str,
    /// [`Edge`]s as objects.
    #[schema(value_type = Vec<Edge>)]
    pub edges: Vec<serde_json::Value>,
    pub lot: String,
    pub nodes: Vec<Node>,
    /// The walk stopped at [`GENEALOGY_EDGES_MAX`] edges.
    pub truncated: bool,
}

/// The walk as a cache entry in the requested format.
pub fn render(lot: &str, direction: Direction, format: Format, g: Genealogy) -> Cached {
    let truncated = g.edges.len() as i64 >= GENEALOGY_EDGES_MAX;
    let nodes: Vec<Node> = std::iter::once(Node {
        depth: 0,
        lot: lot.to_owned(),
        material: g.root_material.clone(),
    })
    .chain(
        g.materials
            .iter()
            .filter(|(l, _)| l != lot)
            .map(|(l, material)| Node {
                depth: g
                    .edges
                    .iter()
                    .filter(|e| &e.to_lot == l)
                    .map(|e| e.depth)
                    .min()
                    .unwrap_or(0),
                lot: l.clone(),
                material: material.clone(),
            }),
    )
    .collect();
    let lines = g
        .edges
        .into_iter()
        .map(|row| Keyed {
            keys: Vec::new(),
            row,
        })
        .collect();
    let t = Table::build(Vec::new(), lines, &());
    let (content_type, body) = match format {
        Format::Csv => ("text/csv; charset=utf-8", csv(&t.columns, &t.rows)),
        Format::Json => {
            let doc = GenealogyDoc {
                direction: match direction {
                    Direction::Backward => "backward",
                    Direction::Forward => "forward",
                },
                edges: row_objects(&t.columns, t.rows),
                lot: lot.to_owned(),
                nodes,
                truncated,
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
