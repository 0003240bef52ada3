//! `GET /notifications`: the events that notified a user, newest first, worked out when asked.
//!
//! Nothing is logged per recipient when an event is sent (that would be one write per member
//! of the room for every message, which in a big room costs more than the message itself).
//! Instead the user's rooms are read backwards from the `from` position, merged by stream
//! position, and each event from someone else (and not from a user they ignore) is evaluated
//! with the user's push rules, as `/sync`'s unread counts are (`sync/unread.rs`). The rooms read are those the user is joined
//! to (events after their join) and their pending invites (the invite itself, which
//! `.m.rule.invite_for_me` notifies); redacted events no longer notify, as in Synapse.
//!
//! The rules applied are the user's rules as they are when asked (a room muted since, or a
//! thread subscribed to since, counts as it is now), as the unread counts do; Synapse instead
//! keeps the actions of the moment each event arrived.
//!
//! One request reads at most [`SCAN_BUDGET`] events; when the budget runs out before the page
//! fills, `next_token` says where the next request goes on, so a user whose rooms are quiet or
//! muted pages through them at a bounded cost per request.

use std::collections::BinaryHeap;

use ruma::{
    OwnedRoomId, UInt, UserId,
    api::client::push::get_notifications,
    push::{Action, PushConditionRoomCtx},
    serde::Raw,
};

use crate::{
    Error, Result,
    services::{Services, rooms::pdu::Pdu},
};

/// Most entries one `/notifications` page holds.
pub const MAX_NOTIFICATIONS_PAGE: usize = 1000;
/// Most events read for one `/notifications` request.
pub const SCAN_BUDGET: usize = 2000;
/// Events read from one room at a time.
const CHUNK: usize = 32;

/// One room being read backwards.
struct Source {
    room_id: OwnedRoomId,
    /// Events at or below this position are not the user's to see (before their join).
    floor: u64,
    /// The reader's push context in the room, built when the room's first event is evaluated.
    context: Option<PushConditionRoomCtx>,
    /// The position up to which their read receipts reach (`None`: not read yet).
    read_up_to: Option<u64>,
}

impl Services {
    /// `GET /notifications`: the user's notifications, newest first, below the token `from` (a
    /// stream position), at most `limit` (default 50), only highlights when `only` is
    /// `highlight`.
    pub fn notifications(
        &self,
        user_id: &UserId,
        from: Option<&str>,
        limit: Option<UInt>,
        only: Option<&str>,
    ) -> Result<get_notifications::v3::Response> {
        let below = match from {
            None => self.rooms.watermark().saturating_add(1),
            Some(token) => token
                .parse::<u64>()
                .map_err(|_| Error::invalid_param("Invalid from token"))?
                .min(self.rooms.watermark().saturating_add(1)),
        };
        let limit = limit
            .map_or(50, |l| u64::from(l) as usize)
            .clamp(1, MAX_NOTIFICATIONS_PAGE);
        let highlight_only = only.is_some_and(|o| o.contains("highlight"));
        let rules = self.push_rules(user_id)?;
        let ignored = self.account_data.ignored_users(user_id)?;

        // Each room's newest event below `below` the user may see, in a max-heap by position.
        let mut sources = Vec::new();
        let mut heads = BinaryHeap::new();
        for (room_id, member) in self.rooms.memberships_of(user_id)?.iter() {
            let floor = match member.membership.as_str() {
                "join" => member.position,
                // The invite itself is the one event of the room the user may see.
                "invite" => member.position.saturating_sub(1),
                _ => continue,
            };
            if let Some(head) = self.next_below(room_id, floor, below)? {
                heads.push((head, sources.len()));
                sources.push(Source {
                    room_id: room_id.clone(),
                    floor,
                    context: None,
                    read_up_to: None,
                });
            }
        }

        let mut out = Vec::new();
        let mut budget = SCAN_BUDGET;
        while let Some((head, i)) = heads.pop() {
            // Read this room down to the next room's head, so events come out newest first.
            let next_head = heads.peek().map_or(0, |(p, _)| *p);
            let source = &mut sources[i];
            let after = source.floor.max(next_head);
            let chunk = self
                .rooms
                .timeline(&source.room_id, after, head, true, CHUNK.min(budget))?;
            let mut lowest = head;
            for (position, pdu) in chunk {
                budget -= 1;
                lowest = position;
                if !ignored.contains(&pdu.sender)
                    && let Some(actions) = self.notifying_actions(user_id, &rules, source, &pdu)?
                    && (!highlight_only || actions.iter().any(Action::is_highlight))
                {
                    let read_up_to = match source.read_up_to {
                        Some(read) => read,
                        None => *source.read_up_to.insert(self.read_up_to(&source.room_id, user_id)?),
                    };
                    out.push(get_notifications::v3::Notification::new(
                        actions,
                        Raw::from_json(pdu.to_client_json()?),
                        position <= read_up_to,
                        source.room_id.clone(),
                        pdu.origin_server_ts,
                    ));
                }
                // Every event at or above `position`, in every room, has now been looked at.
                if out.len() >= limit || budget == 0 {
                    let more = !heads.is_empty() || self.next_below(&source.room_id, source.floor, position)?.is_some();
                    let mut response = get_notifications::v3::Response::new(out);
                    response.next_token = more.then(|| position.to_string());
                    return Ok(response);
                }
            }
            if let Some(head) = self.next_below(&source.room_id, source.floor, lowest)? {
                heads.push((head, i));
            }
        }
        Ok(get_notifications::v3::Response::new(out))
    }

    /// The position of a room's newest event with `floor < position < below`.
    fn next_below(&self, room_id: &OwnedRoomId, floor: u64, below: u64) -> Result<Option<u64>> {
        if below <= floor + 1 {
            return Ok(None);
        }
        Ok(self
            .rooms
            .timeline_positions(room_id, floor, below - 1, true, 1)?
            .first()
            .copied())
    }

    /// The actions of an event that notifies the reader of `source` (`None`: it does not, being
    /// their own, redacted, or matched by no notifying rule).
    fn notifying_actions(
        &self,
        user_id: &UserId,
        rules: &ruma::push::Ruleset,
        source: &mut Source,
        pdu: &Pdu,
    ) -> Result<Option<Vec<Action>>> {
        if pdu.sender == user_id || pdu.redacted_because.is_some() {
            return Ok(None);
        }
        let context = match &source.context {
            Some(context) => context,
            None => {
                let members = self.rooms.members(&source.room_id)?;
                let own = self.own_membership_position(&source.room_id, user_id, &members)?;
                source
                    .context
                    .insert(self.reader_push_context(&source.room_id, user_id, &members, own)?)
            }
        };
        let actions = self.push_actions(&source.room_id, rules, context, pdu)?;
        Ok(actions.iter().any(Action::should_notify).then_some(actions))
    }
}
