//! Events as stored: `shorteventid_pdu` maps a short event id to the canonical JSON bytes that
//! were hashed and signed (never rewritten, not even by a redaction); `shorteventid_redactedby`
//! records which event redacted it, so the redacted form is produced when the event is read.
//! Parsed forms are built (and cached) above this layer.

use std::sync::Arc;

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{SHORTEVENTID_PDU, SHORTEVENTID_REDACTEDBY},
};

/// Typed access to stored PDUs.
#[derive(Clone)]
pub struct PdusTable {
    db: Arc<Db>,
}

impl PdusTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// One event's canonical JSON.
    pub fn get(&self, short: u64) -> StorageResult<Option<Vec<u8>>> {
        self.db.get(SHORTEVENTID_PDU, &codec::u64_bytes(short))
    }

    /// Many events at once, in the order of `shorts`.
    pub fn get_many(&self, shorts: &[u64]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        let keys: Vec<[u8; 8]> = shorts.iter().map(|s| codec::u64_bytes(*s)).collect();
        self.db.multi_get(SHORTEVENTID_PDU, keys.iter().map(|k| &k[..]))
    }

    /// Queues an event's canonical JSON.
    pub fn put(&self, batch: &mut Batch, short: u64, canonical_json: &[u8]) {
        batch.put(SHORTEVENTID_PDU, &codec::u64_bytes(short), canonical_json);
    }

    /// The id of the event that redacted this one, if any.
    pub fn redacted_by(&self, short: u64) -> StorageResult<Option<String>> {
        Ok(self
            .db
            .get(SHORTEVENTID_REDACTEDBY, &codec::u64_bytes(short))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// [`Self::redacted_by`] for many events at once, in the order of `shorts`.
    pub fn redacted_by_many(&self, shorts: &[u64]) -> StorageResult<Vec<Option<String>>> {
        let keys: Vec<[u8; 8]> = shorts.iter().map(|s| codec::u64_bytes(*s)).collect();
        Ok(self
            .db
            .multi_get(SHORTEVENTID_REDACTEDBY, keys.iter().map(|k| &k[..]))?
            .into_iter()
            .map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .collect())
    }

    /// Queues the mark that `redaction` redacted the event `short`.
    pub fn queue_redacted_by(&self, batch: &mut Batch, short: u64, redaction: &str) {
        batch.put(SHORTEVENTID_REDACTEDBY, &codec::u64_bytes(short), redaction.as_bytes());
    }
}
