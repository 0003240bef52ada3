//! Tiny shared helpers: clock, random strings, token hashing, wildcard matching, reading many
//! values through a cache ([`cached_many`]), the writer-invalidated cache ([`fresh_cache`]),
//! and the bounded map for state that requests create ([`bounded`]).

pub mod bounded;
pub mod fresh_cache;

use std::hash::Hash;

use rand::{Rng, distributions::Alphanumeric};

/// The values of `keys` (in their order): those `cache` holds, and the others read in one go
/// by `read` (given the missing keys, answering in their order, `None` for an absent one) and
/// kept in the cache.
pub fn cached_many<K, V, W, E>(
    cache: &quick_cache::sync::Cache<K, V, W>,
    keys: &[K],
    read: impl FnOnce(&[K]) -> Result<Vec<Option<V>>, E>,
) -> Result<Vec<Option<V>>, E>
where
    K: Eq + Hash + Clone,
    V: Clone,
    W: quick_cache::Weighter<K, V> + Clone,
{
    let mut values: Vec<Option<V>> = keys.iter().map(|k| cache.get(k)).collect();
    let missing: Vec<K> = keys
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k.clone())
        .collect();
    if missing.is_empty() {
        return Ok(values);
    }
    let mut read = missing.iter().zip(read(&missing)?);
    for slot in values.iter_mut().filter(|v| v.is_none()) {
        let Some((key, value)) = read.next() else { break };
        if let Some(value) = &value {
            cache.insert(key.clone(), value.clone());
        }
        *slot = value;
    }
    Ok(values)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random alphanumeric string of `len` characters.
pub fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// SHA-256 of a secret, for storing tokens without storing the tokens.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Matches `text` against a pattern where `*` stands for any run of characters (event type
/// filters).
pub fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// Makes glibc return large freed blocks to the OS.
///
/// glibc raises its mmap threshold after the first large block is freed, so later argon2
/// buffers (19 MiB each) come from per-thread arenas and stay resident after use: a few hundred
/// logins across the blocking pool's threads grew the process past 1 GB. A fixed threshold
/// keeps such blocks mmapped and unmapped on free.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cached_many_reads_only_what_the_cache_lacks_and_keeps_it() {
        let cache: quick_cache::sync::Cache<u32, String> = quick_cache::sync::Cache::new(10);
        cache.insert(2, "two".into());
        let asked = std::cell::RefCell::new(Vec::new());
        let read = |keys: &[u32]| {
            asked.borrow_mut().push(keys.to_vec());
            Ok::<_, ()>(keys.iter().map(|k| (*k != 9).then(|| k.to_string())).collect())
        };
        let got = super::cached_many(&cache, &[1, 2, 9, 3], read).unwrap();
        assert_eq!(got, vec![Some("1".into()), Some("two".into()), None, Some("3".into())]);
        assert_eq!(asked.borrow().as_slice(), &[vec![1, 9, 3]]);
        // Found ones are kept, an absent one is not.
        let got = super::cached_many(&cache, &[3, 9], read).unwrap();
        assert_eq!(got, vec![Some("3".into()), None]);
        assert_eq!(asked.borrow().last(), Some(&vec![9]));
    }

    use super::glob;

    #[test]
    fn wildcards() {
        assert!(glob("m.room.*", "m.room.message"));
        assert!(glob("*", "anything"));
        assert!(glob("m.*.message", "m.room.message"));
        assert!(!glob("m.room.*", "m.call.invite"));
        assert!(glob("m.room.message", "m.room.message"));
        assert!(!glob("m.room.message", "m.room.messages"));
    }
}
