//! The room list of sliding sync: the user's rooms (joined, invited, kicked or banned from after
//! joining, and rooms left since the connection's last answer that it was sent, so the client
//! sees the departure once), with their bump stamps,
//! filtered per list (`is_dm`, `is_encrypted`, `is_invite`, `room_types`, `not_room_types`,
//! `spaces`, `tags`, `not_tags`) and
//! sorted by recency; a list's `ranges` pick the rooms it sends.
//!
//! The bump stamp is the stream position of the room's latest event of a type the MSC counts as
//! activity (messages, encrypted events, stickers, call invites, polls, beacons, the creation),
//! kept per room in a bounded cache with the position scanned to: a request reads only the
//! events after it, and only when the notifier says the room moved. For a room the user is not
//! joined to, it is the position of their membership.

use std::collections::HashSet;

use ruma::{OwnedRoomId, RoomId, UserId, events::StateEventType};

use super::model::ListFilter;
use crate::{
    Result,
    services::{Services, sync::notifier::Key},
};

/// Event types that bump a room (MSC4186 `bump_stamp`).
pub const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
    "org.matrix.msc3381.poll.start",
    "org.matrix.msc3672.beacon_info",
];

/// (bump stamp, position scanned up to) per room.
pub type BumpCache = quick_cache::sync::Cache<OwnedRoomId, (u64, u64)>;

/// A room of the user's list.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The user's membership.
    pub membership: String,
    /// The position of the member event that set it.
    pub position: u64,
    /// The sort key.
    pub bump: u64,
}

impl Services {
    /// The bump stamp of a joined room up to `up_to`.
    pub(super) fn bump_stamp(&self, room_id: &RoomId, up_to: u64) -> Result<Option<u64>> {
        let rooms = &self.rooms;
        let known = self.sliding.bumps.get(room_id);
        if let Some((bump, scanned)) = known
            && (scanned >= up_to || rooms.notifier().quiet_since(&Key::room(room_id), scanned))
        {
            return Ok(Some(bump));
        }
        let after = known.map_or(0, |(_, scanned)| scanned);
        let (page, _) = rooms.timeline_page(room_id, (after, up_to), true, 1, |_, pdu| {
            BUMP_TYPES.contains(&pdu.kind.to_string().as_str())
        })?;
        let bump = page.first().map(|(pos, _)| *pos).or(known.map(|(bump, _)| bump));
        if let Some(bump) = bump {
            self.sliding.bumps.insert(room_id.to_owned(), (bump, up_to));
        }
        Ok(bump)
    }

    /// The user's rooms for sliding sync at `up_to`, most recent first. Rooms left by the user
    /// themselves are included only when they left after `after` and `sent` says the
    /// connection has the room (so the client learns of the departure once).
    pub(super) fn sliding_candidates(
        &self,
        user_id: &UserId,
        up_to: u64,
        after: Option<u64>,
        sent: &dyn Fn(&RoomId) -> bool,
    ) -> Result<Vec<Candidate>> {
        let rooms = &self.rooms;
        let mut out = Vec::new();
        for (room_id, indexed) in rooms.memberships_of(user_id)?.iter().cloned() {
            let (membership, position) = if indexed.position != 0 && indexed.position <= up_to {
                (indexed.membership, indexed.position)
            } else {
                // The member event is in flight (or the index predates positions): the state
                // at the watermark decides.
                match rooms.member_at(&room_id, user_id, up_to)? {
                    Some(member) => (
                        member.content_str("membership").unwrap_or_default(),
                        rooms.position_of(&member.event_id)?.unwrap_or(0),
                    ),
                    None => continue,
                }
            };
            let keep = match membership.as_str() {
                "join" | "invite" => true,
                "ban" | "leave" => {
                    let newly = after.is_some_and(|a| position > a) && sent(&room_id);
                    if newly {
                        true
                    } else if rooms.is_forgotten(&room_id, user_id)? {
                        false
                    } else {
                        // Kicked or banned by someone else from a room they had joined (a
                        // withdrawn invite is no reason to keep a room in the list).
                        let kicked = membership == "ban" || {
                            let current = rooms.state_event(&room_id, &StateEventType::RoomMember, user_id.as_str())?;
                            let member = match current {
                                Some(m) if rooms.position_of(&m.event_id)?.unwrap_or(0) == position => Some(m),
                                _ => rooms.member_at(&room_id, user_id, up_to)?,
                            };
                            member.is_some_and(|m| m.sender != user_id)
                        };
                        kicked && rooms.read_scope(&room_id, user_id).is_ok()
                    }
                }
                _ => false,
            };
            if !keep {
                continue;
            }
            let bump = match membership.as_str() {
                "join" => self.bump_stamp(&room_id, up_to)?.unwrap_or(position),
                _ => position,
            };
            out.push(Candidate {
                room_id,
                membership,
                position,
                bump,
            });
        }
        out.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(&b.room_id)));
        Ok(out)
    }

    /// The rooms of `candidates` a list's filters accept (order kept).
    pub(super) fn filter_rooms<'c>(
        &self,
        user_id: &UserId,
        candidates: &'c [Candidate],
        filters: &ListFilter,
        direct: &HashSet<OwnedRoomId>,
    ) -> Result<Vec<&'c Candidate>> {
        let rooms = &self.rooms;
        // The children of the (joined) spaces asked for.
        let children: Option<HashSet<String>> = match &filters.spaces {
            None => None,
            Some(spaces) => {
                let mut children = HashSet::new();
                for space in spaces {
                    if rooms.membership(space, user_id)?.as_deref() != Some("join") {
                        continue;
                    }
                    for pdu in rooms.full_state(space)? {
                        let linked = serde_json::from_str::<serde_json::Value>(pdu.content.get())
                            .is_ok_and(|c| c["via"].as_array().is_some_and(|v| !v.is_empty()));
                        if pdu.kind.to_string() == "m.space.child" && linked {
                            children.extend(pdu.state_key.clone());
                        }
                    }
                }
                Some(children)
            }
        };
        let mut out = Vec::new();
        for c in candidates {
            let invite = c.membership == "invite";
            if filters.is_invite.is_some_and(|want| want != invite) {
                continue;
            }
            if let Some(want) = filters.is_dm {
                let is_dm = direct.contains(&c.room_id) || (invite && self.invite_is_direct(&c.room_id, user_id)?);
                if want != is_dm {
                    continue;
                }
            }
            if let Some(want) = filters.is_encrypted {
                let encrypted = rooms
                    .state_event(&c.room_id, &StateEventType::RoomEncryption, "")?
                    .is_some();
                if want != encrypted {
                    continue;
                }
            }
            if filters.room_types.is_some() || !filters.not_room_types.is_empty() {
                let kind = rooms
                    .state_event(&c.room_id, &StateEventType::RoomCreate, "")?
                    .and_then(|create| create.content_str("type"));
                if filters.not_room_types.contains(&kind)
                    || filters.room_types.as_ref().is_some_and(|types| !types.contains(&kind))
                {
                    continue;
                }
            }
            if let Some(children) = &children
                && !children.contains(c.room_id.as_str())
            {
                continue;
            }
            if filters.tags.is_some() || !filters.not_tags.is_empty() {
                let tags = self.account_data.tags(user_id, &c.room_id)?;
                if filters.not_tags.iter().any(|t| tags.contains_key(t))
                    || filters
                        .tags
                        .as_ref()
                        .is_some_and(|wanted| !wanted.iter().any(|t| tags.contains_key(t)))
                {
                    continue;
                }
            }
            out.push(c);
        }
        Ok(out)
    }

    /// Whether the user's invite to a room says it is a direct chat.
    fn invite_is_direct(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        let member = self
            .rooms
            .state_event(room_id, &StateEventType::RoomMember, user_id.as_str())?;
        Ok(member.is_some_and(|m| {
            serde_json::from_str::<serde_json::Value>(m.content.get())
                .is_ok_and(|c| c["is_direct"].as_bool() == Some(true))
        }))
    }

    /// The rooms `m.direct` names.
    pub(super) fn direct_rooms(&self, user_id: &UserId) -> Result<HashSet<OwnedRoomId>> {
        let Some(direct) = self.account_data.get(user_id, None, "m.direct")? else {
            return Ok(HashSet::new());
        };
        let direct: serde_json::Value = serde_json::from_str(direct.get()).unwrap_or_default();
        let mut out = HashSet::new();
        if let Some(map) = direct.as_object() {
            for rooms in map.values() {
                for room in rooms.as_array().into_iter().flatten() {
                    if let Some(room) = room.as_str().and_then(|r| OwnedRoomId::try_from(r).ok()) {
                        out.insert(room);
                    }
                }
            }
        }
        Ok(out)
    }
}
