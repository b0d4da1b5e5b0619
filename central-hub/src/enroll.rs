//! Enrollment of an edge: `central-hub enroll-token SITE` makes a one-time, expiring token
//! (only its SHA-256 is stored), and the hub's HTTPS endpoint trades it, once, for a site
//! certificate signed from the edge's own certificate signing request: the private key never
//! leaves the box. The endpoint is HTTPS with the hub's CA, whose fingerprint the token
//! carries, so the installer can check it talks to this hub before it sends the token.
//!
//! `GET /api/v1/enroll` tells the hub's time and QUIC port (so an installer can check its
//! clock and UDP before spending the token); `POST /api/v1/enroll` enrolls. Errors are JSON
//! with the codes of [`sync_protocol::enroll::codes`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use shared_model::SiteId;
use sqlx::PgPool;
use sync_protocol::enroll::{
    CSR_BYTES_MAX, EnrollInfo, EnrollRequest, EnrollResponse, EnrollToken, PATH, SECRET_HEX, codes,
    hex,
};
use tokio::sync::{Semaphore, watch};

use crate::pki::Ca;

/// Default and longest lifetime of a token.
pub const TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(24 * 3600);
pub const TOKEN_TTL_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
/// TLS connections served at once; more wait for the accept loop.
pub const CONNECTIONS_MAX: usize = 64;
/// A TLS handshake or request that takes longer is dropped.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("no site {0}: add it first with `central-hub site add`")]
    NoSuchSite(String),
    #[error("site {0} is revoked")]
    Revoked(String),
    #[error("a token lives at most {} days", TOKEN_TTL_MAX.as_secs() / 86_400)]
    TtlTooLong,
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Pki(#[from] crate::pki::PkiError),
}

fn secret_hash(secret: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// Whether the site exists, and when it was revoked. The `sites` table is row-level secured
/// for the hub role: the lookup runs in the site's scope.
async fn site_status(
    pool: &PgPool,
    site: &SiteId,
) -> Result<Option<Option<time::OffsetDateTime>>, sqlx::Error> {
    let mut tx = crate::db::begin(pool, crate::db::PoolRole::Write).await?;
    crate::db::query("SELECT set_config('app.current_site_id', $1, true)")
        .bind(site.as_str())
        .execute(&mut *tx)
        .await?;
    let row: Option<Option<time::OffsetDateTime>> =
        crate::db::query_scalar("SELECT revoked_at FROM sites WHERE site_id = $1")
            .bind(site.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(row)
}

/// Creates a token for `site`, valid for `ttl`; returns it as the engineer types it.
pub async fn create_token(
    pool: &PgPool,
    ca: &Ca,
    site: &SiteId,
    ttl: Duration,
) -> Result<EnrollToken, EnrollError> {
    if ttl > TOKEN_TTL_MAX {
        return Err(EnrollError::TtlTooLong);
    }
    match site_status(pool, site).await? {
        None => return Err(EnrollError::NoSuchSite(site.to_string())),
        Some(Some(_)) => return Err(EnrollError::Revoked(site.to_string())),
        Some(None) => {}
    }
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; SECRET_HEX / 2];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| sqlx::Error::Protocol("no randomness available".into()))?;
    let secret = hex(&bytes);
    let mut tx = crate::db::begin(pool, crate::db::PoolRole::Write).await?;
    crate::db::query(
        "INSERT INTO enroll_tokens (hash, site_id, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind(secret_hash(&secret))
    .bind(site.as_str())
    .bind(ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(EnrollToken {
        secret,
        ca_fingerprint: ca.fingerprint()?,
    })
}

#[derive(Clone)]
struct EnrollState {
    pool: PgPool,
    ca: Arc<Ca>,
    quic_port: u16,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

async fn info(State(s): State<EnrollState>) -> Json<EnrollInfo> {
    Json(EnrollInfo {
        hub_time_micros: now_micros(),
        quic_port: s.quic_port,
    })
}

async fn enroll(
    State(s): State<EnrollState>,
    body: Result<Json<EnrollRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(req)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "expected {\"secret\", \"csr_pem\", \"agent\"}",
        );
    };
    if req.csr_pem.len() > CSR_BYTES_MAX {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::BAD_CSR,
            "the CSR is too large",
        );
    }
    let agent: String = req.agent.chars().take(200).collect();
    match redeem(&s, &req.secret, &req.csr_pem, &agent).await {
        Ok(r) => Json(r).into_response(),
        Err(r) => r,
    }
}

/// Checks and spends the token and signs the CSR, in one transaction: a token is spent only
/// when a certificate was issued.
async fn redeem(
    s: &EnrollState,
    secret: &str,
    csr_pem: &str,
    agent: &str,
) -> Result<EnrollResponse, Response> {
    let db = |e: sqlx::Error| {
        tracing::warn!(error = %e, "enrollment: database");
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the hub's database is not answering; try again in a minute",
        )
    };
    let mut tx = crate::db::begin(&s.pool, crate::db::PoolRole::Write)
        .await
        .map_err(db)?;
    type TokenRow = (
        String,
        bool,
        bool,
        time::OffsetDateTime,
        Option<time::OffsetDateTime>,
        Option<time::OffsetDateTime>,
    );
    let row: Option<TokenRow> = crate::db::query_as(
        "SELECT site_id, used_at IS NOT NULL, expires_at <= now(), expires_at, used_at,
                revoked_at
             FROM enroll_tokens WHERE hash = $1 FOR UPDATE",
    )
    .bind(secret_hash(secret))
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let Some((site, used, expired, expires_at, used_at, revoked_at)) = row else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            codes::INVALID_TOKEN,
            "this hub did not issue that token (check for typos, or that the address is the right hub)",
        ));
    };
    if used {
        return Err(error(
            StatusCode::GONE,
            codes::TOKEN_USED,
            format!(
                "the token for {site} was already used at {}; tokens work once: ask HQ for a new one",
                used_at.map(|t| t.to_string()).unwrap_or_default()
            ),
        ));
    }
    if let Some(at) = revoked_at {
        // Revoked with its site (`site revoke`); re-admitting the site does not revive it.
        return Err(error(
            StatusCode::FORBIDDEN,
            codes::SITE_REVOKED,
            format!(
                "the token for {site} was revoked with the site at {at}: once HQ has re-admitted the site, ask for a new token"
            ),
        ));
    }
    if expired {
        return Err(error(
            StatusCode::GONE,
            codes::TOKEN_EXPIRED,
            format!("the token for {site} expired at {expires_at}: ask HQ for a new one"),
        ));
    }
    let site = SiteId::new(site).map_err(|_| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "stored site id is invalid",
        )
    })?;
    match site_status(&s.pool, &site).await.map_err(db)? {
        Some(None) => {}
        _ => {
            return Err(error(
                StatusCode::FORBIDDEN,
                codes::SITE_REVOKED,
                format!(
                    "site {site} is revoked at the hub: HQ must re-admit it before it can enroll"
                ),
            ));
        }
    }
    let certificate_pem =
        s.ca.sign_site_csr(&site, csr_pem)
            .map_err(|e| error(StatusCode::BAD_REQUEST, codes::BAD_CSR, e.to_string()))?;
    let facts = crate::pki::CertFacts::from_pem(&certificate_pem).map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the issued certificate does not parse: {e}"),
        )
    })?;
    // Recorded in the transaction that spends the token: no certificate leaves the hub
    // without its row, so every one of them can be revoked.
    crate::certs::record(
        &mut tx,
        &site,
        &facts,
        crate::certs::Source::Enrollment,
        None,
    )
    .await
    .map_err(db)?;
    crate::db::query("UPDATE enroll_tokens SET used_at = now(), used_by = $2 WHERE hash = $1")
        .bind(secret_hash(secret))
        .bind(agent)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    tracing::info!(%site, %agent, serial = %facts.serial, "site enrolled");
    Ok(EnrollResponse {
        site_id: site.to_string(),
        certificate_pem,
        ca_pem: s.ca.cert_pem().to_owned(),
        quic_port: s.quic_port,
        hub_time_micros: now_micros(),
    })
}

fn router(state: EnrollState) -> Router {
    Router::new()
        .route(PATH, get(info).post(enroll))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .layer(axum::extract::DefaultBodyLimit::max(CSR_BYTES_MAX + 4096))
        .with_state(state)
}

/// The TLS server configuration: the hub's server certificate followed by the CA certificate,
/// so an installer that pins the CA's fingerprint finds it in the chain.
fn tls_config(ca: &Ca, names: &[String]) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let issued = ca.issue_server(names)?;
    let chain = vec![
        CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).context("server cert")?,
        CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).context("CA cert")?,
    ];
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).context("server key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Binds the enrollment endpoint; the returned task serves it until `shutdown`.
pub async fn start(
    pool: PgPool,
    ca: Arc<Ca>,
    names: &[String],
    listen: SocketAddr,
    quic_port: u16,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&ca, names)?));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the enrollment endpoint {listen}"))?;
    let addr = listener.local_addr()?;
    let app = router(EnrollState {
        pool,
        ca,
        quic_port,
    });
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let task = tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.changed() => break,
            };
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "enrollment endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let served = tokio::time::timeout(CONNECTION_TIMEOUT, async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "enrollment TLS handshake failed");
                            return;
                        }
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    if let Err(e) = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await
                    {
                        // A client that hangs up mid-request is no fault of the hub's.
                        tracing::debug!(%peer, error = %e, "enrollment connection ended");
                    }
                })
                .await;
                if served.is_err() {
                    tracing::debug!(%peer, "enrollment connection timed out");
                }
            });
        }
    });
    Ok((addr, task))
}
