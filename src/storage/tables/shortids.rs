//! Short ids: event ids, room ids and `(event type, state key)` pairs interned to u64, so that
//! indexes and state sets use compact fixed-width keys. Tables `eventid_shorteventid`,
//! `shorteventid_eventid`, `roomid_shortroomid`, `statekey_shortstatekey`,
//! `shortstatekey_statekey`; the last id handed out per kind is kept in `global`.
//!
//! Interning is get-or-create under a lock per kind, written at once without a WAL sync: the
//! id only matters once an event that uses it is stored, and that event's synced batch comes
//! later in the same sequential WAL, so it makes the interning durable too. An event built
//! here is new by construction (its id hashes its `prev_events`, the room's head, which moves
//! past it under the room's lock), so its id is interned without a lookup, in the event's own
//! batch ([`ShortIds::queue_new_event`]). Batches may land out of id order, so the last id
//! handed out is read back as the larger of the stored counter and the highest id in the
//! reverse table.
//!
//! A mapping never changes or goes away once made, so each kind keeps the mappings it has
//! seen (both ways) in a bounded in-memory cache; only misses reach RocksDB.

use std::sync::{Arc, Mutex};

use crate::util::cached_many;

use crate::storage::{
    Batch, Db, StorageError, StorageResult, codec,
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
        let mut batch = self.db.batch();
        let id = self.intern_in(kind, &mut last, &mut batch, name)?;
        batch.commit_unsynced()?;
        Ok(id)
    }

    /// Hands out the next id of `kind` for `name` (the caller holds the kind's lock, `last`)
    /// and adds the mapping to `batch`; readers find it in the cache at once.
    fn intern_in(&self, kind: &Kind, last: &mut Option<u64>, batch: &mut Batch, name: &[u8]) -> StorageResult<u64> {
        // Only this lock's holder moves the counter, so after the first read it is known.
        let id = match *last {
            Some(last) => last,
            None => self.last_stored_id(kind)?,
        } + 1;
        batch.put(GLOBAL, kind.counter, &codec::u64_bytes(id));
        batch.put(kind.forward, name, &codec::u64_bytes(id));
        if let Some(reverse) = kind.reverse {
            batch.put(reverse, &codec::u64_bytes(id), name);
            kind.names.insert(id, name.to_vec());
        }
        *last = Some(id);
        kind.ids.insert(name.to_vec(), id);
        Ok(id)
    }

    /// The highest id of `kind` stored: the counter, or a higher id in the reverse table (a
    /// batch interning a later id may have landed before one interning an earlier id).
    fn last_stored_id(&self, kind: &Kind) -> StorageResult<u64> {
        let counter = self
            .db
            .get(GLOBAL, kind.counter)?
            .map(|b| codec::read_u64(GLOBAL, &b))
            .transpose()?
            .unwrap_or(0);
        let highest = match kind.reverse {
            Some(reverse) => self
                .db
                .scan_range(reverse, &[], &[0xFF; 9], true, 1)?
                .first()
                .map(|(key, _)| codec::read_u64(reverse, key))
                .transpose()?
                .unwrap_or(0),
            None => 0,
        };
        Ok(counter.max(highest))
    }

    /// Interns the id of an event built here, which is new by construction (see the module
    /// doc), in the event's own batch: no lookup and no write of its own.
    pub fn queue_new_event(&self, batch: &mut Batch, event_id: &str) -> StorageResult<u64> {
        let kind = &self.events;
        let mut last = kind.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.intern_in(kind, &mut last, batch, event_id.as_bytes())
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

    /// Ids interned in events' own batches stay unique across a restart even when the batches
    /// land out of id order (the stored counter then lags the highest id).
    #[test]
    fn ids_interned_in_batches_landing_out_of_order_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = {
            let db = db(dir.path());
            let ids = ShortIds::new(Arc::clone(&db));
            let mut early = db.batch();
            let mut late = db.batch();
            let first = ids.queue_new_event(&mut early, "$first").unwrap();
            let second = ids.queue_new_event(&mut late, "$second").unwrap();
            assert!(second > first);
            assert_eq!(ids.event("$second").unwrap(), Some(second), "served before it lands");
            assert_eq!(ids.event_id(second).unwrap().as_deref(), Some("$second"));
            late.commit_blocking().unwrap();
            early.commit_blocking().unwrap();
            (first, second)
        };
        let ids = ShortIds::new(db(dir.path()));
        assert_eq!(ids.event("$first").unwrap(), Some(first));
        assert_eq!(ids.event_id(second).unwrap().as_deref(), Some("$second"));
        let next = ids.event_or_create("$third").unwrap();
        assert!(next > second, "{next} after {second}");
    }
}
