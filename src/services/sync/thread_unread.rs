//! Unread notification counts per thread for /sync, when the timeline filter asks for them
//! with `unread_thread_notifications` (spec "Receiving notifications" and "Threaded read
//! receipts"): an event of a thread (an `m.thread` relation, or a relation to an event of a
//! thread, three hops at most) counts in
//! `unread_thread_notifications[root]` after that thread's read receipts; every other event
//! counts in the room's `unread_notifications` after the `main` receipts; unthreaded receipts
//! (and the user's own membership) bound both.
//!
//! Without the flag the counts of `unread.rs` are used as they are. These counts are not
//! cached: each sync that asks for them evaluates up to [`SCAN_LIMIT`] events after the
//! user's unthreaded receipt, as `unread.rs` does on a cache miss.

use std::collections::{BTreeMap, HashMap};

use futures_util::FutureExt;
use ruma::{OwnedEventId, RoomId, UInt, UserId, events::StateEventType, push::PushConditionRoomCtx, serde::Raw};

use super::unread::SCAN_LIMIT;
use crate::{Result, services::Services};

/// (notification count, highlight count).
pub type Counts = (u64, u64);

impl Services {
    /// The main timeline's counts and each thread's (only threads with a count), of `user_id`
    /// in a room, reading up to `up_to`.
    pub fn unread_thread_counts(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        up_to: u64,
    ) -> Result<(Counts, BTreeMap<OwnedEventId, Counts>)> {
        let rooms = &self.rooms;
        let read_in = |thread: &str| -> Result<u64> {
            let mut position = 0;
            for event_id in self.receipts.read_marks_in(room_id, user_id, thread)? {
                position = position.max(rooms.position_of(&event_id)?.unwrap_or(0));
            }
            Ok(position)
        };
        let members = rooms.members(room_id)?;
        let own = match rooms.state_event(room_id, &StateEventType::RoomMember, user_id.as_str())? {
            Some(member) => rooms.position_of(&member.event_id)?.unwrap_or(0),
            None => 0,
        };
        let base = read_in("")?.max(own);
        let main_read = read_in("main")?.max(base);
        let events = rooms.timeline_undecorated(room_id, base, up_to, SCAN_LIMIT)?;
        let mut main = (0, 0);
        let mut threads: BTreeMap<OwnedEventId, Counts> = BTreeMap::new();
        if events.iter().all(|(_, p)| p.sender == user_id) {
            return Ok((main, threads));
        }
        let display_name = rooms
            .state_event(room_id, &StateEventType::RoomMember, user_id.as_str())?
            .and_then(|m| m.content_str("displayname"))
            .unwrap_or_else(|| user_id.localpart().to_owned());
        let context = PushConditionRoomCtx::new(
            room_id.to_owned(),
            UInt::try_from(members.count("join") as u64).unwrap_or(UInt::MAX),
            user_id.to_owned(),
            display_name,
        );
        let rules = self.unread_rules(user_id)?;
        let mut thread_read: HashMap<OwnedEventId, u64> = HashMap::new();
        for (position, pdu) in events.iter().filter(|(_, p)| p.sender != user_id) {
            let root = rooms.thread_of(pdu)?;
            let read = match &root {
                None => main_read,
                Some(root) => match thread_read.get(root) {
                    Some(read) => *read,
                    None => {
                        let read = read_in(root.as_str())?.max(base);
                        thread_read.insert(root.clone(), read);
                        read
                    }
                },
            };
            if *position <= read {
                continue;
            }
            let event: Raw<ruma::events::AnySyncTimelineEvent> = Raw::from_json(pdu.to_client_json()?);
            // The evaluation does no I/O, so its future is ready at once.
            let Some(actions) = rules.get_actions(&event, &context).now_or_never() else {
                continue;
            };
            let (notify, highlight) = (
                actions.iter().any(|a| a.should_notify()),
                actions.iter().any(|a| a.is_highlight()),
            );
            if !notify && !highlight {
                continue;
            }
            let counts = match root {
                None => &mut main,
                Some(root) => threads.entry(root).or_default(),
            };
            counts.0 += u64::from(notify);
            counts.1 += u64::from(highlight);
        }
        Ok((main, threads))
    }
}
