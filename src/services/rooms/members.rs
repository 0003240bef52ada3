//! Membership lists, kept in memory: who holds which membership of a room, and which rooms a
//! user holds a membership in, each with the stream position that set it. Every `/sync` reads
//! both (the user's rooms; member counts and heroes, device-list changes, unread counts), so
//! each list is read from the membership index once and then served from a bounded cache until
//! a member event touching it becomes durable.

use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, UserId};

use super::Rooms;
use crate::{Result, storage::tables::membership::Membership, util::fresh_cache::FreshCache};

/// Most member entries held in the cache, over all rooms.
const CACHED_MEMBERS: u64 = 200_000;

/// Everyone with a membership of one room, ordered by user id.
pub struct RoomMembers {
    entries: Vec<(OwnedUserId, Membership)>,
    /// How many are joined and invited (every sync asks, in rooms of any size).
    joined: usize,
    invited: usize,
    /// The servers of the joined members, each once (where federation sends the room's events).
    servers: Vec<OwnedServerName>,
}

impl RoomMembers {
    fn new(entries: Vec<(OwnedUserId, Membership)>) -> Self {
        let count = |wanted: &str| entries.iter().filter(|(_, m)| m.membership == wanted).count();
        let (joined, invited) = (count("join"), count("invite"));
        let mut servers: Vec<OwnedServerName> = entries
            .iter()
            .filter(|(_, m)| m.membership == "join")
            .map(|(u, _)| u.server_name().to_owned())
            .collect();
        servers.sort();
        servers.dedup();
        Self {
            entries,
            joined,
            invited,
            servers,
        }
    }

    /// The servers of the joined members, each once.
    pub fn joined_servers(&self) -> &[OwnedServerName] {
        &self.servers
    }
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
        match membership {
            "join" => self.joined,
            "invite" => self.invited,
            _ => self.with(membership).count(),
        }
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

/// One user's memberships: every room they hold one in, with it.
pub type UserMemberships = Arc<Vec<(OwnedRoomId, Membership)>>;

/// Weighs a cached list by its entries.
#[derive(Clone)]
struct EntryWeight;

impl quick_cache::Weighter<OwnedRoomId, Arc<RoomMembers>> for EntryWeight {
    fn weight(&self, _room: &OwnedRoomId, members: &Arc<RoomMembers>) -> u64 {
        members.entries.len() as u64 + 1
    }
}

impl quick_cache::Weighter<OwnedUserId, UserMemberships> for EntryWeight {
    fn weight(&self, _user: &OwnedUserId, rooms: &UserMemberships) -> u64 {
        rooms.len() as u64 + 1
    }
}

/// The lists held: per room, and per user.
pub(super) struct MemberCache {
    rooms: FreshCache<OwnedRoomId, Arc<RoomMembers>, EntryWeight>,
    users: FreshCache<OwnedUserId, UserMemberships, EntryWeight>,
}

impl Default for MemberCache {
    fn default() -> Self {
        MemberCache {
            rooms: FreshCache::with_weighter(4096, CACHED_MEMBERS, EntryWeight),
            users: FreshCache::with_weighter(4096, CACHED_MEMBERS, EntryWeight),
        }
    }
}

impl MemberCache {
    /// Forgets the lists a member event changes (its room's, its target's); called once the
    /// event is durable.
    pub(super) fn invalidate(&self, room_id: &RoomId, user_id: &UserId) {
        self.rooms.invalidate(room_id);
        self.users.invalidate(user_id);
    }
}

impl Rooms {
    /// Everyone with a membership of the room (from the cache, or read from the index).
    pub fn members(&self, room_id: &RoomId) -> Result<Arc<RoomMembers>> {
        let read = || -> Result<_> {
            let entries = self
                .memberships
                .members_of(room_id.as_str())?
                .into_iter()
                .filter_map(|(user, m)| OwnedUserId::try_from(user).ok().map(|u| (u, m)))
                .collect();
            Ok(Arc::new(RoomMembers::new(entries)))
        };
        self.member_lists
            .rooms
            .get_or_read(room_id, || room_id.to_owned(), read)
    }

    /// Every room the user has a membership in, with it and the position that set it (from the
    /// cache, or read from the index).
    pub fn memberships_of(&self, user_id: &UserId) -> Result<UserMemberships> {
        let read = || -> Result<_> {
            let rooms = self
                .memberships
                .rooms_of(user_id.as_str())?
                .into_iter()
                .filter_map(|(room, m)| OwnedRoomId::try_from(room).ok().map(|r| (r, m)))
                .collect();
            Ok(Arc::new(rooms))
        };
        self.member_lists
            .users
            .get_or_read(user_id, || user_id.to_owned(), read)
    }
}
