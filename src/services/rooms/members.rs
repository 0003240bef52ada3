//! Room member lists, kept in memory: who holds which membership of a room, and since which
//! stream position. Every `/sync` reads them (member counts and heroes, device-list changes,
//! unread counts), so each room's list is read from the membership index once and then served
//! from a bounded cache until a member event of the room becomes durable.

use std::sync::{Arc, Mutex};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::{Rooms, locked};
use crate::{Result, storage::tables::membership::Membership};

/// Most member entries held in the cache, over all rooms.
const CACHED_MEMBERS: u64 = 200_000;

/// Everyone with a membership of one room, ordered by user id.
pub struct RoomMembers {
    entries: Vec<(OwnedUserId, Membership)>,
}

impl RoomMembers {
    /// Every member with their membership.
    pub fn iter(&self) -> impl Iterator<Item = (&UserId, &str)> {
        self.entries.iter().map(|(u, m)| (&**u, m.membership.as_str()))
    }

    /// The members holding `membership`.
    pub fn with<'a>(&'a self, membership: &'a str) -> impl Iterator<Item = &'a UserId> + 'a {
        self.iter().filter(move |(_, m)| *m == membership).map(|(u, _)| u)
    }

    /// How many members hold `membership`.
    pub fn count(&self, membership: &str) -> usize {
        self.with(membership).count()
    }

    /// `user_id`'s membership and the position that set it.
    pub fn membership_of(&self, user_id: &UserId) -> Option<&Membership> {
        let i = self.entries.binary_search_by(|(u, _)| (**u).cmp(user_id)).ok()?;
        Some(&self.entries[i].1)
    }

    /// Whether `user_id` is joined.
    pub fn is_joined(&self, user_id: &UserId) -> bool {
        self.membership_of(user_id).is_some_and(|m| m.membership == "join")
    }

    /// Members whose membership was set at a position in `(after, up_to]`, with it.
    pub fn changed(&self, after: u64, up_to: u64) -> impl Iterator<Item = (&UserId, &str)> {
        self.entries
            .iter()
            .filter(move |(_, m)| m.position > after && m.position <= up_to)
            .map(|(u, m)| (&**u, m.membership.as_str()))
    }
}

/// Weighs a cached list by its entries.
#[derive(Clone)]
struct EntryWeight;

impl quick_cache::Weighter<OwnedRoomId, Arc<RoomMembers>> for EntryWeight {
    fn weight(&self, _room: &OwnedRoomId, members: &Arc<RoomMembers>) -> u64 {
        members.entries.len() as u64 + 1
    }
}

/// The cache. A list read from the index is kept only if no member event became durable while
/// it was read (the generation did not move), so a list read before a change never outlives it.
pub(super) struct MemberCache(
    Mutex<(
        u64,
        quick_cache::unsync::Cache<OwnedRoomId, Arc<RoomMembers>, EntryWeight>,
    )>,
);

impl Default for MemberCache {
    fn default() -> Self {
        MemberCache(Mutex::new((
            0,
            quick_cache::unsync::Cache::with_weighter(4096, CACHED_MEMBERS, EntryWeight),
        )))
    }
}

impl MemberCache {
    /// Forgets a room's list; called once a member event of the room is durable.
    pub(super) fn invalidate(&self, room_id: &RoomId) {
        let mut inner = locked(&self.0);
        inner.0 += 1;
        inner.1.remove(room_id);
    }
}

impl Rooms {
    /// Everyone with a membership of the room (from the cache, or read from the index).
    pub fn members(&self, room_id: &RoomId) -> Result<Arc<RoomMembers>> {
        let generation = {
            let inner = locked(&self.member_lists.0);
            if let Some(members) = inner.1.get(room_id) {
                return Ok(Arc::clone(members));
            }
            inner.0
        };
        let entries = self
            .memberships
            .members_of(room_id.as_str())?
            .into_iter()
            .filter_map(|(user, m)| OwnedUserId::try_from(user).ok().map(|u| (u, m)))
            .collect();
        let members = Arc::new(RoomMembers { entries });
        let mut inner = locked(&self.member_lists.0);
        if inner.0 == generation {
            inner.1.insert(room_id.to_owned(), Arc::clone(&members));
        }
        Ok(members)
    }

    /// Every room the user has a membership in, with it and the position that set it.
    pub fn memberships_of(&self, user_id: &UserId) -> Result<Vec<(OwnedRoomId, Membership)>> {
        Ok(self
            .memberships
            .rooms_of(user_id.as_str())?
            .into_iter()
            .filter_map(|(room, m)| OwnedRoomId::try_from(room).ok().map(|r| (r, m)))
            .collect())
    }
}
