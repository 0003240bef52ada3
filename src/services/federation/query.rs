//! Outbound queries (server-server-api "Query"): the profile of a user of another server, asked
//! of that server for a client's `GET /profile/{userId}` (the whole profile, cached ten
//! minutes, bounded), an alias of another server (to
//! resolve it for a client, or join a room by it), and another server's public room list
//! (server-server-api "Public Room Directory", for a client's `publicRooms?server=`), and the
//! device and one-time keys of another server's users (server-server-api "End-to-End
//! Encryption", for a client's `keys/query` and `keys/claim`).

use std::time::{Duration, Instant};

use ruma::{
    OwnedRoomId, OwnedServerName, OwnedUserId, RoomAliasId, UserId,
    api::federation::{
        directory::get_public_rooms_filtered,
        keys::{claim_keys, get_keys},
        query::{get_profile_information, get_room_information},
    },
};
use serde_json::{Map, Value};

use super::Federation;
use crate::{
    Error, Result,
    util::bounded::{BoundedMap, Evict},
};

/// Other servers' users' profiles kept, and for how long (a display name or avatar changed
/// there shows in member events at once; this is for `GET /profile` only).
pub const CACHED_PROFILES: usize = 10_000;
pub const PROFILE_TTL: Duration = Duration::from_secs(10 * 60);

/// A profile as fetched.
pub struct CachedProfile {
    fetched: Instant,
    profile: Map<String, Value>,
}

impl Evict for CachedProfile {
    fn stale(&self, now: Instant) -> bool {
        now.duration_since(self.fetched) >= PROFILE_TTL
    }
}

/// The profiles, by user.
pub type ProfileCache = BoundedMap<OwnedUserId, CachedProfile>;

/// Profile fields kept from another server's answer, and the bytes of each.
const MAX_FIELDS: usize = 100;
const MAX_FIELD_BYTES: usize = 64 * 1024;

impl Federation {
    /// The profile of `user_id` (of another server), all fields or only `field`: the whole
    /// profile is fetched and kept for [`PROFILE_TTL`] (at most [`CACHED_PROFILES`] users), so
    /// a second look-up, of any field, does not ask that server again.
    pub async fn remote_profile(&self, user_id: &UserId, field: Option<&str>) -> Result<Map<String, Value>> {
        let now = Instant::now();
        let cached = self.profiles.with(user_id, |cached| {
            cached.and_then(|c| (now.duration_since(c.fetched) < PROFILE_TTL).then(|| c.profile.clone()))
        });
        let profile = match cached {
            Some(profile) => profile,
            None => {
                let request = get_profile_information::v1::Request::new(user_id.to_owned());
                let answer = self.send_signed(user_id.server_name(), request).await?;
                let profile: Map<String, Value> = answer
                    .iter()
                    .filter(|(_, value)| serde_json::to_vec(value).is_ok_and(|v| v.len() <= MAX_FIELD_BYTES))
                    .take(MAX_FIELDS)
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect();
                self.profiles.insert(
                    user_id.to_owned(),
                    CachedProfile {
                        fetched: now,
                        profile: profile.clone(),
                    },
                );
                profile
            }
        };
        match field {
            None => Ok(profile),
            Some(f) => match profile.get(f) {
                Some(value) => Ok(Map::from_iter([(f.to_owned(), value.clone())])),
                None => Err(Error::not_found("The user has no such profile field")),
            },
        }
    }

    /// The room an alias of another server names, and servers in it (at most 20 kept).
    pub async fn remote_alias(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let answer = self
            .send_signed(
                alias.server_name(),
                get_room_information::v1::Request::new(alias.to_owned()),
            )
            .await?;
        let mut servers = answer.servers;
        servers.truncate(20);
        Ok((answer.room_id, servers))
    }

    /// A page of `server`'s public room list (`POST publicRooms`, which Synapse and Hearth
    /// both serve), at most [`MAX_PUBLIC_ROOMS`] rooms of it kept.
    pub async fn remote_public_rooms(
        &self,
        server: &ruma::ServerName,
        limit: Option<ruma::UInt>,
        since: Option<String>,
        filter: ruma::directory::Filter,
    ) -> Result<get_public_rooms_filtered::v1::Response> {
        let mut request = get_public_rooms_filtered::v1::Request::new();
        request.limit = limit;
        request.since = since;
        request.filter = filter;
        let mut answer = self.send_signed(server, request).await?;
        answer.chunk.truncate(MAX_PUBLIC_ROOMS);
        Ok(answer)
    }
}

impl Federation {
    /// The device and cross-signing keys of `users` (of `server`), as `server` answers; only
    /// what concerns those users is kept.
    pub async fn remote_device_keys(
        &self,
        server: &ruma::ServerName,
        users: std::collections::BTreeMap<ruma::OwnedUserId, Vec<ruma::OwnedDeviceId>>,
    ) -> Result<get_keys::v1::Response> {
        let asked: Vec<ruma::OwnedUserId> = users.keys().cloned().collect();
        let mut answer = self.send_signed(server, get_keys::v1::Request::new(users)).await?;
        answer.device_keys.retain(|user, _| asked.contains(user));
        answer.master_keys.retain(|user, _| asked.contains(user));
        answer.self_signing_keys.retain(|user, _| asked.contains(user));
        Ok(answer)
    }

    /// One-time keys of `server`'s users' devices, claimed from `server`; only what concerns
    /// those users is kept.
    pub async fn remote_claim_keys(
        &self,
        server: &ruma::ServerName,
        wanted: claim_keys::v1::OneTimeKeyClaims,
    ) -> Result<claim_keys::v1::OneTimeKeys> {
        let asked: Vec<ruma::OwnedUserId> = wanted.keys().cloned().collect();
        let mut answer = self.send_signed(server, claim_keys::v1::Request::new(wanted)).await?;
        answer.one_time_keys.retain(|user, _| asked.contains(user));
        Ok(answer.one_time_keys)
    }
}

/// Rooms kept of one page of another server's public room list.
pub const MAX_PUBLIC_ROOMS: usize = 500;
