//! Who calls the HQ API: bearer tokens (`central-hub api-token create|list|revoke`), checked
//! without letting a stranger cost the write path anything.
//!
//! - A token is looked up on the read side: the reporting connection when one is configured,
//!   else a small pool of its own on the hub's database ([`AUTH_POOL_CONNECTIONS`]), through
//!   the SECURITY DEFINER function `mes_token_scope` (the reporting role can check a hash, not
//!   list the table). An unknown token never takes a connection of the write pool.
//! - A known token's scope is trusted for [`TOKEN_CACHE_TTL`], counted from the start of the
//!   lookup ([`crate::memo`]): a revoked token is refused within that time by every instance
//!   (plus the read replica's lag, which `/ready` reports).
//! - An unknown hash is remembered for [`UNKNOWN_TTL`] ([`UNKNOWN_MAX`] of them): repeating a
//!   bad token costs no lookup.
//! - Failed authentications are counted per client address: past
//!   [`FAILURES_PER_ADDRESS_MAX`] in a [`FAILURE_WINDOW`] the address gets `429` (JSON body,
//!   `Retry-After`) for the rest of the window, before any lookup; only a token whose scope is
//!   cached (a known, live token) still passes from it. The client address is the TCP peer,
//!   or, when the peer is one of the trusted proxies (`--trusted-proxy`), the right-most
//!   `X-Forwarded-For` entry that is not a trusted proxy. IPv6 clients count per /64.
//!
//! Time is tokio's clock, so tests drive it with `tokio::time::pause`.
//!
//! The failure limit is written here rather than with `governor` (which the per-token request
//! limit uses, `crate::reports::cache`): governor's GCRA refills continuously, where an address
//! here stays blocked for the rest of its window (the `Retry-After` counts it down); it cannot
//! ask "is this address blocked" without spending a cell, where the check here runs before the
//! lookup and only failures count; and its key store has no bound that keeps blocked addresses
//! while forgetting others (`retain_recent` keeps every key not yet refilled, which under a flood
//! of distinct addresses is all of them).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header;
use shared_model::SiteId;
use sqlx::{PgPool, Row};
use tokio::time::Instant;

use crate::http::error::ApiError;
use crate::memo::Memo;

/// How long a known token's scope is trusted: a revoked token stops working within this time.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(2);
/// Most known tokens remembered.
pub const TOKEN_CACHE_MAX: usize = 10_000;
/// How long a hash found unknown is answered `401` without a lookup. Short, because a token
/// used the moment it was created may be unknown to a lagging read replica.
pub const UNKNOWN_TTL: Duration = Duration::from_secs(10);
/// Most unknown hashes remembered (about 100 bytes each).
pub const UNKNOWN_MAX: usize = 10_000;
/// Failed authentications one client address may make per [`FAILURE_WINDOW`].
pub const FAILURES_PER_ADDRESS_MAX: u32 = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Most client addresses counted; past it the unblocked ones are forgotten first.
pub const ADDRESSES_TRACKED_MAX: usize = 10_000;
/// A token's `last_used_at` is written at most this often per token and instance.
pub const LAST_USED_RESOLUTION: Duration = Duration::from_secs(60);
/// Connections of the lookup pool when no read database is configured.
pub const AUTH_POOL_CONNECTIONS: u32 = 4;
/// Longest token accepted (ours are 52 characters).
pub const TOKEN_CHARS_MAX: usize = 128;
/// Most `X-Forwarded-For` hops walked.
pub const FORWARDED_HOPS_MAX: usize = 16;

/// What a token may do.
#[derive(Clone, Debug)]
pub struct Scope {
    pub write: bool,
    /// `None`: every site (HQ-wide).
    pub site: Option<SiteId>,
}

impl Scope {
    pub fn allows(&self, site: &SiteId) -> bool {
        self.site.as_ref().is_none_or(|s| s == site)
    }

    /// Whether a site named by a database row is visible (a name that is not a valid site id
    /// is visible to nobody).
    pub fn allows_name(&self, site: &str) -> bool {
        SiteId::new(site).is_ok_and(|s| self.allows(&s))
    }

    /// A write to `site`, or `403`.
    pub fn require_write(&self, site: &SiteId) -> Result<(), ApiError> {
        if self.write && self.allows(site) {
            Ok(())
        } else {
            Err(ApiError::forbidden())
        }
    }
}

/// Why a request was not let in.
#[derive(Debug)]
pub enum Denied {
    /// No bearer token at all (not counted as a failure: nothing was guessed).
    Missing,
    /// Unknown, revoked or malformed.
    Unknown,
    /// Too many failures from this client address: retry after this many seconds.
    TooMany(u64),
    /// The lookup failed.
    Unavailable(sqlx::Error),
}

#[derive(Debug)]
enum LookupError {
    Unknown,
    Db(sqlx::Error),
}

impl From<sqlx::Error> for LookupError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

/// An address or network, `10.0.0.0/8`, `fd00::/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: expected an address or a network like 10.0.0.0/8"))?;
        let net = canonical(net);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { net, bits })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address is its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// What failures are counted under: the address, or an IPv6 address's /64 (one subscriber's
/// whole network).
fn failure_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

/// Counters of one instance's authentication (also in `/metrics`).
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Lookups that reached the database.
    pub lookups: AtomicU64,
    /// Requests refused as unknown, revoked or malformed.
    pub unknown: AtomicU64,
    /// Requests refused with `429` for their address' failures.
    pub limited: AtomicU64,
}

#[derive(Debug)]
pub struct Auth {
    /// The read side: where tokens are looked up.
    lookup_pool: PgPool,
    /// Which pool that is, for the waiting gauge.
    lookup_role: crate::db::PoolRole,
    /// Only for `last_used_at` of known tokens.
    write_pool: PgPool,
    tokens: Arc<Memo<Vec<u8>, Scope>>,
    unknown: Mutex<HashMap<Vec<u8>, Instant>>,
    failures: Mutex<HashMap<IpAddr, Window>>,
    last_used: Mutex<HashMap<Vec<u8>, Instant>>,
    trusted_proxies: Vec<Cidr>,
    pub stats: AuthStats,
}

impl Auth {
    /// `lookup_pool` must not be the write pool (see the module docs); `lookup_role` says
    /// whether it is the read pool or the lookups' own.
    pub fn new(
        lookup_pool: PgPool,
        lookup_role: crate::db::PoolRole,
        write_pool: PgPool,
        trusted_proxies: Vec<Cidr>,
    ) -> Self {
        Self {
            lookup_pool,
            lookup_role,
            write_pool,
            tokens: Arc::new(Memo::new(TOKEN_CACHE_TTL, TOKEN_CACHE_MAX)),
            unknown: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            last_used: Mutex::new(HashMap::new()),
            trusted_proxies,
            stats: AuthStats::default(),
        }
    }

    pub fn lookup_pool(&self) -> &PgPool {
        &self.lookup_pool
    }

    /// The scope of the request's bearer token and the token's hash, or why it is refused.
    /// `peer` is the TCP
    /// peer (absent when the router is driven without a socket: all such callers share one
    /// failure budget).
    pub async fn authenticate(
        self: &Arc<Self>,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<(Scope, Vec<u8>), Denied> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(Denied::Missing)?;
        let hash = Some(token)
            .filter(|t| !t.is_empty() && t.len() <= TOKEN_CHARS_MAX)
            .map(token_hash);
        let client = self.client_address(peer, headers);
        let now = Instant::now();
        if let Some(retry) = self.blocked(client, now)
            && hash.as_ref().and_then(|h| self.tokens.peek(h)).is_none()
        {
            self.stats.limited.fetch_add(1, Ordering::Relaxed);
            return Err(Denied::TooMany(retry));
        }
        let Some(hash) = hash else {
            return Err(self.failed(client, now));
        };
        if self.known_unknown(&hash, now) {
            return Err(self.failed(client, now));
        }
        let me = self.clone();
        match self
            .tokens
            .get(hash.clone(), move |h| me.clone().lookup(h))
            .await
        {
            Ok(scope) => {
                self.touch(&hash);
                Ok((scope, hash))
            }
            Err(LookupError::Unknown) => Err(self.failed(client, Instant::now())),
            Err(LookupError::Db(e)) => Err(Denied::Unavailable(e)),
        }
    }

    /// One lookup on the read side; an unknown hash is remembered.
    async fn lookup(self: Arc<Self>, hash: Vec<u8>) -> Result<Scope, LookupError> {
        // Callers that waited for another's lookup of the same hash run their own: the
        // first one's "unknown" is here for them.
        if self.known_unknown(&hash, Instant::now()) {
            return Err(LookupError::Unknown);
        }
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        let row = crate::db::timed("token_lookup", async {
            // In a transaction so that, behind PgBouncer, its unnamed statement is parsed and
            // executed on the same server connection.
            let mut tx = crate::db::begin(&self.lookup_pool, self.lookup_role).await?;
            let row = crate::db::query("SELECT scope, site_id FROM mes_token_scope($1)")
                .bind(&hash)
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(row)
        })
        .await?;
        match row {
            Some(r) => {
                let scope: String = r.try_get("scope")?;
                let site: Option<String> = r.try_get("site_id")?;
                Ok(Scope {
                    write: scope == "hq:write",
                    site: site.and_then(|s| SiteId::new(s).ok()),
                })
            }
            None => {
                self.remember_unknown(hash.clone(), Instant::now());
                // A refresh that finds the token revoked ends its cached scope now.
                self.tokens.forget(&hash);
                Err(LookupError::Unknown)
            }
        }
    }

    fn known_unknown(&self, hash: &[u8], now: Instant) -> bool {
        self.unknown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(hash)
            .is_some_and(|at| now.saturating_duration_since(*at) < UNKNOWN_TTL)
    }

    fn remember_unknown(&self, hash: Vec<u8>, now: Instant) {
        let mut m = self
            .unknown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= UNKNOWN_MAX && !m.contains_key(&hash) {
            m.retain(|_, at| now.saturating_duration_since(*at) < UNKNOWN_TTL);
            // A flood of distinct made-up tokens: start over (the per-address limit is what
            // bounds that flood).
            if m.len() >= UNKNOWN_MAX {
                m.clear();
            }
        }
        m.insert(hash, now);
        debug_assert!(m.len() <= UNKNOWN_MAX, "unknown-token table past its bound");
    }

    /// Seconds left of the address' block, if it is blocked.
    fn blocked(&self, client: IpAddr, now: Instant) -> Option<u64> {
        let m = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let w = m.get(&client)?;
        let age = now.saturating_duration_since(w.start);
        (w.failures >= FAILURES_PER_ADDRESS_MAX && age < FAILURE_WINDOW)
            .then(|| (FAILURE_WINDOW - age).as_millis().div_ceil(1000) as u64)
    }

    /// Counts a failed authentication of `client`; returns the refusal.
    fn failed(&self, client: IpAddr, now: Instant) -> Denied {
        self.stats.unknown.fetch_add(1, Ordering::Relaxed);
        let mut m = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= ADDRESSES_TRACKED_MAX && !m.contains_key(&client) {
            // Forget the addresses that are not blocked; blocked ones stay blocked whatever
            // a crowd of other addresses does.
            m.retain(|_, w| {
                w.failures >= FAILURES_PER_ADDRESS_MAX
                    && now.saturating_duration_since(w.start) < FAILURE_WINDOW
            });
            if m.len() >= ADDRESSES_TRACKED_MAX {
                return Denied::Unknown;
            }
        }
        let w = m.entry(client).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now.saturating_duration_since(w.start) >= FAILURE_WINDOW {
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        debug_assert!(
            m.len() <= ADDRESSES_TRACKED_MAX,
            "failure table past its bound"
        );
        Denied::Unknown
    }

    /// Records a known token's use in `api_tokens.last_used_at`, at most once per
    /// [`LAST_USED_RESOLUTION`], in the background.
    fn touch(&self, hash: &[u8]) {
        let now = Instant::now();
        {
            let mut m = self
                .last_used
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if m.get(hash)
                .is_some_and(|at| now.saturating_duration_since(*at) < LAST_USED_RESOLUTION)
            {
                return;
            }
            if m.len() >= TOKEN_CACHE_MAX {
                m.clear();
            }
            m.insert(hash.to_vec(), now);
            debug_assert!(m.len() <= TOKEN_CACHE_MAX, "last-used table past its bound");
        }
        let pool = self.write_pool.clone();
        let hash = hash.to_vec();
        tokio::spawn(async move {
            let r = async {
                let mut tx = crate::db::begin(&pool, crate::db::PoolRole::Write).await?;
                crate::db::query("UPDATE api_tokens SET last_used_at = now() WHERE hash = $1")
                    .bind(&hash)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
            .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "recording a token's last use failed");
            }
        });
    }

    /// The address failures are counted under (see the module docs).
    pub fn client_address(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> IpAddr {
        let Some(peer) = peer else {
            return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        };
        let mut addr = canonical(peer.ip());
        if self.trusted(addr) {
            let hops: Vec<&str> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect();
            for hop in hops.iter().rev().take(FORWARDED_HOPS_MAX) {
                let parsed = hop
                    .parse::<IpAddr>()
                    .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()));
                let Ok(ip) = parsed else { break };
                addr = canonical(ip);
                if !self.trusted(addr) {
                    break;
                }
            }
        }
        failure_key(addr)
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

pub fn token_hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// Creates a token (as the database owner) and returns it; only its hash is stored.
pub async fn create_token(
    pool: &PgPool,
    name: &str,
    scope: &str,
    site: Option<&SiteId>,
) -> Result<String, sqlx::Error> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| sqlx::Error::Protocol("no randomness available".into()))?;
    let token: String = std::iter::once("hub_".to_owned())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    let mut tx = pool.begin().await?;
    crate::db::query("INSERT INTO api_tokens (hash, name, scope, site_id) VALUES ($1, $2, $3, $4)")
        .bind(token_hash(&token))
        .bind(name)
        .bind(scope)
        .bind(site.map(|s| s.as_str().to_owned()))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(token)
}

/// One token as `api-token list` shows it (never the token, which is not kept).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    /// The first 8 hex digits of the token's SHA-256: tells same-named tokens apart.
    pub id: String,
    pub name: String,
    pub scope: String,
    pub site: Option<String>,
    pub created_at: time::OffsetDateTime,
    /// Recorded at most once a minute per hub instance.
    pub last_used_at: Option<time::OffsetDateTime>,
    pub revoked_at: Option<time::OffsetDateTime>,
}

/// Every token, oldest first (as the database owner).
pub async fn list_tokens(pool: &PgPool) -> Result<Vec<TokenInfo>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = crate::db::query(
        "SELECT hash, name, scope, site_id::text AS site_id, created_at, last_used_at, revoked_at
         FROM api_tokens ORDER BY created_at, name",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.iter()
        .map(|r| {
            let hash: Vec<u8> = r.try_get("hash")?;
            Ok(TokenInfo {
                id: hash.iter().take(4).map(|b| format!("{b:02x}")).collect(),
                name: r.try_get("name")?,
                scope: r.try_get("scope")?,
                site: r.try_get("site_id")?,
                created_at: r.try_get("created_at")?,
                last_used_at: r.try_get("last_used_at")?,
                revoked_at: r.try_get("revoked_at")?,
            })
        })
        .collect()
}

/// Revokes every live token named `name` (as the database owner); returns how many. Every
/// hub instance refuses them within [`TOKEN_CACHE_TTL`].
pub async fn revoke_tokens(pool: &PgPool, name: &str) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let n = crate::db::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
    )
    .bind(name)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses_only() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    fn auth(trusted: &[&str]) -> Auth {
        let lazy = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        Auth::new(
            lazy.clone(),
            crate::db::PoolRole::Auth,
            lazy,
            trusted.iter().map(|c| c.parse().unwrap()).collect(),
        )
    }

    fn forwarded(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn the_client_address_is_the_peer_unless_a_trusted_proxy_forwarded() {
        let a = auth(&["10.0.0.0/8"]);
        let proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.4:4000".parse().unwrap();
        // A stranger's X-Forwarded-For is not believed.
        assert_eq!(
            a.client_address(Some(stranger), &forwarded("203.0.113.9")),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
        // Through the proxy: the right-most hop that is not a trusted proxy, whatever the
        // client wrote further left.
        assert_eq!(
            a.client_address(Some(proxy), &forwarded("1.2.3.4, 203.0.113.9, 10.0.0.7")),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // The proxy forwarded nothing: the proxy is the client.
        assert_eq!(
            a.client_address(Some(proxy), &HeaderMap::new()),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        // IPv6 counts per /64.
        let v6: SocketAddr = "[2001:db8:1:2:3:4:5:6]:443".parse().unwrap();
        assert_eq!(
            a.client_address(Some(v6), &HeaderMap::new()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_is_blocked_past_its_failures_for_the_rest_of_the_window() {
        let a = auth(&[]);
        let ip: IpAddr = "198.51.100.4".parse().unwrap();
        let other: IpAddr = "198.51.100.5".parse().unwrap();
        for _ in 0..FAILURES_PER_ADDRESS_MAX {
            assert_eq!(a.blocked(ip, Instant::now()), None);
            a.failed(ip, Instant::now());
        }
        assert_eq!(a.blocked(ip, Instant::now()), Some(60));
        assert_eq!(a.blocked(other, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(45)).await;
        assert_eq!(a.blocked(ip, Instant::now()), Some(15));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(a.blocked(ip, Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crowd_of_addresses_cannot_unblock_a_blocked_one() {
        let a = auth(&[]);
        let ip: IpAddr = "198.51.100.4".parse().unwrap();
        for _ in 0..FAILURES_PER_ADDRESS_MAX {
            a.failed(ip, Instant::now());
        }
        for i in 0..(ADDRESSES_TRACKED_MAX as u32 + 100) {
            a.failed(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), Instant::now());
        }
        assert!(a.failures.lock().unwrap().len() <= ADDRESSES_TRACKED_MAX);
        assert!(a.blocked(ip, Instant::now()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_hashes_are_remembered_for_their_ttl_within_the_bound() {
        let a = auth(&[]);
        a.remember_unknown(vec![1], Instant::now());
        assert!(a.known_unknown(&[1], Instant::now()));
        tokio::time::advance(UNKNOWN_TTL).await;
        assert!(!a.known_unknown(&[1], Instant::now()));
        for i in 0..(UNKNOWN_MAX as u32 + 10) {
            a.remember_unknown(i.to_be_bytes().to_vec(), Instant::now());
        }
        assert!(a.unknown.lock().unwrap().len() <= UNKNOWN_MAX);
    }
}
