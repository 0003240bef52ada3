//! A bounded in-memory cache in front of a storage read, kept fresh by its writers: they call
//! [`FreshCache::invalidate`] once their change is durable. A value read while any
//! invalidation happened is handed out but not kept, so a read made before a change never
//! outlives it.

use std::{hash::Hash, sync::Mutex};

use quick_cache::{Equivalent, UnitWeighter, Weighter};

/// The cache: values by key, and a generation that moves with every invalidation.
pub struct FreshCache<K, V, W = UnitWeighter> {
    inner: Mutex<(u64, quick_cache::unsync::Cache<K, V, W>)>,
}

impl<K: Eq + Hash, V: Clone> FreshCache<K, V> {
    /// A cache of up to `items` values.
    pub fn new(items: usize) -> Self {
        Self::with_weighter(items, items as u64, UnitWeighter)
    }
}

impl<K: Eq + Hash, V: Clone, W: Weighter<K, V> + Clone> FreshCache<K, V, W> {
    /// A cache of values weighing up to `capacity` in all by `weighter`.
    pub fn with_weighter(items: usize, capacity: u64, weighter: W) -> Self {
        FreshCache {
            inner: Mutex::new((0, quick_cache::unsync::Cache::with_weighter(items, capacity, weighter))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, quick_cache::unsync::Cache<K, V, W>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value held for `key`, or else what `read` reads (kept under `owned()` unless an
    /// invalidation came meanwhile).
    pub fn get_or_read<Q, E>(
        &self,
        key: &Q,
        owned: impl FnOnce() -> K,
        read: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let generation = {
            let inner = self.lock();
            if let Some(value) = inner.1.get(key) {
                return Ok(value.clone());
            }
            inner.0
        };
        let value = read()?;
        let mut inner = self.lock();
        if inner.0 == generation {
            inner.1.insert(owned(), value.clone());
        }
        Ok(value)
    }

    /// Forgets `key`; call it once a change to what it caches is durable.
    pub fn invalidate<Q>(&self, key: &Q)
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let mut inner = self.lock();
        inner.0 += 1;
        inner.1.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::FreshCache;

    #[test]
    fn a_read_overtaken_by_an_invalidation_is_not_kept() {
        let cache: FreshCache<String, u32> = FreshCache::new(10);
        let read = |v| move || Ok::<_, ()>(v);
        assert_eq!(cache.get_or_read("a", || "a".into(), read(1)), Ok(1));
        // Held: the second read is not made.
        assert_eq!(cache.get_or_read("a", || "a".into(), read(2)), Ok(1));
        cache.invalidate("a");
        // A read during which another key was invalidated is served but not kept.
        let racing = || {
            cache.invalidate("b");
            Ok::<_, ()>(3)
        };
        assert_eq!(cache.get_or_read("a", || "a".into(), racing), Ok(3));
        assert_eq!(cache.get_or_read("a", || "a".into(), read(4)), Ok(4));
        assert_eq!(cache.get_or_read("a", || "a".into(), read(5)), Ok(4));
    }
}
