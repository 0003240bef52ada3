//! Event relationships (spec "Forming relationships between events"): which events point at
//! which through `m.relates_to`, in stream order, and where each room's threads last moved.
//!
//! - `roomparentpos_relation`: short room id (u64) ++ short parent event id (u64) ++ stream
//!   position of the child (u64) → postcard [`Relation`]. The children of one parent, in order,
//!   are a prefix scan; a position range is [`Db::scan_numbered`].
//! - `shorteventid_hasrelations`: short parent event id (u64) → empty: the parents that have
//!   any child, so the readers that serve events (and would bundle aggregations) learn with one
//!   `multi_get`, answered mostly by bloom filters, that most events have none.
//! - `roompos_threadroot`: short room id (u64) ++ stream position of a thread reply (u64) →
//!   short thread root id (u64): one entry per reply, so a room's threads by latest activity
//!   are a backwards scan (an entry that is not its root's latest reply is skipped).
//! - `global` `"relations_indexed"` → u64: set once every stored event is indexed (events
//!   stored before this index existed are indexed at start, see `Rooms::index_relations`).
//!
//! Every entry is written in the same batch as the child event.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{
    Batch, Db, StorageError, StorageResult, codec,
    schema::{GLOBAL, ROOMPARENTPOS_RELATION, ROOMPOS_THREADROOT, SHORTEVENTID_HASRELATIONS},
};

const INDEXED_KEY: &[u8] = b"relations_indexed";

/// One child of a parent event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relation {
    /// The child's short event id.
    pub child: u64,
    /// Its `rel_type`.
    pub rel_type: String,
    /// Its event type.
    pub kind: String,
}

/// Typed access to the relations index.
#[derive(Clone)]
pub struct RelationsTable {
    db: Arc<Db>,
}

fn key(parts: &[u64]) -> Vec<u8> {
    parts.iter().flat_map(|p| codec::u64_bytes(*p)).collect()
}

fn position_of(table: &'static str, key: &[u8]) -> StorageResult<u64> {
    let tail = key.len().checked_sub(8).ok_or_else(|| StorageError::Corrupt {
        table,
        reason: format!("key of {} bytes", key.len()),
    })?;
    codec::read_u64(table, &key[tail..])
}

impl RelationsTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Queues a child of `parent` at stream position `position`.
    pub fn queue_put(
        &self,
        batch: &mut Batch,
        room: u64,
        parent: u64,
        position: u64,
        relation: &Relation,
    ) -> StorageResult<()> {
        batch.put(
            ROOMPARENTPOS_RELATION,
            &key(&[room, parent, position]),
            &codec::encode(ROOMPARENTPOS_RELATION, relation)?,
        );
        batch.put(SHORTEVENTID_HASRELATIONS, &codec::u64_bytes(parent), &[]);
        Ok(())
    }

    /// Queues a reply to the thread `root` at `position`.
    pub fn queue_thread_reply(&self, batch: &mut Batch, room: u64, position: u64, root: u64) {
        batch.put(ROOMPOS_THREADROOT, &key(&[room, position]), &codec::u64_bytes(root));
    }

    /// Which of `parents` have any child, in their order.
    pub fn have_children(&self, parents: &[u64]) -> StorageResult<Vec<bool>> {
        let keys: Vec<[u8; 8]> = parents.iter().map(|s| codec::u64_bytes(*s)).collect();
        Ok(self
            .db
            .multi_get(SHORTEVENTID_HASRELATIONS, keys.iter().map(|k| &k[..]))?
            .into_iter()
            .map(|v| v.is_some())
            .collect())
    }

    /// Up to `limit` children of `parent` with `after < position <= up_to`, as (position,
    /// relation), oldest first or newest first when `backwards`.
    pub fn children(
        &self,
        room: u64,
        parent: u64,
        (after, up_to): (u64, u64),
        backwards: bool,
        limit: usize,
    ) -> StorageResult<Vec<(u64, Relation)>> {
        self.db
            .scan_numbered(
                ROOMPARENTPOS_RELATION,
                &key(&[room, parent]),
                (after, up_to),
                backwards,
                limit,
            )?
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    position_of(ROOMPARENTPOS_RELATION, &k)?,
                    codec::decode(ROOMPARENTPOS_RELATION, &v)?,
                ))
            })
            .collect()
    }

    /// Up to `limit` thread replies of a room with `after < position <= up_to`, newest first,
    /// as (position, short root id).
    pub fn thread_replies(
        &self,
        room: u64,
        (after, up_to): (u64, u64),
        limit: usize,
    ) -> StorageResult<Vec<(u64, u64)>> {
        self.db
            .scan_numbered(ROOMPOS_THREADROOT, &key(&[room]), (after, up_to), true, limit)?
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    position_of(ROOMPOS_THREADROOT, &k)?,
                    codec::read_u64(ROOMPOS_THREADROOT, &v)?,
                ))
            })
            .collect()
    }

    /// Whether every stored event is in the index.
    pub fn indexed(&self) -> StorageResult<bool> {
        Ok(self.db.get(GLOBAL, INDEXED_KEY)?.is_some())
    }

    /// Queues the mark that every stored event is in the index.
    pub fn queue_indexed(&self, batch: &mut Batch) {
        batch.put(GLOBAL, INDEXED_KEY, &codec::u64_bytes(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    fn relation(child: u64, rel_type: &str) -> Relation {
        Relation {
            child,
            rel_type: rel_type.into(),
            kind: "m.room.message".into(),
        }
    }

    #[test]
    fn children_are_listed_per_parent_in_both_directions() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let t = RelationsTable::new(Arc::clone(&db));
        let mut batch = db.batch();
        for pos in 1..=6u64 {
            // Parents 10 and 11 of room 1 interleave; parent 10 of room 2 is another key.
            t.queue_put(&mut batch, 1, 10 + pos % 2, pos, &relation(100 + pos, "m.thread"))
                .unwrap();
        }
        t.queue_put(&mut batch, 2, 10, 7, &relation(200, "m.reference"))
            .unwrap();
        t.queue_thread_reply(&mut batch, 1, 3, 11);
        t.queue_thread_reply(&mut batch, 1, 5, 11);
        batch.commit_blocking().unwrap();

        let forwards: Vec<u64> = t
            .children(1, 10, (0, u64::MAX), false, 10)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(forwards, vec![2, 4, 6]);
        let back = t.children(1, 11, (1, 5), true, 1).unwrap();
        assert_eq!(back, vec![(5, relation(105, "m.thread"))]);
        assert_eq!(
            t.children(2, 10, (0, u64::MAX), false, 10).unwrap(),
            vec![(7, relation(200, "m.reference"))]
        );
        assert_eq!(t.have_children(&[10, 11, 12]).unwrap(), vec![true, true, false]);
        assert_eq!(t.thread_replies(1, (0, u64::MAX), 10).unwrap(), vec![(5, 11), (3, 11)]);
        assert!(!t.indexed().unwrap());
        let mut batch = db.batch();
        t.queue_indexed(&mut batch);
        batch.commit_blocking().unwrap();
        assert!(t.indexed().unwrap());
    }
}
