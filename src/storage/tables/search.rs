//! The full-text search index: an inverted index per room, written in the same batch as the
//! event it indexes.
//!
//! - `roomtermpos_posting`: short room id (u64) ++ term (UTF-8, never 0xFF) ++ SEP ++ stream
//!   position (u64) → [`Posting`] (11 bytes: short event id u64, field u8, term frequency u8,
//!   text length in terms u8). One room's postings of one term are one prefix, in stream order,
//!   so a query reads only the rooms of the searcher, only up to where they may read, and the
//!   newest first; the terms starting with a prefix are one prefix too (`room ++ prefix`).
//! - `global` `"search_index_built"` → u64 1: the index holds every event written before this
//!   key was set (set by the rebuild at start, see `services::search`).

use std::sync::Arc;

use crate::storage::{
    Batch, Db, StorageError, StorageResult, codec,
    schema::{GLOBAL, ROOMPOS_SHORTEVENTID, ROOMTERMPOS_POSTING},
};

const BUILT_KEY: &[u8] = b"search_index_built";

/// One occurrence of a term in an event's indexed text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Posting {
    /// The event.
    pub short_event: u64,
    /// Which text it was found in (a bit: 1 body, 2 name, 4 topic).
    pub field: u8,
    /// How often the term occurs there (at most 255).
    pub frequency: u8,
    /// How many terms the text has (at most 255).
    pub length: u8,
}

impl Posting {
    fn encode(&self) -> [u8; 11] {
        let mut out = [0u8; 11];
        out[..8].copy_from_slice(&codec::u64_bytes(self.short_event));
        out[8] = self.field;
        out[9] = self.frequency;
        out[10] = self.length;
        out
    }

    fn decode(bytes: &[u8]) -> StorageResult<Posting> {
        if bytes.len() != 11 {
            return Err(corrupt(format!("posting of {} bytes", bytes.len())));
        }
        Ok(Posting {
            short_event: codec::read_u64(ROOMTERMPOS_POSTING, &bytes[..8])?,
            field: bytes[8],
            frequency: bytes[9],
            length: bytes[10],
        })
    }
}

fn corrupt(reason: String) -> StorageError {
    StorageError::Corrupt {
        table: ROOMTERMPOS_POSTING,
        reason,
    }
}

/// One posting as read: the term when a prefix was read (a prefix finds several terms; `None`
/// for an exact term), the position and the posting.
pub type Hit = (Option<Arc<str>>, u64, Posting);

fn term_prefix(room: u64, term: &str, exact: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + term.len() + 8);
    key.extend_from_slice(&codec::u64_bytes(room));
    key.extend_from_slice(term.as_bytes());
    if exact {
        key.push(codec::SEP);
    }
    key
}

fn posting_key(room: u64, term: &str, position: u64) -> Vec<u8> {
    let mut key = term_prefix(room, term, true);
    key.extend_from_slice(&codec::u64_bytes(position));
    key
}

/// Term bytes and position of a posting key.
fn split_key(key: &[u8]) -> StorageResult<(&[u8], u64)> {
    if key.len() < 17 || key[key.len() - 9] != codec::SEP {
        return Err(corrupt(format!("key of {} bytes", key.len())));
    }
    Ok((
        &key[8..key.len() - 9],
        codec::read_u64(ROOMTERMPOS_POSTING, &key[key.len() - 8..])?,
    ))
}

/// Typed access to the search index.
#[derive(Clone)]
pub struct SearchTable {
    db: Arc<Db>,
}

impl SearchTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Queues a posting of `term` for the event at `position` of `room`.
    pub fn queue_put(&self, batch: &mut Batch, room: u64, term: &str, position: u64, posting: Posting) {
        batch.put(
            ROOMTERMPOS_POSTING,
            &posting_key(room, term, position),
            &posting.encode(),
        );
    }

    /// Queues the removal of a posting.
    pub fn queue_delete(&self, batch: &mut Batch, room: u64, term: &str, position: u64) {
        batch.delete(ROOMTERMPOS_POSTING, &posting_key(room, term, position));
    }

    /// Up to `limit` postings of `term` in `room` at positions `<= up_to`, newest first.
    pub fn postings(&self, room: u64, term: &str, up_to: u64, limit: usize) -> StorageResult<Vec<Hit>> {
        let prefix = term_prefix(room, term, true);
        self.db
            .scan_numbered(ROOMTERMPOS_POSTING, &prefix, (0, up_to), true, limit)?
            .into_iter()
            .map(|(key, value)| {
                let (_, position) = split_key(&key)?;
                Ok((None, position, Posting::decode(&value)?))
            })
            .collect()
    }

    /// The postings of `term` in `room` at each of `positions` (point reads), in their order.
    pub fn lookup(&self, room: u64, term: &str, positions: &[u64]) -> StorageResult<Vec<Option<Posting>>> {
        let keys: Vec<Vec<u8>> = positions.iter().map(|p| posting_key(room, term, *p)).collect();
        self.db
            .multi_get(ROOMTERMPOS_POSTING, keys.iter().map(|k| &k[..]))?
            .into_iter()
            .map(|value| value.map(|v| Posting::decode(&v)).transpose())
            .collect()
    }

    /// Up to `limit` postings of the terms starting with `prefix` in `room` at positions
    /// `<= up_to`, in key order.
    pub fn prefixed(&self, room: u64, prefix: &str, up_to: u64, limit: usize) -> StorageResult<Vec<Hit>> {
        let start = term_prefix(room, prefix, false);
        let mut end = start.clone();
        // Past every key starting with `start`: its last byte plus one (a term's bytes are
        // UTF-8, below 0xFF); for an empty prefix ending in a 0xFF room byte, `room ++ FF FF`
        // (no term starts with 0xFF).
        let end = match end.last_mut() {
            Some(last) if *last < 0xFF => {
                *last += 1;
                end
            }
            _ => {
                end.push(0xFF);
                end.push(0xFF);
                end
            }
        };
        let mut out = Vec::new();
        // Keys come grouped by term: one shared string per term.
        let mut last: Option<Arc<str>> = None;
        // Read in chunks, so postings past `up_to` do not count against `limit`.
        let mut from = start;
        let chunk = limit.clamp(1, 4096);
        loop {
            let entries = self.db.scan_range(ROOMTERMPOS_POSTING, &from, &end, false, chunk)?;
            let exhausted = entries.len() < chunk;
            for (key, value) in &entries {
                let (term, position) = split_key(key)?;
                if position > up_to {
                    continue;
                }
                let term = match &last {
                    Some(known) if known.as_bytes() == term => Arc::clone(known),
                    _ => {
                        let text = std::str::from_utf8(term).map_err(|e| corrupt(e.to_string()))?;
                        let text: Arc<str> = Arc::from(text);
                        last = Some(Arc::clone(&text));
                        text
                    }
                };
                out.push((Some(term), position, Posting::decode(value)?));
                if out.len() == limit {
                    return Ok(out);
                }
            }
            match entries.last() {
                Some((key, _)) if !exhausted => {
                    from = key.to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// Whether the rebuild at start has indexed every event written before it.
    pub fn built(&self) -> StorageResult<bool> {
        Ok(self.db.get(GLOBAL, BUILT_KEY)?.is_some())
    }

    /// Records that the index holds every event (the rebuild is done).
    pub fn mark_built(&self) -> StorageResult<()> {
        let mut batch = self.db.batch();
        batch.put(GLOBAL, BUILT_KEY, &codec::u64_bytes(1));
        batch.commit_blocking()
    }

    /// For the rebuild: up to `limit` entries of every room's timeline (`roompos_shorteventid`)
    /// after `(room, position)`, in key order, as (room, position, short event).
    pub fn timeline_after(&self, (room, position): (u64, u64), limit: usize) -> StorageResult<Vec<(u64, u64, u64)>> {
        let mut start = codec::u64_bytes(room).to_vec();
        start.extend_from_slice(&codec::u64_bytes(position));
        start.push(0);
        self.db
            .scan_range(ROOMPOS_SHORTEVENTID, &start, &[0xFF; 17], false, limit)?
            .into_iter()
            .map(|(key, value)| {
                if key.len() != 16 {
                    return Err(StorageError::Corrupt {
                        table: ROOMPOS_SHORTEVENTID,
                        reason: format!("key of {} bytes", key.len()),
                    });
                }
                Ok((
                    codec::read_u64(ROOMPOS_SHORTEVENTID, &key[..8])?,
                    codec::read_u64(ROOMPOS_SHORTEVENTID, &key[8..])?,
                    codec::read_u64(ROOMPOS_SHORTEVENTID, &value)?,
                ))
            })
            .collect()
    }

    /// Empties the index and forgets that it was built: the state of a database from before
    /// the index (for tests of the rebuild).
    pub fn clear(&self) -> StorageResult<()> {
        let mut batch = self.db.batch();
        batch.delete_range(ROOMTERMPOS_POSTING, &[], &[0xFF; 32]);
        batch.delete(GLOBAL, BUILT_KEY);
        batch.commit_blocking()
    }

    /// A new batch (for the rebuild).
    pub fn batch(&self) -> Batch {
        self.db.batch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    #[test]
    fn postings_round_trip_and_prefixes_stay_in_their_room() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let table = SearchTable::new(Arc::clone(&db));
        let p = |short_event| Posting {
            short_event,
            field: 1,
            frequency: 2,
            length: 7,
        };
        let mut batch = db.batch();
        table.queue_put(&mut batch, 1, "cafe", 10, p(100));
        table.queue_put(&mut batch, 1, "cafe", 20, p(200));
        table.queue_put(&mut batch, 1, "cafeteria", 15, p(150));
        table.queue_put(&mut batch, 1, "caf", 30, p(300));
        table.queue_put(&mut batch, 2, "cafe", 12, p(120));
        batch.commit_blocking().unwrap();
        let exact = table.postings(1, "cafe", u64::MAX, 10).unwrap();
        assert_eq!(
            exact
                .iter()
                .map(|(t, pos, p)| (t.is_none(), *pos, p.short_event))
                .collect::<Vec<_>>(),
            [(true, 20, 200), (true, 10, 100)]
        );
        assert_eq!(table.postings(1, "cafe", 15, 10).unwrap().len(), 1);
        assert_eq!(
            table.lookup(1, "cafe", &[20, 15, 10]).unwrap(),
            [Some(p(200)), None, Some(p(100))]
        );
        let prefixed: Vec<_> = table
            .prefixed(1, "cafe", u64::MAX, 10)
            .unwrap()
            .into_iter()
            .map(|(t, pos, _)| (t.unwrap().to_string(), pos))
            .collect();
        // Key order: a longer term sorts before the shorter one's separator (0xFF).
        assert_eq!(
            prefixed,
            [("cafeteria".into(), 15), ("cafe".into(), 10), ("cafe".into(), 20)]
        );
        assert_eq!(table.prefixed(1, "", u64::MAX, 10).unwrap().len(), 4);
        // The limit counts postings up to `up_to` only, however many later ones come first.
        assert_eq!(table.prefixed(1, "caf", 15, 1).unwrap()[0].1, 15);
        assert_eq!(table.prefixed(1, "caf", 12, 1).unwrap()[0].1, 10);
        assert_eq!(table.prefixed(1, "caf", 12, 5).unwrap().len(), 1);
        let mut batch = db.batch();
        table.queue_delete(&mut batch, 1, "cafe", 10);
        batch.commit_blocking().unwrap();
        assert_eq!(table.postings(1, "cafe", u64::MAX, 10).unwrap()[0].2, p(200));
        assert_eq!(table.postings(1, "cafe", u64::MAX, 10).unwrap().len(), 1);
    }
}
