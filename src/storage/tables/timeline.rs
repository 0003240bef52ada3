//! Room timelines in stream order, and each room's forward extremities.
//!
//! - `roompos_shorteventid`: short room id (u64) ++ stream position (u64) → short event id (u64).
//!   A range scan over one room's prefix reads its timeline forwards or backwards.
//! - `shorteventid_roompos`: short event id → short room id ++ position (the reverse).
//! - `shortroomid_extremities`: short room id → postcard `Vec<u64>`, the events no other event
//!   of the room follows yet (the next local event's `prev_events`).
//!
//! A separate topological order for history fetched over federation comes with backfill.

use std::sync::Arc;

use crate::storage::{
    Batch, Db, StorageError, StorageResult, codec,
    schema::{ROOMPOS_SHORTEVENTID, SHORTEVENTID_ROOMPOS, SHORTROOMID_EXTREMITIES},
};

/// Typed access to timelines.
#[derive(Clone)]
pub struct TimelineTable {
    db: Arc<Db>,
}

fn room_pos(room: u64, pos: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&codec::u64_bytes(room));
    key[8..].copy_from_slice(&codec::u64_bytes(pos));
    key
}

fn split_room_pos(table: &'static str, bytes: &[u8]) -> StorageResult<(u64, u64)> {
    if bytes.len() != 16 {
        return Err(StorageError::Corrupt {
            table,
            reason: format!("expected 16 bytes, found {}", bytes.len()),
        });
    }
    Ok((
        codec::read_u64(table, &bytes[..8])?,
        codec::read_u64(table, &bytes[8..])?,
    ))
}

impl TimelineTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Queues an event at `pos` in the room's timeline.
    pub fn queue_append(&self, batch: &mut Batch, room: u64, pos: u64, event: u64) {
        let key = room_pos(room, pos);
        batch.put(ROOMPOS_SHORTEVENTID, &key, &codec::u64_bytes(event));
        batch.put(SHORTEVENTID_ROOMPOS, &codec::u64_bytes(event), &key);
    }

    /// Where an event sits: (short room id, stream position).
    pub fn position_of(&self, event: u64) -> StorageResult<Option<(u64, u64)>> {
        self.db
            .get(SHORTEVENTID_ROOMPOS, &codec::u64_bytes(event))?
            .map(|b| split_room_pos(SHORTEVENTID_ROOMPOS, &b))
            .transpose()
    }

    /// Up to `limit` (position, short event id) pairs of one room with `after < position <=
    /// up_to`, oldest first, or newest first when `backwards`.
    pub fn range(
        &self,
        room: u64,
        after: u64,
        up_to: u64,
        backwards: bool,
        limit: usize,
    ) -> StorageResult<Vec<(u64, u64)>> {
        self.db
            .scan_numbered(
                ROOMPOS_SHORTEVENTID,
                &codec::u64_bytes(room),
                (after, up_to),
                backwards,
                limit,
            )?
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    split_room_pos(ROOMPOS_SHORTEVENTID, &k)?.1,
                    codec::read_u64(ROOMPOS_SHORTEVENTID, &v)?,
                ))
            })
            .collect()
    }

    /// Up to `limit` timeline entries of every room from (room, position) `start` on, in key
    /// order, as (short room id, position, short event id): a walk over every stored event.
    pub fn scan_all(&self, start: (u64, u64), limit: usize) -> StorageResult<Vec<(u64, u64, u64)>> {
        self.db
            .scan_range(
                ROOMPOS_SHORTEVENTID,
                &room_pos(start.0, start.1),
                &[0xFF; 17],
                false,
                limit,
            )?
            .into_iter()
            .map(|(k, v)| {
                let (room, pos) = split_room_pos(ROOMPOS_SHORTEVENTID, &k)?;
                Ok((room, pos, codec::read_u64(ROOMPOS_SHORTEVENTID, &v)?))
            })
            .collect()
    }

    /// The room's forward extremities.
    pub fn extremities(&self, room: u64) -> StorageResult<Vec<u64>> {
        match self.db.get(SHORTROOMID_EXTREMITIES, &codec::u64_bytes(room))? {
            Some(bytes) => codec::decode(SHORTROOMID_EXTREMITIES, &bytes),
            None => Ok(Vec::new()),
        }
    }

    /// Queues the room's new forward extremities.
    pub fn queue_set_extremities(&self, batch: &mut Batch, room: u64, events: &[u64]) -> StorageResult<()> {
        batch.put(
            SHORTROOMID_EXTREMITIES,
            &codec::u64_bytes(room),
            &codec::encode(SHORTROOMID_EXTREMITIES, &events)?,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    #[test]
    fn ranges_stay_inside_one_room_in_both_directions() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let t = TimelineTable::new(Arc::clone(&db));
        let mut batch = db.batch();
        for pos in 1..=10u64 {
            // Rooms 1 and 2 interleave on the global stream.
            t.queue_append(&mut batch, 1 + pos % 2, pos, 100 + pos);
        }
        t.queue_set_extremities(&mut batch, 1, &[110]).unwrap();
        batch.commit_blocking().unwrap();

        let room2: Vec<u64> = t
            .range(2, 0, u64::MAX, false, 100)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(room2, vec![1, 3, 5, 7, 9]);
        let back: Vec<(u64, u64)> = t.range(1, 2, 8, true, 2).unwrap();
        assert_eq!(back, vec![(8, 108), (6, 106)]);
        assert_eq!(t.range(1, 8, 8, false, 10).unwrap(), vec![]);
        assert_eq!(t.range(1, 0, 4, false, 10).unwrap(), vec![(2, 102), (4, 104)]);
        assert_eq!(t.position_of(107).unwrap(), Some((2, 7)));
        assert_eq!(t.position_of(999).unwrap(), None);
        assert_eq!(t.extremities(1).unwrap(), vec![110]);
        assert_eq!(t.extremities(3).unwrap(), Vec::<u64>::new());
    }
}
