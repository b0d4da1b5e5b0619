//! The registry of site certificates: every certificate the hub issues (a `site add` bundle,
//! an enrollment, a renewal) is a row of `certificates` with its serial, SHA-256 fingerprint,
//! site, validity and, once revoked, when and why. A sync session is admitted only when the
//! presented certificate's row is not revoked and its site is registered and not revoked
//! ([`admit`], one query per connection), and a live session is checked again every
//! `sync::REVOCATION_CHECK_TICKS` seconds ([`still_valid`]), so revoking a certificate
//! refuses it at once and cuts its live session within 5 s.
//!
//! Revocation is per certificate: `site revoke` ([`revoke_site`]) revokes every certificate of
//! the site and its outstanding enrollment tokens, and re-admitting the site (`site add`)
//! revives none of them; `cert revoke SERIAL` ([`revoke_serial`]) revokes one.
//!
//! Certificates issued before the registry existed have no row. They are recorded on first
//! sight as `legacy` (so an upgrade does not lock out running sites) unless they are older
//! than the site's last revocation (`sites.certs_revoked_before`): a stolen box's old
//! certificate stays out after the site is re-admitted, registry or not.
//!
//! A renewed certificate names the one it replaces (`renewed_from`); the first session with
//! the new one revokes the old one (`superseded`), so a renewed box uses only its new key.

use shared_model::SiteId;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use crate::pki::{CertFacts, PkiError};

/// Shortest interval between two renewals of one site's certificate: an edge renews once per
/// lifetime, so more often is a loop (or a hostile box) filling the registry.
pub const RENEW_INTERVAL_MIN: std::time::Duration = std::time::Duration::from_secs(60);
/// Longest revocation reason kept.
pub const REASON_BYTES_MAX: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no site {0}: add it first with `central-hub site add`")]
    NoSuchSite(String),
    #[error("no certificate with serial {0} (`central-hub cert list` shows them)")]
    NoSuchCertificate(String),
    #[error("{0:?} is not a serial number: expected hex digits, e.g. as `cert list` prints it")]
    BadSerial(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Pki(#[from] PkiError),
}

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `site add` wrote a bundle with a key made at the hub.
    Bundle,
    /// `edge-agent install` with a token: signed from the edge's CSR.
    Enrollment,
    /// The running edge renewed it over its sync session.
    Renewal,
    /// Issued before the registry existed; recorded when first presented.
    Legacy,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Bundle => "bundle",
            Source::Enrollment => "enrollment",
            Source::Renewal => "renewal",
            Source::Legacy => "legacy",
        }
    }
}

async fn scope(conn: &mut PgConnection, site: &SiteId) -> Result<(), sqlx::Error> {
    crate::db::query("SELECT set_config('app.current_site_id', $1, true)")
        .bind(site.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records an issued certificate in the caller's transaction (scoped to `site` here, for the
/// hub role's row-level security).
pub async fn record(
    conn: &mut PgConnection,
    site: &SiteId,
    facts: &CertFacts,
    source: Source,
    renewed_from: Option<&str>,
) -> Result<(), sqlx::Error> {
    scope(conn, site).await?;
    crate::db::query(
        "INSERT INTO certificates (serial, fingerprint, site_id, source, renewed_from,
                                   not_before, not_after)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&facts.serial)
    .bind(facts.fingerprint.as_slice())
    .bind(site.as_str())
    .bind(source.as_str())
    .bind(renewed_from)
    .bind(facts.not_before)
    .bind(facts.not_after)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// `site add`'s bundle: issues a certificate with a key made here, writes the bundle to `dir`
/// and records the certificate.
pub async fn issue_bundle(
    pool: &PgPool,
    ca: &crate::pki::Ca,
    site: &SiteId,
    dir: &std::path::Path,
) -> Result<CertFacts, CertError> {
    let issued = ca.write_site_bundle(site, dir)?;
    let facts = CertFacts::from_pem(&issued.cert_pem)?;
    let mut tx = crate::db::begin(pool, crate::db::PoolRole::Write).await?;
    record(&mut tx, site, &facts, Source::Bundle, None).await?;
    tx.commit().await?;
    Ok(facts)
}

/// Whether a session may go on with a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Refused, with the words the edge gets in its `unauthorized` error frame.
    Refused(String),
}

/// Decides at connect whether the presented certificate (already verified against the CA by
/// TLS, its common name being `site`) may open a session: one query, plus a write the first
/// time a certificate is seen (its first use, a legacy row, superseding its predecessor).
pub async fn admit(
    pool: &PgPool,
    site: &SiteId,
    facts: &CertFacts,
) -> Result<Admission, sqlx::Error> {
    let mut tx = crate::db::scoped(pool, site).await?;
    type Row = (
        bool,
        Option<OffsetDateTime>,
        Option<Vec<u8>>,
        Option<OffsetDateTime>,
        Option<String>,
        Option<bool>,
        Option<String>,
    );
    let row: Option<Row> = crate::db::query_as(
        "SELECT s.revoked_at IS NULL, s.certs_revoked_before,
                c.fingerprint, c.revoked_at, c.revoke_reason, c.first_used_at IS NULL,
                c.renewed_from
           FROM sites s LEFT JOIN certificates c ON c.serial = $2
          WHERE s.site_id = $1",
    )
    .bind(site.as_str())
    .bind(&facts.serial)
    .fetch_optional(&mut *tx)
    .await?;
    let serial = &facts.serial;
    let verdict = match row {
        None => Admission::Refused(format!("site {site} is not registered at the hub")),
        Some((false, ..)) => Admission::Refused(format!(
            "site {site} is revoked at the hub: HQ must re-admit it and the box enroll again"
        )),
        Some((true, _, Some(fingerprint), revoked_at, reason, first_use, renewed_from)) => {
            if fingerprint != facts.fingerprint {
                Admission::Refused(format!(
                    "certificate {serial} does not match the hub's registry"
                ))
            } else if let Some(at) = revoked_at {
                Admission::Refused(format!(
                    "certificate {serial} of site {site} was revoked at {at} ({}): enroll the box again with a new token",
                    reason.as_deref().unwrap_or("revoked")
                ))
            } else {
                if first_use == Some(true) {
                    crate::db::query(
                        "UPDATE certificates SET first_used_at = now()
                          WHERE serial = $1 AND first_used_at IS NULL",
                    )
                    .bind(serial)
                    .execute(&mut *tx)
                    .await?;
                    if let Some(old) = renewed_from {
                        // The box has the renewed certificate on disk and uses it: the one it
                        // replaces is of no further use to anyone but a thief.
                        let n = crate::db::query(
                            "UPDATE certificates SET revoked_at = now(), revoke_reason = $2
                              WHERE serial = $1 AND revoked_at IS NULL",
                        )
                        .bind(&old)
                        .bind(format!("superseded by {serial}"))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        if n > 0 {
                            tracing::info!(%site, old = %old, new = %serial, "renewed certificate in use; the old one is revoked");
                        }
                    }
                }
                Admission::Allowed
            }
        }
        Some((true, revoked_before, None, ..)) => {
            // No row: a certificate from before the registry. Recorded either way, so that
            // `cert list` shows it and `cert revoke` can reach it.
            let stale = revoked_before.is_some_and(|r| facts.not_before < r);
            let inserted = crate::db::query(
                "INSERT INTO certificates (serial, fingerprint, site_id, source, not_before,
                                           not_after, issued_at, first_used_at, revoked_at,
                                           revoke_reason)
                 VALUES ($1, $2, $3, 'legacy', $4, $5, $4, now(),
                         CASE WHEN $6 THEN now() END,
                         CASE WHEN $6 THEN 'issued before the site was revoked' END)
                 ON CONFLICT DO NOTHING",
            )
            .bind(serial)
            .bind(facts.fingerprint.as_slice())
            .bind(site.as_str())
            .bind(facts.not_before)
            .bind(facts.not_after)
            .bind(stale)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                // The serial or fingerprint is registered, but not to this site.
                Admission::Refused(format!(
                    "certificate {serial} does not match the hub's registry"
                ))
            } else if stale {
                Admission::Refused(format!(
                    "certificate {serial} was issued before site {site} was revoked: enroll the box again with a new token"
                ))
            } else {
                tracing::info!(%site, %serial, "certificate from before the registry recorded as legacy");
                Admission::Allowed
            }
        }
    };
    tx.commit().await?;
    Ok(verdict)
}

/// The periodic re-check of a live session: is the site still admitted and the certificate
/// not revoked? (Its expiry the caller checks from the certificate itself.)
pub async fn still_valid(
    pool: &PgPool,
    site: &SiteId,
    serial: &str,
) -> Result<Admission, sqlx::Error> {
    let mut tx = crate::db::scoped(pool, site).await?;
    let row: Option<(bool, Option<String>)> = crate::db::query_as(
        "SELECT s.revoked_at IS NULL, c.revoke_reason
           FROM sites s JOIN certificates c ON c.serial = $2
          WHERE s.site_id = $1 AND (s.revoked_at IS NOT NULL OR c.revoked_at IS NOT NULL)",
    )
    .bind(site.as_str())
    .bind(serial)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(match row {
        None => Admission::Allowed,
        Some((false, _)) => Admission::Refused(format!("site {site} was revoked")),
        Some((true, reason)) => Admission::Refused(format!(
            "certificate {serial} was revoked ({})",
            reason.as_deref().unwrap_or("revoked")
        )),
    })
}

/// Signs a renewal for the site of a live session (its TLS certificate `presented`; the CSR's
/// subject is ignored) and records it as renewed from `presented`, in one transaction; a
/// successor of `presented` issued earlier and never used is revoked (`replaced`). Refused:
/// a CSR that does not parse or verify, a second renewal of the site within
/// [`RENEW_INTERVAL_MIN`], a revoked site or certificate. A database failure is a refusal too
/// (the edge tries again later), logged here.
pub async fn renew(
    pool: &PgPool,
    ca: &crate::pki::Ca,
    site: &SiteId,
    presented: &CertFacts,
    csr_pem: &str,
) -> sync_protocol::message::RenewOutcome {
    use sync_protocol::message::RenewOutcome;
    match renew_in_tx(pool, ca, site, presented, csr_pem).await {
        Ok(Ok(Signed { pem, facts })) => {
            tracing::info!(%site, old = %presented.serial, new = %facts.serial, "certificate renewed");
            RenewOutcome::Issued {
                certificate_pem: pem,
            }
        }
        Ok(Err(message)) => {
            tracing::info!(%site, %message, "certificate renewal refused");
            RenewOutcome::Refused { message }
        }
        Err(e) => {
            tracing::warn!(%site, error = %e, "certificate renewal failed");
            RenewOutcome::Refused {
                message: "the hub could not record a new certificate just now; try again later"
                    .into(),
            }
        }
    }
}

/// A signed certificate and what the registry keeps of it.
struct Signed {
    pem: String,
    facts: CertFacts,
}

async fn renew_in_tx(
    pool: &PgPool,
    ca: &crate::pki::Ca,
    site: &SiteId,
    presented: &CertFacts,
    csr_pem: &str,
) -> Result<Result<Signed, String>, CertError> {
    let mut tx = crate::db::scoped(pool, site).await?;
    // The site's row locked: two sessions of one site renew one after the other, so the
    // interval below holds.
    let row: Option<(bool, Option<f64>, Option<OffsetDateTime>)> = crate::db::query_as(
        "SELECT s.revoked_at IS NULL,
                (SELECT extract(epoch FROM now() - max(c.issued_at))::float8 FROM certificates c
                  WHERE c.site_id = s.site_id AND c.source = 'renewal'),
                (SELECT c.revoked_at FROM certificates c WHERE c.serial = $2)
           FROM sites s WHERE s.site_id = $1 FOR UPDATE OF s",
    )
    .bind(site.as_str())
    .bind(&presented.serial)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((site_ok, since_last, presented_revoked)) = row else {
        return Ok(Err(format!("site {site} is not registered")));
    };
    if !site_ok || presented_revoked.is_some() {
        return Ok(Err(format!(
            "site {site} or certificate {} is revoked",
            presented.serial
        )));
    }
    if let Some(secs) = since_last
        && secs < RENEW_INTERVAL_MIN.as_secs_f64()
    {
        return Ok(Err(format!(
            "site {site} renewed a certificate {secs:.0} s ago; at most one renewal every {} s",
            RENEW_INTERVAL_MIN.as_secs()
        )));
    }
    let pem = match ca.sign_site_csr(site, csr_pem) {
        Ok(pem) => pem,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let facts = CertFacts::from_pem(&pem)?;
    crate::db::query(
        "UPDATE certificates SET revoked_at = now(), revoke_reason = $2
          WHERE renewed_from = $1 AND first_used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(&presented.serial)
    .bind(format!("replaced by {} before its first use", facts.serial))
    .execute(&mut *tx)
    .await?;
    record(
        &mut tx,
        site,
        &facts,
        Source::Renewal,
        Some(&presented.serial),
    )
    .await?;
    tx.commit().await?;
    Ok(Ok(Signed { pem, facts }))
}

/// What `site revoke` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteRevoked {
    pub certificates: u64,
    pub tokens: u64,
}

/// Revokes a site: the site, every certificate of it that is not revoked yet, and every
/// enrollment token not yet used, in one transaction. Certificates the registry does not
/// know (from before it) are refused too, through `certs_revoked_before`.
pub async fn revoke_site(pool: &PgPool, site: &SiteId) -> Result<SiteRevoked, CertError> {
    let mut tx = crate::db::begin(pool, crate::db::PoolRole::Write).await?;
    scope(&mut tx, site).await?;
    let n = crate::db::query(
        "UPDATE sites SET revoked_at = coalesce(revoked_at, now()), certs_revoked_before = now()
          WHERE site_id = $1",
    )
    .bind(site.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(CertError::NoSuchSite(site.to_string()));
    }
    let certificates = crate::db::query(
        "UPDATE certificates SET revoked_at = now(), revoke_reason = 'site revoked'
          WHERE site_id = $1 AND revoked_at IS NULL",
    )
    .bind(site.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let tokens = crate::db::query(
        "UPDATE enroll_tokens SET revoked_at = now()
          WHERE site_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(site.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    tracing::info!(%site, certificates, tokens, "site revoked");
    Ok(SiteRevoked {
        certificates,
        tokens,
    })
}

/// What `cert revoke` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRevoked {
    pub serial: String,
    pub site: String,
    /// It was revoked before (the first revocation's time and reason are kept).
    pub already: bool,
}

/// Revokes one certificate by serial (as the schema owner: the registry across sites).
pub async fn revoke_serial(
    pool: &PgPool,
    serial: &str,
    reason: &str,
) -> Result<CertRevoked, CertError> {
    let normalized =
        crate::pki::normalize_serial(serial).ok_or_else(|| CertError::BadSerial(serial.into()))?;
    let reason: String = reason.chars().take(REASON_BYTES_MAX).collect();
    let mut tx = crate::db::begin(pool, crate::db::PoolRole::Write).await?;
    let row: Option<(String, bool)> = crate::db::query_as(
        "UPDATE certificates c SET revoked_at = coalesce(c.revoked_at, now()),
                revoke_reason = coalesce(c.revoke_reason, $2)
           FROM certificates old
          WHERE c.serial = $1 AND old.serial = c.serial
         RETURNING c.site_id, old.revoked_at IS NOT NULL",
    )
    .bind(&normalized)
    .bind(&reason)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let (site, already) = row.ok_or_else(|| CertError::NoSuchCertificate(normalized.clone()))?;
    tracing::info!(%site, serial = %normalized, "certificate revoked");
    Ok(CertRevoked {
        serial: normalized,
        site,
        already,
    })
}

/// One row of `cert list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRow {
    pub serial: String,
    pub fingerprint: String,
    pub site_id: String,
    pub source: String,
    pub renewed_from: Option<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub issued_at: OffsetDateTime,
    pub first_used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    pub revoke_reason: Option<String>,
    /// The certificate of the site's last sync session.
    pub in_use: bool,
}

impl CertRow {
    /// `valid`, `expired` or `revoked`, at `now`.
    pub fn status(&self, now: OffsetDateTime) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.not_after <= now {
            "expired"
        } else {
            "valid"
        }
    }

    /// The row as `cert list --json` prints it (times in RFC 3339).
    pub fn to_json(&self, now: OffsetDateTime) -> serde_json::Value {
        let t = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        serde_json::json!({
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint,
            "site_id": self.site_id,
            "source": self.source,
            "renewed_from": self.renewed_from,
            "not_before": t(self.not_before),
            "not_after": t(self.not_after),
            "issued_at": t(self.issued_at),
            "first_used_at": self.first_used_at.map(t),
            "revoked_at": self.revoked_at.map(t),
            "revoke_reason": self.revoke_reason,
            "status": self.status(now),
            "in_use": self.in_use,
        })
    }
}

/// The registry (of one site), by site and issue time (as the schema owner).
pub async fn list(pool: &PgPool, site: Option<&SiteId>) -> Result<Vec<CertRow>, CertError> {
    type Row = (
        String,
        Vec<u8>,
        String,
        String,
        Option<String>,
        OffsetDateTime,
        OffsetDateTime,
        OffsetDateTime,
        Option<OffsetDateTime>,
        Option<OffsetDateTime>,
        Option<String>,
        bool,
    );
    let mut tx = crate::db::begin(pool, crate::db::PoolRole::Write).await?;
    if let Some(site) = site {
        scope(&mut tx, site).await?;
    }
    let rows: Vec<Row> = crate::db::query_as(
        "SELECT c.serial, c.fingerprint, c.site_id, c.source, c.renewed_from, c.not_before,
                c.not_after, c.issued_at, c.first_used_at, c.revoked_at, c.revoke_reason,
                s.cert_serial IS NOT DISTINCT FROM c.serial
           FROM certificates c JOIN sites s ON s.site_id = c.site_id
          WHERE $1::text IS NULL OR c.site_id = $1
          ORDER BY c.site_id, c.issued_at, c.serial",
    )
    .bind(site.map(SiteId::as_str))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|r| CertRow {
            serial: r.0,
            fingerprint: sync_protocol::enroll::hex(&r.1),
            site_id: r.2,
            source: r.3,
            renewed_from: r.4,
            not_before: r.5,
            not_after: r.6,
            issued_at: r.7,
            first_used_at: r.8,
            revoked_at: r.9,
            revoke_reason: r.10,
            in_use: r.11,
        })
        .collect())
}

/// `cert list` as a table.
pub fn render_table(rows: &[CertRow], now: OffsetDateTime) -> String {
    let day = |t: OffsetDateTime| {
        let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
        t.format(&f).unwrap_or_default()
    };
    let mut out = format!(
        "{:<34} {:<20} {:<10} {:<16} {:<16} {:<16} STATUS\n",
        "SERIAL", "SITE", "SOURCE", "ISSUED", "EXPIRES", "FIRST USED"
    );
    for r in rows {
        let mut status = r.status(now).to_owned();
        if let Some(reason) = &r.revoke_reason {
            status.push_str(&format!(" ({reason})"));
        }
        if r.in_use {
            status.push_str(", in use");
        }
        out.push_str(&format!(
            "{:<34} {:<20} {:<10} {:<16} {:<16} {:<16} {status}\n",
            r.serial,
            r.site_id,
            r.source,
            day(r.issued_at),
            day(r.not_after),
            r.first_used_at.map(day).unwrap_or_else(|| "-".into()),
        ));
    }
    out
}
