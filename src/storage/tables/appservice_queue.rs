//! The outbound application-service queue: the events still to be sent to each service
//! (`serviceseq_asevent`) and each service's transaction state (`service_astxn`).
//!
//! - `serviceseq_asevent`: appservice id SEP u64 sequence number (per service, allocated by
//!   the queue, increasing) → the event in client format as JSON bytes. A service's entries are
//!   together and in queue order, so its next transaction is one short forward scan.
//! - `service_astxn`: appservice id → postcard [`AsTxnState`]: the next transaction id to give
//!   out and the transaction in flight as built (kept until it is answered 200, across
//!   restarts, so a retry sends the same id and the same body).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{SERVICE_ASTXN, SERVICESEQ_ASEVENT},
};

/// A transaction built and not yet answered 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// Its transaction id.
    pub txn_id: u64,
    /// The last queue entry it carries (`None`: only ephemeral data).
    pub last_seq: Option<u64>,
    /// The body, as sent.
    pub body: Vec<u8>,
}

/// One service's transaction state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsTxnState {
    /// The id of the next transaction built.
    pub next_txn_id: u64,
    /// The transaction in flight, if any.
    pub in_flight: Option<InFlight>,
}

/// Typed access to the appservice queue.
#[derive(Clone)]
pub struct AppserviceQueueTable {
    db: Arc<Db>,
}

fn entry_key(service: &str, seq: u64) -> Vec<u8> {
    let mut key = codec::prefix(&[service.as_bytes()]);
    key.extend_from_slice(&codec::u64_bytes(seq));
    key
}

/// Just past every key of `service`.
fn service_end(service: &str) -> Vec<u8> {
    let mut end = codec::prefix(&[service.as_bytes()]);
    end.extend_from_slice(&[0xFF; 9]);
    end
}

impl AppserviceQueueTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// A new batch on this database.
    pub fn batch(&self) -> Batch {
        self.db.batch()
    }

    /// Queues storing `event` (client-format JSON) as entry `seq` of `service`.
    pub fn queue_put(&self, batch: &mut Batch, service: &str, seq: u64, event: &[u8]) {
        batch.put(SERVICESEQ_ASEVENT, &entry_key(service, seq), event);
    }

    /// Queues removal of every entry of `service` below `seq`.
    pub fn queue_delete_below(&self, batch: &mut Batch, service: &str, seq: u64) {
        batch.delete_range(SERVICESEQ_ASEVENT, &entry_key(service, 0), &entry_key(service, seq));
    }

    /// The first `limit` entries of `service`, in queue order.
    pub fn first(&self, service: &str, limit: usize) -> StorageResult<Vec<(u64, Vec<u8>)>> {
        let prefix = codec::prefix(&[service.as_bytes()]);
        self.db
            .scan_range(SERVICESEQ_ASEVENT, &prefix, &service_end(service), false, limit)?
            .into_iter()
            .map(|(key, value)| {
                Ok((
                    codec::read_u64(SERVICESEQ_ASEVENT, &key[prefix.len()..])?,
                    value.into_vec(),
                ))
            })
            .collect()
    }

    /// The lowest and highest sequence numbers queued for `service`.
    pub fn bounds(&self, service: &str) -> StorageResult<Option<(u64, u64)>> {
        let prefix = codec::prefix(&[service.as_bytes()]);
        let end = service_end(service);
        let seq = |reverse| -> StorageResult<Option<u64>> {
            self.db
                .scan_range(SERVICESEQ_ASEVENT, &prefix, &end, reverse, 1)?
                .first()
                .map(|(key, _)| codec::read_u64(SERVICESEQ_ASEVENT, &key[prefix.len()..]))
                .transpose()
        };
        Ok(match (seq(false)?, seq(true)?) {
            (Some(first), Some(last)) => Some((first, last)),
            _ => None,
        })
    }

    /// The transaction state of `service` (the default when none was stored).
    pub fn state(&self, service: &str) -> StorageResult<AsTxnState> {
        Ok(match self.db.get(SERVICE_ASTXN, service.as_bytes())? {
            Some(bytes) => codec::decode(SERVICE_ASTXN, &bytes)?,
            None => AsTxnState::default(),
        })
    }

    /// Queues storing the transaction state of `service`.
    pub fn queue_set_state(&self, batch: &mut Batch, service: &str, state: &AsTxnState) -> StorageResult<()> {
        batch.put(SERVICE_ASTXN, service.as_bytes(), &codec::encode(SERVICE_ASTXN, state)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    #[test]
    fn entries_and_state_read_back_per_service() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let table = AppserviceQueueTable::new(Arc::clone(&db));
        let mut batch = table.batch();
        // "irc" is a prefix of "irc2": the separator keeps them apart.
        for (service, seq) in [("irc2", 1), ("irc", 300), ("irc", 2), ("irc", 5)] {
            table.queue_put(&mut batch, service, seq, format!("{{\"n\":{seq}}}").as_bytes());
        }
        let state = AsTxnState {
            next_txn_id: 4,
            in_flight: Some(InFlight {
                txn_id: 3,
                last_seq: Some(5),
                body: b"{}".to_vec(),
            }),
        };
        table.queue_set_state(&mut batch, "irc", &state).unwrap();
        batch.commit_blocking().unwrap();
        let irc: Vec<u64> = table.first("irc", 10).unwrap().iter().map(|e| e.0).collect();
        assert_eq!(irc, vec![2, 5, 300]);
        assert_eq!(table.bounds("irc").unwrap(), Some((2, 300)));
        assert_eq!(table.state("irc").unwrap(), state);
        assert_eq!(table.state("irc2").unwrap(), AsTxnState::default());
        let mut batch = table.batch();
        table.queue_delete_below(&mut batch, "irc", 6);
        batch.commit_blocking().unwrap();
        assert_eq!(table.bounds("irc").unwrap(), Some((300, 300)));
        assert_eq!(table.bounds("irc2").unwrap(), Some((1, 1)));
    }
}
