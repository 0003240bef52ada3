//! What the sync service reads from rooms beyond events and state: the notifier the write path
//! marks, and the membership index in both directions. Kept apart from the write path so the
//! hook into it stays two lines (a mark when a position is taken, a flush when it completes).

use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::Rooms;
use crate::{
    Result,
    services::sync::notifier::{Key, Notifier},
};

/// The keys an event wakes: its room, and for a membership event its target (who may not be
/// waiting on the room yet: an invitee, a joiner).
pub(super) fn concerns(room_id: &str, kind: &str, state_key: Option<&str>) -> Vec<Key> {
    let mut keys = vec![Key::Room(room_id.to_owned())];
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

    /// Every room the user has a membership in (`join`, `invite`, `leave`, `ban`, `knock`).
    pub fn memberships_of(&self, user_id: &UserId) -> Result<Vec<(OwnedRoomId, String)>> {
        Ok(self
            .memberships
            .rooms_of(user_id.as_str())?
            .into_iter()
            .filter_map(|(room, m)| OwnedRoomId::try_from(room).ok().map(|r| (r, m)))
            .collect())
    }

    /// Every user with a membership in the room, with it.
    pub fn members(&self, room_id: &RoomId) -> Result<Vec<(OwnedUserId, String)>> {
        Ok(self
            .memberships
            .members_of(room_id.as_str())?
            .into_iter()
            .filter_map(|(user, m)| OwnedUserId::try_from(user).ok().map(|u| (u, m)))
            .collect())
    }
}
