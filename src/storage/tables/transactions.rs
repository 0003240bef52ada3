//! Client transaction ids: `userdevicetxn_eventid` maps user SEP device SEP txn id to the event
//! id a `PUT …/send/{type}/{txnId}` produced, so a retried request returns the same event.

use std::sync::Arc;

use crate::storage::{Batch, Db, StorageResult, codec, schema::USERDEVICETXN_EVENTID};

/// Typed access to transaction ids.
#[derive(Clone)]
pub struct TransactionsTable {
    db: Arc<Db>,
}

fn txn_key(user_id: &str, device_id: &str, txn_id: &str) -> Vec<u8> {
    codec::key(&[user_id.as_bytes(), device_id.as_bytes(), txn_id.as_bytes()])
}

impl TransactionsTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// The event a transaction produced.
    pub fn get(&self, user_id: &str, device_id: &str, txn_id: &str) -> StorageResult<Option<String>> {
        Ok(self
            .db
            .get(USERDEVICETXN_EVENTID, &txn_key(user_id, device_id, txn_id))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Queues the event a transaction produced.
    pub fn put(&self, batch: &mut Batch, user_id: &str, device_id: &str, txn_id: &str, event_id: &str) {
        batch.put(
            USERDEVICETXN_EVENTID,
            &txn_key(user_id, device_id, txn_id),
            event_id.as_bytes(),
        );
    }
}
