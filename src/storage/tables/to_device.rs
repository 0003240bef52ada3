//! To-device messages waiting for their device (`userdevicepos_todevice`, ordered by the
//! stream position that queued them), the `sendToDevice` transactions already done
//! (`userdevicetxn_todevice`) and the `m.direct_to_device` EDUs other servers sent, by week
//! (`weekoriginmsg_empty`).

use std::sync::Arc;

use crate::storage::{
    Batch, Db, StorageError, StorageResult, codec,
    schema::{USERDEVICEPOS_TODEVICE, USERDEVICETXN_TODEVICE, WEEKORIGINMSG_EMPTY},
};

/// Typed access to the to-device inboxes.
#[derive(Clone)]
pub struct ToDeviceTable {
    db: Arc<Db>,
}

fn inbox_key(user_id: &str, device_id: &str, position: u64, index: u32) -> Vec<u8> {
    let mut tail = codec::u64_bytes(position).to_vec();
    tail.extend_from_slice(&index.to_be_bytes());
    codec::key(&[user_id.as_bytes(), device_id.as_bytes(), &tail])
}

fn seen_key(week: u64, origin: &str, message_id: &str) -> Vec<u8> {
    let mut key = codec::u64_bytes(week).to_vec();
    key.extend_from_slice(&codec::key(&[origin.as_bytes(), message_id.as_bytes()]));
    key
}

impl ToDeviceTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Queues a message for a device at `position` (`index` orders messages of one position).
    pub fn queue_put(&self, batch: &mut Batch, user_id: &str, device_id: &str, position: u64, index: u32, json: &[u8]) {
        batch.put(
            USERDEVICEPOS_TODEVICE,
            &inbox_key(user_id, device_id, position, index),
            json,
        );
    }

    /// Up to `limit` of the device's messages at positions `after < position <= up_to`, in
    /// order, each with its (position, index).
    pub fn since(
        &self,
        user_id: &str,
        device_id: &str,
        (after, up_to): (u64, u64),
        limit: usize,
    ) -> StorageResult<Vec<((u64, u32), Vec<u8>)>> {
        let prefix = codec::prefix(&[user_id.as_bytes(), device_id.as_bytes()]);
        self.db
            .scan_numbered(USERDEVICEPOS_TODEVICE, &prefix, (after, up_to), false, limit)?
            .into_iter()
            .map(|(k, v)| {
                let tail = k
                    .len()
                    .checked_sub(12)
                    .map(|at| &k[at..])
                    .ok_or_else(|| StorageError::Corrupt {
                        table: USERDEVICEPOS_TODEVICE,
                        reason: "key shorter than its position".into(),
                    })?;
                let position = codec::read_u64(USERDEVICEPOS_TODEVICE, &tail[..8])?;
                let index = u32::from_be_bytes([tail[8], tail[9], tail[10], tail[11]]);
                Ok(((position, index), v.into_vec()))
            })
            .collect()
    }

    /// Queues removal of one message.
    pub fn queue_delete(&self, batch: &mut Batch, user_id: &str, device_id: &str, (position, index): (u64, u32)) {
        batch.delete(USERDEVICEPOS_TODEVICE, &inbox_key(user_id, device_id, position, index));
    }

    /// Whether the device has messages at or below `position`.
    pub fn any_up_to(&self, user_id: &str, device_id: &str, position: u64) -> StorageResult<bool> {
        let start = inbox_key(user_id, device_id, 0, 0);
        let end = inbox_key(user_id, device_id, position.saturating_add(1), 0);
        Ok(!self
            .db
            .scan_range(USERDEVICEPOS_TODEVICE, &start, &end, false, 1)?
            .is_empty())
    }

    /// Queues removal of the device's messages at or below `position` (delivered).
    pub fn delete_up_to(&self, batch: &mut Batch, user_id: &str, device_id: &str, position: u64) {
        batch.delete_range(
            USERDEVICEPOS_TODEVICE,
            &inbox_key(user_id, device_id, 0, 0),
            &inbox_key(user_id, device_id, position.saturating_add(1), 0),
        );
    }

    /// Queues removal of a device's whole inbox (device deleted).
    pub fn delete_device(&self, batch: &mut Batch, user_id: &str, device_id: &str) {
        batch.delete_range(
            USERDEVICEPOS_TODEVICE,
            &inbox_key(user_id, device_id, 0, 0),
            &inbox_key(user_id, device_id, u64::MAX, u32::MAX),
        );
    }

    /// How many messages the device has waiting and their bytes, counting at most `limit`.
    pub fn size(&self, user_id: &str, device_id: &str, limit: usize) -> StorageResult<(u64, u64)> {
        let messages = self.db.scan_range(
            USERDEVICEPOS_TODEVICE,
            &inbox_key(user_id, device_id, 0, 0),
            &inbox_key(user_id, device_id, u64::MAX, u32::MAX),
            false,
            limit,
        )?;
        Ok((
            messages.len() as u64,
            messages.iter().map(|(_, v)| v.len() as u64).sum(),
        ))
    }

    /// Whether the sender's device already did this transaction.
    pub fn txn_done(&self, user_id: &str, device_id: &str, txn_id: &str) -> StorageResult<bool> {
        Ok(self
            .db
            .get(
                USERDEVICETXN_TODEVICE,
                &codec::key(&[user_id.as_bytes(), device_id.as_bytes(), txn_id.as_bytes()]),
            )?
            .is_some())
    }

    /// Whether the EDU `message_id` from `origin` was received in week `week` or the one before.
    pub fn remote_seen(&self, week: u64, origin: &str, message_id: &str) -> StorageResult<bool> {
        for week in [week, week.saturating_sub(1)] {
            if self
                .db
                .get(WEEKORIGINMSG_EMPTY, &seen_key(week, origin, message_id))?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Queues recording the EDU `message_id` from `origin` as received in week `week`.
    pub fn queue_remote_seen(&self, batch: &mut Batch, week: u64, origin: &str, message_id: &str) {
        batch.put(WEEKORIGINMSG_EMPTY, &seen_key(week, origin, message_id), b"");
    }

    /// Queues forgetting the EDUs received before week `week`.
    pub fn queue_forget_seen_before(&self, batch: &mut Batch, week: u64) {
        batch.delete_range(WEEKORIGINMSG_EMPTY, &codec::u64_bytes(0), &codec::u64_bytes(week));
    }

    /// Queues recording a transaction as done.
    pub fn queue_txn(&self, batch: &mut Batch, user_id: &str, device_id: &str, txn_id: &str) {
        batch.put(
            USERDEVICETXN_TODEVICE,
            &codec::key(&[user_id.as_bytes(), device_id.as_bytes(), txn_id.as_bytes()]),
            b"",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    #[test]
    fn inbox_ranges_and_acknowledgement() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let t = ToDeviceTable::new(Arc::clone(&db));
        let mut batch = db.batch();
        t.queue_put(&mut batch, "@a:x", "D", 3, 0, b"m3");
        t.queue_put(&mut batch, "@a:x", "D", 5, 0, b"m5a");
        t.queue_put(&mut batch, "@a:x", "D", 5, 1, b"m5b");
        t.queue_put(&mut batch, "@a:x", "E", 4, 0, b"other");
        batch.commit_blocking().unwrap();
        let values = |v: Vec<((u64, u32), Vec<u8>)>| v.into_iter().map(|(_, b)| b).collect::<Vec<_>>();
        assert_eq!(
            values(t.since("@a:x", "D", (0, 10), usize::MAX).unwrap()),
            vec![b"m3".to_vec(), b"m5a".to_vec(), b"m5b".to_vec()]
        );
        assert_eq!(t.since("@a:x", "D", (0, 10), 2).unwrap()[1].0, (5, 0));
        assert!(t.since("@a:x", "D", (3, 4), usize::MAX).unwrap().is_empty());
        assert!(t.any_up_to("@a:x", "D", 3).unwrap());
        let mut batch = db.batch();
        t.delete_up_to(&mut batch, "@a:x", "D", 3);
        batch.commit_blocking().unwrap();
        assert!(!t.any_up_to("@a:x", "D", 4).unwrap());
        let mut batch = db.batch();
        t.queue_delete(&mut batch, "@a:x", "D", (5, 0));
        batch.commit_blocking().unwrap();
        assert_eq!(
            values(t.since("@a:x", "D", (0, 10), usize::MAX).unwrap()),
            vec![b"m5b".to_vec()]
        );
        assert_eq!(t.since("@a:x", "E", (0, 10), usize::MAX).unwrap().len(), 1);
        assert_eq!(t.size("@a:x", "D", 10).unwrap(), (1, 3));
        assert_eq!(t.size("@a:x", "E", 10).unwrap(), (1, 5));
        assert_eq!(t.size("@a:x", "F", 10).unwrap(), (0, 0));
    }

    #[test]
    fn remote_messages_are_remembered_for_this_week_and_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let t = ToDeviceTable::new(Arc::clone(&db));
        let mut batch = db.batch();
        t.queue_remote_seen(&mut batch, 10, "a.test", "m1");
        t.queue_remote_seen(&mut batch, 11, "a.test", "m2");
        batch.commit_blocking().unwrap();
        assert!(t.remote_seen(11, "a.test", "m1").unwrap(), "last week's");
        assert!(t.remote_seen(11, "a.test", "m2").unwrap());
        assert!(!t.remote_seen(12, "a.test", "m1").unwrap(), "older ones expire");
        assert!(!t.remote_seen(11, "b.test", "m1").unwrap(), "per origin");
        assert!(!t.remote_seen(11, "a.test", "m").unwrap(), "a prefix is another id");
        let mut batch = db.batch();
        t.queue_forget_seen_before(&mut batch, 11);
        batch.commit_blocking().unwrap();
        assert!(!t.remote_seen(11, "a.test", "m1").unwrap());
        assert!(t.remote_seen(11, "a.test", "m2").unwrap());
    }
}
