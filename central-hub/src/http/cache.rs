//! Report cache, data versions and per-token rate limits: in process, or shared by every hub
//! instance through Redis (`--redis-url`).
//!
//! A cached report is keyed by the request and by the current *data version* of every site it
//! covers (and of master data). Ingest announces each commit on the PostgreSQL channel
//! `mes_data` with the transaction id; every instance listens and takes that id as the site's
//! new version. All instances see the same notifications in the same order, so they compute
//! the same keys and can share entries in Redis; a listener that lost its connection (and may
//! have missed notifications) starts afresh with random versions, which can only cause misses.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::db::channels::DATA_CHANNEL;

/// The Redis hash of data versions, site → version.
pub const VERSIONS_KEY: &str = "mes:versions";
/// Most entries of the in-process cache.
pub const LOCAL_ENTRIES_MAX: usize = 10_000;
/// Largest report body that is cached.
pub const ENTRY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How long a Redis command may take before the request goes on without it.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
pub struct ReportMetrics {
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_stale: AtomicU64,
    pub rate_limited: AtomicU64,
    pub redis_errors: AtomicU64,
}

/// Site data versions, as last announced on `mes_data`.
#[derive(Debug, Default)]
pub struct Versions {
    map: Mutex<HashMap<String, String>>,
}

impl Versions {
    pub fn set(&self, site: &str, version: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(site.to_owned(), version.to_owned());
        }
    }

    /// Forget everything: versions become a fresh random value (after a lost listener).
    pub fn reset(&self) {
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        if let Ok(mut m) = self.map.lock() {
            m.clear();
            m.insert("*".into(), format!("reset-{nonce}"));
        }
    }

    /// `site=version` for master data and each of `sites`, for a cache key.
    pub fn key_part(&self, sites: &[String]) -> String {
        let m = match self.map.lock() {
            Ok(m) => m,
            Err(_) => return uuid::Uuid::now_v7().to_string(),
        };
        let reset = m.get("*").cloned().unwrap_or_default();
        let mut out = format!("*={reset}");
        for s in sites {
            out.push(';');
            out.push_str(s);
            out.push('=');
            out.push_str(m.get(s).map_or("0", String::as_str));
        }
        out
    }
}

/// Listens on `mes_data` until shutdown; reconnects with backoff.
pub async fn listen<C: AsRef<Shared>>(
    pool: PgPool,
    versions: std::sync::Arc<C>,
    mut shutdown: watch::Receiver<bool>,
) {
    let versions: &Shared = (*versions).as_ref();
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "report cache listener cannot connect; retrying");
                versions.reset_versions().await;
                if *shutdown.borrow() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(e) = listener.listen(DATA_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN mes_data failed; retrying");
            versions.reset_versions().await;
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(200);
        versions.reset_versions().await;
        loop {
            let received = tokio::select! {
                n = listener.recv() => Some(n),
                r = shutdown.changed() => {
                    if r.is_err() {
                        return; // the hub is gone
                    }
                    None
                }
            };
            if *shutdown.borrow() {
                return;
            }
            match received {
                Some(Ok(n)) => {
                    if let Some((site, v)) = n.payload().split_once(':') {
                        versions.set_version(site, v).await;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "report cache listener lost; reconnecting");
                    versions.reset_versions().await;
                    break;
                }
                None => {}
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cached {
    pub content_type: String,
    /// Shared, so a cache hit does not copy the body.
    pub body: bytes::Bytes,
    /// When it was computed (Unix milliseconds): entries older than the TTL are served stale
    /// while one request recomputes them.
    pub computed_ms: i64,
}

/// How many TTLs an entry may be served stale (while a refresh runs) before a request waits.
pub const STALE_TTLS: u32 = 6;

pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Cached {
    pub fn age(&self) -> Duration {
        Duration::from_millis(u64::try_from(unix_ms() - self.computed_ms).unwrap_or(0))
    }
}

enum Backend {
    Local(Mutex<HashMap<String, (Instant, Cached)>>),
    Redis(redis::aio::ConnectionManager),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Local(_) => "Local",
            Backend::Redis(_) => "Redis",
        })
    }
}

/// The in-process per-token limit: governor's GCRA, which is a token bucket of `rate` tokens
/// refilled at `rate` per second (the hand-written bucket it replaced, to the nanosecond).
type Buckets = governor::DefaultKeyedRateLimiter<String>;

/// Tokens tracked by the in-process limiter before the idle ones are forgotten. Only tokens
/// that passed authentication reach it, so the live ones are bounded by the token table; past
/// this, those whose bucket is full again (idle for a second) are dropped.
pub const TOKENS_TRACKED_MAX: usize = 100_000;

#[derive(Debug)]
pub struct Shared {
    backend: Backend,
    buckets: Buckets,
    /// Data versions (in-process mode; with Redis they live in the hash `mes:versions`).
    versions: Versions,
    pub ttl: Duration,
    pub rate_per_second: u32,
    pub metrics: ReportMetrics,
}

fn digest(key: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the rate limiter says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Retry after this many seconds.
    No(u64),
}

impl Shared {
    pub async fn new(
        redis_url: Option<&str>,
        ttl: Duration,
        rate_per_second: u32,
    ) -> anyhow::Result<Self> {
        let backend = match redis_url {
            Some(url) => {
                let client = redis::Client::open(url)?;
                let manager =
                    tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
                        .await
                        .map_err(|_| {
                            anyhow::anyhow!("Redis at {url} did not answer within 5 s")
                        })??;
                Backend::Redis(manager)
            }
            None => Backend::Local(Mutex::new(HashMap::new())),
        };
        let rate =
            std::num::NonZeroU32::new(rate_per_second.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        Ok(Self {
            backend,
            buckets: governor::RateLimiter::keyed(governor::Quota::per_second(rate)),
            versions: Versions::default(),
            ttl,
            rate_per_second: rate_per_second.max(1),
            metrics: ReportMetrics::default(),
        })
    }

    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// Records a site's (or with `*` master data's) new data version.
    pub async fn set_version(&self, site: &str, version: &str) {
        match &self.backend {
            Backend::Local(_) => self.versions.set(site, version),
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let r = tokio::time::timeout(
                    REDIS_TIMEOUT,
                    conn.hset::<_, _, _, ()>(VERSIONS_KEY, site, version),
                )
                .await;
                if !matches!(r, Ok(Ok(()))) {
                    self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// After a lost listener: every cached entry becomes unreachable.
    pub async fn reset_versions(&self) {
        match &self.backend {
            Backend::Local(_) => self.versions.reset(),
            Backend::Redis(_) => {
                let nonce = format!("reset-{}", uuid::Uuid::now_v7().simple());
                self.set_version("*", &nonce).await;
            }
        }
    }

    /// The versions part of a cache key for `sites`; `None` when Redis cannot say (the
    /// request then bypasses the cache).
    pub async fn versions_key(&self, sites: &[String]) -> Option<String> {
        match &self.backend {
            Backend::Local(_) => Some(self.versions.key_part(sites)),
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let mut fields: Vec<&str> = vec!["*"];
                fields.extend(sites.iter().map(String::as_str));
                let r = tokio::time::timeout(
                    REDIS_TIMEOUT,
                    redis::cmd("HMGET")
                        .arg(VERSIONS_KEY)
                        .arg(&fields)
                        .query_async::<Vec<Option<String>>>(&mut conn),
                )
                .await;
                match r {
                    Ok(Ok(values)) => Some(
                        fields
                            .iter()
                            .zip(values)
                            .map(|(f, v)| format!("{f}={}", v.unwrap_or_else(|| "0".into())))
                            .collect::<Vec<_>>()
                            .join(";"),
                    ),
                    _ => {
                        self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                }
            }
        }
    }

    pub async fn get(&self, key: &str) -> Option<Cached> {
        let found = self.lookup(key).await;
        let counter = if found.is_some() {
            &self.metrics.cache_hits
        } else {
            &self.metrics.cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// A lookup that is not counted as a hit or miss (the re-check after waiting for another
    /// request's computation).
    pub async fn peek(&self, key: &str) -> Option<Cached> {
        self.lookup(key).await
    }

    async fn lookup(&self, key: &str) -> Option<Cached> {
        match &self.backend {
            Backend::Local(m) => m.lock().ok().and_then(|m| {
                m.get(key)
                    .filter(|(at, _)| at.elapsed() < self.ttl * STALE_TTLS)
                    .map(|(_, c)| c.clone())
            }),
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let k = format!("mes:report:{}", digest(key));
                match tokio::time::timeout(REDIS_TIMEOUT, conn.get::<_, Option<Vec<u8>>>(&k)).await
                {
                    Ok(Ok(Some(bytes))) => decode_entry(&bytes),
                    Ok(Ok(None)) => None,
                    _ => {
                        self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                }
            }
        }
    }

    pub async fn put(&self, key: &str, value: &Cached) {
        // Bodies past the bound are answered but not kept: a cached entry is at most this big.
        if value.body.len() > ENTRY_BYTES_MAX {
            return;
        }
        match &self.backend {
            Backend::Local(m) => {
                if let Ok(mut m) = m.lock() {
                    if m.len() >= LOCAL_ENTRIES_MAX {
                        let keep = self.ttl * STALE_TTLS;
                        m.retain(|_, (at, _)| at.elapsed() < keep);
                        if m.len() >= LOCAL_ENTRIES_MAX {
                            m.clear();
                        }
                    }
                    m.insert(key.to_owned(), (Instant::now(), value.clone()));
                    debug_assert!(m.len() <= LOCAL_ENTRIES_MAX, "report cache past its bound");
                }
            }
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let k = format!("mes:report:{}", digest(key));
                let secs = (self.ttl * STALE_TTLS).as_secs().max(1);
                let r = tokio::time::timeout(
                    REDIS_TIMEOUT,
                    conn.set_ex::<_, _, ()>(&k, encode_entry(value), secs),
                )
                .await;
                if !matches!(r, Ok(Ok(()))) {
                    self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Counts one request of `token` (its hash, hex) against its limit.
    pub async fn admit(&self, token: &str) -> Admit {
        let limit = f64::from(self.rate_per_second);
        let verdict = match &self.backend {
            Backend::Local(_) => {
                use governor::clock::Clock as _;
                if self.buckets.len() > TOKENS_TRACKED_MAX {
                    self.buckets.retain_recent();
                }
                match self.buckets.check_key(&token.to_owned()) {
                    Ok(()) => Admit::Yes,
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(self.buckets.clock().now());
                        Admit::No(wait.as_secs_f64().ceil().max(1.0) as u64)
                    }
                }
            }
            Backend::Redis(conn) => {
                // A fixed one-second window per token, shared by all instances.
                let mut conn = conn.clone();
                let second = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let k = format!("mes:rl:{token}:{second}");
                let r: Result<Result<(u64, ()), _>, _> = tokio::time::timeout(
                    REDIS_TIMEOUT,
                    redis::pipe()
                        .incr(&k, 1u64)
                        .expire(&k, 2)
                        .query_async(&mut conn),
                )
                .await;
                match r {
                    Ok(Ok((n, ()))) if n as f64 > limit => Admit::No(1),
                    Ok(Ok(_)) => Admit::Yes,
                    _ => {
                        // Redis down: serve rather than refuse everyone.
                        self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
                        Admit::Yes
                    }
                }
            }
        };
        if matches!(verdict, Admit::No(_)) {
            self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }
}

fn encode_entry(c: &Cached) -> Vec<u8> {
    let head = format!("{}\n{}\n", c.computed_ms, c.content_type);
    let mut out = Vec::with_capacity(head.len() + c.body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&c.body);
    out
}

fn decode_entry(bytes: &[u8]) -> Option<Cached> {
    let i = bytes.iter().position(|b| *b == b'\n')?;
    let j = i + 1 + bytes[i + 1..].iter().position(|b| *b == b'\n')?;
    Some(Cached {
        computed_ms: std::str::from_utf8(&bytes[..i]).ok()?.parse().ok()?,
        content_type: String::from_utf8(bytes[i + 1..j].to_vec()).ok()?,
        body: bytes::Bytes::copy_from_slice(&bytes[j + 1..]),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn local_bucket_refuses_beyond_the_rate_then_recovers() {
        let s = Shared::new(None, Duration::from_secs(10), 5).await.unwrap();
        let mut admitted = 0;
        for _ in 0..20 {
            if matches!(s.admit("t").await, Admit::Yes) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 5, "a burst of the rate's size, then 429");
        assert!(
            matches!(s.admit("other").await, Admit::Yes),
            "tokens are independent"
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(
            matches!(s.admit("t").await, Admit::Yes),
            "refills at the rate"
        );
    }

    #[test]
    fn versions_change_the_key() {
        let v = Versions::default();
        let a = v.key_part(&["A".into(), "B".into()]);
        v.set("B", "77");
        let b = v.key_part(&["A".into(), "B".into()]);
        assert_ne!(a, b);
        assert_eq!(
            a,
            v.key_part(&["A".into(), "C".into()])
                .replace(";C=0", ";B=0")
        );
        let entry = Cached {
            content_type: "text/csv".into(),
            body: bytes::Bytes::from_static(b"a\nb"),
            computed_ms: 1_795_000_000_000,
        };
        let back = decode_entry(&encode_entry(&entry)).unwrap();
        assert_eq!(back.body, entry.body);
        assert_eq!(back.content_type, "text/csv");
        assert_eq!(back.computed_ms, 1_795_000_000_000);
    }
}
