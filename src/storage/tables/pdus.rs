//! Events as stored: `shorteventid_pdu` maps a short event id to the canonical JSON bytes that
//! were hashed and signed (never rewritten, not even by a redaction); `shorteventid_redactedby`
//! records which event redacted it, so the redacted form is produced when the event is read.
//! Parsed forms are built (and cached) above this layer. `shorteventid_outcome` marks events from
//! other servers that were stored but not accepted (rejected, or soft-failed);
//! `shorteventid_unsent` marks our own events not yet in the federation queue.

use std::sync::Arc;

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{SHORTEVENTID_OUTCOME, SHORTEVENTID_PDU, SHORTEVENTID_REDACTEDBY, SHORTEVENTID_UNSENT},
};

/// Why a stored event from another server is not an accepted one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Refused by the authorization rules: never used as an auth event, never served.
    Rejected,
    /// Allowed by the state before it but not by the room's current state: kept in the graph,
    /// never shown to clients.
    SoftFailed,
}

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

    /// Queues the mark that the event `short` was not accepted, and why.
    pub fn queue_outcome(&self, batch: &mut Batch, short: u64, outcome: Outcome, reason: &str) {
        let mut value = vec![match outcome {
            Outcome::Rejected => 0,
            Outcome::SoftFailed => 1,
        }];
        value.extend_from_slice(reason.as_bytes());
        batch.put(SHORTEVENTID_OUTCOME, &codec::u64_bytes(short), &value);
    }

    /// Whether (and why) the event `short` was not accepted.
    pub fn outcome(&self, short: u64) -> StorageResult<Option<(Outcome, String)>> {
        Ok(self
            .db
            .get(SHORTEVENTID_OUTCOME, &codec::u64_bytes(short))?
            .and_then(|value| {
                let (kind, reason) = value.split_first()?;
                let outcome = if *kind == 0 {
                    Outcome::Rejected
                } else {
                    Outcome::SoftFailed
                };
                Some((outcome, String::from_utf8_lossy(reason).into_owned()))
            }))
    }

    /// Queues the mark that our event `short` is still to be queued for other servers.
    pub fn queue_unsent(&self, batch: &mut Batch, short: u64) {
        batch.put(SHORTEVENTID_UNSENT, &codec::u64_bytes(short), &[]);
    }

    /// Queues the removal of [`Self::queue_unsent`]'s mark.
    pub fn queue_sent(&self, batch: &mut Batch, short: u64) {
        batch.delete(SHORTEVENTID_UNSENT, &codec::u64_bytes(short));
    }

    /// Up to `limit` of our events still to be queued for other servers, oldest first.
    pub fn unsent(&self, limit: usize) -> StorageResult<Vec<u64>> {
        Ok(self
            .db
            .scan_range(SHORTEVENTID_UNSENT, &[], &[0xff; 9], false, limit)?
            .into_iter()
            .filter_map(|(key, _)| Some(u64::from_be_bytes(key.get(..8)?.try_into().ok()?)))
            .collect())
    }
}
