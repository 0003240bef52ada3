//! Presence (spec "Presence"), in memory: each user's state, status message and last activity,
//! stamped with the ephemeral counter when it changes so a sync sends only what moved. A user
//! idle for five minutes reads as `unavailable`; `currently_active` holds for the first minute.
//! Nothing survives a restart: every user then reads as offline until they are next seen.
//! Other servers' users are here too, from their `m.presence` EDUs (`federation/presence.rs`,
//! which also sends ours out when they change).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{OwnedUserId, UserId, presence::PresenceState};

use super::sync::notifier::{Key, Notifier};
use crate::util;

/// Idle time after which `online` reads as `unavailable`.
const IDLE_MS: u64 = 5 * 60 * 1000;
/// Users (ours and other servers') whose presence is kept: past that, other servers' users
/// not yet known are not recorded.
pub const MAX_USERS: usize = 200_000;
/// Activity this recent counts as `currently_active`.
const ACTIVE_MS: u64 = 60 * 1000;

#[derive(Clone)]
struct Record {
    state: PresenceState,
    status_msg: Option<String>,
    last_active_ms: u64,
    changed: u64,
}

/// A user's presence as clients see it.
#[derive(Clone, Debug)]
pub struct Status {
    /// The state (`online` turns `unavailable` after five idle minutes).
    pub state: PresenceState,
    /// The status message.
    pub status_msg: Option<String>,
    /// Milliseconds since the user was last active.
    pub last_active_ago: u64,
    /// Whether they were active in the last minute.
    pub currently_active: bool,
}

/// The presence service.
pub struct Presence {
    notifier: Arc<Notifier>,
    users: Mutex<HashMap<OwnedUserId, Record>>,
}

impl Presence {
    /// Builds the service.
    pub fn new(notifier: Arc<Notifier>) -> Self {
        Self {
            notifier,
            users: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedUserId, Record>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets a user's presence (`PUT …/presence/{userId}/status`, or a sync's `set_presence`
    /// with `status_msg` left as it was when `None` and `keep_msg`). `wake` are the rooms whose
    /// members see the user; they are woken when the visible presence changes.
    /// Whether the visible presence changed is returned.
    pub fn set(
        &self,
        user_id: &UserId,
        state: PresenceState,
        status_msg: Option<Option<String>>,
        wake: &[Key],
    ) -> bool {
        let now = util::now_ms();
        let changed = {
            let mut users = self.lock();
            let before = users.get(user_id).map(|r| Self::status_of(r, now));
            let record = users.entry(user_id.to_owned()).or_insert(Record {
                state: PresenceState::Offline,
                status_msg: None,
                last_active_ms: 0,
                changed: 0,
            });
            record.state = state.clone();
            if state != PresenceState::Offline {
                record.last_active_ms = now;
            }
            if let Some(msg) = status_msg {
                record.status_msg = msg;
            }
            let after = Self::status_of(record, now);
            let changed = before.is_none_or(|b| {
                b.state != after.state
                    || b.status_msg != after.status_msg
                    || b.currently_active != after.currently_active
            });
            if changed {
                record.changed = self.notifier.next_ephemeral();
            }
            changed
        };
        if changed {
            self.notifier.wake(wake);
        }
        changed
    }

    /// Sets the presence of a user of another server, as its `m.presence` EDU says
    /// (`last_active_ago` ms before now); a user not yet known is dropped when
    /// [`MAX_USERS`] are. `wake`: the rooms shared with our users.
    pub fn set_remote(
        &self,
        user_id: &UserId,
        state: PresenceState,
        status_msg: Option<String>,
        last_active_ago: u64,
        wake: &[Key],
    ) {
        let now = util::now_ms();
        let changed = {
            let mut users = self.lock();
            if !users.contains_key(user_id) && users.len() >= MAX_USERS {
                return;
            }
            let record = users.entry(user_id.to_owned()).or_insert(Record {
                state: PresenceState::Offline,
                status_msg: None,
                last_active_ms: 0,
                changed: 0,
            });
            let before = Self::status_of(record, now);
            record.state = state;
            record.status_msg = status_msg;
            record.last_active_ms = now.saturating_sub(last_active_ago);
            let after = Self::status_of(record, now);
            let changed = record.changed == 0
                || before.state != after.state
                || before.status_msg != after.status_msg
                || before.currently_active != after.currently_active;
            if changed {
                record.changed = self.notifier.next_ephemeral();
            }
            changed
        };
        if changed {
            self.notifier.wake(wake);
        }
    }

    /// Marks activity from a sync with `set_presence`: `offline` changes nothing; otherwise
    /// the state is set (keeping the status message).
    pub fn seen(&self, user_id: &UserId, state: PresenceState, wake: &[Key]) -> bool {
        if state == PresenceState::Offline {
            return false;
        }
        self.set(user_id, state, None, wake)
    }

    fn status_of(record: &Record, now: u64) -> Status {
        let ago = now.saturating_sub(record.last_active_ms);
        let state = if record.state == PresenceState::Online && ago > IDLE_MS {
            PresenceState::Unavailable
        } else {
            record.state.clone()
        };
        Status {
            currently_active: state == PresenceState::Online && ago <= ACTIVE_MS,
            state,
            status_msg: record.status_msg.clone(),
            last_active_ago: ago,
        }
    }

    /// A user's presence (`None`: never seen since the start).
    pub fn get(&self, user_id: &UserId) -> Option<Status> {
        let now = util::now_ms();
        self.lock().get(user_id).map(|r| Self::status_of(r, now))
    }

    /// Users whose presence changed after ephemeral value `since` (all known when `None`) and
    /// up to `up_to`, the value the sync's token ends at (later changes wait for the next sync).
    pub fn changed_since(&self, since: Option<u64>, up_to: u64) -> Vec<(OwnedUserId, Status)> {
        let now = util::now_ms();
        self.lock()
            .iter()
            .filter(|(_, r)| r.changed <= up_to && since.is_none_or(|s| r.changed > s))
            .map(|(u, r)| (u.clone(), Self::status_of(r, now)))
            .collect()
    }
}

impl super::Services {
    /// Sets a user's presence and wakes the members of their joined rooms.
    pub fn set_presence(
        &self,
        user_id: &UserId,
        state: PresenceState,
        status_msg: Option<Option<String>>,
    ) -> crate::Result<()> {
        if status_msg
            .as_ref()
            .is_some_and(|m| m.as_ref().is_some_and(|m| m.len() > 1024))
        {
            return Err(crate::Error::invalid_param("status_msg is limited to 1024 bytes"));
        }
        let wake: Vec<Key> = self.rooms.joined_rooms(user_id)?.iter().map(|r| Key::room(r)).collect();
        if self.presence.set(user_id, state, status_msg, &wake) {
            self.announce_presence(user_id);
        }
        Ok(())
    }

    /// A sync's `set_presence` (`Presence::seen`), a change told to other servers too.
    pub fn presence_seen(&self, user_id: &UserId, state: PresenceState, wake: &[Key]) {
        if self.presence.seen(user_id, state, wake) {
            self.announce_presence(user_id);
        }
    }

    /// Whether two users are both joined to some room.
    pub fn share_a_room(&self, a: &UserId, b: &UserId) -> crate::Result<bool> {
        for room in self.rooms.joined_rooms(a)? {
            if self.rooms.membership(&room, b)?.as_deref() == Some("join") {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_turns_unavailable_when_idle() {
        let record = Record {
            state: PresenceState::Online,
            status_msg: None,
            last_active_ms: 1_000,
            changed: 1,
        };
        let fresh = Presence::status_of(&record, 1_000 + 30_000);
        assert_eq!(fresh.state, PresenceState::Online);
        assert!(fresh.currently_active);
        let idle = Presence::status_of(&record, 1_000 + IDLE_MS + 1);
        assert_eq!(idle.state, PresenceState::Unavailable);
        assert!(!idle.currently_active);
    }
}
