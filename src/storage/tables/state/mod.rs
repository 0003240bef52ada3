//! Room state as layers of deltas, so storing a state event costs what it changes.
//!
//! A state set maps a short state key (`(type, state_key)` interned) to a short event id. Each
//! snapshot is one *layer*: the entries that changed since a layer below it. Layers form trees
//! rooted at *bases* (full sets, depth 0). The layer at depth `d` is a delta against its
//! ancestor at depth `d - lowbit(d)` (its depth with the lowest set bit cleared), the skip-list
//! idea of binary lifting: a lookup walks at most `popcount(d) + 1 ≤ log₂ d + 2` layers, and a
//! layer's delta covers at most `lowbit(d)` changes, so a chain of single changes stores
//! `O(log n)` entries per change amortized, never a copy of the whole set. When a delta would
//! hold more than half the entries of the set it describes, a new base is written instead: bases
//! are written at sizes that at least double, or after half the set has changed, so they add
//! `O(1)` per change amortized.
//!
//! Each layer keeps member entries (`m.room.member`) apart from the others, so the non-member
//! state of a room (a few dozen events, even with 100,000 members) is read without touching
//! its members, and a member's entry is a point lookup: lazy-loading members costs
//! `O(wanted × log n)`.
//!
//! - `shortstatehash_layer`: u64 layer id → postcard [`Record`].
//! - `shorteventid_shortstatehash`: short event id → the layer of the state *before* that event
//!   (the state after a state event is that plus the event itself).
//! - `shortroomid_shortstatehash`: short room id → the room's current state layer.
//! - `shortstatehash_snapshot`: the format before layers (full sets and diff chains), read only
//!   by the migration in [`migrate`], which rewrites every room's state as layers.
//!
//! Layers never change once written, so decoded layers are kept in a bounded in-memory cache
//! (weighted by entries, sized from `database.cache_size_mb`).

pub mod migrate;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};

use crate::storage::{
    Batch, Db, StorageError, StorageResult, codec,
    schema::{SHORTEVENTID_SHORTSTATEHASH, SHORTROOMID_SHORTSTATEHASH, SHORTSTATEHASH_LAYER},
};

/// A whole state set: short state key → short event id.
pub type StateMap = BTreeMap<u64, u64>;

/// One entry of a layer: a short state key and the short event id it now holds, or
/// [`REMOVED`].
pub type Entry = (u64, u64);

/// The event id an entry holds when the key left the state (short event ids start at 1).
pub const REMOVED: u64 = 0;

/// One stored layer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The layer this one is a delta against; `None` for a base.
    pub below: Option<u64>,
    /// Depth above the base (0 for a base).
    pub depth: u32,
    /// Entries in the whole set this layer describes.
    pub len: u64,
    /// Member entries changed, sorted by key.
    pub members: Vec<Entry>,
    /// Other entries changed, sorted by key.
    pub others: Vec<Entry>,
}

/// A loaded layer.
#[derive(Debug)]
pub struct Layer {
    /// Its id.
    pub id: u64,
    record: Record,
    /// The layer below, for a layer written by this process: its batch may not be written
    /// yet (the commit queue), so the layers a new one builds on stay reachable in memory
    /// until it is, whatever the cache evicts. Layers read from disk find theirs by id.
    below: Option<Arc<Layer>>,
}

impl Layer {
    /// Entries in the whole set.
    pub fn len(&self) -> u64 {
        self.record.len
    }

    /// Whether the whole set is empty.
    pub fn is_empty(&self) -> bool {
        self.record.len == 0
    }

    fn find(&self, key: u64) -> Option<u64> {
        let search = |entries: &[Entry]| {
            entries
                .binary_search_by_key(&key, |(k, _)| *k)
                .ok()
                .map(|i| entries[i].1)
        };
        search(&self.record.others).or_else(|| search(&self.record.members))
    }
}

/// The changes a new layer makes: member entries and other entries, in any order (the last
/// entry for a key wins).
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Changed member entries.
    pub members: Vec<Entry>,
    /// Changed other entries.
    pub others: Vec<Entry>,
}

impl Changes {
    /// One entry, a member's or another's.
    pub fn one(key: u64, event: u64, member: bool) -> Self {
        let mut changes = Self::default();
        changes.push(key, event, member);
        changes
    }

    /// Adds an entry.
    pub fn push(&mut self, key: u64, event: u64, member: bool) {
        if member {
            self.members.push((key, event));
        } else {
            self.others.push((key, event));
        }
    }
}

/// Typed access to state layers.
pub struct StateTable {
    db: Arc<Db>,
    last_id: AtomicU64,
    cache: quick_cache::sync::Cache<u64, Arc<Layer>, EntryWeight>,
}

/// Weighs a cached layer by its entries.
#[derive(Clone)]
struct EntryWeight;

impl quick_cache::Weighter<u64, Arc<Layer>> for EntryWeight {
    fn weight(&self, _id: &u64, layer: &Arc<Layer>) -> u64 {
        (layer.record.members.len() + layer.record.others.len()) as u64 + 1
    }
}

/// Approximate memory of one cached entry, in bytes.
const BYTES_PER_ENTRY: usize = 16;

/// Longest walk from a layer to its base: depths are u32, so a walk clears at most 32 bits.
const MAX_WALK: usize = 34;

impl StateTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> StorageResult<Self> {
        // Half the configured cache budget again, for decoded layers.
        let entries = (db.cache_bytes() / 2 / BYTES_PER_ENTRY).max(1024) as u64;
        // Ids are handed out above the highest stored one. An id handed out to a batch that
        // never committed is referenced by nothing, so reusing it after a restart is safe.
        let last_id = match db.scan_range(SHORTSTATEHASH_LAYER, &[], &[0xFF; 9], true, 1)?.first() {
            Some((key, _)) => codec::read_u64(SHORTSTATEHASH_LAYER, key)?,
            None => 0,
        };
        Ok(Self {
            db,
            last_id: AtomicU64::new(last_id),
            cache: quick_cache::sync::Cache::with_weighter(4096, entries, EntryWeight),
        })
    }

    /// Hands out ids above `floor` from now on.
    pub fn raise_last_id(&self, floor: u64) {
        self.last_id.fetch_max(floor, Ordering::Relaxed);
    }

    /// Loads one layer.
    pub fn layer(&self, id: u64) -> StorageResult<Arc<Layer>> {
        if let Some(layer) = self.cache.get(&id) {
            return Ok(layer);
        }
        let bytes = self
            .db
            .get(SHORTSTATEHASH_LAYER, &codec::u64_bytes(id))?
            .ok_or_else(|| corrupt(format!("missing layer {id}")))?;
        let record: Record = codec::decode(SHORTSTATEHASH_LAYER, &bytes)?;
        let layer = Arc::new(Layer {
            id,
            record,
            below: None,
        });
        self.cache.insert(id, Arc::clone(&layer));
        Ok(layer)
    }

    /// The layer below `layer` (`None` for a base).
    fn below(&self, layer: &Layer) -> StorageResult<Option<Arc<Layer>>> {
        match (&layer.below, layer.record.below) {
            (Some(linked), _) => Ok(Some(Arc::clone(linked))),
            (None, Some(id)) => self.layer(id).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The layers from `top` down to its base, top first.
    fn chain(&self, top: &Arc<Layer>) -> StorageResult<Vec<Arc<Layer>>> {
        let mut chain = vec![Arc::clone(top)];
        while let Some(below) = self.below(chain.last().expect("never empty"))? {
            if chain.len() > MAX_WALK {
                return Err(corrupt(format!("layer {} is too far above its base", top.id)));
            }
            chain.push(below);
        }
        Ok(chain)
    }

    /// The event the state described by `top` holds under `key`.
    pub fn get(&self, top: &Arc<Layer>, key: u64) -> StorageResult<Option<u64>> {
        let mut layer = Arc::clone(top);
        for _ in 0..=MAX_WALK {
            if let Some(event) = layer.find(key) {
                return Ok((event != REMOVED).then_some(event));
            }
            match self.below(&layer)? {
                Some(below) => layer = below,
                None => return Ok(None),
            }
        }
        Err(corrupt(format!("layer {} is too far above its base", top.id)))
    }

    /// The whole state described by `top`.
    pub fn entries(&self, top: &Arc<Layer>) -> StorageResult<StateMap> {
        self.collect(top, true)
    }

    /// The non-member entries of the state described by `top` (without reading its members).
    pub fn others(&self, top: &Arc<Layer>) -> StorageResult<StateMap> {
        self.collect(top, false)
    }

    fn collect(&self, top: &Arc<Layer>, with_members: bool) -> StorageResult<StateMap> {
        let mut state = StateMap::new();
        for layer in self.chain(top)?.iter().rev() {
            state.extend(layer.record.others.iter().copied());
            if with_members {
                state.extend(layer.record.members.iter().copied());
            }
        }
        state.retain(|_, event| *event != REMOVED);
        Ok(state)
    }

    /// Queues a new layer: `parent`'s state with `changes` applied (or, without a parent, just
    /// the changes), and returns it loaded. Costs `O(changes × log n)` plus, amortized over a
    /// chain of changes, `O(log n)` merged entries per layer.
    pub fn queue_snapshot(
        &self,
        batch: &mut Batch,
        parent: Option<&Arc<Layer>>,
        changes: Changes,
    ) -> StorageResult<Arc<Layer>> {
        let id = self.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (members, others) = (sorted(changes.members), sorted(changes.others));
        let (record, below) = match parent {
            None => (
                base(
                    members.into_iter().filter(|e| e.1 != REMOVED).collect(),
                    others.into_iter().filter(|e| e.1 != REMOVED).collect(),
                ),
                None,
            ),
            Some(parent) => self.layer_over(parent, members, others)?,
        };
        batch.put(
            SHORTSTATEHASH_LAYER,
            &codec::u64_bytes(id),
            &codec::encode(SHORTSTATEHASH_LAYER, &record)?,
        );
        let layer = Arc::new(Layer { id, record, below });
        self.cache.insert(id, Arc::clone(&layer));
        Ok(layer)
    }

    /// The record of a layer over `parent` changing `members` and `others` (sorted), and the
    /// layer it lies on.
    fn layer_over(
        &self,
        parent: &Arc<Layer>,
        members: Vec<Entry>,
        others: Vec<Entry>,
    ) -> StorageResult<(Record, Option<Arc<Layer>>)> {
        let mut len = parent.record.len;
        for (key, event) in members.iter().chain(&others) {
            match (self.get(parent, *key)?.is_some(), *event != REMOVED) {
                (false, true) => len += 1,
                (true, false) => len -= 1,
                _ => {}
            }
        }
        let depth = parent
            .record
            .depth
            .checked_add(1)
            .ok_or_else(|| corrupt(format!("layer {} is too deep", parent.id)))?;
        let target = depth & (depth - 1);
        // The delta against the ancestor at `target`: these changes over those of the layers
        // from the parent down to it (their depth ranges tile the way down).
        let (mut merged_members, mut merged_others) = (members, others);
        let mut layer = Arc::clone(parent);
        for _ in 0..=MAX_WALK {
            if layer.record.depth == target {
                let merged = merged_members.len() + merged_others.len();
                if merged as u64 * 2 > len {
                    break;
                }
                let record = Record {
                    below: Some(layer.id),
                    depth,
                    len,
                    members: merged_members,
                    others: merged_others,
                };
                return Ok((record, Some(layer)));
            }
            let below = match self.below(&layer)? {
                Some(below) if layer.record.depth > target => below,
                _ => return Err(corrupt(format!("layer {} breaks the depth order", layer.id))),
            };
            merged_members = under(merged_members, &layer.record.members);
            merged_others = under(merged_others, &layer.record.others);
            layer = below;
        }
        // The delta would describe most of the set: write the set itself.
        let mut state_members = StateMap::new();
        let mut state_others = StateMap::new();
        for layer in self.chain(parent)?.iter().rev() {
            state_members.extend(layer.record.members.iter().copied());
            state_others.extend(layer.record.others.iter().copied());
        }
        // `merged_*` hold at least the new changes; applying them last lets them win.
        state_members.extend(merged_members);
        state_others.extend(merged_others);
        let keep = |map: StateMap| map.into_iter().filter(|e| e.1 != REMOVED).collect::<Vec<_>>();
        Ok((base(keep(state_members), keep(state_others)), None))
    }

    /// The layer of the state before an event.
    pub fn before_event(&self, event: u64) -> StorageResult<Option<u64>> {
        self.db
            .get(SHORTEVENTID_SHORTSTATEHASH, &codec::u64_bytes(event))?
            .map(|b| codec::read_u64(SHORTEVENTID_SHORTSTATEHASH, &b))
            .transpose()
    }

    /// Queues the layer of the state before an event.
    pub fn queue_before_event(&self, batch: &mut Batch, event: u64, layer: u64) {
        batch.put(
            SHORTEVENTID_SHORTSTATEHASH,
            &codec::u64_bytes(event),
            &codec::u64_bytes(layer),
        );
    }

    /// The room's current state layer.
    pub fn current(&self, room: u64) -> StorageResult<Option<u64>> {
        self.db
            .get(SHORTROOMID_SHORTSTATEHASH, &codec::u64_bytes(room))?
            .map(|b| codec::read_u64(SHORTROOMID_SHORTSTATEHASH, &b))
            .transpose()
    }

    /// Queues the room's current state pointer.
    pub fn queue_current(&self, batch: &mut Batch, room: u64, layer: u64) {
        batch.put(
            SHORTROOMID_SHORTSTATEHASH,
            &codec::u64_bytes(room),
            &codec::u64_bytes(layer),
        );
    }
}

fn corrupt(reason: String) -> StorageError {
    StorageError::Corrupt {
        table: SHORTSTATEHASH_LAYER,
        reason,
    }
}

/// A base record of sorted entries (none of them [`REMOVED`]).
fn base(members: Vec<Entry>, others: Vec<Entry>) -> Record {
    Record {
        below: None,
        depth: 0,
        len: (members.len() + others.len()) as u64,
        members,
        others,
    }
}

/// Entries sorted by key, the last one given for a key kept.
fn sorted(mut entries: Vec<Entry>) -> Vec<Entry> {
    // A stable sort keeps equal keys in the order given; the dedup then keeps the last.
    entries.sort_by_key(|(k, _)| *k);
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
    for entry in entries {
        match out.last_mut() {
            Some(last) if last.0 == entry.0 => *last = entry,
            _ => out.push(entry),
        }
    }
    out
}

/// Merges two sorted entry lists, `newer` winning for a key both hold.
fn under(newer: Vec<Entry>, older: &[Entry]) -> Vec<Entry> {
    if older.is_empty() {
        return newer;
    }
    let mut out = Vec::with_capacity(newer.len() + older.len());
    let (mut a, mut b) = (newer.into_iter().peekable(), older.iter().copied().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 < y.0 => out.extend(a.next()),
            (Some(x), Some(y)) if x.0 > y.0 => out.extend(b.next()),
            (Some(_), Some(_)) => {
                out.extend(a.next());
                b.next();
            }
            (Some(_), None) => out.extend(a.next()),
            (None, Some(_)) => out.extend(b.next()),
            (None, None) => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    fn open(dir: &std::path::Path) -> (Arc<Db>, StateTable) {
        let db = Db::open(dir, &StorageOptions::for_tests()).unwrap();
        let table = StateTable::new(Arc::clone(&db)).unwrap();
        (db, table)
    }

    #[test]
    fn records_round_trip() {
        let r = Record {
            below: Some(3),
            depth: 2,
            len: 9,
            members: vec![(1, 10), (2, 20)],
            others: vec![(5, REMOVED)],
        };
        assert_eq!(
            codec::decode::<Record>("t", &codec::encode("t", &r).unwrap()).unwrap(),
            r
        );
    }

    #[test]
    fn merging_keeps_the_newer_entry() {
        assert_eq!(
            under(vec![(1, 10), (3, 30)], &[(1, 1), (2, 2), (4, 4)]),
            vec![(1, 10), (2, 2), (3, 30), (4, 4)]
        );
        assert_eq!(sorted(vec![(2, 1), (1, 5), (2, 7)]), vec![(1, 5), (2, 7)]);
    }

    /// A long room history (members join, others change names or leave the state, some
    /// changes are several entries at once) reads back exactly after a restart, by whole set
    /// and key by key, with short walks and stored entries growing like n log n, not n².
    #[test]
    fn layers_read_back_exactly_and_stay_small() {
        let dir = tempfile::tempdir().unwrap();
        let (db, table) = open(dir.path());
        let mut expected = StateMap::new();
        let mut parent: Option<Arc<Layer>> = None;
        let mut ids = Vec::new();
        let steps = 3_000u64;
        for step in 0..steps {
            let mut changes = Changes::default();
            match step % 5 {
                0..=2 => changes.push(1_000 + step, step + 1, true),
                3 => changes.push(1 + step % 7, step + 1, false),
                _ => {
                    let victim = *expected.keys().nth((step as usize * 7) % expected.len()).unwrap();
                    changes.push(victim, REMOVED, victim >= 1_000);
                    changes.push(1_000 + step, step + 1, true);
                }
            }
            for (k, v) in changes.members.iter().chain(&changes.others) {
                if *v == REMOVED {
                    expected.remove(k);
                } else {
                    expected.insert(*k, *v);
                }
            }
            let mut batch = db.batch();
            let layer = table.queue_snapshot(&mut batch, parent.as_ref(), changes).unwrap();
            batch.commit_blocking().unwrap();
            assert_eq!(layer.len(), expected.len() as u64, "step {step}");
            if step % 97 == 0 || step == steps - 1 {
                ids.push((layer.id, expected.clone()));
            }
            parent = Some(layer);
        }
        drop(table);
        drop(db);
        let (db, table) = open(dir.path());
        let mut stored = 0usize;
        for item in db.scan_prefix(SHORTSTATEHASH_LAYER, &[]).unwrap() {
            let record: Record = codec::decode("t", &item.1).unwrap();
            stored += record.members.len() + record.others.len();
        }
        // n log n is about 3,000 × 12 / 2; n² / 16 (the old diff chains) would be 560,000.
        assert!(stored < 30_000, "{stored} entries stored");
        for (id, state) in ids {
            let top = table.layer(id).unwrap();
            assert_eq!(table.entries(&top).unwrap(), state, "layer {id}");
            assert!(table.chain(&top).unwrap().len() <= 14);
            let others: StateMap = state
                .iter()
                .filter(|(k, _)| **k < 1_000)
                .map(|(k, v)| (*k, *v))
                .collect();
            assert_eq!(table.others(&top).unwrap(), others);
            for key in [1, 3, 1_000, 1_500, 2_999, 4_000] {
                assert_eq!(table.get(&top, key).unwrap(), state.get(&key).copied(), "{key} in {id}");
            }
        }
        // New ids continue above the stored ones.
        let mut batch = db.batch();
        let fresh = table.queue_snapshot(&mut batch, None, Changes::default()).unwrap();
        assert!(fresh.id > steps);
    }

    #[test]
    fn forks_share_their_ancestors() {
        let dir = tempfile::tempdir().unwrap();
        let (db, table) = open(dir.path());
        let mut batch = db.batch();
        let root = table
            .queue_snapshot(&mut batch, None, Changes::one(1, 10, false))
            .unwrap();
        let mut left = Arc::clone(&root);
        let mut right = Arc::clone(&root);
        for i in 0..20 {
            left = table
                .queue_snapshot(&mut batch, Some(&left), Changes::one(100 + i, 1_000 + i, true))
                .unwrap();
            right = table
                .queue_snapshot(&mut batch, Some(&right), Changes::one(200 + i, 2_000 + i, true))
                .unwrap();
        }
        batch.commit_blocking().unwrap();
        assert_eq!(table.get(&left, 105).unwrap(), Some(1_005));
        assert_eq!(table.get(&left, 205).unwrap(), None);
        assert_eq!(table.get(&right, 205).unwrap(), Some(2_005));
        assert_eq!(table.get(&right, 1).unwrap(), Some(10));
        assert_eq!(table.entries(&left).unwrap().len(), 21);
    }

    #[test]
    fn event_and_room_pointers() {
        let dir = tempfile::tempdir().unwrap();
        let (db, table) = open(dir.path());
        let mut batch = db.batch();
        let s = table
            .queue_snapshot(&mut batch, None, Changes::one(1, 2, false))
            .unwrap();
        table.queue_before_event(&mut batch, 42, s.id);
        table.queue_current(&mut batch, 7, s.id);
        batch.commit_blocking().unwrap();
        assert_eq!(table.before_event(42).unwrap(), Some(s.id));
        assert_eq!(table.current(7).unwrap(), Some(s.id));
        assert_eq!(table.current(8).unwrap(), None);
        assert!(table.layer(999).is_err());
    }
}
