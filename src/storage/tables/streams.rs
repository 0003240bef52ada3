//! Per-scope change logs on the global stream: for each scope (a user's account data, a room's
//! receipts) the latest value of every item with the stream position that wrote it
//! (`scopeitem_posvalue`), and the same items ordered by that position (`scopepos_item`), so a
//! sync reads "what changed after position N" as one range scan. Rewriting an item moves it:
//! its old position entry is deleted in the same batch, so the log holds one entry per item.

use std::sync::Arc;

use crate::storage::{
    Batch, Db, StorageError, StorageResult, codec,
    schema::{SCOPEITEM_POSVALUE, SCOPEPOS_ITEM},
};

/// One change log family (`kind` keeps families apart inside the shared column families).
#[derive(Clone)]
pub struct StreamTable {
    db: Arc<Db>,
    kind: &'static str,
}

/// An item as last written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The item's key inside its scope.
    pub item: Vec<u8>,
    /// The stream position of its last write.
    pub position: u64,
    /// Its value.
    pub value: Vec<u8>,
}

impl StreamTable {
    /// Wraps the database for the family `kind`.
    pub fn new(db: Arc<Db>, kind: &'static str) -> Self {
        Self { db, kind }
    }

    fn item_key(&self, scope: &str, item: &[u8]) -> Vec<u8> {
        codec::key(&[self.kind.as_bytes(), scope.as_bytes(), item])
    }

    fn pos_key(&self, scope: &str, position: u64) -> Vec<u8> {
        codec::key(&[self.kind.as_bytes(), scope.as_bytes(), &codec::u64_bytes(position)])
    }

    fn decode(item: Vec<u8>, bytes: &[u8]) -> StorageResult<Entry> {
        if bytes.len() < 8 {
            return Err(StorageError::Corrupt {
                table: SCOPEITEM_POSVALUE,
                reason: "entry shorter than its position".into(),
            });
        }
        Ok(Entry {
            item,
            position: codec::read_u64(SCOPEITEM_POSVALUE, &bytes[..8])?,
            value: bytes[8..].to_vec(),
        })
    }

    /// The item's latest entry.
    pub fn get(&self, scope: &str, item: &[u8]) -> StorageResult<Option<Entry>> {
        self.db
            .get(SCOPEITEM_POSVALUE, &self.item_key(scope, item))?
            .map(|bytes| Self::decode(item.to_vec(), &bytes))
            .transpose()
    }

    /// Queues a write of `item` at `position`, removing its previous position entry.
    pub fn queue_put(
        &self,
        batch: &mut Batch,
        scope: &str,
        item: &[u8],
        position: u64,
        value: &[u8],
    ) -> StorageResult<()> {
        if let Some(old) = self.get(scope, item)? {
            batch.delete(SCOPEPOS_ITEM, &self.pos_key(scope, old.position));
        }
        let mut bytes = codec::u64_bytes(position).to_vec();
        bytes.extend_from_slice(value);
        batch.put(SCOPEITEM_POSVALUE, &self.item_key(scope, item), &bytes);
        batch.put(SCOPEPOS_ITEM, &self.pos_key(scope, position), item);
        Ok(())
    }

    /// Items whose last write is at a position in `after < position <= up_to`, in position
    /// order.
    pub fn since(&self, scope: &str, after: u64, up_to: u64) -> StorageResult<Vec<Entry>> {
        let prefix = codec::prefix(&[self.kind.as_bytes(), scope.as_bytes()]);
        let items: Vec<Vec<u8>> = self
            .db
            .scan_numbered(SCOPEPOS_ITEM, &prefix, (after, up_to), false, usize::MAX)?
            .into_iter()
            .map(|(_, item)| item.into_vec())
            .collect();
        let keys: Vec<Vec<u8>> = items.iter().map(|item| self.item_key(scope, item)).collect();
        let values = self.db.multi_get(SCOPEITEM_POSVALUE, keys.iter().map(Vec::as_slice))?;
        let mut out = Vec::new();
        for (item, value) in items.into_iter().zip(values) {
            if let Some(bytes) = value {
                let entry = Self::decode(item, &bytes)?;
                // A stale position entry (two concurrent rewrites) names an item that moved on.
                if entry.position > after && entry.position <= up_to && !out.contains(&entry) {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }

    /// The newest `limit` items whose last write is at a position in `after < position <=
    /// up_to`, newest first.
    pub fn newest(&self, scope: &str, after: u64, up_to: u64, limit: usize) -> StorageResult<Vec<Entry>> {
        let prefix = codec::prefix(&[self.kind.as_bytes(), scope.as_bytes()]);
        let mut out: Vec<Entry> = Vec::new();
        let mut top = up_to;
        // Stale position entries (two concurrent rewrites) are skipped; rescan past them.
        while out.len() < limit && top > after {
            let want = limit - out.len();
            let found = self
                .db
                .scan_numbered(SCOPEPOS_ITEM, &prefix, (after, top), true, want)?;
            if found.is_empty() {
                break;
            }
            let items: Vec<Vec<u8>> = found.iter().map(|(_, item)| item.to_vec()).collect();
            let lowest = found
                .iter()
                .filter_map(|(key, _)| key.len().checked_sub(8).map(|at| &key[at..]))
                .filter_map(|bytes| codec::read_u64(SCOPEPOS_ITEM, bytes).ok())
                .min()
                .unwrap_or(after);
            let keys: Vec<Vec<u8>> = items.iter().map(|item| self.item_key(scope, item)).collect();
            let values = self.db.multi_get(SCOPEITEM_POSVALUE, keys.iter().map(Vec::as_slice))?;
            for (item, value) in items.into_iter().zip(values) {
                if let Some(bytes) = value {
                    let entry = Self::decode(item, &bytes)?;
                    if entry.position > after && entry.position <= up_to && !out.iter().any(|e| e.item == entry.item) {
                        out.push(entry);
                    }
                }
            }
            if found.len() < want || lowest <= after + 1 {
                break;
            }
            top = lowest - 1;
        }
        out.sort_by_key(|entry| std::cmp::Reverse(entry.position));
        out.truncate(limit);
        Ok(out)
    }

    /// Queues removal of every item of the scope and its position entries.
    pub fn queue_clear(&self, batch: &mut Batch, scope: &str) -> StorageResult<()> {
        let prefix = codec::prefix(&[self.kind.as_bytes(), scope.as_bytes()]);
        for table in [SCOPEITEM_POSVALUE, SCOPEPOS_ITEM] {
            for (key, _) in self.db.scan_prefix(table, &prefix)? {
                batch.delete(table, &key);
            }
        }
        Ok(())
    }

    /// Every item of the scope whose last write is at or below `up_to`.
    pub fn all(&self, scope: &str, up_to: u64) -> StorageResult<Vec<Entry>> {
        let prefix = codec::prefix(&[self.kind.as_bytes(), scope.as_bytes()]);
        let mut out = Vec::new();
        for (key, bytes) in self.db.scan_prefix(SCOPEITEM_POSVALUE, &prefix)? {
            let entry = Self::decode(key[prefix.len()..].to_vec(), &bytes)?;
            if entry.position <= up_to {
                out.push(entry);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    #[test]
    fn rewrites_move_items_along_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let t = StreamTable::new(Arc::clone(&db), "t");
        let other = StreamTable::new(Arc::clone(&db), "u");
        let mut batch = db.batch();
        t.queue_put(&mut batch, "@a:x", b"one", 3, b"v1").unwrap();
        t.queue_put(&mut batch, "@a:x", b"two", 5, b"v2").unwrap();
        other.queue_put(&mut batch, "@a:x", b"one", 4, b"zz").unwrap();
        batch.commit_blocking().unwrap();
        let mut batch = db.batch();
        t.queue_put(&mut batch, "@a:x", b"one", 7, b"v3").unwrap();
        batch.commit_blocking().unwrap();

        let items = |v: Vec<Entry>| v.into_iter().map(|e| (e.item, e.position, e.value)).collect::<Vec<_>>();
        assert_eq!(
            items(t.since("@a:x", 0, 10).unwrap()),
            vec![
                (b"two".to_vec(), 5, b"v2".to_vec()),
                (b"one".to_vec(), 7, b"v3".to_vec())
            ]
        );
        assert_eq!(items(t.since("@a:x", 5, 10).unwrap()).len(), 1);
        assert_eq!(
            items(t.since("@a:x", 0, 6).unwrap()),
            vec![(b"two".to_vec(), 5, b"v2".to_vec())]
        );
        assert_eq!(items(t.all("@a:x", 10).unwrap()).len(), 2);
        assert_eq!(t.get("@a:x", b"one").unwrap().unwrap().position, 7);
        assert_eq!(
            items(other.since("@a:x", 0, 10).unwrap()),
            vec![(b"one".to_vec(), 4, b"zz".to_vec())]
        );
        assert!(t.since("@b:x", 0, 10).unwrap().is_empty());
        // The newest first, limited, within the range.
        let newest = |after, up_to, limit| items(t.newest("@a:x", after, up_to, limit).unwrap());
        assert_eq!(newest(0, 10, 1), vec![(b"one".to_vec(), 7, b"v3".to_vec())]);
        assert_eq!(newest(0, 10, 5).len(), 2);
        assert_eq!(newest(0, 6, 5), vec![(b"two".to_vec(), 5, b"v2".to_vec())]);
        assert!(newest(7, 10, 5).is_empty());
        let mut batch = db.batch();
        t.queue_clear(&mut batch, "@a:x").unwrap();
        batch.commit_blocking().unwrap();
        assert!(t.all("@a:x", 10).unwrap().is_empty());
        assert!(t.since("@a:x", 0, 10).unwrap().is_empty());
        assert_eq!(other.all("@a:x", 10).unwrap().len(), 1);
    }
}
