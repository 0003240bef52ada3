//! The client transaction that sent an event: `shorteventid_txn` (u64 short event id → user id
//! SEP device id SEP transaction id), so `/sync` can hand the sending device its
//! `unsigned.transaction_id`. Written in the event's batch.

use std::sync::Arc;

use crate::storage::{Batch, Db, StorageResult, codec, schema::SHORTEVENTID_TXN};

/// Typed access to the event → transaction index.
#[derive(Clone)]
pub struct EventTxnsTable {
    db: Arc<Db>,
}

impl EventTxnsTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Queues the transaction of an event.
    pub fn queue_put(&self, batch: &mut Batch, event: u64, user_id: &str, device_id: &str, txn_id: &str) {
        batch.put(
            SHORTEVENTID_TXN,
            &codec::u64_bytes(event),
            &codec::key(&[user_id.as_bytes(), device_id.as_bytes(), txn_id.as_bytes()]),
        );
    }

    /// The (user, device, transaction) that sent an event.
    pub fn get(&self, event: u64) -> StorageResult<Option<(String, String, String)>> {
        let Some(bytes) = self.db.get(SHORTEVENTID_TXN, &codec::u64_bytes(event))? else {
            return Ok(None);
        };
        let mut parts = codec::split(&bytes).map(|p| String::from_utf8_lossy(p).into_owned());
        Ok(match (parts.next(), parts.next(), parts.next()) {
            (Some(user), Some(device), Some(txn)) => Some((user, device, txn)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let t = EventTxnsTable::new(Arc::clone(&db));
        let mut batch = db.batch();
        t.queue_put(&mut batch, 7, "@a:x", "DEV", "txn1");
        batch.commit_blocking().unwrap();
        assert_eq!(t.get(7).unwrap(), Some(("@a:x".into(), "DEV".into(), "txn1".into())));
        assert_eq!(t.get(8).unwrap(), None);
    }
}
