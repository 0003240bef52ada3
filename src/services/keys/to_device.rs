//! To-device messages (spec "Send-to-Device messaging"): `sendToDevice` queues one message per
//! target device at one stream position (idempotent per sender device and transaction id);
//! `/sync` hands a device the messages above its token and below the watermark, and deletes
//! them once a later sync's `since` is past them (the client has them then).
//!
//! # Full inboxes
//!
//! A device's inbox holds at most [`INBOX_MAX_MESSAGES`] messages and [`INBOX_MAX_BYTES`]
//! bytes. A message that would pass either is dropped (logged at WARN) and the rest of the
//! request is delivered. The spec asks servers to keep messages until delivered and names no
//! limit; Synapse keeps them all. Refusing the whole request instead would let one device that
//! never syncs (or one flooded by another user) stop its sender's key sharing with every other
//! device, and a device that has not synced through ten thousand messages is gone in all but
//! name. Sizes are counted once from storage and then kept in memory: a send adds to them, an
//! acknowledgement makes them counted again. Sends in flight while they are counted again may
//! pass the limit by their own size.
//!
//! Sends lock only the sending device (its transactions); sends from different devices never
//! wait on each other.
//!
//! # Other servers
//!
//! Messages to users of other servers are handed to federation (`send_to_device`'s `remote`)
//! in the batch that records the transaction, so a retried transaction sends them once.
//! Messages from other servers (`m.direct_to_device` EDUs, [`Keys::receive_remote_to_device`])
//! take the same path into the inboxes, locked per remote sender (so they keep their order)
//! and remembered per (origin, message id) in the same batch, for the week they came in and
//! the next (older weeks are deleted with one range delete), so a retransmitted EDU is
//! delivered once.

use std::sync::atomic::Ordering;

use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json, value::RawValue};

use super::Keys;
use crate::{Error, Result, services::sync::commit_on_stream, services::sync::notifier::Key, storage::Batch};

/// Most to-device messages one `/sync` carries; the rest move to a later position.
pub const TO_DEVICE_LIMIT: usize = 100;

/// Most messages waiting in one device's inbox.
pub const INBOX_MAX_MESSAGES: u64 = 10_000;

/// Most bytes waiting in one device's inbox.
pub const INBOX_MAX_BYTES: u64 = 64 << 20;

/// What a device's inbox holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct InboxSize {
    messages: u64,
    bytes: u64,
}

impl InboxSize {
    /// The most an inbox holds.
    pub const MAX: InboxSize = InboxSize {
        messages: INBOX_MAX_MESSAGES,
        bytes: INBOX_MAX_BYTES,
    };
}

impl crate::util::bounded::Evict for InboxSize {}

/// Where one message goes: a device id, or `*` for every device of the user.
pub enum Target {
    /// One device.
    Device(String),
    /// Every device of the user.
    All,
}

/// Messages for users of other servers, handed to federation inside the write that records
/// the `sendToDevice` transaction (so a retried transaction queues them once).
pub type RemoteMessages = Vec<(OwnedUserId, Target, Value)>;

/// Queues [`RemoteMessages`] in the batch that records the transaction (federation's
/// persistent EDU queue).
pub type QueueRemote<'a> = &'a mut (dyn FnMut(&mut Batch, RemoteMessages) -> Result<()> + Send);

/// Most device messages one `m.direct_to_device` EDU from another server delivers; the rest
/// are dropped (logged).
pub const MAX_REMOTE_DELIVERIES: usize = 1_000;

/// A week in milliseconds: received EDUs are remembered for this week and the last.
const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;

/// How a delivery is made idempotent.
enum Once<'a> {
    /// A local device's `sendToDevice` transaction.
    Txn { device: &'a str, txn_id: &'a str },
    /// Another server's EDU.
    Edu { origin: &'a str, message_id: &'a str },
}

impl Keys {
    /// Queues `event_type` messages from `(sender, sender_device)`. Messages to users of other
    /// servers go to `remote` (in the same batch), unknown users and unknown devices are
    /// skipped, and so are messages to a full inbox (see the module documentation). The same
    /// transaction id of the same device is done once.
    pub async fn send_to_device(
        &self,
        (sender, sender_device): (&UserId, &str),
        (event_type, txn_id): (&str, &str),
        messages: Vec<(OwnedUserId, Target, Box<RawValue>)>,
        devices_of: &dyn Fn(&UserId) -> Result<Vec<String>>,
        remote: QueueRemote<'_>,
    ) -> Result<()> {
        let mut checked = Vec::with_capacity(messages.len());
        for (user_id, target, content) in messages {
            let content: Value =
                serde_json::from_str(content.get()).map_err(|e| Error::bad_json(format!("Message content: {e}")))?;
            if !content.is_object() {
                return Err(Error::bad_json("Message content must be a JSON object"));
            }
            checked.push((user_id, target, content));
        }
        let once = Once::Txn {
            device: sender_device,
            txn_id,
        };
        self.deliver(sender, event_type, checked, devices_of, once, Some(remote))
            .await
    }

    /// Delivers an `m.direct_to_device` EDU from `origin` (whose server the caller checked
    /// `sender` belongs to) to our users' devices (`*`: all of them), once per
    /// (`origin`, `message_id`) within a week or two, at most [`MAX_REMOTE_DELIVERIES`]
    /// device messages. Messages that are not JSON objects or not for our users are skipped.
    pub async fn receive_remote_to_device(
        &self,
        (origin, sender): (&ruma::ServerName, &UserId),
        (event_type, message_id): (&str, &str),
        messages: Vec<(OwnedUserId, Target, Box<RawValue>)>,
        devices_of: &dyn Fn(&UserId) -> Result<Vec<String>>,
    ) -> Result<()> {
        let checked = messages
            .into_iter()
            .filter_map(|(user, target, content)| {
                let content: Value = serde_json::from_str(content.get()).ok()?;
                (content.is_object() && self.is_local(&user)).then_some((user, target, content))
            })
            .collect();
        let once = Once::Edu {
            origin: origin.as_str(),
            message_id,
        };
        self.deliver(sender, event_type, checked, devices_of, once, None).await
    }

    /// Puts messages into our users' inboxes at one stream position, once (`once`), and hands
    /// the ones for other servers' users to `remote` in the same batch (skipped without it).
    async fn deliver(
        &self,
        sender: &UserId,
        event_type: &str,
        messages: Vec<(OwnedUserId, Target, Value)>,
        devices_of: &dyn Fn(&UserId) -> Result<Vec<String>>,
        once: Once<'_>,
        remote: Option<QueueRemote<'_>>,
    ) -> Result<()> {
        let limit = match once {
            Once::Txn { .. } => usize::MAX,
            Once::Edu { .. } => MAX_REMOTE_DELIVERIES,
        };
        let mut queued: Vec<(OwnedUserId, String, Vec<u8>)> = Vec::new();
        let mut others: RemoteMessages = Vec::new();
        'messages: for (user_id, target, content) in messages {
            if !self.is_local(&user_id) {
                if remote.is_some() {
                    others.push((user_id, target, content));
                }
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
                if queued.len() >= limit {
                    tracing::warn!(%sender, %event_type, limit, "to-device EDU for too many devices: the rest dropped");
                    break 'messages;
                }
                queued.push((user_id.clone(), device, bytes.clone()));
            }
        }
        let lock_device = match once {
            Once::Txn { device, .. } => device,
            Once::Edu { .. } => "",
        };
        let _guard = self
            .device_locks
            .lock((sender.to_owned(), lock_device.to_owned()))
            .await;
        let week = crate::util::now_ms() / WEEK_MS;
        let done = match once {
            Once::Txn { device, txn_id } => self.inbox.txn_done(sender.as_str(), device, txn_id)?,
            Once::Edu { origin, message_id } => self.inbox.remote_seen(week, origin, message_id)?,
        };
        if done {
            return Ok(());
        }
        let mut accepted = Vec::with_capacity(queued.len());
        for (user, device, bytes) in queued {
            if self.make_room_in_inbox(&user, &device, bytes.len() as u64)? {
                accepted.push((user, device, bytes));
            } else {
                tracing::warn!(
                    %sender, target_user = %user, target_device = %device, %event_type,
                    "to-device inbox full: message dropped"
                );
            }
        }
        let forget_before = week.saturating_sub(1);
        let prune = matches!(once, Once::Edu { .. })
            && self.seen_pruned_before.fetch_max(forget_before, Ordering::Relaxed) < forget_before;
        let mut keys: Vec<Key> = accepted.iter().map(|(u, _, _)| Key::user(u)).collect();
        keys.dedup();
        let written = commit_on_stream(&self.db, &self.positions, &self.notifier, keys, |batch, position| {
            for (index, (user, device, bytes)) in accepted.iter().enumerate() {
                self.inbox
                    .queue_put(batch, user.as_str(), device, position, index as u32, bytes);
            }
            match once {
                Once::Txn { device, txn_id } => self.inbox.queue_txn(batch, sender.as_str(), device, txn_id),
                Once::Edu { origin, message_id } => {
                    self.inbox.queue_remote_seen(batch, week, origin, message_id);
                    if prune {
                        self.inbox.queue_forget_seen_before(batch, forget_before);
                    }
                }
            }
            if let Some(remote) = remote
                && !others.is_empty()
            {
                remote(batch, others)?;
            }
            Ok(())
        })
        .await;
        if written.is_err() {
            for (user, device, _) in &accepted {
                self.inbox_changed(user, device);
            }
        }
        written.map(|_| ())
    }

    /// Counts a message of `bytes` into a device's inbox, or answers `false` when the inbox is
    /// full.
    fn make_room_in_inbox(&self, user_id: &UserId, device_id: &str, bytes: u64) -> Result<bool> {
        let key = (user_id.to_owned(), device_id.to_owned());
        let counted = match self.inbox_sizes.with(&key, |size| size.copied()) {
            Some(_) => None,
            None => {
                let limit = usize::try_from(self.inbox_max.messages).unwrap_or(usize::MAX);
                let (messages, bytes) = self.inbox.size(user_id.as_str(), device_id, limit.saturating_add(1))?;
                Some(InboxSize { messages, bytes })
            }
        };
        Ok(self.inbox_sizes.get_or_insert_with(
            &key,
            || key.clone(),
            || counted.unwrap_or_default(),
            |size| {
                let max = self.inbox_max;
                let fits = size.messages < max.messages && size.bytes + bytes <= max.bytes;
                if fits {
                    size.messages += 1;
                    size.bytes += bytes;
                }
                fits
            },
        ))
    }

    /// Forgets the counted size of a device's inbox (messages were deleted or a write failed):
    /// the next send counts it again.
    pub(super) fn inbox_changed(&self, user_id: &UserId, device_id: &str) {
        self.inbox_sizes.remove(&(user_id.to_owned(), device_id.to_owned()));
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
            let written = batch.commit().await;
            self.inbox_changed(user_id, device_id);
            written?;
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
        let _guard = self.device_locks.lock((user_id.to_owned(), device_id.to_owned())).await;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ruma::{OwnedUserId, UserId};
    use serde_json::value::RawValue;

    use super::{InboxSize, Target};
    use crate::{
        Result,
        services::{keys::Keys, sync::notifier::Notifier},
        storage::{Db, StorageOptions, positions::Positions},
    };

    fn keys(db: &Arc<Db>) -> Keys {
        let positions = Arc::new(Positions::open(Arc::clone(db)).unwrap());
        let notifier = Arc::new(Notifier::new(positions.watermark()));
        let mut keys = Keys::new(Arc::clone(db), positions, notifier, "localhost".try_into().unwrap());
        keys.inbox_max = InboxSize {
            messages: 3,
            bytes: 1 << 20,
        };
        keys
    }

    #[tokio::test]
    async fn a_full_inbox_drops_further_messages_and_the_rest_are_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let keys = keys(&db);
        let (alice, bob) = (
            UserId::parse("@alice:localhost").unwrap(),
            UserId::parse("@bob:localhost").unwrap(),
        );
        let devices_of = |_: &UserId| -> Result<Vec<String>> { Ok(vec!["D".into(), "E".into()]) };
        let send = |txn: String, target: &str| {
            let message: (OwnedUserId, Target, Box<RawValue>) = (
                bob.clone(),
                Target::Device(target.to_owned()),
                RawValue::from_string(format!(r#"{{"txn":"{txn}"}}"#)).unwrap(),
            );
            let keys = &keys;
            let alice = &alice;
            async move {
                keys.send_to_device(
                    (alice, "A"),
                    ("m.test", &txn),
                    vec![message],
                    &devices_of,
                    &mut |_, _| Ok(()),
                )
                .await
                .unwrap()
            }
        };
        for n in 0..5 {
            send(format!("d{n}"), "D").await;
        }
        send("e0".into(), "E").await;
        let inbox = |device: &str| {
            keys.to_device_messages(&bob, device, 0, u64::MAX)
                .unwrap()
                .into_iter()
                .map(|m| m.get().to_owned())
                .collect::<Vec<_>>()
        };
        let got = inbox("D");
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[2].contains("d2"), "the first messages are kept: {got:?}");
        assert_eq!(inbox("E").len(), 1, "another device's inbox is not affected");
        // Delivered and acknowledged: room again.
        keys.acknowledge_to_device(&bob, "D", u64::MAX - 1).await.unwrap();
        send("d9".into(), "D").await;
        assert_eq!(inbox("D").len(), 1);
    }
}
