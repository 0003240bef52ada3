//! Presence over federation (server-server-api "Presence": `m.presence` EDUs), both ways.
//!
//! Outbound: a change of a local user's presence (state, status message, `currently_active`:
//! what `services::presence` counts as a change) goes to the servers that share a room with
//! the user (joined members), with their next transaction. Rate-limited per user: at most one
//! update every [`PRESENCE_INTERVAL`]; a change inside that window is sent once at its end,
//! as the user's presence then is (changes in between coalesce). What is remembered per user
//! is a `BoundedMap` of [`REMEMBERED_USERS`]. A join also sends presence, as Synapse does:
//! a local user's to the room's other servers, our joined users' (those seen since the start,
//! at most [`MAX_JOIN_ENTRIES`]) to the server of a user of another server who joined (after
//! our `send_join`, 2 s and again 8 s later: that server stores the room only once it has our
//! answer).
//!
//! Inbound: each `push` entry (at most [`MAX_PUSH`] per EDU) counts only for a user of the
//! sending server who shares a room with one of our users (joined both); it is stored with
//! the local presence (bounded there) and woken into those rooms' members' `/sync`.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId, presence::PresenceState};
use serde_json::{Value, json};

use crate::{
    services::{Services, sync::notifier::Key},
    util::bounded::{BoundedMap, Evict},
};

/// At most one presence update per user per this long.
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(10);
/// Users whose last update time is remembered.
pub const REMEMBERED_USERS: usize = 100_000;
/// Entries read from one inbound EDU.
pub const MAX_PUSH: usize = 100;
/// When our users' presence goes to a server that joined through our `send_join`.
const JOIN_PRESENCE_DELAYS: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(8)];
/// Our users' presences sent to a server one of whose users joined a room.
const MAX_JOIN_ENTRIES: usize = 1_000;
/// Longest status message taken from another server (the client API's limit).
const MAX_STATUS_BYTES: usize = 1024;

/// When a user's presence last went out, and whether a later send is waiting.
pub struct LastSent {
    at: Option<Instant>,
    pending: bool,
}

impl Evict for LastSent {
    fn pinned(&self) -> bool {
        self.pending
    }

    fn stale(&self, now: Instant) -> bool {
        self.at.is_none_or(|at| now.duration_since(at) >= PRESENCE_INTERVAL)
    }
}

/// The per-user send times.
pub type PresenceSent = BoundedMap<OwnedUserId, LastSent>;

#[derive(Debug, PartialEq)]
enum Action {
    Now,
    Later(Duration),
    Nothing,
}

impl LastSent {
    /// A change at `now`: send it now (outside the window), once at the window's end (the
    /// first change inside it), or nothing (a send is already waiting).
    fn decide(&mut self, now: Instant) -> Action {
        match self.at {
            Some(at) if now.duration_since(at) < PRESENCE_INTERVAL => {
                if self.pending {
                    Action::Nothing
                } else {
                    self.pending = true;
                    Action::Later(PRESENCE_INTERVAL - now.duration_since(at))
                }
            }
            _ => {
                self.at = Some(now);
                Action::Now
            }
        }
    }
}

impl Services {
    /// `user_id`'s (ours) presence changed: tell the servers sharing a room with them, now or
    /// at the end of the user's rate-limit window.
    pub fn announce_presence(&self, user_id: &UserId) {
        let federation = &self.federation;
        if !federation.enabled || user_id.server_name() != federation.server_name() {
            return;
        }
        let now = Instant::now();
        let action = federation.presence_sent.get_or_insert_with(
            user_id,
            || user_id.to_owned(),
            || LastSent {
                at: None,
                pending: false,
            },
            |last| last.decide(now),
        );
        match action {
            Action::Now => self.push_presence(user_id),
            Action::Nothing => {}
            Action::Later(wait) => {
                let Some((runtime, services)) = federation.sender.task_handle() else {
                    // Nothing is delivered before the sender starts: the next change goes.
                    federation.presence_sent.remove(user_id);
                    return;
                };
                let user = user_id.to_owned();
                runtime.spawn(async move {
                    tokio::time::sleep(wait).await;
                    let Some(services) = services.upgrade() else {
                        return;
                    };
                    services.federation.presence_sent.insert(
                        user.clone(),
                        LastSent {
                            at: Some(Instant::now()),
                            pending: false,
                        },
                    );
                    services.push_presence(&user);
                });
            }
        }
    }

    /// Queues `user_id`'s current presence for the other servers sharing a room with them.
    fn push_presence(&self, user_id: &UserId) {
        let ours = self.federation.server_name();
        let mut servers: BTreeSet<OwnedServerName> = BTreeSet::new();
        for room in self.rooms.joined_rooms(user_id).unwrap_or_default() {
            if let Ok(members) = self.rooms.members(&room) {
                servers.extend(members.joined_servers().iter().filter(|s| **s != ours).cloned());
            }
        }
        if servers.is_empty() {
            return;
        }
        let entry = self.presence_entry(user_id, true);
        self.queue_presence(&servers.into_iter().collect::<Vec<_>>(), entry.into_iter().collect());
    }

    /// A `push` entry of `user_id`'s presence (`None` for a user not seen since the start,
    /// unless `always`: then offline).
    fn presence_entry(&self, user_id: &UserId, always: bool) -> Option<Value> {
        let status = self.presence.get(user_id);
        if status.is_none() && !always {
            return None;
        }
        let mut entry = json!({
            "user_id": user_id,
            "presence": status.as_ref().map_or("offline", |s| s.state.as_str()),
            "last_active_ago": status.as_ref().map_or(0, |s| s.last_active_ago),
            "currently_active": status.as_ref().is_some_and(|s| s.currently_active),
        });
        if let Some(msg) = status.and_then(|s| s.status_msg) {
            entry["status_msg"] = msg.into();
        }
        Some(entry)
    }

    /// Queues `entries` for `servers`, [`MAX_PUSH`] per EDU.
    fn queue_presence(&self, servers: &[OwnedServerName], entries: Vec<Value>) {
        if servers.is_empty() {
            return;
        }
        for chunk in entries.chunks(MAX_PUSH) {
            let edu = json!({"edu_type": "m.presence", "content": {"push": chunk}});
            self.federation.queue_edu(servers, edu);
        }
    }

    /// `user_id` joined `room_id` (Synapse's `_on_user_joined_room`): a user of ours has their
    /// presence sent to the room's other servers; a user of another server gets our joined
    /// users' presence sent to their server. Outside the rate limit: the other side knew
    /// nothing of it.
    pub fn presence_on_join(&self, room_id: &RoomId, user_id: &UserId) {
        if !self.federation.enabled {
            return;
        }
        let ours = self.federation.server_name();
        let Ok(members) = self.rooms.members(room_id) else {
            return;
        };
        if user_id.server_name() == ours {
            let servers: Vec<OwnedServerName> = members
                .joined_servers()
                .iter()
                .filter(|s| **s != ours)
                .cloned()
                .collect();
            let entry = self.presence_entry(user_id, false);
            self.queue_presence(&servers, entry.into_iter().collect());
        } else {
            let entries: Vec<Value> = members
                .with("join")
                .filter(|u| u.server_name() == ours)
                .take(MAX_JOIN_ENTRIES)
                .filter_map(|u| self.presence_entry(u, false))
                .collect();
            self.queue_presence(&[user_id.server_name().to_owned()], entries);
        }
    }
}

impl Services {
    /// [`Services::presence_on_join`] for a user of another server who joined through our
    /// `send_join`: their server stores the room only once it has our answer, and drops
    /// presence of users it shares no room with, so ours goes a little later, twice
    /// ([`JOIN_PRESENCE_DELAYS`]).
    pub fn presence_after_send_join(&self, room_id: &RoomId, user_id: &UserId) {
        let Some((runtime, services)) = self.federation.sender.task_handle() else {
            return;
        };
        let (room_id, user_id) = (room_id.to_owned(), user_id.to_owned());
        runtime.spawn(async move {
            for delay in JOIN_PRESENCE_DELAYS {
                tokio::time::sleep(delay).await;
                let Some(services) = services.upgrade() else {
                    return;
                };
                services.presence_on_join(&room_id, &user_id);
            }
        });
    }
}

/// The room and user of a join member event given as JSON (`None` for any other event).
pub fn joined_member(json: &str) -> Option<(OwnedRoomId, OwnedUserId)> {
    #[derive(serde::Deserialize)]
    struct Member {
        #[serde(rename = "type")]
        kind: String,
        room_id: OwnedRoomId,
        state_key: Option<String>,
        content: Membership,
    }
    #[derive(serde::Deserialize)]
    struct Membership {
        membership: Option<String>,
    }
    let event: Member = serde_json::from_str(json).ok()?;
    if event.kind != "m.room.member" || event.content.membership.as_deref() != Some("join") {
        return None;
    }
    let user = UserId::parse(event.state_key?).ok()?;
    Some((event.room_id, user))
}

/// Applies an inbound `m.presence` EDU's `content` from `origin`.
pub fn receive_presence(services: &Services, origin: &ServerName, content: &Value) {
    let Some(push) = content["push"].as_array() else {
        return;
    };
    let ours = services.federation.server_name();
    for entry in push.iter().take(MAX_PUSH) {
        let Some(user) = entry["user_id"].as_str().and_then(|u| UserId::parse(u).ok()) else {
            continue;
        };
        if user.server_name() != origin {
            continue;
        }
        let state = match entry["presence"].as_str() {
            Some("online") => PresenceState::Online,
            Some("unavailable") => PresenceState::Unavailable,
            Some("offline") => PresenceState::Offline,
            _ => continue,
        };
        let status_msg = entry["status_msg"]
            .as_str()
            .filter(|m| m.len() <= MAX_STATUS_BYTES)
            .map(str::to_owned);
        let last_active_ago = entry["last_active_ago"].as_u64().unwrap_or(0);
        let shared: Vec<Key> = shared_rooms(services, &user, ours);
        if shared.is_empty() {
            continue;
        }
        services
            .presence
            .set_remote(&user, state, status_msg, last_active_ago, &shared);
    }
}

/// The rooms where `user` (of another server) and one of our users are both joined, as keys.
fn shared_rooms(services: &Services, user: &OwnedUserId, ours: &ServerName) -> Vec<Key> {
    services
        .rooms
        .joined_rooms(user)
        .unwrap_or_default()
        .iter()
        .filter(|room| {
            services
                .rooms
                .members(room)
                .is_ok_and(|m| m.joined_servers().iter().any(|s| s == ours))
        })
        .map(|room| Key::room(room))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_join_member_events_name_a_joiner() {
        let event = |kind: &str, membership: &str| {
            json!({"type": kind, "room_id": "!r:a.example", "state_key": "@u:b.example",
                   "content": {"membership": membership}})
            .to_string()
        };
        let (room, user) = joined_member(&event("m.room.member", "join")).unwrap();
        assert_eq!((room.as_str(), user.as_str()), ("!r:a.example", "@u:b.example"));
        assert!(joined_member(&event("m.room.member", "leave")).is_none());
        assert!(joined_member(&event("m.room.message", "join")).is_none());
        assert!(joined_member("not json").is_none());
    }

    #[test]
    fn changes_inside_the_window_coalesce_into_one_send_at_its_end() {
        let start = Instant::now();
        let mut last = LastSent {
            at: None,
            pending: false,
        };
        assert_eq!(last.decide(start), Action::Now);
        let later = start + Duration::from_secs(3);
        assert_eq!(
            last.decide(later),
            Action::Later(PRESENCE_INTERVAL - Duration::from_secs(3))
        );
        assert!(last.pinned(), "a waiting send keeps its entry");
        assert_eq!(last.decide(later + Duration::from_secs(1)), Action::Nothing);
        // The delayed send happened (the task records it): the next window starts then.
        last = LastSent {
            at: Some(start + PRESENCE_INTERVAL),
            pending: false,
        };
        assert_eq!(last.decide(start + PRESENCE_INTERVAL * 2), Action::Now);
        assert!(!last.stale(start + PRESENCE_INTERVAL * 2));
        assert!(last.stale(start + PRESENCE_INTERVAL * 3));
    }
}
