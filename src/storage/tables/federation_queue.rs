//! The outbound federation queues: the PDUs (`destseq_fedpdu`) and the EDUs that must not be
//! lost (`destseq_fededu`: to-device messages) still to be sent to each other server, in the
//! order they were queued. Both have the same layout, one [`FederationQueueTable`] each.
//!
//! Key: destination server name SEP u64 sequence number (per destination, allocated by the
//! sender, increasing). Value: postcard [`QueuedPdu`] (the event id and the PDU's canonical
//! JSON bytes), or [`QueuedEdu`] (the EDU's JSON bytes). A destination's entries are together
//! and in queue order, so its next transaction is one short forward scan, and the destinations
//! with something queued are found with one seek each.

use std::sync::Arc;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{DESTSEQ_FEDEDU, DESTSEQ_FEDPDU},
};

/// A PDU waiting to be sent to one destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedPdu {
    /// The event id (for logs and the receiver's answer).
    pub event_id: String,
    /// The PDU as canonical JSON bytes, sent as is.
    pub pdu: Vec<u8>,
}

/// An EDU waiting to be sent to one destination (one that must be delivered: to-device).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedEdu {
    /// The whole EDU (`edu_type`, `content`) as JSON bytes, sent as is.
    pub edu: Vec<u8>,
}

/// Typed access to one outbound federation queue.
#[derive(Clone)]
pub struct FederationQueueTable {
    db: Arc<Db>,
    cf: &'static str,
}

fn entry_key(destination: &str, seq: u64) -> Vec<u8> {
    let mut key = codec::prefix(&[destination.as_bytes()]);
    key.extend_from_slice(&codec::u64_bytes(seq));
    key
}

/// Just past every key of `destination`.
fn destination_end(destination: &str) -> Vec<u8> {
    let mut end = codec::prefix(&[destination.as_bytes()]);
    end.extend_from_slice(&[0xFF; 9]);
    end
}

impl FederationQueueTable {
    /// The PDU queue (`destseq_fedpdu`, values [`QueuedPdu`]).
    pub fn new(db: Arc<Db>) -> Self {
        Self { db, cf: DESTSEQ_FEDPDU }
    }

    /// The queue of EDUs that must be delivered (`destseq_fededu`, values [`QueuedEdu`]).
    pub fn edus(db: Arc<Db>) -> Self {
        Self { db, cf: DESTSEQ_FEDEDU }
    }

    /// A new batch on this database.
    pub fn batch(&self) -> Batch {
        self.db.batch()
    }

    /// Queues storing `pdu` as entry `seq` of `destination`.
    pub fn queue_put<T: Serialize>(
        &self,
        batch: &mut Batch,
        destination: &str,
        seq: u64,
        pdu: &T,
    ) -> StorageResult<()> {
        batch.put(self.cf, &entry_key(destination, seq), &codec::encode(self.cf, pdu)?);
        Ok(())
    }

    /// Queues removal of entry `seq` of `destination`.
    pub fn queue_delete(&self, batch: &mut Batch, destination: &str, seq: u64) {
        batch.delete(self.cf, &entry_key(destination, seq));
    }

    /// Queues removal of every entry of `destination` below `seq`.
    pub fn queue_delete_below(&self, batch: &mut Batch, destination: &str, seq: u64) {
        batch.delete_range(self.cf, &entry_key(destination, 0), &entry_key(destination, seq));
    }

    /// The first `limit` entries of `destination`, in queue order.
    pub fn first<T: DeserializeOwned>(&self, destination: &str, limit: usize) -> StorageResult<Vec<(u64, T)>> {
        let prefix = codec::prefix(&[destination.as_bytes()]);
        self.db
            .scan_range(self.cf, &prefix, &destination_end(destination), false, limit)?
            .into_iter()
            .map(|(key, value)| {
                Ok((
                    codec::read_u64(self.cf, &key[prefix.len()..])?,
                    codec::decode(self.cf, &value)?,
                ))
            })
            .collect()
    }

    /// The lowest and highest sequence numbers queued for `destination`.
    pub fn bounds(&self, destination: &str) -> StorageResult<Option<(u64, u64)>> {
        let prefix = codec::prefix(&[destination.as_bytes()]);
        let end = destination_end(destination);
        let seq = |reverse| -> StorageResult<Option<u64>> {
            self.db
                .scan_range(self.cf, &prefix, &end, reverse, 1)?
                .first()
                .map(|(key, _)| codec::read_u64(self.cf, &key[prefix.len()..]))
                .transpose()
        };
        Ok(match (seq(false)?, seq(true)?) {
            (Some(first), Some(last)) => Some((first, last)),
            _ => None,
        })
    }

    /// Up to `limit` destinations with something queued, from the first at or after `from`
    /// (empty: the start), and where the next call should start (`None`: no more).
    pub fn destinations(&self, from: &[u8], limit: usize) -> StorageResult<(Vec<String>, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut start = from.to_vec();
        while out.len() < limit {
            let Some((key, _)) = self
                .db
                .scan_range(self.cf, &start, &[0xFF], false, 1)?
                .into_iter()
                .next()
            else {
                return Ok((out, None));
            };
            let Some(name_len) = key.len().checked_sub(9) else {
                return Err(crate::storage::StorageError::Corrupt {
                    table: self.cf,
                    reason: "key too short".into(),
                });
            };
            let name = String::from_utf8_lossy(&key[..name_len]).into_owned();
            start = destination_end(&name);
            out.push(name);
        }
        Ok((out, Some(start)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    fn pdu(n: u64) -> QueuedPdu {
        QueuedPdu {
            event_id: format!("$e{n}"),
            pdu: format!("{{\"n\":{n}}}").into_bytes(),
        }
    }

    #[test]
    fn entries_read_back_in_order_per_destination() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let table = FederationQueueTable::new(Arc::clone(&db));
        let mut batch = table.batch();
        // "a.test" is a prefix of "a.test:8448": the separator keeps them apart.
        for (dest, seq) in [
            ("b.test", 3),
            ("a.test:8448", 1),
            ("a.test", 300),
            ("a.test", 2),
            ("b.test", 1),
        ] {
            table.queue_put(&mut batch, dest, seq, &pdu(seq)).unwrap();
        }
        batch.commit_blocking().unwrap();
        let a: Vec<u64> = table
            .first::<QueuedPdu>("a.test", 10)
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(a, vec![2, 300]);
        assert_eq!(table.first::<QueuedPdu>("a.test", 1).unwrap(), vec![(2, pdu(2))]);
        assert_eq!(table.bounds("a.test").unwrap(), Some((2, 300)));
        assert_eq!(table.bounds("c.test").unwrap(), None);
        let (all, next) = table.destinations(&[], 10).unwrap();
        // Byte order: ':' sorts before the separator.
        assert_eq!(all, vec!["a.test:8448", "a.test", "b.test"]);
        assert!(next.is_none());
        let (one, next) = table.destinations(&[], 1).unwrap();
        assert_eq!(one, vec!["a.test:8448"]);
        let (two, _) = table.destinations(&next.unwrap(), 2).unwrap();
        assert_eq!(two, vec!["a.test", "b.test"]);

        let mut batch = table.batch();
        table.queue_delete_below(&mut batch, "b.test", 3);
        table.queue_delete(&mut batch, "a.test", 2);
        batch.commit_blocking().unwrap();
        assert_eq!(table.bounds("b.test").unwrap(), Some((3, 3)));
        assert_eq!(table.bounds("a.test").unwrap(), Some((300, 300)));
        assert_eq!(table.bounds("a.test:8448").unwrap(), Some((1, 1)));
    }
}
