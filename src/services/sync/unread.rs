//! Unread notification counts for /sync (`unread_notifications`): the events after the user's
//! latest read receipt that their push rules say notify (and highlight), evaluated with ruma's
//! push-rule engine. Until users can edit push rules, the server-default rules apply.
//!
//! At most [`SCAN_LIMIT`] events are looked at per room; a client shows a larger count as
//! "99+" anyway.

use futures_util::FutureExt;
use ruma::{
    RoomId, UInt, UserId,
    events::StateEventType,
    push::{PushConditionRoomCtx, Ruleset},
    serde::Raw,
};

use crate::{Error, Result, services::Services};

/// Most events counted per room.
pub const SCAN_LIMIT: usize = 500;

impl Services {
    /// (notification count, highlight count) of `user_id` in a room, reading up to `up_to`.
    pub fn unread_counts(&self, room_id: &RoomId, user_id: &UserId, up_to: u64) -> Result<(u64, u64)> {
        let rooms = &self.rooms;
        let mut read_up_to = 0;
        for event_id in self.receipts.read_marks(room_id, user_id)? {
            read_up_to = read_up_to.max(rooms.position_of(&event_id)?.unwrap_or(0));
        }
        // Nothing before the user's own join counts.
        if let Some(member) = rooms.state_event(room_id, &StateEventType::RoomMember, user_id.as_str())? {
            read_up_to = read_up_to.max(rooms.position_of(&member.event_id)?.unwrap_or(0));
        }
        if read_up_to >= up_to {
            return Ok((0, 0));
        }
        let events = rooms.timeline(room_id, read_up_to, up_to, true, SCAN_LIMIT)?;
        if events.iter().all(|(_, pdu)| pdu.sender == user_id) {
            return Ok((0, 0));
        }
        let joined = rooms
            .members(room_id)?
            .iter()
            .filter(|(_, membership)| membership == "join")
            .count();
        let display_name = rooms
            .state_event(room_id, &StateEventType::RoomMember, user_id.as_str())?
            .and_then(|m| serde_json::from_str::<serde_json::Value>(m.content.get()).ok())
            .and_then(|c| c.get("displayname").and_then(|d| d.as_str()).map(str::to_owned))
            .unwrap_or_else(|| user_id.localpart().to_owned());
        let context = PushConditionRoomCtx::new(
            room_id.to_owned(),
            UInt::try_from(joined as u64).unwrap_or(UInt::MAX),
            user_id.to_owned(),
            display_name,
        );
        let rules = Ruleset::server_default(user_id);
        let (mut notify, mut highlight) = (0, 0);
        for (_, pdu) in &events {
            if pdu.sender == user_id {
                continue;
            }
            let json =
                serde_json::value::to_raw_value(&pdu.to_client()?).map_err(|e| Error::internal(e.to_string()))?;
            let event: Raw<ruma::events::AnySyncTimelineEvent> = Raw::from_json(json);
            // The evaluation does no I/O (no thread-subscription lookup is configured), so
            // its future is ready at once.
            let Some(actions) = rules.get_actions(&event, &context).now_or_never() else {
                continue;
            };
            if actions.iter().any(|a| a.should_notify()) {
                notify += 1;
            }
            if actions.iter().any(|a| a.is_highlight()) {
                highlight += 1;
            }
        }
        Ok((notify, highlight))
    }
}
