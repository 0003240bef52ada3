//! Typing notifications (spec "Typing Notifications"): in memory only, as DESIGN.md asks. Each
//! room keeps who is typing until when, and the ephemeral-counter value of its last change, so a
//! sync sends `m.typing` for a room only when its list changed since the client's token. A
//! timer per typing start removes the user when the timeout passes (and wakes the syncs).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::sync::notifier::{Key, Notifier};

/// Longest typing timeout honoured.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    /// Ephemeral counter value of the last change.
    changed: u64,
    /// Typing users and when they stop.
    users: HashMap<OwnedUserId, Instant>,
}

/// The typing service.
pub struct Typing {
    inner: Arc<Inner>,
}

struct Inner {
    notifier: Arc<Notifier>,
    rooms: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedRoomId, RoomTyping>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops expired entries of a room; stamps and wakes if any went.
    fn expire(&self, room_id: &RoomId) {
        let now = Instant::now();
        let changed = {
            let mut rooms = self.lock();
            let Some(room) = rooms.get_mut(room_id) else { return };
            let before = room.users.len();
            room.users.retain(|_, until| *until > now);
            if room.users.len() == before {
                return;
            }
            room.changed = self.notifier.next_ephemeral();
            true
        };
        if changed {
            self.notifier.wake(&[Key::room(room_id)]);
        }
    }
}

impl Typing {
    /// Builds the service.
    pub fn new(notifier: Arc<Notifier>) -> Self {
        Self {
            inner: Arc::new(Inner {
                notifier,
                rooms: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts (with a timeout) or stops a user's typing in a room. The caller checks that the
    /// user is joined.
    pub fn set(&self, room_id: &RoomId, user_id: &UserId, timeout: Option<Duration>) {
        let timeout = timeout.map(|t| t.min(MAX_TIMEOUT));
        let changed = {
            let mut rooms = self.inner.lock();
            let room = rooms.entry(room_id.to_owned()).or_default();
            let changed = match timeout {
                Some(t) => room.users.insert(user_id.to_owned(), Instant::now() + t).is_none(),
                None => room.users.remove(user_id).is_some(),
            };
            if changed {
                room.changed = self.inner.notifier.next_ephemeral();
            }
            changed
        };
        if changed {
            self.inner.notifier.wake(&[Key::room(room_id)]);
        }
        // A renewed timeout gets its own timer; the earlier one then finds nothing expired.
        if let Some(t) = timeout
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let inner = Arc::clone(&self.inner);
            let room_id = room_id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(t + Duration::from_millis(5)).await;
                inner.expire(&room_id);
            });
        }
    }

    /// The users typing in a room, if that list changed after ephemeral value `since` (always
    /// when `since` is `None` and someone types).
    /// Changes stamped after `up_to` (the ephemeral value a sync's token ends at) wait for the
    /// next sync, so a token never covers a change its answer did not carry.
    pub fn changed_since(&self, room_id: &RoomId, since: Option<u64>, up_to: u64) -> Option<Vec<OwnedUserId>> {
        let now = Instant::now();
        let rooms = self.inner.lock();
        let room = rooms.get(room_id)?;
        let mut users: Vec<OwnedUserId> = room
            .users
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(u, _)| u.clone())
            .collect();
        match since {
            _ if room.changed > up_to => None,
            Some(since) if room.changed <= since => None,
            None if users.is_empty() => None,
            _ => {
                users.sort();
                Some(users)
            }
        }
    }
}
