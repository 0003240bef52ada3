//! `/sync`: everything that changed for a user since their last sync, and the long-poll that
//! waits for it (spec "Syncing").
//!
//! # Stream positions and the watermark
//!
//! Everything durable a client syncs (room events, receipts, account data) is stamped with one
//! global stream position (`storage::positions`). Writers finish out of order, so a sync reads
//! only up to the *watermark*, the highest position below which every write is done, and hands
//! that back in its token: the next sync reads from there. An event committed out of order
//! is therefore neither skipped (it is above the old token until the watermark passes it) nor
//! sent twice (it is below the new token once it was sent). In-memory changes (typing,
//! presence) have their own counter, the *ephemeral* value, and the token carries both:
//! `s{position}_e{ephemeral}` (`services::tokens`).
//!
//! # Waking
//!
//! A sync with nothing to say waits (up to its `timeout`) on the [`notifier`], which wakes it
//! only for changes that concern the user (their rooms, their account data, their invites).
//!
//! # Rooms
//!
//! The user's rooms come from the membership index; the position of the user's own member
//! event says whether the membership changed since the token (a newly joined room is sent as in
//! an initial sync; a room left since the token goes to `leave` with the timeline up to the
//! departure). Building the answer is in [`build`].
//!
//! # Memory
//!
//! An initial sync (or a `full_state` one) holds the user's whole world in memory while it is
//! built and serialised: megabytes for an account in a thousand rooms. [`InitialSyncs`] lets
//! only `[sync] initial_concurrency` of them be under construction at once, whoever asks; the
//! others wait their turn (a fair queue). The permit is taken after authentication and held
//! until the answer is serialised ([`Answer`]), never across a long-poll wait, so it cannot
//! deadlock (one user's many devices simply queue); incremental syncs never take one.

pub mod build;
pub mod filter;
pub mod lazy;
pub mod notifier;
pub mod sliding;
pub mod thread_unread;
pub mod unread;

use std::{sync::Arc, time::Duration};

use ruma::{
    OwnedUserId, UserId,
    api::client::{filter::FilterDefinition, sync::sync_events::v3},
    presence::PresenceState,
};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use self::notifier::{Key, Notifier};
pub use super::tokens::SyncToken as Token;
use super::{Services, keys::to_device::TO_DEVICE_LIMIT};
use crate::{
    Error, Result,
    storage::{Batch, Db, positions::Positions},
    util::bounded::BoundedMap,
};

/// Longest wait of one long-poll.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// The parameters of one `/sync`.
pub struct Params {
    /// The requesting device (its own events carry `unsigned.transaction_id`).
    pub device_id: Option<String>,
    /// The token of the previous sync.
    pub since: Option<String>,
    /// Send full state even for an incremental sync.
    pub full_state: bool,
    /// Send `state_after` (the state up to the end of each timeline) instead of `state`.
    pub use_state_after: bool,
    /// How long to wait for news.
    pub timeout: Option<Duration>,
    /// Presence to set.
    pub set_presence: PresenceState,
    /// The filter parameter.
    pub filter: Option<v3::Filter>,
}

/// The bound on initial and `full_state` syncs under construction at once. A user's own
/// initial syncs queue behind each other before they queue for a turn, so one account firing
/// many (or reading its answers slowly) holds at most one of the turns everybody shares.
pub struct InitialSyncs {
    permits: Arc<Semaphore>,
    /// One gate per user with an initial sync under way (entries in use are never dropped).
    users: BoundedMap<OwnedUserId, Arc<AsyncMutex<()>>>,
}

/// A turn: kept until the answer is sent.
pub struct Turn {
    _permit: OwnedSemaphorePermit,
    _user: OwnedMutexGuard<()>,
}

/// Users whose initial-sync gates are kept (more only while in use).
const GATED_USERS: usize = 10_000;

impl InitialSyncs {
    /// At most `limit` (at least 1) at once.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit.max(1))),
            users: BoundedMap::new(GATED_USERS),
        }
    }

    /// Waits for `user_id`'s other initial syncs, then for a turn (first come, first served).
    pub async fn turn(&self, user_id: &UserId) -> Option<Turn> {
        let gate = self.users.get_or_insert_with(
            user_id,
            || user_id.to_owned(),
            Default::default,
            |gate| Arc::clone(gate),
        );
        let user = gate.lock_owned().await;
        // The semaphore is never closed; were it, the sync would go unbounded, not fail.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        Some(Turn {
            _permit: permit,
            _user: user,
        })
    }
}

/// A `/sync` answer with the turn it was built in: keep it until the answer is serialised
/// (dropping it lets the next initial sync start).
pub struct Answer {
    /// The answer.
    pub response: v3::Response,
    /// The turn of an initial or `full_state` sync; `None` for an incremental one.
    pub turn: Option<Turn>,
}

/// Commits one change on the global stream: takes a position, marks it for the notifier with
/// `keys`, queues the change (`queue` gets the position) and commits; once durable the
/// position completes and the notifier flushes. Returns the position.
pub(crate) async fn commit_on_stream(
    db: &std::sync::Arc<Db>,
    positions: &Positions,
    notifier: &Notifier,
    keys: Vec<Key>,
    queue: impl FnOnce(&mut Batch, u64) -> Result<()>,
) -> Result<u64> {
    let ticket = positions.allocate()?;
    let position = ticket.position();
    let mut batch = db.batch();
    let written = match queue(&mut batch, position) {
        Ok(()) => batch.commit().await.map_err(Error::from),
        Err(e) => Err(e),
    };
    notifier.mark(position, keys);
    match written {
        Ok(()) => ticket.complete(),
        Err(_) => drop(ticket),
    }
    notifier.flush(positions.watermark());
    written.map(|()| position)
}

/// Runs one `/sync` for `user_id`: answers at once when there is news (or for an initial or
/// `full_state` sync), else waits until there is or the timeout passes.
pub async fn sync(services: &Services, user_id: &UserId, params: Params) -> Result<Answer> {
    let since = params
        .since
        .as_deref()
        .map(|since| services.rooms.sync_point("since", since))
        .transpose()?;
    let filter: FilterDefinition = services.filters.resolve(user_id, params.filter)?;
    let rooms = &services.rooms;
    let keys = watched(services, user_id, params.set_presence)?;
    // Registered before the first look, so nothing committed in between is missed.
    let waiter = rooms.notifier().register(keys);
    // A sync from `since` shows the client holds the to-device messages up to it.
    if let (Some(since), Some(device)) = (since, params.device_id.as_deref()) {
        services
            .keys
            .acknowledge_to_device(user_id, device, since.position)
            .await?;
    }
    let timeout = params.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    // Initial and `full_state` syncs answer at once (no wait below): they take their turn here
    // and hold it until the answer is serialised.
    let turn = if since.is_none() || params.full_state {
        services.initial_syncs.turn(user_id).await
    } else {
        None
    };
    loop {
        // A token at the watermark with no ephemeral change after it: nothing can be new, so
        // wait without building an answer that would be empty.
        let caught_up =
            since.is_some_and(|s| s.position >= rooms.watermark() && s.ephemeral >= rooms.notifier().ephemeral());
        if caught_up && !params.full_state && tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = waiter.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            continue;
        }
        let response = build::build(
            services,
            (user_id, params.device_id.as_deref()),
            since,
            &filter,
            (params.full_state, params.use_state_after),
        )?;
        let empty = response.rooms.is_empty()
            && response.presence.is_empty()
            && response.account_data.is_empty()
            && response.to_device.is_empty()
            && response.device_lists.is_empty();
        if since.is_none() || params.full_state || !empty || tokio::time::Instant::now() >= deadline {
            if let Some(device) = params.device_id.as_deref()
                && response.to_device.events.len() >= TO_DEVICE_LIMIT
            {
                // What did not fit moves past this answer's token, for the next sync.
                let up_to = Token::parse("next_batch", &response.next_batch)?.position;
                let after = since.map_or(0, |s| s.position);
                services.keys.requeue_undelivered(user_id, device, after, up_to).await?;
            }
            return Ok(Answer { response, turn });
        }
        tokio::select! {
            _ = waiter.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// What a sync of `user_id` (v2 or sliding) watches: the notifier keys of their rooms and of
/// themselves. Marks the user seen with `presence` in the rooms they joined.
pub(crate) fn watched(services: &Services, user_id: &UserId, presence: PresenceState) -> Result<Vec<Key>> {
    let memberships = services.rooms.memberships_of(user_id)?;
    let mut keys: Vec<Key> = memberships.iter().map(|(room, _)| Key::room(room)).collect();
    let joined: Vec<Key> = memberships
        .iter()
        .filter(|(_, m)| m.membership == "join")
        .map(|(room, _)| Key::room(room))
        .collect();
    services.presence_seen(user_id, presence, &joined);
    keys.push(Key::user(user_id));
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use ruma::UserId;

    use super::InitialSyncs;

    /// One user's initial syncs wait for each other, not in the queue everyone shares: while
    /// Alice holds a turn, her second waits and Bob still gets the free one.
    #[tokio::test]
    async fn one_user_holds_at_most_one_turn() {
        let syncs = InitialSyncs::new(2);
        let alice = UserId::parse("@alice:x").unwrap();
        let bob = UserId::parse("@bob:x").unwrap();
        let first = syncs.turn(&alice).await.expect("a turn");
        let mut second = Box::pin(syncs.turn(&alice));
        assert!(
            (&mut second).now_or_never().is_none(),
            "Alice's second sync waits for her first"
        );
        let bobs = syncs.turn(&bob).now_or_never().flatten();
        assert!(bobs.is_some(), "Bob gets the other turn at once");
        drop(bobs);
        drop(first);
        assert!(
            second.await.is_some(),
            "Alice's second sync goes once her first is done"
        );
    }
}
