//! Lazy-loaded members already sent (spec "Lazy-loading room members": unless a filter asks for
//! `include_redundant_members`, a member event the client already has is not sent again): per
//! (user, device, room), the member event sent for each member. An incremental sync leaves out
//! a member event found there with the same event id; a room sent whole starts the record
//! afresh. Kept in memory and bounded, as Synapse does: a forgotten record only means a member
//! event is sent again.

use std::{collections::HashMap, sync::Arc};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::services::rooms::pdu::Pdu;

/// Which member event of which member was sent, by (user, device, room).
type Record = HashMap<String, OwnedEventId>;

/// The record of members sent.
pub struct SentMembers {
    sent: quick_cache::sync::Cache<(OwnedUserId, String, OwnedRoomId), Arc<Record>>,
}

impl Default for SentMembers {
    fn default() -> Self {
        SentMembers {
            sent: quick_cache::sync::Cache::new(100_000),
        }
    }
}

impl SentMembers {
    /// Drops from `state` the member events already sent to the device in this room (unless
    /// `fresh`: the room is being sent whole, so nothing counts as sent), and records the
    /// member events that remain as sent.
    pub fn leave_out_sent(
        &self,
        (user_id, device_id): (&UserId, &str),
        room_id: &RoomId,
        fresh: bool,
        state: &mut Vec<Pdu>,
    ) {
        let is_member = |pdu: &Pdu| pdu.kind.to_string() == "m.room.member" && pdu.state_key.is_some();
        if !fresh && !state.iter().any(is_member) {
            return;
        }
        let key = (user_id.to_owned(), device_id.to_owned(), room_id.to_owned());
        let mut record: Record = match self.sent.get(&key) {
            Some(known) if !fresh => (*known).clone(),
            _ => Record::new(),
        };
        let mut changed = fresh;
        state.retain(|pdu| {
            let Some(member) = pdu.state_key.as_deref().filter(|_| is_member(pdu)) else {
                return true;
            };
            if record.get(member) == Some(&pdu.event_id) {
                return false;
            }
            record.insert(member.to_owned(), pdu.event_id.clone());
            changed = true;
            true
        });
        if changed {
            self.sent.insert(key, Arc::new(record));
        }
    }
}
