//! To-device messages (spec "Send-to-Device messaging"): `sendToDevice` queues one message per
//! target device at one stream position (idempotent per sender device and transaction id);
//! `/sync` hands a device the messages above its token and below the watermark, and deletes
//! them once a later sync's `since` is past them (the client has them then).

use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json, value::RawValue};

use super::Keys;

/// Most to-device messages one `/sync` carries; the rest move to a later position.
pub const TO_DEVICE_LIMIT: usize = 100;
use crate::{Error, Result, services::sync::commit_on_stream, services::sync::notifier::Key};

/// Where one message goes: a device id, or `*` for every device of the user.
pub enum Target {
    /// One device.
    Device(String),
    /// Every device of the user.
    All,
}

impl Keys {
    /// Queues `event_type` messages from `(sender, sender_device)`. Messages to users of other
    /// servers, unknown users and unknown devices are skipped (no federation yet). The same
    /// transaction id of the same device is done once.
    pub async fn send_to_device(
        &self,
        (sender, sender_device): (&UserId, &str),
        (event_type, txn_id): (&str, &str),
        messages: Vec<(OwnedUserId, Target, Box<RawValue>)>,
        devices_of: &dyn Fn(&UserId) -> Result<Vec<String>>,
    ) -> Result<()> {
        let mut queued: Vec<(OwnedUserId, String, Vec<u8>)> = Vec::new();
        for (user_id, target, content) in messages {
            let content: Value =
                serde_json::from_str(content.get()).map_err(|e| Error::bad_json(format!("Message content: {e}")))?;
            if !content.is_object() {
                return Err(Error::bad_json("Message content must be a JSON object"));
            }
            if !self.is_local(&user_id) {
                continue;
            }
            let devices = devices_of(&user_id)?;
            let targets: Vec<String> = match target {
                Target::All => devices,
                Target::Device(id) => devices.into_iter().filter(|d| *d == id).collect(),
            };
            let event = json!({"sender": sender, "type": event_type, "content": content});
            let bytes = serde_json::to_vec(&event).map_err(|e| Error::internal(e.to_string()))?;
            for device in targets {
                queued.push((user_id.clone(), device, bytes.clone()));
            }
        }
        let _guard = self.to_device_lock.lock().await;
        if self.inbox.txn_done(sender.as_str(), sender_device, txn_id)? {
            return Ok(());
        }
        let mut keys: Vec<Key> = queued.iter().map(|(u, _, _)| Key::user(u)).collect();
        keys.dedup();
        commit_on_stream(&self.db, &self.positions, &self.notifier, keys, |batch, position| {
            for (index, (user, device, bytes)) in queued.iter().enumerate() {
                self.inbox
                    .queue_put(batch, user.as_str(), device, position, index as u32, bytes);
            }
            self.inbox.queue_txn(batch, sender.as_str(), sender_device, txn_id);
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Deletes the device's messages at or below `position` (a sync with that `since` shows
    /// the client received them).
    ///
    /// Every message to a user marks the user's key on the notifier, so once the inbox was
    /// found empty up to some position, it stays so until a mark above it: until then nothing
    /// is read.
    pub async fn acknowledge_to_device(&self, user_id: &UserId, device_id: &str, position: u64) -> Result<()> {
        let device = (user_id.to_owned(), device_id.to_owned());
        if self
            .inbox_empty_up_to
            .get(&device)
            .is_some_and(|empty| self.notifier.quiet_since(&Key::user(user_id), empty))
        {
            return Ok(());
        }
        if self.inbox.any_up_to(user_id.as_str(), device_id, position)? {
            let mut batch = self.db.batch();
            self.inbox
                .delete_up_to(&mut batch, user_id.as_str(), device_id, position);
            batch.commit().await?;
        }
        // (A token from beyond the watermark is a client's invention: not remembered.)
        if position <= self.positions.watermark() {
            self.inbox_empty_up_to.insert(device, position);
        }
        Ok(())
    }

    /// The device's messages at positions in `(after, up_to]`, oldest first, at most
    /// [`TO_DEVICE_LIMIT`].
    pub fn to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &str,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<Box<RawValue>>> {
        self.inbox
            .since(user_id.as_str(), device_id, (after, up_to), TO_DEVICE_LIMIT)?
            .into_iter()
            .map(|(_, bytes)| {
                RawValue::from_string(String::from_utf8_lossy(&bytes).into_owned())
                    .map_err(|e| Error::internal(format!("stored to-device message: {e}")))
            })
            .collect()
    }

    /// After a `/sync` that carried [`TO_DEVICE_LIMIT`] messages from `(after, up_to]`: moves
    /// the ones it could not carry above `up_to` (a new stream position, same order), so the
    /// next sync, whose `since` is `up_to`, gets them instead of deleting them.
    pub async fn requeue_undelivered(&self, user_id: &UserId, device_id: &str, after: u64, up_to: u64) -> Result<()> {
        let _guard = self.to_device_lock.lock().await;
        let all = self
            .inbox
            .since(user_id.as_str(), device_id, (after, up_to), usize::MAX)?;
        let Some(rest) = all.get(TO_DEVICE_LIMIT..).filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        commit_on_stream(
            &self.db,
            &self.positions,
            &self.notifier,
            vec![Key::user(user_id)],
            |batch, position| {
                for (index, (at, bytes)) in rest.iter().enumerate() {
                    self.inbox.queue_delete(batch, user_id.as_str(), device_id, *at);
                    self.inbox
                        .queue_put(batch, user_id.as_str(), device_id, position, index as u32, bytes);
                }
                Ok(())
            },
        )
        .await?;
        Ok(())
    }
}
