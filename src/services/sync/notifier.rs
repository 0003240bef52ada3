//! Waking long-polling syncs: which waiting requests a committed change concerns.
//!
//! A change concerns a *room* (its members are woken: a message, a public receipt, typing) or a
//! *user* (account data, a private receipt, an invite that is not yet in the user's rooms). A
//! long-poll registers for its user and every room it has a membership in, *before* it first
//! looks for news, so a change committed in between is never missed.
//!
//! Durable changes have a stream position and become visible to readers only when the
//! watermark passes it, which can be later than their own commit (an earlier position may still
//! be in flight). So a writer *marks* its position with the keys it concerns, and after every
//! ticket completes it *flushes*: the marks at or below the watermark wake their keys then. A
//! woken request therefore always finds its change below the watermark. In-memory changes
//! (typing, presence) have no position: they bump the ephemeral counter and wake at once.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use ruma::{RoomId, UserId};
use tokio::sync::Notify;

/// What a change concerns.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// Every member of a room.
    Room(String),
    /// One user.
    User(String),
    /// The receipts of a room: marked with every receipt (public or private) and never waited
    /// on, so [`Notifier::quiet_since`] tells whether any receipt of the room moved.
    Receipts(String),
    /// Every device-list change (marked with each, never waited on): whether any device list
    /// changed since a token.
    DeviceLists,
    /// Every room event (marked by the rooms write path): the push worker waits on it to
    /// evaluate new events once they are below the watermark.
    Push,
}

impl Key {
    /// The room key.
    pub fn room(room_id: &RoomId) -> Key {
        Key::Room(room_id.as_str().to_owned())
    }

    /// The user key.
    pub fn user(user_id: &UserId) -> Key {
        Key::User(user_id.as_str().to_owned())
    }

    /// The room's receipts key.
    pub fn receipts(room_id: &RoomId) -> Key {
        Key::Receipts(room_id.as_str().to_owned())
    }
}

/// The notifier (one per process).
pub struct Notifier {
    inner: Mutex<Inner>,
    ephemeral: AtomicU64,
    /// Every position at or below this was written before the process started.
    floor: u64,
}

#[derive(Default)]
struct Inner {
    /// Marked positions not yet below the watermark, with the keys they wake.
    pending: BTreeMap<u64, Vec<Key>>,
    /// Waiting requests by key.
    waiters: HashMap<Key, Vec<Weak<Notify>>>,
    /// The highest position marked for each key since the process started.
    last_marked: HashMap<Key, u64>,
}

/// A registered long-poll: woken (a stored permit, never lost) by any change of its keys.
pub struct Waiter {
    notify: Arc<Notify>,
}

impl Waiter {
    /// Resolves when a change concerning one of the keys was flushed since registration or
    /// since the last wake.
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

impl Notifier {
    /// A notifier whose ephemeral counter starts at the clock (milliseconds), so a restart
    /// never hands out a value a client already holds. `floor` is the stream watermark at
    /// start: everything at or below it was written before (see [`Notifier::quiet_since`]).
    pub fn new(floor: u64) -> Self {
        Notifier {
            inner: Mutex::new(Inner::default()),
            ephemeral: AtomicU64::new(crate::util::now_ms()),
            floor,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter for `keys`.
    pub fn register(&self, keys: impl IntoIterator<Item = Key>) -> Waiter {
        let notify = Arc::new(Notify::new());
        let mut inner = self.lock();
        for key in keys {
            let list = inner.waiters.entry(key).or_default();
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(&notify));
        }
        Waiter { notify }
    }

    /// Records that the change at `position` concerns `keys`; they are woken by the first
    /// [`Notifier::flush`] with a watermark at or above it.
    pub fn mark(&self, position: u64, keys: Vec<Key>) {
        let mut inner = self.lock();
        for key in &keys {
            let last = inner.last_marked.entry(key.clone()).or_default();
            *last = (*last).max(position);
        }
        inner.pending.entry(position).or_default().extend(keys);
    }

    /// True when nothing at a position above `after` concerns `key`: no mark since the start,
    /// or none above `after`, and `after` is not from before the start. A writer marks before
    /// its position completes, so a reader bounded by the watermark can skip reading what this
    /// says did not change.
    pub fn quiet_since(&self, key: &Key, after: u64) -> bool {
        after >= self.floor && self.lock().last_marked.get(key).is_none_or(|last| *last <= after)
    }

    /// Wakes the keys of every mark at or below `watermark`. Call after completing a ticket.
    pub fn flush(&self, watermark: u64) {
        let mut inner = self.lock();
        let later = inner.pending.split_off(&(watermark + 1));
        let due = std::mem::replace(&mut inner.pending, later);
        for key in due.into_values().flatten() {
            Self::wake_locked(&mut inner, &key);
        }
    }

    /// The ephemeral counter (typing, presence): its current value.
    pub fn ephemeral(&self) -> u64 {
        self.ephemeral.load(Ordering::Acquire)
    }

    /// Bumps the ephemeral counter and wakes `keys` at once; returns the new value. Call it
    /// after the in-memory change is in place.
    pub fn ephemeral_change(&self, keys: &[Key]) -> u64 {
        let value = self.ephemeral.fetch_add(1, Ordering::AcqRel) + 1;
        let mut inner = self.lock();
        for key in keys {
            Self::wake_locked(&mut inner, key);
        }
        value
    }

    /// Takes the next ephemeral value without waking anyone (the change is stamped with it
    /// before it becomes visible; call [`Notifier::wake`] after).
    pub fn next_ephemeral(&self) -> u64 {
        self.ephemeral.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Wakes `keys` now.
    pub fn wake(&self, keys: &[Key]) {
        let mut inner = self.lock();
        for key in keys {
            Self::wake_locked(&mut inner, key);
        }
    }

    fn wake_locked(inner: &mut Inner, key: &Key) {
        if let Some(list) = inner.waiters.get_mut(key) {
            list.retain(|w| match w.upgrade() {
                Some(notify) => {
                    notify.notify_one();
                    true
                }
                None => false,
            });
            if list.is_empty() {
                inner.waiters.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_keys_are_those_not_marked_after_the_token() {
        let n = Notifier::new(10);
        let alice = Key::User("@a:x".into());
        // A token from before the start: anything may have changed.
        assert!(!n.quiet_since(&alice, 9));
        assert!(n.quiet_since(&alice, 10));
        n.mark(12, vec![alice.clone()]);
        n.mark(11, vec![alice.clone()]);
        assert!(!n.quiet_since(&alice, 11));
        assert!(n.quiet_since(&alice, 12));
        assert!(n.quiet_since(&Key::User("@b:x".into()), 10));
    }

    #[tokio::test]
    async fn marks_wake_only_once_the_watermark_passes_them() {
        let n = Notifier::new(0);
        let alice = n.register([Key::User("@a:x".into()), Key::Room("!r".into())]);
        let bob = n.register([Key::User("@b:x".into())]);
        n.mark(7, vec![Key::Room("!r".into())]);
        n.flush(6);
        let quick = std::time::Duration::from_millis(20);
        assert!(tokio::time::timeout(quick, alice.changed()).await.is_err());
        n.flush(7);
        assert!(tokio::time::timeout(quick, alice.changed()).await.is_ok());
        assert!(tokio::time::timeout(quick, bob.changed()).await.is_err());
        let before = n.ephemeral();
        assert_eq!(n.ephemeral_change(&[Key::User("@b:x".into())]), before + 1);
        assert!(tokio::time::timeout(quick, bob.changed()).await.is_ok());
    }
}
