//! A bounded in-memory map for state that requests create (rate-limit buckets, UIA sessions,
//! per-key locks, room heads): a fixed maximum of entries, with the stale and then the least
//! recently used ones dropped when it is reached.
//!
//! The map is split into shards, each behind its own mutex, so requests for different keys
//! rarely wait on each other. A shard that reaches its share of the maximum is swept once:
//! stale entries go, then the least recently used ones until it is back to three quarters of
//! its share. A sweep walks one shard, and the next one cannot come before a quarter of a share
//! of new keys has been added, so the cost per insertion stays constant.
//!
//! Entries in use are never dropped ([`Evict::pinned`]): an `Arc` handed out (a lock someone
//! holds or waits for) keeps its entry, even past the maximum, until it is released.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

/// What the map asks of a value when it must make room.
pub trait Evict {
    /// Whether the entry is in use and must stay.
    fn pinned(&self) -> bool {
        false
    }

    /// Whether the entry is worth nothing any more (expired) and goes before any other.
    fn stale(&self, _now: Instant) -> bool {
        false
    }
}

/// A shared value is in use while anyone besides the map holds it.
impl<T> Evict for Arc<T> {
    fn pinned(&self) -> bool {
        Arc::strong_count(self) > 1
    }
}

struct Slot<V> {
    value: V,
    used: u64,
}

struct Shard<K, V> {
    entries: HashMap<K, Slot<V>>,
    /// Counts accesses: an entry's `used` is the count at its last access.
    clock: u64,
    /// The size at which the next insertion sweeps.
    sweep_at: usize,
}

/// The map: at most `capacity` entries (plus pinned ones), in shards.
pub struct BoundedMap<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    shard_capacity: usize,
    hasher: RandomState,
}

const SHARDS: usize = 16;

impl<K: Eq + Hash + Clone, V: Evict> BoundedMap<K, V> {
    /// A map of at most `capacity` entries (at least one per shard).
    pub fn new(capacity: usize) -> Self {
        let shards = SHARDS.min(capacity.max(1));
        let shard_capacity = capacity.div_ceil(shards).max(1);
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::new(),
                        clock: 0,
                        sweep_at: shard_capacity,
                    })
                })
                .collect(),
            shard_capacity,
            hasher: RandomState::new(),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, Shard<K, V>> {
        let index = self.hasher.hash_one(key) as usize % self.shards.len();
        self.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the value of `key` (`None` when absent), marking it used.
    pub fn with<Q, R>(&self, key: &Q, f: impl FnOnce(Option<&mut V>) -> R) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        f(Self::touch(&mut self.shard(key), key))
    }

    /// The value of `key`, marked used.
    fn touch<'a, Q>(shard: &'a mut Shard<K, V>, key: &Q) -> Option<&'a mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        shard.clock += 1;
        let clock = shard.clock;
        shard.entries.get_mut(key).map(|slot| {
            slot.used = clock;
            &mut slot.value
        })
    }

    /// Runs `f` on the value of `key`, inserting `make()` (under `owned()`) first when absent,
    /// which may drop other entries to stay within the maximum.
    pub fn get_or_insert_with<Q, R>(
        &self,
        key: &Q,
        owned: impl FnOnce() -> K,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = self.shard(key);
        if let Some(value) = Self::touch(&mut shard, key) {
            return f(value);
        }
        self.make_room(&mut shard);
        let used = shard.clock;
        let slot = shard.entries.entry(owned()).or_insert(Slot { value: make(), used });
        f(&mut slot.value)
    }

    /// Inserts or replaces the value of `key`.
    pub fn insert(&self, key: K, value: V) {
        let mut shard = self.shard(&key);
        shard.clock += 1;
        let used = shard.clock;
        if !shard.entries.contains_key(&key) {
            self.make_room(&mut shard);
        }
        shard.entries.insert(key, Slot { value, used });
    }

    /// Removes `key`, returning its value.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).entries.remove(key).map(|slot| slot.value)
    }

    /// The number of entries (pinned ones included).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries.len())
            .sum()
    }

    /// Whether the map holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Before an insertion into a full shard: drops stale entries, then the least recently used
    /// unpinned ones down to three quarters of the shard's share.
    fn make_room(&self, shard: &mut Shard<K, V>) {
        if shard.entries.len() < shard.sweep_at {
            return;
        }
        let now = Instant::now();
        shard
            .entries
            .retain(|_, slot| slot.value.pinned() || !slot.value.stale(now));
        let keep = self.shard_capacity * 3 / 4;
        if shard.entries.len() > keep {
            let mut candidates: Vec<(u64, K)> = shard
                .entries
                .iter()
                .filter(|(_, slot)| !slot.value.pinned())
                .map(|(key, slot)| (slot.used, key.clone()))
                .collect();
            let excess = (shard.entries.len() - keep).min(candidates.len());
            if excess > 0 {
                candidates.select_nth_unstable_by_key(excess - 1, |(used, _)| *used);
                for (_, key) in candidates.into_iter().take(excess) {
                    shard.entries.remove(&key);
                }
            }
        }
        // Pinned entries may keep the shard above its share: the next sweep waits for another
        // quarter of a share of insertions all the same.
        shard.sweep_at = self
            .shard_capacity
            .max(shard.entries.len() + (self.shard_capacity / 4).max(1));
    }
}

/// One async mutex per key (a user, a device), made on demand and forgotten when unused: a
/// bounded number of locks however many keys there are.
pub struct KeyedLocks<K> {
    locks: BoundedMap<K, Arc<tokio::sync::Mutex<()>>>,
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    /// Locks for up to `capacity` keys not in use (keys in use always have theirs).
    pub fn new(capacity: usize) -> Self {
        Self {
            locks: BoundedMap::new(capacity),
        }
    }

    /// Waits for the lock of `key`; it is held until the guard is dropped.
    pub async fn lock(&self, key: K) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .locks
            .get_or_insert_with(&key, || key.clone(), Default::default, |lock| Arc::clone(lock));
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[derive(Debug)]
    struct Expiring(Instant);

    impl Evict for Expiring {
        fn stale(&self, now: Instant) -> bool {
            self.0 <= now
        }
    }

    impl Evict for u32 {}

    #[test]
    fn the_map_stays_within_its_capacity_dropping_the_least_recently_used() {
        let map: BoundedMap<u32, u32> = BoundedMap::new(64);
        map.insert(0, 0);
        for key in 1..10_000 {
            // Key 0 is used all along, so it is never the least recently used.
            map.with(&0, |v| assert!(v.is_some(), "the key in use is kept"));
            map.insert(key, key);
            assert!(map.len() <= 64, "{} entries after {key} insertions", map.len());
        }
        assert!(map.with(&9_999, |v| v.is_some()), "the newest key is kept");
        assert!(map.with(&1, |v| v.is_none()), "an old key unused since is dropped");
    }

    #[test]
    fn stale_entries_go_first() {
        let map: BoundedMap<u32, Expiring> = BoundedMap::new(128);
        let past = Instant::now() - Duration::from_secs(1);
        let future = Instant::now() + Duration::from_secs(3600);
        // Key 0 is the oldest entry, but the only one not expired.
        for key in 0..1_000 {
            map.insert(key, Expiring(if key == 0 { future } else { past }));
        }
        assert!(map.with(&0, |v| v.is_some()));
        assert!(map.len() <= 128);
    }

    #[test]
    fn pinned_entries_are_never_dropped() {
        let map: BoundedMap<u32, Arc<()>> = BoundedMap::new(16);
        let held: Vec<Arc<()>> = (0..32)
            .map(|key| map.get_or_insert_with(&key, || key, || Arc::new(()), |v| Arc::clone(v)))
            .collect();
        assert_eq!(map.len(), 32, "every entry is in use, so none may go");
        drop(held);
        for key in 100..1_000 {
            map.get_or_insert_with(&key, || key, || Arc::new(()), |_| ());
        }
        assert!(map.len() <= 16 + 16, "released entries go again: {}", map.len());
        // The same key always gives the same value while it is held.
        let a = map.get_or_insert_with(&7, || 7, || Arc::new(()), |v| Arc::clone(v));
        for key in 2_000..3_000 {
            map.get_or_insert_with(&key, || key, || Arc::new(()), |_| ());
        }
        let b = map.get_or_insert_with(&7, || 7, || Arc::new(()), |v| Arc::clone(v));
        assert!(Arc::ptr_eq(&a, &b));
    }
}
