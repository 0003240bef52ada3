//! Sync filters: `userfilterid_filter`, the filter definitions users upload, as JSON bytes.

use std::sync::Arc;

use crate::storage::{Batch, Db, StorageResult, codec, schema::USERFILTERID_FILTER};

/// Typed access to stored filters.
#[derive(Clone)]
pub struct FiltersTable {
    db: Arc<Db>,
}

impl FiltersTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// One filter's JSON.
    pub fn get(&self, user_id: &str, filter_id: &str) -> StorageResult<Option<Vec<u8>>> {
        self.db.get(
            USERFILTERID_FILTER,
            &codec::key(&[user_id.as_bytes(), filter_id.as_bytes()]),
        )
    }

    /// Queues storing a filter.
    pub fn put(&self, batch: &mut Batch, user_id: &str, filter_id: &str, json: &[u8]) {
        batch.put(
            USERFILTERID_FILTER,
            &codec::key(&[user_id.as_bytes(), filter_id.as_bytes()]),
            json,
        );
    }
}
