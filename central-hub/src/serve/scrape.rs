//! `GET /metrics`: one OpenMetrics scrape of the instance (`crate::metrics::Scrape`): the
//! process-wide families, the sync counters, the pools, and the per-site gauges from the read
//! database (cached for [`super::SITE_GAUGES_AGE`]).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use sqlx::PgPool;

use super::ready::{read_rows, replication_lag};
use super::{HttpState, SITE_GAUGES_AGE};
use crate::sync;

/// Per-site gauges from the read database: sync status as `/api/v1/sites` shows it, work
/// orders running or paused, failed quality samples of the last 8 hours (one shift; the
/// guide's "quality alerts"), and operators who recorded something in the last 15 minutes.
const SITE_GAUGES_SQL: &str = "SELECT s.site_id, s.connected::int::float8 AS connected,
    coalesce(extract(epoch FROM now() - s.last_seen_at), -1)::float8 AS last_seen,
    coalesce(s.edge_pending_events, 0)::float8 AS backlog,
    greatest(coalesce(extract(epoch FROM now() - s.edge_oldest_pending_at), 0), 0)::float8 AS lag,
    (SELECT count(*) FROM work_orders w
      WHERE w.site_id = s.site_id AND w.state IN ('running', 'interrupted'))::float8 AS orders,
    (SELECT count(*) FROM events e
      WHERE e.site_id = s.site_id AND e.kind = 'quality_sample' AND e.reason = 'out_of_spec'
        AND e.occurred_at > now() - interval '8 hours')::float8 AS quality,
    (SELECT count(DISTINCT e.operator) FROM events e
      WHERE e.site_id = s.site_id AND e.operator IS NOT NULL
        AND e.occurred_at > now() - interval '15 minutes')::float8 AS users,
    coalesce((SELECT extract(epoch FROM max(c.not_after) - now()) FROM certificates c
      WHERE c.site_id = s.site_id AND c.revoked_at IS NULL), 'NaN')::float8 AS cert_expiry,
    coalesce(s.heal_unrecoverable_events, 0)::float8 AS heal_lost
  FROM sites s WHERE s.revoked_at IS NULL ORDER BY s.site_id";

async fn site_gauges(pool: &PgPool) -> Result<String, sqlx::Error> {
    use sqlx::Row as _;
    let rows = read_rows(pool, "site_gauges", SITE_GAUGES_SQL).await?;
    const COLUMNS: [(&str, &str, &str); 9] = [
        (
            "connected",
            "mes_sync_site_connected",
            "1 when the site's edge holds a sync session (any hub instance).",
        ),
        (
            "last_seen",
            "mes_sync_site_last_seen_seconds",
            "Seconds since the site's edge was last seen.",
        ),
        (
            "backlog",
            "mes_sync_backlog_events",
            "Events the site's edge reported as not yet acknowledged.",
        ),
        (
            "lag",
            "mes_sync_lag_seconds",
            "Age of the oldest event the site's edge still holds for the hub.",
        ),
        (
            "orders",
            "mes_work_orders_active",
            "Work orders running or paused.",
        ),
        (
            "quality",
            "mes_quality_alerts_active",
            "Failed quality samples in the last 8 hours.",
        ),
        (
            "users",
            "mes_active_users_by_site",
            "Operators who recorded an event in the last 15 minutes.",
        ),
        (
            "cert_expiry",
            "mes_site_certificate_expiry_seconds",
            "Seconds until the last unrevoked certificate of the site expires (negative: expired); the edge renews at two thirds of the lifetime.",
        ),
        (
            "heal_lost",
            "mes_site_heal_unrecoverable_events",
            "Events the hub's database lost (a restore or a failover) that the site's edge could not give back, its retention having pruned them; from the site's last heal.",
        ),
    ];
    let mut cols: [Vec<(String, f64)>; 9] = Default::default();
    for r in &rows {
        let site: String = r.try_get("site_id")?;
        for ((column, _, _), samples) in COLUMNS.iter().zip(&mut cols) {
            let v: f64 = r.try_get(*column)?;
            // A site never seen has no age: leave it out rather than report -1 s. A site
            // without a known certificate has no expiry.
            if (*column == "last_seen" && v < 0.0) || v.is_nan() {
                continue;
            }
            samples.push((site.clone(), v));
        }
    }
    let mut out = crate::metrics::Scrape::empty();
    for ((_, name, help), samples) in COLUMNS.iter().zip(cols) {
        out.gauges(name, help, "site", samples);
    }
    Ok(out.text())
}

fn pool_gauges(out: &mut crate::metrics::Scrape, pools: &[(&str, &PgPool)]) {
    let mut active = Vec::new();
    let mut idle = Vec::new();
    let mut limit = Vec::new();
    let mut waiting = Vec::new();
    for (role, pool) in pools {
        let label = (*role).to_owned();
        let size = f64::from(pool.size());
        let free = pool.num_idle() as f64;
        active.push((label.clone(), (size - free).max(0.0)));
        idle.push((label.clone(), free));
        limit.push((
            label.clone(),
            f64::from(pool.options().get_max_connections()),
        ));
        let w = match *role {
            "read" => &crate::db::WAITING.read,
            "auth" => &crate::db::WAITING.auth,
            _ => &crate::db::WAITING.write,
        };
        waiting.push((label, w.load(Ordering::Relaxed).max(0) as f64));
    }
    for (name, help, samples) in [
        (
            "mes_db_connections_active",
            "Pooled connections in use.",
            active,
        ),
        (
            "mes_db_connections_idle",
            "Pooled connections open and idle.",
            idle,
        ),
        (
            "mes_db_connections_waiting",
            "Transactions waiting for a pooled connection.",
            waiting,
        ),
        (
            "mes_db_connections_limit",
            "Most connections the pool opens.",
            limit,
        ),
    ] {
        out.gauges(name, help, "pool", samples);
    }
}

pub(super) async fn metrics_text(State(s): State<HttpState>) -> impl IntoResponse {
    let m = &s.metrics;
    let mut out = crate::metrics::Scrape::hub();
    let gauges = [
        (
            "mes_sync_edges_connected",
            "Sync sessions open on this instance.",
            &m.connections_open,
        ),
        (
            "hub_sync_connections_open",
            "Open sync connections.",
            &m.connections_open,
        ),
        (
            "mes_sync_handshakes_in_progress",
            "QUIC/TLS handshakes in progress (validated addresses only).",
            &m.handshakes_open,
        ),
    ];
    for (name, help, v) in gauges {
        out.gauge_int(
            name,
            help,
            i64::try_from(v.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        );
    }
    let r = &s.reports.shared.metrics;
    let a = &s.auth.stats;
    let counters = [
        (
            "mes_sync_events_ingested_total",
            "Events stored (duplicates excluded).",
            &m.events_ingested,
        ),
        (
            "hub_sync_connections_total",
            "Sync connections accepted.",
            &m.connections_total,
        ),
        (
            "hub_sync_connections_refused_total",
            "Connections refused at the limit.",
            &m.connections_refused,
        ),
        (
            "hub_sync_sessions_failed_total",
            "Sessions ended by a store failure.",
            &m.sessions_failed,
        ),
        (
            "hub_sync_protocol_errors_total",
            "Sessions closed for a protocol violation.",
            &m.protocol_errors,
        ),
        (
            "hub_events_ingested_total",
            "Events inserted (duplicates excluded).",
            &m.events_ingested,
        ),
        (
            "mes_sync_retries_total",
            "Connection attempts answered with a QUIC Retry (address not validated yet).",
            &m.retries,
        ),
        (
            "mes_sync_sessions_replaced_total",
            "Connections closed because a newer connection of their site took their place.",
            &m.sessions_replaced,
        ),
        (
            "mes_sync_certificates_renewed_total",
            "Site certificates renewed over sync sessions by this instance.",
            &m.certificates_renewed,
        ),
        (
            "mes_sync_certificate_renewals_refused_total",
            "Certificate renewals this instance refused (bad CSR, too frequent, database).",
            &m.renewals_refused,
        ),
        (
            "mes_report_cache_hits_total",
            "Report requests answered from the cache.",
            &r.cache_hits,
        ),
        (
            "mes_report_cache_misses_total",
            "Report requests computed from the database.",
            &r.cache_misses,
        ),
        (
            "mes_report_cache_stale_total",
            "Cached reports served past their TTL while one request refreshed them.",
            &r.cache_stale,
        ),
        (
            "mes_rate_limited_total",
            "API requests refused with 429.",
            &r.rate_limited,
        ),
        (
            "mes_redis_errors_total",
            "Redis commands that failed or timed out (the request went on without).",
            &r.redis_errors,
        ),
        (
            "mes_api_token_lookups_total",
            "HQ API token lookups that reached the database (read side).",
            &a.lookups,
        ),
        (
            "mes_api_auth_failures_total",
            "HQ API requests refused as unknown, revoked or malformed tokens.",
            &a.unknown,
        ),
        (
            "mes_api_auth_limited_total",
            "HQ API requests refused with 429 for their address' failed authentications.",
            &a.limited,
        ),
    ];
    for (name, help, v) in counters {
        out.counter(name, help, v.load(Ordering::Relaxed));
    }
    out.counters(
        "mes_sync_connections_refused_total",
        "Connection attempts refused, or connections closed before their session, by reason.",
        "reason",
        sync::Refusal::ALL.map(|reason| (reason.name().to_owned(), m.refused(reason))),
    );
    let mut pools = vec![("write", &s.pool)];
    if let Some(read) = &s.read_pool {
        pools.push(("read", read));
    }
    if let Some(auth) = &s.auth_pool {
        pools.push(("auth", auth));
    }
    pool_gauges(&mut out, &pools);
    let mut per_site = String::new();
    if let Some(read) = &s.read_pool {
        match replication_lag(read).await {
            Ok((_, lag)) => out.gauge(
                "mes_db_replication_lag_seconds",
                "Replication lag of the read database (0 on a primary or a caught-up replica).",
                lag,
            ),
            Err(e) => tracing::warn!(error = %e, "replication lag query failed"),
        }
        let mut cached = s.site_gauges.lock().await;
        let fresh = cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < SITE_GAUGES_AGE)
            .map(|(_, text)| text.clone());
        match fresh {
            Some(text) => per_site = text,
            None => match site_gauges(read).await {
                Ok(text) => {
                    per_site.clone_from(&text);
                    *cached = Some((std::time::Instant::now(), text));
                }
                Err(e) => tracing::warn!(error = %e, "per-site gauges failed"),
            },
        }
    }
    let (hits, misses) = (
        r.cache_hits.load(Ordering::Relaxed),
        r.cache_misses.load(Ordering::Relaxed),
    );
    let rate = if hits + misses > 0 {
        hits as f64 / (hits + misses) as f64
    } else {
        0.0
    };
    out.gauge(
        "mes_cache_hit_rate",
        "Share of report lookups answered from the cache since start.",
        rate,
    );
    out.gauge(
        "mes_cache_miss_rate",
        "Share of report lookups computed from the database since start.",
        if hits + misses > 0 { 1.0 - rate } else { 0.0 },
    );
    out.gauge(
        "mes_report_cache_hit_ratio",
        "Cache hits over lookups since start.",
        rate,
    );
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        out.finish(&per_site),
    )
}
