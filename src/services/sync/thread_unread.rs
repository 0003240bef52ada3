//! Unread notification counts per thread for /sync, when the timeline filter asks for them
//! with `unread_thread_notifications` (spec "Receiving notifications" and "Threaded read
//! receipts"): an event of a thread (an `m.thread` relation, or a relation to an event of a
//! thread, three hops at most) counts in `unread_thread_notifications[root]` after that
//! thread's read receipts; every other event counts in the room's `unread_notifications` after
//! the `main` receipts; unthreaded receipts (and the user's own membership) bound both.
//!
//! Without the flag the counts of `unread.rs` are used as they are. With it, counts are kept
//! per (room, user) in a bounded cache with the position they run to: while no receipt of the
//! room moved and the user's membership stands, a sync evaluates only the events since; else
//! the newest [`SCAN_LIMIT`] events after the unthreaded receipt are counted again.

use std::collections::{BTreeMap, HashMap};

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId, events::StateEventType, push::PushConditionRoomCtx,
};

use super::{notifier::Key, unread::SCAN_LIMIT};
use crate::{
    Result,
    services::{Services, rooms::pdu::Pdu},
};

/// (notification count, highlight count).
pub type Counts = (u64, u64);

/// What is known of one user's unread events per thread in one room.
#[derive(Clone, Default)]
struct Counted {
    /// The user's membership position the counts were made with.
    own: u64,
    /// Unthreaded receipts and membership: nothing at or before this counts.
    base: u64,
    /// The `main` read position (at least `base`).
    main_read: u64,
    /// Each thread's read position met so far (at least `base`).
    thread_read: HashMap<OwnedEventId, u64>,
    /// The position the counts run to.
    counted_up_to: u64,
    main: Counts,
    threads: BTreeMap<OwnedEventId, Counts>,
}

/// The counts per (room, user).
pub struct ThreadUnreadCache(quick_cache::sync::Cache<(OwnedRoomId, OwnedUserId), Counted>);

impl Default for ThreadUnreadCache {
    fn default() -> Self {
        ThreadUnreadCache(quick_cache::sync::Cache::new(20_000))
    }
}

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
        let key = (room_id.to_owned(), user_id.to_owned());
        let members = rooms.members(room_id)?;
        let own = match members.membership_of(user_id) {
            Some(own) if own.position > 0 => own.position,
            // An index written before positions: ask the member event.
            _ => match rooms.state_event(room_id, &StateEventType::RoomMember, user_id.as_str())? {
                Some(member) => rooms.position_of(&member.event_id)?.unwrap_or(0),
                None => 0,
            },
        };
        let known = self.thread_unread.0.get(&key).filter(|k| {
            k.own == own
                && k.counted_up_to <= up_to
                && rooms.notifier().quiet_since(&Key::receipts(room_id), k.counted_up_to)
        });
        let read_in = |thread: &str| -> Result<u64> {
            let mut position = 0;
            for event_id in self.receipts.read_marks_in(room_id, user_id, thread)? {
                position = position.max(rooms.position_of(&event_id)?.unwrap_or(0));
            }
            Ok(position)
        };
        let (mut counted, events) = match known {
            Some(known) if known.counted_up_to == up_to => return Ok((known.main, known.threads)),
            Some(known) => {
                let events = rooms.timeline_undecorated(room_id, known.counted_up_to, up_to, SCAN_LIMIT)?;
                (known, events)
            }
            None => {
                let base = read_in("")?.max(own);
                let counted = Counted {
                    own,
                    base,
                    main_read: read_in("main")?.max(base),
                    ..Counted::default()
                };
                // The newest events after the unthreaded receipt.
                let mut events = rooms.timeline(room_id, base, up_to, true, SCAN_LIMIT)?;
                events.reverse();
                (counted, events)
            }
        };
        counted.counted_up_to = up_to;
        let others: Vec<&(u64, Pdu)> = events.iter().filter(|(_, p)| p.sender != user_id).collect();
        if !others.is_empty() {
            let display_name = rooms
                .state_event(room_id, &StateEventType::RoomMember, user_id.as_str())?
                .and_then(|m| m.content_str("displayname"))
                .unwrap_or_else(|| user_id.localpart().to_owned());
            let context = self.thread_subs.push_lookup(PushConditionRoomCtx::new(
                room_id.to_owned(),
                UInt::try_from(members.count("join") as u64).unwrap_or(UInt::MAX),
                user_id.to_owned(),
                display_name,
            ));
            let rules = self.push_rules(user_id)?;
            for (position, pdu) in others {
                let root = rooms.thread_of(pdu)?;
                let read = match &root {
                    None => counted.main_read,
                    Some(root) => match counted.thread_read.get(root) {
                        Some(read) => *read,
                        None => {
                            let read = read_in(root.as_str())?.max(counted.base);
                            counted.thread_read.insert(root.clone(), read);
                            read
                        }
                    },
                };
                if *position <= read {
                    continue;
                }
                let (notify, highlight) = self.notify_and_highlight(room_id, &rules, &context, pdu)?;
                if !notify && !highlight {
                    continue;
                }
                let counts = match root {
                    None => &mut counted.main,
                    Some(root) => counted.threads.entry(root).or_default(),
                };
                counts.0 = (counts.0 + u64::from(notify)).min(SCAN_LIMIT as u64);
                counts.1 = (counts.1 + u64::from(highlight)).min(SCAN_LIMIT as u64);
            }
        }
        let answer = (counted.main, counted.threads.clone());
        self.thread_unread.0.insert(key, counted);
        Ok(answer)
    }
}
