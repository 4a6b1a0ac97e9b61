//! The token caches measured in bytes: the weight each entry is charged, the budget each
//! cache gets out of `[cache] max_memory`, and the `tollgate_cache_bytes` gauge and
//! `tollgate_cache_evictions_total` counter that follow them.
//!
//! Both token caches are `quick_cache::sync::Cache`s keyed by a SHA-256 digest (the
//! validation cache by 4 bytes of it): measured with a counting allocator, one keeps an entry
//! in ~76 bytes of its own (validation) or ~224 (exchange, a larger value inline) where moka
//! took 388 and 455 (`memory_tests`). Neither needs moka's
//! per-entry expiry: each checks `exp` on read and drops what it finds expired, and an
//! expired entry never read again is pushed out by size like any other. The caches count
//! their bytes here themselves: [`Meter::inserted`] before an insert, [`Meter::removed`] from
//! quick_cache's `Lifecycle` hook (evictions, replacements) and from their own removals.
//!
//! A cache is bounded by the sum of its entries' weights; it cannot share one bound among
//! several caches. So the process-wide budget is divided up front: each provider gets a
//! validation cache and an exchange cache, and each of those gets an equal share
//! (`max_memory / (2 x providers)`, see `CacheConfig::max_memory_per_cache`). The shares add up
//! to at most `max_memory` whatever the traffic, with no counter shared on the hot path; the
//! price is that a provider's idle cache cannot lend its share to a busy one.
//!
//! ```
//! # use tollgate::config::CacheConfig;
//! let cache = CacheConfig::default();
//! // Two providers: four caches of 16 MiB each.
//! assert_eq!(cache.max_memory_per_cache(2), 16 << 20);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The bytes a `size`-byte heap allocation takes with glibc's `malloc` (the allocator of the
/// Linux images): the request plus an 8-byte header, rounded up to 16, at least 32.
pub(crate) const fn heap_chunk(size: usize) -> usize {
    if size == 0 {
        return 0;
    }
    let chunk = (size + 8 + 15) & !15;
    if chunk < 32 { 32 } else { chunk }
}

/// What a `quick_cache::sync::Cache` allocates per entry for the validated-token cache (a
/// 4-byte key and a one-word value, 24 bytes a slot in its slab): the slot, its hash table
/// index, the slack of both growing by doubling, and the ghost keys it remembers after
/// evictions (a slot each), averaged over a cache filled and evicting. Measured with a
/// counting allocator (`memory_tests` keeps it honest): 61 bytes filling, 96 evicting (a
/// third as many ghosts as entries); charged as 76. (With a 32-byte key and a two-word value
/// it was 113 and 121; a `moka::sync::Cache` with per-entry expiry took 388: its value entry,
/// entry info, access-order, write-order and timer deque nodes, and its hash table's bucket.)
pub(crate) const QUICK_SYNC_ENTRY_BYTES: usize = 76;

/// The same for the exchange cache, whose value (an exchanged token) is 96 bytes inline: a
/// 144-byte slot. Measured: 228 filling, 222 evicting; charged as 224. (A
/// `moka::future::Cache` took 455.)
pub(crate) const QUICK_EXCHANGE_ENTRY_BYTES: usize = 224;

/// Why an entry left a cache: the `cause` label of `tollgate_cache_evictions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Pushed out (or refused) to keep the cache within its bytes or entries.
    Size,
    /// Past its expiry.
    Expired,
    /// Removed by tollgate (a forgotten exchange, a token checked under an older key set).
    Explicit,
    /// Overwritten by a newer entry for the same key.
    Replaced,
}

impl Cause {
    fn label(self) -> &'static str {
        match self {
            Cause::Size => "size",
            Cause::Expired => "expired",
            Cause::Explicit => "explicit",
            Cause::Replaced => "replaced",
        }
    }
}

/// Which caches a [`Meter`] adds to: its `cache` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CacheKind {
    /// Validated inbound tokens (one cache per provider).
    Validation,
    /// Exchanged tokens (one cache per exchanger).
    Exchange,
}

impl CacheKind {
    fn label(self) -> &'static str {
        match self {
            CacheKind::Validation => "validation",
            CacheKind::Exchange => "exchange",
        }
    }
}

/// The bytes of every live cache, by kind: the gauge is their sum, not one cache's.
static TOTALS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// How one cache is bounded: its weight capacity (bytes) and the least weight of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Budget {
    /// The cache's share of `max_memory`, its weight capacity.
    pub(crate) max_bytes: u64,
    /// `max_bytes / max_entries`: charging every entry at least this keeps the entry count
    /// under `max_entries` too (the `*_capacity` options stay upper limits).
    floor: u32,
}

impl Budget {
    /// At most `max_bytes` held and at most `max_entries` entries.
    pub(crate) fn new(max_bytes: u64, max_entries: u64) -> Self {
        let max_bytes = max_bytes.max(1);
        let floor = (max_bytes / max_entries.max(1)).clamp(1, u64::from(u32::MAX));
        Self {
            max_bytes,
            floor: u32::try_from(floor).unwrap_or(u32::MAX),
        }
    }

    /// The weight charged for an entry of `bytes`: its bytes, at least the floor. A pure
    /// function of the entry, as quick_cache asks of a `Weighter` (it weighs an entry again
    /// when it removes it).
    pub(crate) fn weight(self, bytes: usize) -> u32 {
        u32::try_from(bytes).unwrap_or(u32::MAX).max(self.floor)
    }
}

/// The bytes (and entries) one cache holds, counted as entries go in and out.
#[derive(Debug)]
pub(crate) struct Meter {
    kind: CacheKind,
    bytes: AtomicU64,
    /// Entries counted in and not yet out: the cache's length without visiting its shards.
    entries: AtomicU64,
}

impl Meter {
    pub(crate) fn new(kind: CacheKind) -> Arc<Self> {
        Arc::new(Self {
            kind,
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
        })
    }

    /// The bytes this cache's entries hold now.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The entries counted in and not out again (for a cache that reports both, as quick_cache's
    /// do through [`Meter::inserted`] and [`Meter::removed`]).
    pub(crate) fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// An entry of `bytes` went into the cache (for a cache that weighs entries more than
    /// once, so cannot count them in its weigher).
    pub(crate) fn inserted(&self, bytes: usize) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.add(bytes as u64);
    }

    /// An entry of `bytes` left the cache (quick_cache's lifecycle hook, or the cache's own
    /// removal of an expired or forgotten entry).
    pub(crate) fn removed(&self, bytes: usize, cause: Cause) {
        let one_less = |v: u64| Some(v.saturating_sub(1));
        let _ = self
            .entries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, one_less);
        self.sub(bytes as u64);
        metrics::counter!("tollgate_cache_evictions_total", "cache" => self.kind.label(), "cause" => cause.label())
            .increment(1);
    }

    fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        let total = TOTALS[self.kind as usize].fetch_add(n, Ordering::Relaxed) + n;
        self.publish(total);
    }

    fn sub(&self, n: u64) {
        // Never below zero, whatever order inserts and removals are reported in.
        let sub = |v: u64| Some(v.saturating_sub(n));
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, sub);
        let before = TOTALS[self.kind as usize]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, sub)
            .unwrap_or(0);
        self.publish(before.saturating_sub(n));
    }

    /// Sets the gauge: only on inserts and removals, never per cache hit.
    fn publish(&self, total: u64) {
        metrics::gauge!("tollgate_cache_bytes", "cache" => self.kind.label()).set(total as f64);
    }
}

impl Drop for Meter {
    /// A dropped cache drops its entries without telling the listener: take what is left out
    /// of the total (a reload that builds new caches must not leave the old ones counted).
    fn drop(&mut self) {
        let left = *self.bytes.get_mut();
        if left > 0 {
            let sub = |v: u64| Some(v.saturating_sub(left));
            let before = TOTALS[self.kind as usize]
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, sub)
                .unwrap_or(0);
            self.publish(before.saturating_sub(left));
        }
    }
}

/// A value of a byte-bounded token cache ([`BoundedCache`]): what it weighs, and what its
/// eviction counts as.
pub(crate) trait CacheValue: Clone {
    /// The heap bytes the entry holds, the cache's own share per entry included.
    fn entry_bytes(&self) -> usize;
    /// Past its use at `now` (Unix seconds): its eviction counts as `expired`.
    fn expired(&self, now: u64) -> bool;
    /// A clone of `other` (the same allocation), not merely an equal value: an insert that
    /// evicts any other value under its key replaced it.
    fn same_as(&self, other: &Self) -> bool;
}

/// A token cache bounded by bytes: quick_cache keyed by a SHA-256 digest (or a part of one:
/// `K`), each entry weighed by [`Weigh`], its evictions counted by [`Evicted`]. Fill it with
/// [`insert`].
pub(crate) type BoundedCache<K, V> =
    quick_cache::sync::Cache<K, V, Weigh, quick_cache::DefaultHashBuilder, Evicted>;

/// What a [`BoundedCache`] key is: a digest, or a part of one, copied freely.
pub(crate) trait CacheKey: Copy + Eq + std::hash::Hash + Send + Sync + 'static {}

impl<K: Copy + Eq + std::hash::Hash + Send + Sync + 'static> CacheKey for K {}

/// A cache of `budget`'s bytes and at most `max_entries` entries, counted in `meter`. The bytes
/// bound the entries well before the count with tokens of `typical_entry` bytes, and quick_cache
/// sizes its shards and the ghost keys it remembers by the entries it expects.
pub(crate) fn bounded_cache<K: CacheKey, V: CacheValue>(
    budget: Budget,
    max_entries: u64,
    typical_entry: u64,
    meter: &Arc<Meter>,
) -> BoundedCache<K, V> {
    let expected = (budget.max_bytes / typical_entry.max(1)).clamp(1, max_entries.max(1));
    let mut options = quick_cache::OptionsBuilder::new();
    options
        .estimated_items_capacity(usize::try_from(expected).unwrap_or(usize::MAX))
        .weight_capacity(budget.max_bytes);
    // Both are set just above, the only errors `build` has.
    let options = options
        .build()
        .unwrap_or_else(|_| unreachable!("capacities are set"));
    BoundedCache::with_options(
        options,
        Weigh(budget),
        quick_cache::DefaultHashBuilder::default(),
        Evicted(meter.clone()),
    )
}

/// Puts `value` under `key`. It is counted in before the insert, which may push it (or others)
/// out again; the insert under way tells [`Evicted`] a replaced entry from one pushed out.
pub(crate) fn insert<K: CacheKey, V: CacheValue>(
    cache: &BoundedCache<K, V>,
    meter: &Meter,
    key: K,
    value: V,
) {
    meter.inserted(value.entry_bytes());
    let mut inserting = Some((key, value.clone()));
    cache.insert_with_lifecycle(key, value, &mut inserting);
}

/// Weighs an entry: its bytes ([`CacheValue::entry_bytes`]), at least the budget's floor.
#[derive(Clone)]
pub(crate) struct Weigh(Budget);

impl<K, V: CacheValue> quick_cache::Weighter<K, V> for Weigh {
    fn weight(&self, _: &K, value: &V) -> u64 {
        u64::from(self.0.weight(value.entry_bytes()))
    }
}

/// Takes what quick_cache evicts out of the meter and counts it by cause; the request state is
/// the insert under way, to tell a replaced entry (same key, another value) from one pushed
/// out, or refused, for size.
#[derive(Clone)]
pub(crate) struct Evicted(Arc<Meter>);

impl<K: CacheKey, V: CacheValue> quick_cache::Lifecycle<K, V> for Evicted {
    type RequestState = Option<(K, V)>;

    fn on_evict(&self, inserting: &mut Self::RequestState, key: K, value: V) {
        let replaced = inserting
            .as_ref()
            .is_some_and(|(k, new)| *k == key && !new.same_as(&value));
        let cause = if replaced {
            Cause::Replaced
        } else if value.expired(crate::util::now()) {
            Cause::Expired
        } else {
            Cause::Size
        };
        self.0.removed(value.entry_bytes(), cause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_glibc_sized() {
        assert_eq!(heap_chunk(0), 0);
        assert_eq!(heap_chunk(1), 32);
        assert_eq!(heap_chunk(24), 32);
        assert_eq!(heap_chunk(25), 48);
        assert_eq!(heap_chunk(1000), 1008);
    }

    #[test]
    fn the_floor_keeps_the_entry_count_an_upper_limit() {
        let budget = Budget::new(1000, 10);
        let meter = Meter::new(CacheKind::Validation);
        // A small entry is charged the floor, so no more than 10 fit in 1000.
        assert_eq!(budget.weight(40), 100);
        assert_eq!(budget.weight(400), 400);
        meter.inserted(40);
        meter.inserted(400);
        assert_eq!(meter.entries(), 2);
        assert_eq!(
            meter.bytes(),
            440,
            "the real bytes are counted, not the weight"
        );
        meter.removed(400, Cause::Size);
        assert_eq!((meter.bytes(), meter.entries()), (40, 1));
        meter.removed(400, Cause::Explicit);
        meter.removed(400, Cause::Explicit);
        assert_eq!((meter.bytes(), meter.entries()), (0, 0), "never below zero");
    }
}
