//! Push notifications: events awaiting evaluation, pushers and the queue of pushes to deliver.
//!
//! - `pos_pushpending`: u64 position → room id SEP event id. Written in a room event's batch,
//!   deleted in the batch that records what the event notifies.
//! - `userappkey_pusher`: user SEP app id SEP pushkey → postcard [`PusherRecord`];
//!   `appkeyuser_empty`: app id SEP pushkey SEP user → empty (the same pushers by pushkey).
//! - `pusherpos_pushqueue`: user SEP app id SEP pushkey SEP u64 position → postcard
//!   [`QueuedPush`]: each pusher's pushes together, in stream order, so a pusher in back-off is
//!   skipped with one seek and never holds up the others.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{APPKEYUSER_EMPTY, POS_PUSHPENDING, PUSHERPOS_PUSHQUEUE, USERAPPKEY_PUSHER},
};

/// A pusher as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PusherRecord {
    /// The pusher as the client set it (JSON of the spec's `Pusher`).
    pub json: String,
    /// When it was set (ms since the epoch), sent to gateways as `pushkey_ts` (seconds).
    pub pushkey_ts_ms: u64,
    /// The device that set it.
    pub device_id: String,
}

/// A push still to deliver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueuedPush {
    /// The event's room.
    pub room_id: String,
    /// The event.
    pub event_id: String,
    /// The push actions (JSON array).
    pub actions_json: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not to be tried before this time (ms since the epoch).
    pub next_try_ms: u64,
    /// When the first failed attempt was (0: none failed).
    pub failing_since_ms: u64,
}

/// A queued push with the key parts it is stored under.
#[derive(Clone, Debug)]
pub struct QueueEntry {
    /// The stored key.
    pub key: Vec<u8>,
    /// The event's stream position.
    pub position: u64,
    /// The user pushed.
    pub user_id: String,
    /// The pusher's app id.
    pub app_id: String,
    /// The pusher's pushkey.
    pub pushkey: String,
    /// The record.
    pub push: QueuedPush,
}

/// Typed access to the push tables.
#[derive(Clone)]
pub struct PushTable {
    db: Arc<Db>,
}

impl PushTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Queues an event for evaluation (in the event's batch).
    pub fn queue_pending(&self, batch: &mut Batch, position: u64, room_id: &str, event_id: &str) {
        batch.put(
            POS_PUSHPENDING,
            &codec::u64_bytes(position),
            &codec::key(&[room_id.as_bytes(), event_id.as_bytes()]),
        );
    }

    /// Up to `limit` events awaiting evaluation at positions `<= up_to`: (position, room, event).
    pub fn pending(&self, (after, up_to): (u64, u64), limit: usize) -> StorageResult<Vec<(u64, String, String)>> {
        let mut out = Vec::new();
        for (key, value) in self
            .db
            .scan_numbered(POS_PUSHPENDING, &[], (after, up_to), false, limit)?
        {
            let position = codec::read_u64(POS_PUSHPENDING, &key)?;
            let mut parts = codec::split(&value);
            let (Some(room), Some(event)) = (parts.next(), parts.next()) else {
                continue;
            };
            out.push((
                position,
                String::from_utf8_lossy(room).into_owned(),
                String::from_utf8_lossy(event).into_owned(),
            ));
        }
        Ok(out)
    }

    /// Queues removal of an evaluated event.
    pub fn queue_delete_pending(&self, batch: &mut Batch, position: u64) {
        batch.delete(POS_PUSHPENDING, &codec::u64_bytes(position));
    }

    /// One pusher.
    pub fn pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> StorageResult<Option<PusherRecord>> {
        self.db
            .get(
                USERAPPKEY_PUSHER,
                &codec::key(&[user_id.as_bytes(), app_id.as_bytes(), pushkey.as_bytes()]),
            )?
            .map(|bytes| codec::decode(USERAPPKEY_PUSHER, &bytes))
            .transpose()
    }

    /// A user's pushers: (app id, pushkey, record).
    pub fn pushers(&self, user_id: &str) -> StorageResult<Vec<(String, String, PusherRecord)>> {
        let mut out = Vec::new();
        for (key, value) in self
            .db
            .scan_prefix(USERAPPKEY_PUSHER, &codec::prefix(&[user_id.as_bytes()]))?
        {
            let mut parts = codec::split(&key).skip(1);
            let (Some(app), Some(pushkey)) = (parts.next(), parts.next()) else {
                continue;
            };
            out.push((
                String::from_utf8_lossy(app).into_owned(),
                String::from_utf8_lossy(pushkey).into_owned(),
                codec::decode(USERAPPKEY_PUSHER, &value)?,
            ));
        }
        Ok(out)
    }

    /// The users holding a pusher with this app id and pushkey.
    pub fn pushkey_users(&self, app_id: &str, pushkey: &str) -> StorageResult<Vec<String>> {
        Ok(self
            .db
            .scan_prefix(
                APPKEYUSER_EMPTY,
                &codec::prefix(&[app_id.as_bytes(), pushkey.as_bytes()]),
            )?
            .into_iter()
            .filter_map(|(key, _)| {
                codec::split(&key)
                    .nth(2)
                    .map(|u| String::from_utf8_lossy(u).into_owned())
            })
            .collect())
    }

    /// Queues storing a pusher.
    pub fn queue_put_pusher(
        &self,
        batch: &mut Batch,
        user_id: &str,
        app_id: &str,
        pushkey: &str,
        record: &PusherRecord,
    ) -> StorageResult<()> {
        batch.put(
            USERAPPKEY_PUSHER,
            &codec::key(&[user_id.as_bytes(), app_id.as_bytes(), pushkey.as_bytes()]),
            &codec::encode(USERAPPKEY_PUSHER, record)?,
        );
        batch.put(
            APPKEYUSER_EMPTY,
            &codec::key(&[app_id.as_bytes(), pushkey.as_bytes(), user_id.as_bytes()]),
            &[],
        );
        Ok(())
    }

    /// Queues removal of a pusher.
    pub fn queue_delete_pusher(&self, batch: &mut Batch, user_id: &str, app_id: &str, pushkey: &str) {
        batch.delete(
            USERAPPKEY_PUSHER,
            &codec::key(&[user_id.as_bytes(), app_id.as_bytes(), pushkey.as_bytes()]),
        );
        batch.delete(
            APPKEYUSER_EMPTY,
            &codec::key(&[app_id.as_bytes(), pushkey.as_bytes(), user_id.as_bytes()]),
        );
    }

    /// Queues a push for delivery.
    pub fn queue_push(
        &self,
        batch: &mut Batch,
        position: u64,
        (user_id, app_id, pushkey): (&str, &str, &str),
        push: &QueuedPush,
    ) -> StorageResult<()> {
        let key = queue_key(position, user_id, app_id, pushkey);
        batch.put(PUSHERPOS_PUSHQUEUE, &key, &codec::encode(PUSHERPOS_PUSHQUEUE, push)?);
        Ok(())
    }

    /// Queues replacing a queued push's record (after a failed attempt).
    pub fn queue_update_push(&self, batch: &mut Batch, key: &[u8], push: &QueuedPush) -> StorageResult<()> {
        batch.put(PUSHERPOS_PUSHQUEUE, key, &codec::encode(PUSHERPOS_PUSHQUEUE, push)?);
        Ok(())
    }

    /// Queues removal of a queued push (delivered, given up, or no longer wanted).
    pub fn queue_delete_push(&self, batch: &mut Batch, key: &[u8]) {
        batch.delete(PUSHERPOS_PUSHQUEUE, key);
    }

    /// Queued pushes of at most `pushers` pushers (at most `per_pusher` each, oldest first),
    /// starting with the first pusher at or after `from` (a key or pusher prefix), and where
    /// the next read should start (`None`: the end of the queue was reached).
    pub fn queued(
        &self,
        from: &[u8],
        pushers: usize,
        per_pusher: usize,
    ) -> StorageResult<(Vec<Vec<QueueEntry>>, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut start = from.to_vec();
        while out.len() < pushers {
            let Some((first, _)) = self
                .db
                .scan_range(PUSHERPOS_PUSHQUEUE, &start, &[0xFF], false, 1)?
                .into_iter()
                .next()
            else {
                return Ok((out, None));
            };
            let Some(prefix) = first.len().checked_sub(8).map(|n| first[..n].to_vec()) else {
                return Ok((out, None));
            };
            let mut end = prefix.clone();
            end.extend_from_slice(&[0xFF; 9]);
            let mut group = Vec::new();
            for (key, value) in self
                .db
                .scan_range(PUSHERPOS_PUSHQUEUE, &prefix, &end, false, per_pusher)?
            {
                let mut parts = codec::split(&prefix[..prefix.len() - 1]);
                let (Some(user), Some(app), Some(pushkey)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                group.push(QueueEntry {
                    position: codec::read_u64(PUSHERPOS_PUSHQUEUE, &key[prefix.len()..])?,
                    user_id: String::from_utf8_lossy(user).into_owned(),
                    app_id: String::from_utf8_lossy(app).into_owned(),
                    pushkey: String::from_utf8_lossy(pushkey).into_owned(),
                    push: codec::decode(PUSHERPOS_PUSHQUEUE, &value)?,
                    key: key.to_vec(),
                });
            }
            if !group.is_empty() {
                out.push(group);
            }
            start = end;
        }
        Ok((out, Some(start)))
    }
}

fn queue_key(position: u64, user_id: &str, app_id: &str, pushkey: &str) -> Vec<u8> {
    let mut key = codec::prefix(&[user_id.as_bytes(), app_id.as_bytes(), pushkey.as_bytes()]);
    key.extend_from_slice(&codec::u64_bytes(position));
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    #[test]
    fn records_round_trip_and_the_queue_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let table = PushTable::new(Arc::clone(&db));
        let push = QueuedPush {
            room_id: "!r:x".into(),
            event_id: "$e".into(),
            actions_json: "[\"notify\"]".into(),
            attempts: 2,
            next_try_ms: 5,
            failing_since_ms: 1,
        };
        let mut batch = db.batch();
        table.queue_push(&mut batch, 7, ("@b:x", "app", "k2"), &push).unwrap();
        table.queue_push(&mut batch, 3, ("@a:x", "app", "k1"), &push).unwrap();
        table.queue_pending(&mut batch, 9, "!r:x", "$e");
        let pusher = PusherRecord {
            json: "{}".into(),
            pushkey_ts_ms: 1,
            device_id: "D".into(),
        };
        table
            .queue_put_pusher(&mut batch, "@a:x", "app", "k1", &pusher)
            .unwrap();
        table.queue_push(&mut batch, 2, ("@b:x", "app", "k2"), &push).unwrap();
        batch.commit_blocking().unwrap();
        let (queued, next) = table.queued(&[], 10, 10).unwrap();
        assert!(next.is_none());
        assert_eq!(queued.len(), 2);
        assert_eq!((queued[0][0].position, queued[0][0].user_id.as_str()), (3, "@a:x"));
        let b: Vec<u64> = queued[1].iter().map(|e| e.position).collect();
        assert_eq!(b, vec![2, 7], "one pusher's pushes in stream order");
        assert_eq!(
            (queued[1][0].app_id.as_str(), queued[1][0].pushkey.as_str()),
            ("app", "k2")
        );
        assert_eq!(queued[0][0].push, push);
        // One pusher at a time: the second read starts after the first pusher.
        let (first, next) = table.queued(&[], 1, 10).unwrap();
        assert_eq!(first[0][0].user_id, "@a:x");
        let (second, _) = table.queued(&next.unwrap(), 1, 10).unwrap();
        assert_eq!(second[0][0].user_id, "@b:x");
        assert_eq!(table.pending((0, 8), 10).unwrap().len(), 0);
        assert_eq!(table.pending((0, 9), 10).unwrap()[0], (9, "!r:x".into(), "$e".into()));
        assert_eq!(table.pushers("@a:x").unwrap()[0].2, pusher);
        assert_eq!(table.pushkey_users("app", "k1").unwrap(), vec!["@a:x".to_owned()]);
    }
}
