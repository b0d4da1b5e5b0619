//! Values looked up in the database on the request path and reused for a while: API tokens'
//! scopes, the list of sites.
//!
//! Why not a plain map with an expiry: under load every request that arrives after the expiry
//! misses together, and each one queried PostgreSQL through the same small pool (a thundering
//! herd every TTL; at 10,000 req/s that queued requests for seconds). Here, past half its TTL
//! one request refreshes an entry in the background while everyone keeps using it, and when an
//! entry has expired (or was never there) concurrent requests wait for a single lookup. An
//! entry is never used after its TTL, counted from the start of the lookup that produced it
//! (whatever the lookup read was read after that instant), so "a revoked token stops working
//! within the TTL" holds however long the lookup waited for a connection.
//!
//! Time is tokio's clock, so tests drive it with `tokio::time::pause`.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct Entry<V> {
    at: Instant,
    value: V,
    /// A background refresh is running: no second one is started.
    refreshing: bool,
}

/// One lock per key, for "one computation of this key at a time": the callers that find
/// nothing cached take the key's turn in order, and the first one's result is there for the
/// next. Locks nobody holds are dropped once `max` keys are known.
#[derive(Debug)]
pub struct Flights<K> {
    max: usize,
    locks: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K: Eq + Hash + Clone> Flights<K> {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The lock of `key` (a fresh, unshared one if the table's mutex is poisoned).
    pub fn lock_of(&self, key: &K) -> Arc<tokio::sync::Mutex<()>> {
        let Ok(mut m) = self.locks.lock() else {
            return Arc::default();
        };
        if m.len() >= self.max {
            m.retain(|_, l| Arc::strong_count(l) > 1);
        }
        m.entry(key.clone()).or_default().clone()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().map_or(0, |m| m.len())
    }
}

/// A bounded memo of `K → V`, each value trusted for `ttl`.
#[derive(Debug)]
pub struct Memo<K, V> {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<K, Entry<V>>>,
    /// One lookup per key at a time for requests that cannot use a cached value.
    flights: Flights<K>,
}

impl<K, V> Memo<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// `max` entries at most (the map is emptied when it is reached: a flood of distinct keys
    /// costs lookups, never memory).
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max: max.max(1),
            entries: Mutex::new(HashMap::new()),
            flights: Flights::new(max),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The value of `key`: cached if younger than the TTL (starting one background
    /// `load(key)` past half of it), else from one `load(key)` shared by every concurrent
    /// caller of the key.
    /// A failed load is not cached; its error goes to the caller that ran it, and the callers
    /// that waited for it run their own.
    pub async fn get<F, Fut, E>(self: &Arc<Self>, key: K, load: F) -> Result<V, E>
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: std::fmt::Debug + Send + 'static,
    {
        let (cached, refresh) = self.cached(&key);
        if let Some(v) = cached {
            if refresh {
                let me = self.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let r = load(key.clone()).await;
                    match r {
                        Ok(v) => me.put(key, v, started),
                        Err(e) => {
                            tracing::warn!(?e, "refreshing a cached lookup failed");
                            if let Ok(mut m) = me.entries.lock()
                                && let Some(e) = m.get_mut(&key)
                            {
                                e.refreshing = false;
                            }
                        }
                    }
                });
            }
            return Ok(v);
        }
        let flight = self.flights.lock_of(&key);
        let _turn = flight.lock().await;
        // Whoever held the turn before us may have filled the entry.
        if let (Some(v), _) = self.cached(&key) {
            return Ok(v);
        }
        let started = Instant::now();
        let v = load(key.clone()).await?;
        self.put(key, v.clone(), started);
        Ok(v)
    }

    /// The value of `key` if one younger than the TTL is cached; never looks anything up.
    pub fn peek(&self, key: &K) -> Option<V> {
        let m = self.entries.lock().ok()?;
        m.get(key)
            .filter(|e| e.at.elapsed() < self.ttl)
            .map(|e| e.value.clone())
    }

    /// Drops `key`'s value: the next caller looks it up.
    pub fn forget(&self, key: &K) {
        if let Ok(mut m) = self.entries.lock() {
            m.remove(key);
        }
    }

    /// A value younger than the TTL, and whether this caller should start its refresh.
    fn cached(&self, key: &K) -> (Option<V>, bool) {
        let Ok(mut m) = self.entries.lock() else {
            return (None, false);
        };
        let Some(e) = m.get_mut(key) else {
            return (None, false);
        };
        let age = e.at.elapsed();
        if age >= self.ttl {
            return (None, false);
        }
        let refresh = age >= self.ttl / 2 && !e.refreshing;
        if refresh {
            e.refreshing = true;
        }
        (Some(e.value.clone()), refresh)
    }

    /// Stores `value`, trusted from `at`: the instant its lookup started.
    fn put(&self, key: K, value: V, at: Instant) {
        if let Ok(mut m) = self.entries.lock() {
            if m.len() >= self.max && !m.contains_key(&key) {
                m.clear();
            }
            m.insert(
                key,
                Entry {
                    at,
                    value,
                    refreshing: false,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn counting(calls: Arc<AtomicU32>) -> impl Fn(u8) -> std::future::Ready<Result<u32, ()>> {
        move |_| std::future::ready(Ok(calls.fetch_add(1, Ordering::SeqCst) + 1))
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_slow_lookup() {
        let memo = Arc::new(Memo::<u8, u32>::new(Duration::from_secs(5), 10));
        let calls = Arc::new(AtomicU32::new(0));
        let load = {
            let calls = calls.clone();
            move |_| {
                let calls = calls.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, ()>(calls.fetch_add(1, Ordering::SeqCst) + 1)
                }
            }
        };
        let load = Arc::new(load);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (memo, load) = (memo.clone(), load.clone());
            tasks.push(tokio::spawn(
                async move { memo.get(7, move |k| load(k)).await },
            ));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(1));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one lookup for 50 callers");
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_in_the_background_past_half_the_ttl_and_never_serves_expired() {
        let memo = Arc::new(Memo::<u8, u32>::new(Duration::from_secs(4), 10));
        let calls = Arc::new(AtomicU32::new(0));
        assert_eq!(memo.get(1, counting(calls.clone())).await, Ok(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(memo.get(1, counting(calls.clone())).await, Ok(1));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "young: no lookup");
        tokio::time::advance(Duration::from_secs(2)).await;
        // Past half the TTL: the old value now, one refresh behind it, however many ask.
        for _ in 0..10 {
            assert_eq!(memo.get(1, counting(calls.clone())).await, Ok(1));
        }
        tokio::task::yield_now().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "exactly one refresh");
        assert_eq!(memo.get(1, counting(calls.clone())).await, Ok(2));
        // Expired without anyone asking: the next caller waits for a fresh lookup.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(memo.get(1, counting(calls.clone())).await, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_ttl_counts_from_the_start_of_a_slow_lookup() {
        let memo = Arc::new(Memo::<u8, u32>::new(Duration::from_secs(4), 10));
        let slow = |_| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, ()>(1)
        };
        assert_eq!(memo.get(1, slow).await, Ok(1));
        // Read 3 s ago at the latest, and 3 s into its 4 s: 1 s left, not 4.
        assert_eq!(memo.peek(&1), Some(1));
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert_eq!(
            memo.peek(&1),
            None,
            "never trusted past the TTL from the lookup's start"
        );
        memo.forget(&1);
        assert_eq!(
            memo.get(1, |_| std::future::ready(Ok::<_, ()>(2))).await,
            Ok(2)
        );
        memo.forget(&1);
        assert_eq!(memo.peek(&1), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_lookup_is_not_cached() {
        let memo = Arc::new(Memo::<u8, u32>::new(Duration::from_secs(5), 10));
        let r = memo
            .get(1, |_| std::future::ready(Err::<u32, _>("down")))
            .await;
        assert_eq!(r, Err("down"));
        assert_eq!(
            memo.get(1, |_| std::future::ready(Ok::<_, &str>(9))).await,
            Ok(9)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stays_within_its_bound() {
        let memo = Arc::new(Memo::<u32, u32>::new(Duration::from_secs(5), 8));
        for k in 0..100 {
            assert_eq!(
                memo.get(k, |k| std::future::ready(Ok::<_, ()>(k))).await,
                Ok(k)
            );
            assert!(memo.entries.lock().unwrap().len() <= 8);
            assert!(memo.flights.len() <= 8);
        }
    }
}
