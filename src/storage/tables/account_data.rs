//! Account data: `userroomtype_accountdata`, global (empty room part) and per room.

use std::sync::Arc;

use crate::storage::{Batch, Db, StorageResult, codec, schema::USERROOMTYPE_ACCOUNTDATA};

/// Typed access to account data. Values are the event content as JSON bytes.
#[derive(Clone)]
pub struct AccountDataTable {
    db: Arc<Db>,
}

fn data_key(user_id: &str, room_id: Option<&str>, kind: &str) -> Vec<u8> {
    codec::key(&[user_id.as_bytes(), room_id.unwrap_or("").as_bytes(), kind.as_bytes()])
}

impl AccountDataTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// One entry.
    pub fn get(&self, user_id: &str, room_id: Option<&str>, kind: &str) -> StorageResult<Option<Vec<u8>>> {
        self.db.get(USERROOMTYPE_ACCOUNTDATA, &data_key(user_id, room_id, kind))
    }

    /// Every entry of a user in one scope (global when `room_id` is `None`), as (type, JSON).
    pub fn list(&self, user_id: &str, room_id: Option<&str>) -> StorageResult<Vec<(String, Vec<u8>)>> {
        let prefix = codec::prefix(&[user_id.as_bytes(), room_id.unwrap_or("").as_bytes()]);
        Ok(self
            .db
            .scan_prefix(USERROOMTYPE_ACCOUNTDATA, &prefix)?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), v.into_vec()))
            .collect())
    }

    /// Queues a write.
    pub fn put(&self, batch: &mut Batch, user_id: &str, room_id: Option<&str>, kind: &str, json: &[u8]) {
        batch.put(USERROOMTYPE_ACCOUNTDATA, &data_key(user_id, room_id, kind), json);
    }

    /// Queues removal of every entry of a user (deactivation).
    pub fn delete_all(&self, batch: &mut Batch, user_id: &str) -> StorageResult<()> {
        let prefix = codec::prefix(&[user_id.as_bytes()]);
        for (key, _) in self.db.scan_prefix(USERROOMTYPE_ACCOUNTDATA, &prefix)? {
            batch.delete(USERROOMTYPE_ACCOUNTDATA, &key);
        }
        Ok(())
    }
}
