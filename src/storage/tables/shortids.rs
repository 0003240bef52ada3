//! Short ids: event ids, room ids and `(event type, state key)` pairs interned to u64, so that
//! indexes and state sets use compact fixed-width keys. Tables `eventid_shorteventid`,
//! `shorteventid_eventid`, `roomid_shortroomid`, `statekey_shortstatekey`,
//! `shortstatekey_statekey`; the last id handed out per kind is kept in `global`.
//!
//! Interning is get-or-create under a lock per kind, written at once without a WAL sync: the
//! id only matters once an event that uses it is stored, and that event's synced batch comes
//! later in the same sequential WAL, so it makes the interning durable too.
//!
//! A mapping never changes or goes away once made, so each kind keeps the mappings it has
//! seen (both ways) in a bounded in-memory cache; only misses reach RocksDB.

use std::sync::{Arc, Mutex};

use crate::util::cached_many;

use crate::storage::{
    Db, StorageError, StorageResult, codec,
    schema::{
        EVENTID_SHORTEVENTID, GLOBAL, ROOMID_SHORTROOMID, SHORTEVENTID_EVENTID, SHORTSTATEKEY_STATEKEY,
        STATEKEY_SHORTSTATEKEY,
    },
};

/// Mappings held in memory per kind and direction.
const CACHED_IDS: usize = 100_000;

/// One kind of interned id: its forward and (optional) reverse tables and its counter key, and
/// the mappings seen.
struct Kind {
    forward: &'static str,
    reverse: Option<&'static str>,
    counter: &'static [u8],
    /// Held while interning; the last id handed out, once read from `global`.
    lock: Mutex<Option<u64>>,
    ids: quick_cache::sync::Cache<Vec<u8>, u64>,
    names: quick_cache::sync::Cache<u64, Vec<u8>>,
}

/// Typed access to short ids.
pub struct ShortIds {
    db: Arc<Db>,
    events: Kind,
    rooms: Kind,
    state_keys: Kind,
}

fn state_key_bytes(event_type: &str, state_key: &str) -> Vec<u8> {
    codec::key(&[event_type.as_bytes(), state_key.as_bytes()])
}

impl ShortIds {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        let kind = |forward, reverse, counter| Kind {
            forward,
            reverse,
            counter,
            lock: Mutex::new(None),
            ids: quick_cache::sync::Cache::new(CACHED_IDS),
            names: quick_cache::sync::Cache::new(CACHED_IDS),
        };
        Self {
            db,
            events: kind(EVENTID_SHORTEVENTID, Some(SHORTEVENTID_EVENTID), b"last_shorteventid"),
            rooms: kind(ROOMID_SHORTROOMID, None, b"last_shortroomid"),
            state_keys: kind(
                STATEKEY_SHORTSTATEKEY,
                Some(SHORTSTATEKEY_STATEKEY),
                b"last_shortstatekey",
            ),
        }
    }

    fn get(&self, kind: &Kind, name: &[u8]) -> StorageResult<Option<u64>> {
        if let Some(id) = kind.ids.get(name) {
            return Ok(Some(id));
        }
        let id = self
            .db
            .get(kind.forward, name)?
            .map(|b| codec::read_u64(kind.forward, &b))
            .transpose()?;
        if let Some(id) = id {
            kind.ids.insert(name.to_vec(), id);
        }
        Ok(id)
    }

    fn get_or_create(&self, kind: &Kind, name: &[u8]) -> StorageResult<u64> {
        if let Some(id) = self.get(kind, name)? {
            return Ok(id);
        }
        let mut last = kind.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = self.get(kind, name)? {
            return Ok(id);
        }
        // Only this lock's holder moves the counter, so after the first read it is known.
        let id = match *last {
            Some(last) => last,
            None => self
                .db
                .get(GLOBAL, kind.counter)?
                .map(|b| codec::read_u64(GLOBAL, &b))
                .transpose()?
                .unwrap_or(0),
        } + 1;
        let mut batch = self.db.batch();
        batch.put(GLOBAL, kind.counter, &codec::u64_bytes(id));
        batch.put(kind.forward, name, &codec::u64_bytes(id));
        if let Some(reverse) = kind.reverse {
            batch.put(reverse, &codec::u64_bytes(id), name);
        }
        batch.commit_unsynced()?;
        *last = Some(id);
        kind.ids.insert(name.to_vec(), id);
        Ok(id)
    }

    fn name_of(&self, kind: &Kind, id: u64) -> StorageResult<Option<Vec<u8>>> {
        if let Some(name) = kind.names.get(&id) {
            return Ok(Some(name));
        }
        let reverse = kind.reverse.expect("this kind keeps a reverse table");
        let name = self.db.get(reverse, &codec::u64_bytes(id))?;
        if let Some(name) = &name {
            kind.names.insert(id, name.clone());
        }
        Ok(name)
    }

    /// The short id of an event, if it was interned.
    pub fn event(&self, event_id: &str) -> StorageResult<Option<u64>> {
        self.get(&self.events, event_id.as_bytes())
    }

    /// The short id of an event, interning it if new.
    pub fn event_or_create(&self, event_id: &str) -> StorageResult<u64> {
        self.get_or_create(&self.events, event_id.as_bytes())
    }

    /// The event id behind a short id.
    pub fn event_id(&self, short: u64) -> StorageResult<Option<String>> {
        self.name_of(&self.events, short)?
            .map(|b| utf8(SHORTEVENTID_EVENTID, b))
            .transpose()
    }

    /// Many event ids at once, in the order of `shorts`.
    pub fn event_ids(&self, shorts: &[u64]) -> StorageResult<Vec<Option<String>>> {
        let names = cached_many(&self.events.names, shorts, |missing| {
            let keys: Vec<[u8; 8]> = missing.iter().map(|s| codec::u64_bytes(*s)).collect();
            self.db.multi_get(SHORTEVENTID_EVENTID, keys.iter().map(|k| &k[..]))
        })?;
        names
            .into_iter()
            .map(|b| b.map(|b| utf8(SHORTEVENTID_EVENTID, b)).transpose())
            .collect()
    }

    /// The short id of a room, if known.
    pub fn room(&self, room_id: &str) -> StorageResult<Option<u64>> {
        self.get(&self.rooms, room_id.as_bytes())
    }

    /// The short id of a room, interning it if new.
    pub fn room_or_create(&self, room_id: &str) -> StorageResult<u64> {
        self.get_or_create(&self.rooms, room_id.as_bytes())
    }

    /// The short id of a `(type, state_key)` pair, if known.
    pub fn state_key(&self, event_type: &str, state_key: &str) -> StorageResult<Option<u64>> {
        self.get(&self.state_keys, &state_key_bytes(event_type, state_key))
    }

    /// The short id of a `(type, state_key)` pair, interning it if new.
    pub fn state_key_or_create(&self, event_type: &str, state_key: &str) -> StorageResult<u64> {
        self.get_or_create(&self.state_keys, &state_key_bytes(event_type, state_key))
    }

    /// The `(type, state_key)` pair behind a short id.
    pub fn state_key_of(&self, short: u64) -> StorageResult<Option<(String, String)>> {
        let Some(bytes) = self.name_of(&self.state_keys, short)? else {
            return Ok(None);
        };
        let mut parts = codec::split(&bytes);
        let (Some(kind), Some(key)) = (parts.next(), parts.next()) else {
            return Err(StorageError::Corrupt {
                table: SHORTSTATEKEY_STATEKEY,
                reason: "missing separator".into(),
            });
        };
        Ok(Some((
            utf8(SHORTSTATEKEY_STATEKEY, kind.to_vec())?,
            utf8(SHORTSTATEKEY_STATEKEY, key.to_vec())?,
        )))
    }
}

fn utf8(table: &'static str, bytes: Vec<u8>) -> StorageResult<String> {
    String::from_utf8(bytes).map_err(|e| StorageError::Corrupt {
        table,
        reason: format!("not UTF-8: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Db, StorageOptions};

    fn db(dir: &std::path::Path) -> Arc<Db> {
        Db::open(dir, &StorageOptions::for_tests()).unwrap()
    }

    #[test]
    fn interning_is_stable_and_reversible_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (e1, s1) = {
            let ids = ShortIds::new(db(dir.path()));
            let e1 = ids.event_or_create("$a").unwrap();
            assert_eq!(ids.event_or_create("$a").unwrap(), e1);
            let e2 = ids.event_or_create("$b").unwrap();
            assert_ne!(e1, e2);
            assert_eq!(
                ids.event_ids(&[e2, e1, 999]).unwrap(),
                vec![Some("$b".into()), Some("$a".into()), None]
            );
            let s1 = ids.state_key_or_create("m.room.member", "@a:b").unwrap();
            assert_eq!(
                ids.state_key_of(s1).unwrap(),
                Some(("m.room.member".into(), "@a:b".into()))
            );
            // An empty state key is a key like any other.
            let s2 = ids.state_key_or_create("m.room.name", "").unwrap();
            assert_eq!(
                ids.state_key_of(s2).unwrap(),
                Some(("m.room.name".into(), String::new()))
            );
            (e1, s1)
        };
        let ids = ShortIds::new(db(dir.path()));
        assert_eq!(ids.event("$a").unwrap(), Some(e1));
        assert_eq!(ids.state_key("m.room.member", "@a:b").unwrap(), Some(s1));
        let e3 = ids.event_or_create("$c").unwrap();
        assert!(e3 > e1, "ids are never reused after a restart");
        assert_eq!(ids.room("!r:x").unwrap(), None);
        let r = ids.room_or_create("!r:x").unwrap();
        assert_eq!(ids.room("!r:x").unwrap(), Some(r));
    }

    #[test]
    fn concurrent_interning_of_one_name_yields_one_id() {
        let dir = tempfile::tempdir().unwrap();
        let ids = Arc::new(ShortIds::new(db(dir.path())));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let ids = Arc::clone(&ids);
                std::thread::spawn(move || {
                    (0..200)
                        .map(|i| ids.event_or_create(&format!("$e{i}")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let results: Vec<Vec<u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]));
        let mut unique = results[0].clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 200);
    }
}
