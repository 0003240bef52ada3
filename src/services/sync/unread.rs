//! Unread notification counts for /sync (`unread_notifications`): the events after the user's
//! latest read receipt that their push rules say notify (and highlight), evaluated with ruma's
//! push-rule engine and the user's own push rules (`services::push::rules`).
//!
//! Counts are kept per (room, user) in a bounded in-memory cache with the position they were
//! counted up to, so a sync after a new event evaluates only that event; a new receipt (or a
//! cache miss) recounts from the receipt. The receipts are read only when the notifier says a
//! receipt of the room moved since the counts. At most the newest [`SCAN_LIMIT`] events are counted per room; a
//! client shows a larger count as "99+" anyway.

use futures_util::FutureExt;
use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    events::StateEventType,
    push::{Action, PushConditionRoomCtx, Ruleset},
    serde::Raw,
};

use crate::{
    Result,
    services::{
        Services,
        rooms::{members::RoomMembers, pdu::Pdu},
        sync::notifier::Key,
    },
};

/// Most events counted per room.
pub const SCAN_LIMIT: usize = 500;

/// What is known of one user's unread events in one room.
#[derive(Clone, Copy, PartialEq)]
struct Counted {
    /// The position the user's read receipts point at.
    marks_up_to: u64,
    /// The read position the counts start after (the receipts', or the user's own membership
    /// when later).
    read_up_to: u64,
    /// The position the counts run to.
    counted_up_to: u64,
    notify: u64,
    highlight: u64,
}

/// The cache of counts and of display
/// names by member event (room, user and the position of their member event, so a new member
/// event is a new entry).
pub struct UnreadCache {
    counts: quick_cache::sync::Cache<(OwnedRoomId, OwnedUserId), Counted>,
    names: quick_cache::sync::Cache<(OwnedRoomId, OwnedUserId, u64), String>,
}

impl Default for UnreadCache {
    fn default() -> Self {
        UnreadCache {
            counts: quick_cache::sync::Cache::new(100_000),
            names: quick_cache::sync::Cache::new(100_000),
        }
    }
}

impl Services {
    /// (notification count, highlight count) of `user_id` in a room, reading up to `up_to`.
    pub fn unread_counts(&self, room_id: &RoomId, user_id: &UserId, up_to: u64) -> Result<(u64, u64)> {
        let rooms = &self.rooms;
        let key = (room_id.to_owned(), user_id.to_owned());
        let known = self.unread.counts.get(&key);
        // The receipts are read again only when a receipt of the room moved since the counts.
        let marks_up_to = match known {
            Some(known)
                if rooms
                    .notifier()
                    .quiet_since(&Key::receipts(room_id), known.counted_up_to) =>
            {
                known.marks_up_to
            }
            _ => self.read_up_to(room_id, user_id)?,
        };
        // Nothing before the user's own latest membership counts.
        let members = rooms.members(room_id)?;
        let own = self.own_membership_position(room_id, user_id, &members)?;
        let read_up_to = marks_up_to.max(own);
        let mut counted = match known {
            Some(known) if known.read_up_to == read_up_to && known.counted_up_to <= up_to => known,
            _ => Counted {
                marks_up_to,
                read_up_to,
                counted_up_to: read_up_to,
                notify: 0,
                highlight: 0,
            },
        };
        counted.marks_up_to = marks_up_to;
        if counted.counted_up_to < up_to {
            let events = rooms.timeline_undecorated(room_id, counted.counted_up_to, up_to, SCAN_LIMIT)?;
            let others: Vec<&Pdu> = events.iter().map(|(_, p)| p).filter(|p| p.sender != user_id).collect();
            if !others.is_empty() {
                let context = self.reader_push_context(room_id, user_id, &members, own)?;
                // The user's own rules (`services::push::rules`), cached there.
                let rules = self.push_rules(user_id)?;
                for pdu in others {
                    let (notify, highlight) = self.notify_and_highlight(room_id, &rules, &context, pdu)?;
                    counted.notify += u64::from(notify);
                    counted.highlight += u64::from(highlight);
                }
            }
            counted.counted_up_to = up_to;
            counted.notify = counted.notify.min(SCAN_LIMIT as u64);
            counted.highlight = counted.highlight.min(SCAN_LIMIT as u64);
        }
        if known != Some(counted) {
            self.unread.counts.insert(key, counted);
        }
        Ok((counted.notify, counted.highlight))
    }
}

impl Services {
    /// Whether `pdu` notifies and highlights the reader of `context` by their `rules`, evaluated
    /// with ruma's push-rule engine (`@room` checked against the sender's power levels,
    /// `services::push::rules`).
    pub(crate) fn notify_and_highlight(
        &self,
        room_id: &RoomId,
        rules: &Ruleset,
        context: &PushConditionRoomCtx,
        pdu: &Pdu,
    ) -> Result<(bool, bool)> {
        let actions = self.push_actions(room_id, rules, context, pdu)?;
        Ok((
            actions.iter().any(|a| a.should_notify()),
            actions.iter().any(|a| a.is_highlight()),
        ))
    }

    /// The actions of the first of `rules` that applies to `pdu` for the reader of `context`
    /// (none when no rule applies).
    pub(crate) fn push_actions(
        &self,
        room_id: &RoomId,
        rules: &Ruleset,
        context: &PushConditionRoomCtx,
        pdu: &Pdu,
    ) -> Result<Vec<Action>> {
        let event: Raw<ruma::events::AnySyncTimelineEvent> = Raw::from_json(pdu.to_client_json()?);
        let room_mention;
        let context = if crate::services::push::rules::mentions_room(&pdu.content) {
            room_mention = context
                .clone()
                .with_power_levels(self.push_power_levels(room_id, &pdu.sender)?);
            &room_mention
        } else {
            context
        };
        // The evaluation does no asynchronous I/O (the thread-subscription lookup is a point
        // read), so its future is ready at once.
        Ok(rules
            .get_actions(&event, context)
            .now_or_never()
            .map(<[Action]>::to_vec)
            .unwrap_or_default())
    }

    /// The highest stream position the user's read receipts (unthreaded or on the main
    /// timeline) point at in a room (0: none).
    pub(crate) fn read_up_to(&self, room_id: &RoomId, user_id: &UserId) -> Result<u64> {
        let mut read = 0;
        for event_id in self.receipts.read_marks(room_id, user_id)? {
            read = read.max(self.rooms.position_of(&event_id)?.unwrap_or(0));
        }
        Ok(read)
    }

    /// The stream position of the user's own latest member event in a room (0: none), before
    /// which nothing counts for them.
    pub(crate) fn own_membership_position(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        members: &RoomMembers,
    ) -> Result<u64> {
        let rooms = &self.rooms;
        Ok(match members.membership_of(user_id) {
            Some(own) if own.position > 0 => own.position,
            // An index written before positions: ask the member event.
            Some(_) => match rooms.state_event(room_id, &StateEventType::RoomMember, user_id.as_str())? {
                Some(member) => rooms.position_of(&member.event_id)?.unwrap_or(0),
                None => 0,
            },
            None => 0,
        })
    }

    /// The push-rule context of a reader in a room: the member count and their display name
    /// there (their localpart when they have none), cached by their member event's position
    /// `own`.
    pub(crate) fn reader_push_context(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        members: &RoomMembers,
        own: u64,
    ) -> Result<PushConditionRoomCtx> {
        let rooms = &self.rooms;
        let read_name = || -> Result<String> {
            Ok(rooms
                .state_event(room_id, &StateEventType::RoomMember, user_id.as_str())?
                .and_then(|m| m.content_str("displayname"))
                .unwrap_or_else(|| user_id.localpart().to_owned()))
        };
        let display_name = match own {
            0 => read_name()?,
            _ => self
                .unread
                .names
                .get_or_insert_with(&(room_id.to_owned(), user_id.to_owned(), own), read_name)?,
        };
        let joined = members.count("join");
        Ok(self.thread_subs.push_lookup(PushConditionRoomCtx::new(
            room_id.to_owned(),
            UInt::try_from(joined as u64).unwrap_or(UInt::MAX),
            user_id.to_owned(),
            display_name,
        )))
    }
}
