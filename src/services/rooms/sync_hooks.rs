//! What the sync service reads from rooms beyond events and state: the notifier the write path
//! marks, a user's member event as of a position, and the transaction that sent an event. Kept
//! apart from the write path so the hook into it stays two lines (a mark when a position is
//! taken, a flush when it completes).

use std::sync::Arc;

use ruma::{RoomId, UserId};

use super::{Rooms, pdu::Pdu};
use crate::{
    Result,
    services::sync::notifier::{Key, Notifier},
    storage::{
        Batch, Db,
        tables::{event_txns::EventTxnsTable, push::PushTable},
    },
};

/// Queues the transaction that sent an event (for `unsigned.transaction_id` in `/sync`).
pub(super) fn queue_event_txn(
    db: &Arc<Db>,
    batch: &mut Batch,
    short_event: u64,
    (user, device, txn): (&str, &str, &str),
) {
    EventTxnsTable::new(Arc::clone(db)).queue_put(batch, short_event, user, device, txn);
}

/// Queues an event for push-rule evaluation by the push worker (`services::push`), in the
/// event's own batch, so no event is missed across a crash.
pub(super) fn queue_push_pending(db: &Arc<Db>, batch: &mut Batch, position: u64, room_id: &str, event_id: &str) {
    PushTable::new(Arc::clone(db)).queue_pending(batch, position, room_id, event_id);
}

/// The keys an event wakes: its room, the push worker, and for a membership event its target
/// (who may not be waiting on the room yet: an invitee, a joiner).
pub(super) fn concerns(room_id: &str, kind: &str, state_key: Option<&str>) -> Vec<Key> {
    let mut keys = vec![Key::Room(room_id.to_owned()), Key::Push];
    if kind == "m.room.member"
        && let Some(target) = state_key
    {
        keys.push(Key::User(target.to_owned()));
    }
    keys
}

impl Rooms {
    /// The notifier the write path marks; other services with stream positions share it.
    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.notifier
    }

    /// A user's member event as of stream position `position` (the one in the state right
    /// after the last event of the room at or before it). One state snapshot lookup, not a
    /// load of the whole state as events.
    pub fn member_at(&self, room_id: &RoomId, user_id: &UserId, position: u64) -> Result<Option<Pdu>> {
        let Some((_, last)) = self.timeline(room_id, 0, position, true, 1)?.pop() else {
            return Ok(None);
        };
        if last.kind.to_string() == "m.room.member" && last.state_key.as_deref() == Some(user_id.as_str()) {
            return Ok(Some(last));
        }
        let Some(short) = self.ids.event(last.event_id.as_str())? else {
            return Ok(None);
        };
        let Some(before) = self.state_before(short)? else {
            return Ok(None);
        };
        self.lookup(&before, "m.room.member", user_id.as_str())
    }

    /// The transaction id with which `device_id` of `user_id` sent an event, if it did.
    pub fn transaction_of(
        &self,
        event_id: &ruma::EventId,
        user_id: &UserId,
        device_id: &str,
    ) -> Result<Option<String>> {
        let Some(short) = self.ids.event(event_id.as_str())? else {
            return Ok(None);
        };
        Ok(EventTxnsTable::new(Arc::clone(&self.db))
            .get(short)?
            .filter(|(user, device, _)| user == user_id.as_str() && device == device_id)
            .map(|(_, _, txn)| txn))
    }
}
