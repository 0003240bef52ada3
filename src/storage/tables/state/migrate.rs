//! Rewrites state stored before layers (schema version 1: full sets and diff chains of up to
//! 16 links, a full copy at least every 16 state events) as layers, on the first start of a
//! version that reads layers.
//!
//! Each room is walked in timeline order. The state before each event is the previous state
//! plus the previous state event, so consecutive old snapshots differ by what a diff record
//! says or, for a full record, by what comparing it with the walk's running set finds; those
//! differences become the room's new layers, and every event's state-before pointer and the
//! room's current pointer are rewritten to them. The walk keeps exact copies of the old sets,
//! so each new layer describes exactly the old set it replaces; the room's current state is
//! compared once more at the end. Pointers no room walk reached (none are expected) get a base
//! of their old set. Then the old records are deleted. Progress is logged per room.

use std::{collections::HashMap, sync::Arc};

use serde::Deserialize;

use super::{Changes, Layer, REMOVED, StateMap, StateTable};
use crate::storage::{
    Batch, Db, StorageError, StorageResult, codec,
    schema::{SHORTEVENTID_SHORTSTATEHASH, SHORTROOMID_SHORTSTATEHASH, SHORTSTATEHASH_SNAPSHOT},
    tables::{shortids::ShortIds, timeline::TimelineTable},
};

/// A stored snapshot of schema version 1.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
pub(crate) struct OldSnapshot {
    parent: Option<u64>,
    /// Read past, not needed: the walk re-derives every chain.
    #[allow(dead_code)]
    chain: u32,
    set: Vec<(u64, u64)>,
    removed: Vec<u64>,
}

/// Puts queued before a batch of stray pointers is written.
const BATCH_PUTS: usize = 20_000;

/// Reads version-1 snapshots.
struct Old<'a> {
    db: &'a Db,
}

impl Old<'_> {
    fn record(&self, id: u64) -> StorageResult<OldSnapshot> {
        let bytes = self
            .db
            .get(SHORTSTATEHASH_SNAPSHOT, &codec::u64_bytes(id))?
            .ok_or_else(|| StorageError::Corrupt {
                table: SHORTSTATEHASH_SNAPSHOT,
                reason: format!("missing snapshot {id}"),
            })?;
        codec::decode(SHORTSTATEHASH_SNAPSHOT, &bytes)
    }

    /// The whole set of snapshot `id` (its chain is at most 16 links).
    fn full(&self, id: u64) -> StorageResult<StateMap> {
        let mut records = vec![self.record(id)?];
        while let Some(parent) = records.last().and_then(|r| r.parent) {
            if records.len() > 64 {
                return Err(StorageError::Corrupt {
                    table: SHORTSTATEHASH_SNAPSHOT,
                    reason: format!("chain of {id} too long"),
                });
            }
            records.push(self.record(parent)?);
        }
        let mut state = StateMap::new();
        for record in records.into_iter().rev() {
            for key in record.removed {
                state.remove(&key);
            }
            state.extend(record.set);
        }
        Ok(state)
    }
}

/// One room's walk: the old snapshot reached, its whole set, and the new layer for it.
struct Walk {
    old: Option<u64>,
    set: StateMap,
    layer: Option<Arc<Layer>>,
    /// Old snapshot id → new layer id, for this room.
    mapped: HashMap<u64, u64>,
    /// The new layers written for this room (not yet readable from disk).
    layers: HashMap<u64, Arc<Layer>>,
}

struct Migration<'a> {
    db: &'a Arc<Db>,
    old: Old<'a>,
    table: StateTable,
    ids: ShortIds,
    members: HashMap<u64, bool>,
    batch: Batch,
    puts: usize,
}

impl Migration<'_> {
    fn is_member(&mut self, key: u64) -> StorageResult<bool> {
        if let Some(member) = self.members.get(&key) {
            return Ok(*member);
        }
        let member = self
            .ids
            .state_key_of(key)?
            .is_some_and(|(kind, _)| kind == "m.room.member");
        if self.members.len() < 1_000_000 {
            self.members.insert(key, member);
        }
        Ok(member)
    }

    fn put_done(&mut self, n: usize) -> StorageResult<()> {
        self.puts += n;
        if self.puts >= BATCH_PUTS {
            let batch = std::mem::replace(&mut self.batch, self.db.batch());
            batch.commit_blocking()?;
            self.puts = 0;
        }
        Ok(())
    }

    /// Moves the walk to old snapshot `id`, writing the layer for it if it is new.
    fn step(&mut self, walk: &mut Walk, id: u64) -> StorageResult<u64> {
        if walk.old == Some(id) {
            return Ok(walk.layer.as_ref().map_or(0, |l| l.id));
        }
        if let Some(known) = walk.mapped.get(&id) {
            // A room's history only moves forwards; a snapshot seen before means its set again.
            let known = *known;
            walk.set = self.old.full(id)?;
            walk.layer = Some(walk.layers.get(&known).cloned().ok_or_else(|| StorageError::Corrupt {
                table: SHORTSTATEHASH_SNAPSHOT,
                reason: format!("layer {known} lost during the rewrite"),
            })?);
            walk.old = Some(id);
            return Ok(known);
        }
        let record = self.old.record(id)?;
        let mut changed: Vec<(u64, u64)> = Vec::new();
        if record.parent.is_some() && record.parent == walk.old {
            for key in record.removed {
                if walk.set.remove(&key).is_some() {
                    changed.push((key, REMOVED));
                }
            }
            for (key, event) in record.set {
                if walk.set.insert(key, event) != Some(event) {
                    changed.push((key, event));
                }
            }
        } else {
            let set = self.old.full(id)?;
            for key in walk.set.keys() {
                if !set.contains_key(key) {
                    changed.push((*key, REMOVED));
                }
            }
            for (key, event) in &set {
                if walk.set.get(key) != Some(event) {
                    changed.push((*key, *event));
                }
            }
            walk.set = set;
        }
        let mut changes = Changes::default();
        for (key, event) in changed {
            let member = self.is_member(key)?;
            changes.push(key, event, member);
        }
        let layer = self
            .table
            .queue_snapshot(&mut self.batch, walk.layer.as_ref(), changes)?;
        walk.mapped.insert(id, layer.id);
        walk.layers.insert(layer.id, Arc::clone(&layer));
        walk.old = Some(id);
        let new = layer.id;
        walk.layer = Some(layer);
        Ok(new)
    }

    fn room(&mut self, room: u64, current: u64) -> StorageResult<u64> {
        let timeline = TimelineTable::new(Arc::clone(self.db));
        let mut walk = Walk {
            old: None,
            set: StateMap::new(),
            layer: None,
            mapped: HashMap::new(),
            layers: HashMap::new(),
        };
        let mut events = 0u64;
        let mut after = 0u64;
        loop {
            let page = timeline.range(room, after, u64::MAX, false, 1_000)?;
            let Some(&(last, _)) = page.last() else { break };
            for (_, event) in page {
                let Some(old) = self.table.before_event(event)? else {
                    continue;
                };
                let new = self.step(&mut walk, old)?;
                self.table.queue_before_event(&mut self.batch, event, new);
                events += 1;
            }
            after = last;
        }
        let new = self.step(&mut walk, current)?;
        self.table.queue_current(&mut self.batch, room, new);
        let matches = match &walk.layer {
            Some(layer) => self.table.entries(layer)? == walk.set,
            None => false,
        };
        if !matches {
            return Err(StorageError::Corrupt {
                table: SHORTSTATEHASH_SNAPSHOT,
                reason: format!("room {room}: the rewritten state differs from the stored one"),
            });
        }
        // A room is rewritten in one batch: an interrupted migration redoes it whole.
        let batch = std::mem::replace(&mut self.batch, self.db.batch());
        batch.commit_blocking()?;
        Ok(events)
    }
}

/// Whether there is version-1 state to rewrite.
pub fn needed(db: &Db) -> StorageResult<bool> {
    Ok(!db
        .scan_range(SHORTSTATEHASH_SNAPSHOT, &[], &[0xFF; 9], false, 1)?
        .is_empty())
}

/// Rewrites every room's version-1 state as layers (see the module documentation).
pub fn to_layers(db: &Arc<Db>) -> StorageResult<()> {
    if !needed(db)? {
        return Ok(());
    }
    let old_max = match db
        .scan_range(SHORTSTATEHASH_SNAPSHOT, &[], &[0xFF; 9], true, 1)?
        .first()
    {
        Some((key, _)) => codec::read_u64(SHORTSTATEHASH_SNAPSHOT, key)?,
        None => 0,
    };
    let table = StateTable::new(Arc::clone(db))?;
    // New layer ids lie above every old snapshot id, so a pointer still at or below `old_max`
    // is one no walk rewrote.
    table.raise_last_id(old_max);
    let rooms: Vec<(u64, u64)> = db
        .scan_prefix(SHORTROOMID_SHORTSTATEHASH, &[])?
        .into_iter()
        .map(|(k, v)| {
            Ok((
                codec::read_u64(SHORTROOMID_SHORTSTATEHASH, &k)?,
                codec::read_u64(SHORTROOMID_SHORTSTATEHASH, &v)?,
            ))
        })
        .collect::<StorageResult<_>>()?;
    tracing::info!(
        rooms = rooms.len(),
        "rewriting room state as layers (one-time migration)"
    );
    let mut migration = Migration {
        db,
        old: Old { db },
        table,
        ids: ShortIds::new(Arc::clone(db)),
        members: HashMap::new(),
        batch: db.batch(),
        puts: 0,
    };
    for (i, (room, current)) in rooms.iter().enumerate() {
        if *current > old_max {
            continue; // Already rewritten by an earlier, interrupted run.
        }
        let events = migration.room(*room, *current)?;
        tracing::info!(room = i + 1, of = rooms.len(), events, "room state rewritten");
    }
    // Pointers no walk reached: a base of their old set each.
    let mut stray = 0u64;
    for (key, value) in db.scan_prefix(SHORTEVENTID_SHORTSTATEHASH, &[])? {
        let old = codec::read_u64(SHORTEVENTID_SHORTSTATEHASH, &value)?;
        if old > old_max {
            continue;
        }
        let mut changes = Changes::default();
        for (k, event) in migration.old.full(old)? {
            let member = migration.is_member(k)?;
            changes.push(k, event, member);
        }
        let layer = migration.table.queue_snapshot(&mut migration.batch, None, changes)?;
        let event = codec::read_u64(SHORTEVENTID_SHORTSTATEHASH, &key)?;
        migration
            .table
            .queue_before_event(&mut migration.batch, event, layer.id);
        migration.put_done(1)?;
        stray += 1;
    }
    if stray > 0 {
        tracing::warn!(
            stray,
            "state pointers outside any room's timeline rewritten as full sets"
        );
    }
    let Migration { mut batch, .. } = migration;
    batch.delete_range(SHORTSTATEHASH_SNAPSHOT, &[], &[0xFF; 9]);
    batch.commit_blocking()?;
    db.compact(SHORTSTATEHASH_SNAPSHOT);
    tracing::info!("room state rewritten as layers");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    fn put_old(batch: &mut Batch, id: u64, snapshot: &OldSnapshot) {
        batch.put(
            SHORTSTATEHASH_SNAPSHOT,
            &codec::u64_bytes(id),
            &codec::encode("t", snapshot).unwrap(),
        );
    }

    /// A room written in the version-1 format (a create event, then joins and topic changes, a
    /// full copy every fourth snapshot, messages in between) reads back event by event with the
    /// same state after the rewrite, and the old records are gone.
    #[test]
    fn old_state_is_rewritten_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let ids = ShortIds::new(Arc::clone(&db));
        let timeline = TimelineTable::new(Arc::clone(&db));
        let table = StateTable::new(Arc::clone(&db)).unwrap();
        let room = ids.room_or_create("!r:x").unwrap();
        let mut batch = db.batch();
        let mut set = StateMap::new();
        let mut old_id = 1u64;
        put_old(&mut batch, old_id, &OldSnapshot::default());
        let mut expected: Vec<(u64, StateMap)> = Vec::new();
        let mut chain = 0;
        for n in 1..=60u64 {
            let event = ids.event_or_create(&format!("$e{n}")).unwrap();
            timeline.queue_append(&mut batch, room, n, event);
            table.queue_before_event(&mut batch, event, old_id);
            expected.push((event, set.clone()));
            // Every other event is a state event: a join, or a topic now and then.
            if n % 2 == 1 {
                let key = if n % 6 == 1 {
                    ids.state_key_or_create("m.room.topic", "").unwrap()
                } else {
                    ids.state_key_or_create("m.room.member", &format!("@u{n}:x")).unwrap()
                };
                set.insert(key, event);
                chain += 1;
                let snapshot = if chain % 4 == 0 {
                    OldSnapshot {
                        set: set.iter().map(|(k, v)| (*k, *v)).collect(),
                        ..Default::default()
                    }
                } else {
                    OldSnapshot {
                        parent: Some(old_id),
                        chain: 1,
                        set: vec![(key, event)],
                        removed: Vec::new(),
                    }
                };
                old_id += 1;
                put_old(&mut batch, old_id, &snapshot);
            }
        }
        batch.put(
            SHORTROOMID_SHORTSTATEHASH,
            &codec::u64_bytes(room),
            &codec::u64_bytes(old_id),
        );
        batch.commit_blocking().unwrap();
        drop(table);

        assert!(needed(&db).unwrap());
        to_layers(&db).unwrap();
        assert!(!needed(&db).unwrap());
        let table = StateTable::new(Arc::clone(&db)).unwrap();
        for (event, state) in expected {
            let layer = table.layer(table.before_event(event).unwrap().unwrap()).unwrap();
            assert_eq!(table.entries(&layer).unwrap(), state, "before event {event}");
        }
        let current = table.layer(table.current(room).unwrap().unwrap()).unwrap();
        assert_eq!(table.entries(&current).unwrap(), set);
        let members = table.entries(&current).unwrap().len() - table.others(&current).unwrap().len();
        assert_eq!(members, 20);
        // A second run finds nothing to do.
        to_layers(&db).unwrap();
    }
}
