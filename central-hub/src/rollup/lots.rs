//! `lot_movements`: material consumed and produced, for genealogy. A fact's row is keyed by
//! the fact's id, so a correction deletes the old row by id and inserts the replacement's.

use shared_model::SiteId;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::facts::{Fact, FactBody};
use crate::db::HubStoreError;
use crate::db::convert::ts;

pub(super) async fn apply(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    adds: &[Fact],
    removes: &[Fact],
) -> Result<(), HubStoreError> {
    let gone: Vec<Uuid> = removes
        .iter()
        .filter(|f| matches!(f.body, FactBody::Lot { .. }))
        .map(|f| f.id)
        .collect();
    if !gone.is_empty() {
        crate::db::query("DELETE FROM lot_movements WHERE site_id = $1 AND fact_id = ANY($2)")
            .bind(site.as_str())
            .bind(&gone)
            .execute(&mut **tx)
            .await?;
    }
    let mut ids = Vec::new();
    let mut direction = Vec::new();
    let mut lot = Vec::new();
    let mut material = Vec::new();
    let mut quantity = Vec::new();
    let mut work_order: Vec<Option<String>> = Vec::new();
    let mut at = Vec::new();
    for f in adds {
        if let FactBody::Lot {
            direction: d,
            movement: m,
        } = &f.body
        {
            ids.push(f.id);
            direction.push(d.as_str());
            lot.push(m.lot.to_string());
            material.push(m.material.to_string());
            quantity.push(m.quantity);
            work_order.push(m.work_order.as_ref().map(|w| w.to_string()));
            at.push(ts(f.at));
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    crate::db::query(
        "INSERT INTO lot_movements (site_id, fact_id, direction, lot, material, quantity,
                                    work_order, occurred_at)
         SELECT $1, u.* FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[],
                                    $6::float8[], $7::text[], $8::timestamptz[]) AS u
         ON CONFLICT DO NOTHING",
    )
    .bind(site.as_str())
    .bind(&ids)
    .bind(&direction)
    .bind(&lot)
    .bind(&material)
    .bind(&quantity)
    .bind(&work_order)
    .bind(&at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
