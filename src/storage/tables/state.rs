//! Room state as snapshots stored as diffs.
//!
//! A state set maps a short state key (`(type, state_key)` interned) to a short event id. Each
//! snapshot is stored as a diff against a parent snapshot, so a 10,000-member room does not
//! store 10,000 entries per event; loading walks the chain to a full snapshot and replays the
//! diffs. The chain is re-based (a full snapshot written) once it reaches [`MAX_CHAIN`] links or
//! when a diff would be more than half the size of the full set, which bounds every load.
//!
//! - `shortstatehash_snapshot`: u64 → postcard [`Snapshot`].
//! - `shorteventid_shortstatehash`: short event id → the snapshot of the state *before* that
//!   event (the state after a state event is that plus the event itself).
//! - `shortroomid_shortstatehash`: short room id → the room's current state snapshot.
//! - `global` `last_shortstatehash`: the last snapshot id handed out.
//!
//! Snapshots never change once written, so decoded sets are kept in a bounded in-memory cache
//! (weighted by entries, sized from `database.cache_size_mb`); a diff whose parent is cached
//! costs one read and the replay of the diff.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use crate::storage::{
    Batch, Db, StorageError, StorageResult, codec,
    schema::{GLOBAL, SHORTEVENTID_SHORTSTATEHASH, SHORTROOMID_SHORTSTATEHASH, SHORTSTATEHASH_SNAPSHOT},
};

/// A state set: short state key → short event id.
pub type StateMap = BTreeMap<u64, u64>;

/// Longest diff chain before a full snapshot is written.
pub const MAX_CHAIN: u32 = 16;

/// One stored snapshot: a full set (no parent) or a diff against its parent.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// The snapshot this one is a diff against.
    pub parent: Option<u64>,
    /// Links from here to the full snapshot at the root (0 for a full one).
    pub chain: u32,
    /// Entries added or replaced, sorted by short state key.
    pub set: Vec<(u64, u64)>,
    /// Short state keys removed.
    pub removed: Vec<u64>,
}

/// A loaded state set with what a child diff needs to know about it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    /// Its id.
    pub id: u64,
    /// Its chain length.
    pub chain: u32,
    /// The full set.
    pub state: StateMap,
}

/// Typed access to state snapshots.
pub struct StateTable {
    db: Arc<Db>,
    id_lock: Mutex<()>,
    cache: quick_cache::sync::Cache<u64, Arc<Loaded>, EntryWeight>,
}

/// Weighs a cached state set by its entries.
#[derive(Clone)]
struct EntryWeight;

impl quick_cache::Weighter<u64, Arc<Loaded>> for EntryWeight {
    fn weight(&self, _id: &u64, loaded: &Arc<Loaded>) -> u64 {
        loaded.state.len() as u64 + 1
    }
}

/// Approximate memory of one cached state entry (map node share included), in bytes.
const BYTES_PER_ENTRY: usize = 48;

const COUNTER: &[u8] = b"last_shortstatehash";

impl StateTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        // Half the configured cache budget again, for decoded state.
        let entries = (db.cache_bytes() / 2 / BYTES_PER_ENTRY).max(1024) as u64;
        Self {
            db,
            id_lock: Mutex::new(()),
            cache: quick_cache::sync::Cache::with_weighter(4096, entries, EntryWeight),
        }
    }

    fn snapshot(&self, id: u64) -> StorageResult<Snapshot> {
        let bytes = self
            .db
            .get(SHORTSTATEHASH_SNAPSHOT, &codec::u64_bytes(id))?
            .ok_or_else(|| StorageError::Corrupt {
                table: SHORTSTATEHASH_SNAPSHOT,
                reason: format!("missing snapshot {id}"),
            })?;
        codec::decode(SHORTSTATEHASH_SNAPSHOT, &bytes)
    }

    /// Loads a full state set.
    pub fn load(&self, id: u64) -> StorageResult<Arc<Loaded>> {
        self.load_within(id, MAX_CHAIN + 1)
    }

    fn load_within(&self, id: u64, links_left: u32) -> StorageResult<Arc<Loaded>> {
        if let Some(loaded) = self.cache.get(&id) {
            return Ok(loaded);
        }
        let snapshot = self.snapshot(id)?;
        let loaded = match snapshot.parent {
            None => Loaded {
                id,
                chain: 0,
                state: snapshot.set.into_iter().collect(),
            },
            Some(_) if links_left == 0 => {
                return Err(StorageError::Corrupt {
                    table: SHORTSTATEHASH_SNAPSHOT,
                    reason: format!("chain of {id} too long"),
                });
            }
            Some(parent) => {
                let parent = self.load_within(parent, links_left - 1)?;
                let mut state = parent.state.clone();
                for key in snapshot.removed {
                    state.remove(&key);
                }
                state.extend(snapshot.set);
                Loaded {
                    id,
                    chain: parent.chain + 1,
                    state,
                }
            }
        };
        let loaded = Arc::new(loaded);
        self.cache.insert(id, Arc::clone(&loaded));
        Ok(loaded)
    }

    /// Hands out a new snapshot id (written at once, unsynced; see `shortids` for why that is
    /// safe).
    fn next_id(&self) -> StorageResult<u64> {
        let _guard = self.id_lock.lock().unwrap_or_else(|p| p.into_inner());
        let last = self
            .db
            .get(GLOBAL, COUNTER)?
            .map(|b| codec::read_u64(GLOBAL, &b))
            .transpose()?
            .unwrap_or(0);
        let mut batch = self.db.batch();
        batch.put(GLOBAL, COUNTER, &codec::u64_bytes(last + 1));
        batch.commit_unsynced()?;
        Ok(last + 1)
    }

    /// Queues a new snapshot of `state`, as a diff against `parent` when that is worth it, and
    /// returns it loaded (so the caller can chain the next one without reading it back).
    pub fn queue_snapshot(
        &self,
        batch: &mut Batch,
        parent: Option<&Loaded>,
        state: StateMap,
    ) -> StorageResult<Arc<Loaded>> {
        let id = self.next_id()?;
        let snapshot = match parent {
            Some(parent) if parent.chain < MAX_CHAIN => {
                let set: Vec<(u64, u64)> = state
                    .iter()
                    .filter(|(k, v)| parent.state.get(k) != Some(v))
                    .map(|(k, v)| (*k, *v))
                    .collect();
                let removed: Vec<u64> = parent
                    .state
                    .keys()
                    .filter(|k| !state.contains_key(k))
                    .copied()
                    .collect();
                if (set.len() + removed.len()) * 2 <= state.len().max(1) {
                    Snapshot {
                        parent: Some(parent.id),
                        chain: parent.chain + 1,
                        set,
                        removed,
                    }
                } else {
                    full(&state)
                }
            }
            _ => full(&state),
        };
        batch.put(
            SHORTSTATEHASH_SNAPSHOT,
            &codec::u64_bytes(id),
            &codec::encode(SHORTSTATEHASH_SNAPSHOT, &snapshot)?,
        );
        let loaded = Arc::new(Loaded {
            id,
            chain: snapshot.chain,
            state,
        });
        self.cache.insert(id, Arc::clone(&loaded));
        Ok(loaded)
    }

    /// The snapshot id of the state before an event.
    pub fn before_event(&self, event: u64) -> StorageResult<Option<u64>> {
        self.db
            .get(SHORTEVENTID_SHORTSTATEHASH, &codec::u64_bytes(event))?
            .map(|b| codec::read_u64(SHORTEVENTID_SHORTSTATEHASH, &b))
            .transpose()
    }

    /// Queues the snapshot id of the state before an event.
    pub fn queue_before_event(&self, batch: &mut Batch, event: u64, snapshot: u64) {
        batch.put(
            SHORTEVENTID_SHORTSTATEHASH,
            &codec::u64_bytes(event),
            &codec::u64_bytes(snapshot),
        );
    }

    /// The room's current state snapshot id.
    pub fn current(&self, room: u64) -> StorageResult<Option<u64>> {
        self.db
            .get(SHORTROOMID_SHORTSTATEHASH, &codec::u64_bytes(room))?
            .map(|b| codec::read_u64(SHORTROOMID_SHORTSTATEHASH, &b))
            .transpose()
    }

    /// Queues the room's current state pointer.
    pub fn queue_current(&self, batch: &mut Batch, room: u64, snapshot: u64) {
        batch.put(
            SHORTROOMID_SHORTSTATEHASH,
            &codec::u64_bytes(room),
            &codec::u64_bytes(snapshot),
        );
    }
}

fn full(state: &StateMap) -> Snapshot {
    Snapshot {
        parent: None,
        chain: 0,
        set: state.iter().map(|(k, v)| (*k, *v)).collect(),
        removed: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    fn open(dir: &std::path::Path) -> (Arc<Db>, StateTable) {
        let db = Db::open(dir, &StorageOptions::for_tests()).unwrap();
        let table = StateTable::new(Arc::clone(&db));
        (db, table)
    }

    #[test]
    fn snapshot_records_round_trip() {
        let s = Snapshot {
            parent: Some(3),
            chain: 2,
            set: vec![(1, 10), (2, 20)],
            removed: vec![5],
        };
        assert_eq!(
            codec::decode::<Snapshot>("t", &codec::encode("t", &s).unwrap()).unwrap(),
            s
        );
    }

    /// A long room history (a member joins per event, others change names) loads back exactly,
    /// chains never exceed the limit, and diffs stay small.
    #[test]
    fn chains_of_diffs_load_back_exactly_and_stay_short() {
        let dir = tempfile::tempdir().unwrap();
        let (db, table) = open(dir.path());
        let mut expected = StateMap::new();
        let mut parent: Option<Arc<Loaded>> = None;
        let mut ids = Vec::new();
        for step in 0..200u64 {
            match step % 3 {
                0 => {
                    expected.insert(1_000 + step, step);
                }
                1 => {
                    expected.insert(1, step);
                }
                _ => {
                    let victim = *expected.keys().nth((step as usize * 7) % expected.len()).unwrap();
                    expected.remove(&victim);
                }
            }
            let mut batch = db.batch();
            let loaded = table
                .queue_snapshot(&mut batch, parent.as_deref(), expected.clone())
                .unwrap();
            batch.commit_blocking().unwrap();
            assert!(loaded.chain <= MAX_CHAIN);
            ids.push((loaded.id, expected.clone()));
            parent = Some(loaded);
        }
        drop(table);
        drop(db);
        let (_db, table) = open(dir.path());
        for (id, state) in ids {
            let loaded = table.load(id).unwrap();
            assert_eq!(loaded.state, state, "snapshot {id}");
            assert!(loaded.chain <= MAX_CHAIN);
        }
    }

    #[test]
    fn event_and_room_pointers() {
        let dir = tempfile::tempdir().unwrap();
        let (db, table) = open(dir.path());
        let mut batch = db.batch();
        let s = table
            .queue_snapshot(&mut batch, None, StateMap::from([(1, 2)]))
            .unwrap();
        table.queue_before_event(&mut batch, 42, s.id);
        table.queue_current(&mut batch, 7, s.id);
        batch.commit_blocking().unwrap();
        assert_eq!(table.before_event(42).unwrap(), Some(s.id));
        assert_eq!(table.current(7).unwrap(), Some(s.id));
        assert_eq!(table.current(8).unwrap(), None);
        assert!(table.load(999).is_err());
    }
}
