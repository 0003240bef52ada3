//! Transactions to application services (spec, application service API, "Pushing events":
//! `PUT {url}/_matrix/app/v1/transactions/{txnId}` with `Authorization: Bearer {hs_token}`).
//!
//! **Which events.** A service gets an event (local or received over federation; never a
//! rejected or soft-failed one) when, as Synapse's `is_interested_in_event`: its sender is in
//! the service's users namespace; it is a member event whose target is (an invite to a bridged
//! user); its room id matches the rooms namespace; a user of the namespace is joined to the
//! room; or one of the room's aliases (its local directory aliases, its canonical alias and
//! alt aliases) matches the aliases namespace. Services without a URL get nothing.
//!
//! **Queue.** Every room event reaches the push worker's pending list in its own batch
//! (`pos_pushpending`, in stream order, below the watermark); the worker's batch that takes an
//! event off that list also appends it, in client format, to the queue of each interested
//! service ([`super::Appservices::queue_event`]; `tables::appservice_queue`:
//! service id SEP sequence number → the event's JSON). So an event is queued exactly once, in
//! stream order, and nothing is lost across a crash. A queue holds at most
//! [`MAX_QUEUED_EVENTS`]; past that the oldest are dropped, with a warning: a bridge down for
//! days must not grow the database without bound, and refusing would stall every room's push
//! evaluation behind one service. Ephemeral data (typing, receipts, to-device) stays in memory,
//! at most [`MAX_QUEUED_EPHEMERAL`] per service (oldest dropped), for services with
//! `receive_ephemeral` (or MSC2409's `push_ephemeral`).
//!
//! **Delivery.** One task per service with something queued, so one transaction per service
//! is in flight. A transaction carries the first [`MAX_EVENTS_PER_TXN`] queued events and up to
//! [`MAX_EPHEMERAL_PER_TXN`] ephemeral events and to-device messages; after a transaction with
//! events that did not fill it, delivery waits [`GATHER`] so events sent meanwhile go together. It is stored as built
//! (its id, the last queue entry it carries, its body: `service_astxn`) in a synced write
//! before it is first sent, and sent again unchanged, same id and same body, after every
//! failure (no connection, a timeout, a status other than 2xx) after a back-off of 1 s doubling
//! up to 5 min, and after a restart. Once answered 2xx, its events leave the queue and the
//! record is cleared in one batch. Transaction ids are a per-service counter, stored with the
//! record. A crash between the answer and that batch sends the same transaction (same id)
//! again, which the spec asks services to ignore. A successful ping ends a back-off at once.
//!
//! The body: `events`; for services receiving ephemeral data also `ephemeral` and
//! `de.sorunome.msc2409.ephemeral` (the same list), `to_device` and
//! `de.sorunome.msc2409.to_device`; for services with `org.matrix.msc3202`, the one-time key
//! counts and unused fallback key types of the devices of the namespace users the transaction
//! concerns (`org.matrix.msc3202.device_one_time_keys_count`, also under Synapse's older
//! `…_key_counts`, and `org.matrix.msc3202.device_unused_fallback_key_types`). MSC3202's
//! `device_lists` are not sent yet. The `hs_token` goes in the header only, as Synapse sends
//! it unless `use_appservice_legacy_authorization` is set.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ruma::{OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId, events::StateEventType};
use serde_json::{Value, json};
use tokio::sync::Notify;

mod delivery;
mod ping;

use delivery::deliver;
pub use delivery::spawn;
pub use ping::ping;

use super::{Appservices, Registered};
use crate::{
    Result,
    services::{
        Services,
        media::ssrf::{AddressPolicy, IpRange},
        rooms::pdu::Pdu,
    },
    storage::{
        Batch, Db,
        tables::appservice_queue::{AppserviceQueueTable, InFlight},
    },
};

/// Most events in one transaction.
pub const MAX_EVENTS_PER_TXN: usize = 100;
/// Most ephemeral events (and most to-device messages) in one transaction.
pub const MAX_EPHEMERAL_PER_TXN: usize = 100;
/// Most events queued for one service; the oldest are dropped past it.
pub const MAX_QUEUED_EVENTS: u64 = 100_000;
/// Most ephemeral events (and to-device messages) waiting in memory for one service.
pub const MAX_QUEUED_EPHEMERAL: usize = 1_000;
/// Wait after a service's first failure.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// How long delivery waits after a transaction with events when it is not behind, so events
/// sent meanwhile go together in the next.
pub const GATHER: Duration = Duration::from_millis(20);
/// How long a transaction or a ping may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read from a service.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Rooms whose namespace members are remembered, all services together.
const INTEREST_CACHE: usize = 10_000;
/// Most namespace members remembered, all rooms together.
const INTEREST_USERS: u64 = 1_000_000;

/// Weighs a remembered list of namespace members by its length.
#[derive(Clone)]
struct ListWeight;

impl quick_cache::Weighter<(usize, OwnedRoomId), Arc<Vec<OwnedUserId>>> for ListWeight {
    fn weight(&self, _key: &(usize, OwnedRoomId), list: &Arc<Vec<OwnedUserId>>) -> u64 {
        list.len() as u64 + 1
    }
}
/// Queue drops are logged at the first one and then every this many.
const DROP_LOG_EVERY: u64 = 1_000;

/// One service's queue state in memory.
struct Queue {
    service: Arc<Registered>,
    state: Mutex<QueueState>,
    /// Ends a back-off early (a successful ping).
    back: Notify,
}

#[derive(Default)]
struct QueueState {
    /// `tail` was read from storage.
    loaded: bool,
    /// The lowest sequence number that may still be queued.
    head: u64,
    /// The next sequence number to give out.
    tail: u64,
    /// Events dropped from the front since the last delivery (for the log).
    dropped: u64,
    /// Ephemeral events waiting, oldest first.
    ephemeral: VecDeque<Value>,
    /// To-device messages waiting, oldest first.
    to_device: VecDeque<Value>,
    /// Something was queued since the delivery task last looked.
    dirty: bool,
    /// Events were added to the push worker's batch being built (kicked once it is written).
    appended: bool,
    /// The transaction being sent was full (or recovered): delivery is behind, no gathering.
    backlog: bool,
    /// A delivery task runs for this service.
    running: bool,
    /// The current back-off, while failing.
    backoff: Option<Duration>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What delivery needs once started.
struct Started {
    runtime: tokio::runtime::Handle,
    services: Weak<Services>,
}

/// The queues and their delivery; held by [`Appservices`] once attached to storage.
pub struct Outbox {
    table: AppserviceQueueTable,
    queues: Vec<Arc<Queue>>,
    started: OnceLock<Started>,
    max_queued: u64,
    /// The back-off's first and longest waits and the request timeout, ms.
    timings_ms: (AtomicU64, AtomicU64, AtomicU64),
    /// (service index, room) → the users of the service's namespace with a membership in the
    /// room; forgotten at each member event of the room.
    interest: quick_cache::sync::Cache<(usize, OwnedRoomId), Arc<Vec<OwnedUserId>>, ListWeight>,
    policy: AddressPolicy,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("queues", &self.queues.len()).finish()
    }
}

impl Outbox {
    fn new(db: Arc<Db>, services: &[Arc<Registered>]) -> Outbox {
        // Application services usually run next to the server: every address is allowed.
        let policy = AddressPolicy {
            allow: ["0.0.0.0/0", "::/0"]
                .iter()
                .filter_map(|r| IpRange::parse(r).ok())
                .collect(),
            deny: Vec::new(),
        };
        let mut timings = (
            INITIAL_BACKOFF.as_millis() as u64,
            MAX_BACKOFF.as_millis() as u64,
            REQUEST_TIMEOUT.as_millis() as u64,
        );
        // Tests shorten the waits: "initial,max,timeout" in ms.
        if let Ok(text) = std::env::var("HEARTH_TEST_APPSERVICE_TIMINGS_MS") {
            let parts: Vec<u64> = text.split(',').filter_map(|p| p.trim().parse().ok()).collect();
            if let [initial, max, timeout] = parts[..] {
                timings = (initial.max(1), max.max(1), timeout.max(1));
            }
        }
        Outbox {
            table: AppserviceQueueTable::new(db),
            queues: services
                .iter()
                .map(|service| {
                    Arc::new(Queue {
                        service: Arc::clone(service),
                        state: Mutex::default(),
                        back: Notify::new(),
                    })
                })
                .collect(),
            started: OnceLock::new(),
            max_queued: MAX_QUEUED_EVENTS,
            timings_ms: (
                AtomicU64::new(timings.0),
                AtomicU64::new(timings.1),
                AtomicU64::new(timings.2),
            ),
            interest: quick_cache::sync::Cache::with_weighter(INTEREST_CACHE, INTEREST_USERS, ListWeight),
            policy,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timings_ms.2.load(Ordering::Relaxed))
    }

    /// Notes that `queue` has something new and starts its delivery task unless it runs.
    fn kick(&self, queue: &Arc<Queue>) {
        let Some(started) = self.started.get() else {
            return;
        };
        {
            let mut state = queue.lock();
            state.dirty = true;
            if state.running {
                return;
            }
            state.running = true;
        }
        started
            .runtime
            .spawn(deliver(started.services.clone(), Arc::clone(queue)));
    }

    /// Appends `event` to `queue` in `batch`, dropping the oldest past the cap.
    fn append(&self, batch: &mut Batch, queue: &Queue, event: &[u8]) -> Result<()> {
        let id = queue.service.id();
        let mut state = queue.lock();
        if !state.loaded {
            if let Some((first, last)) = self.table.bounds(id)? {
                state.head = first;
                state.tail = last + 1;
            }
            let stored = self.table.state(id)?;
            if let Some(InFlight {
                last_seq: Some(last), ..
            }) = stored.in_flight
            {
                state.tail = state.tail.max(last + 1);
            }
            state.loaded = true;
        }
        let seq = state.tail;
        state.tail += 1;
        self.table.queue_put(batch, id, seq, event);
        if state.tail - state.head > self.max_queued {
            let new_head = state.tail - self.max_queued;
            self.table.queue_delete_below(batch, id, new_head);
            let dropped = new_head - state.head;
            state.head = new_head;
            if state.dropped.is_multiple_of(DROP_LOG_EVERY) {
                tracing::warn!(
                    appservice = id,
                    dropped = state.dropped + dropped,
                    limit = self.max_queued,
                    "appservice queue full: the oldest events are dropped"
                );
            }
            state.dropped += dropped;
        }
        Ok(())
    }

    /// Queues ephemeral data for one service, in memory, and wakes its delivery.
    fn push_ephemeral(&self, queue: &Arc<Queue>, value: Value, to_device: bool) {
        {
            let mut state = queue.lock();
            let list = if to_device {
                &mut state.to_device
            } else {
                &mut state.ephemeral
            };
            if list.len() >= MAX_QUEUED_EPHEMERAL {
                list.pop_front();
            }
            list.push_back(value);
        }
        self.kick(queue);
    }
}

impl Appservices {
    /// Gives the services their persistent queues (once, when the server opens its storage).
    pub fn attach(&mut self, db: Arc<Db>) {
        self.outbox = Some(Outbox::new(db, &self.services));
    }

    fn outbox(&self) -> Option<&Outbox> {
        self.outbox.as_ref().filter(|o| !o.queues.is_empty())
    }

    /// The number of events queued for service `id` (reads them all: for reports and tests).
    pub fn queued_events(&self, id: &str) -> Result<usize> {
        match &self.outbox {
            Some(outbox) => Ok(outbox.table.first(id, usize::MAX)?.len()),
            None => Ok(0),
        }
    }

    /// Ends service `id`'s back-off: what is queued for it is sent now.
    pub fn service_is_back(&self, id: &str) {
        let Some(outbox) = self.outbox() else {
            return;
        };
        for queue in outbox.queues.iter().filter(|q| q.service.id() == id) {
            if queue.lock().backoff.take().is_some() {
                queue.back.notify_one();
            }
        }
    }
}

/// The users of `service`'s namespace with a membership (of any kind) in the room.
fn namespace_members(services: &Services, service: &Registered, room_id: &RoomId) -> Result<Vec<OwnedUserId>> {
    let members = services.rooms.members(room_id)?;
    Ok(members
        .iter()
        .filter(|(user, _)| service.is_user_in_namespace(user))
        .map(|(user, _)| user.to_owned())
        .collect())
}

/// Whether one of the room's aliases (local ones in the directory, the canonical alias and
/// alt aliases) is in `service`'s aliases namespace. Not cached: directory aliases change
/// without a room event.
fn alias_interest(services: &Services, service: &Registered, room_id: &RoomId) -> Result<bool> {
    if service.registration.namespaces.aliases.is_empty() {
        return Ok(false);
    }
    let alias_matches = |alias: &str| RoomAliasId::parse(alias).is_ok_and(|a| service.is_alias_in_namespace(&a));
    if services
        .directory
        .local_aliases_of(room_id)?
        .iter()
        .any(|a| alias_matches(a))
    {
        return Ok(true);
    }
    if let Some(canonical) = services
        .rooms
        .state_event(room_id, &StateEventType::RoomCanonicalAlias, "")?
        && let Ok(content) = serde_json::from_str::<Value>(canonical.content.get())
    {
        let alias = content.get("alias").and_then(Value::as_str);
        let alt = content.get("alt_aliases").and_then(Value::as_array);
        if alias.is_some_and(alias_matches)
            || alt.is_some_and(|list| list.iter().filter_map(Value::as_str).any(alias_matches))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Services {
    /// Whether service number `index` is interested in room `room_id` as of stream position
    /// `at` (`None`: now): its rooms namespace matches the room, a user of its namespace was
    /// joined then, or an alias of the room is in its namespace.
    ///
    /// A namespace user's membership as the member list has it counts when it was set at or
    /// before `at`; one set later (the push worker runs a little behind the writers) is looked
    /// up as of `at`, so a message sent just before a bridged user joined is not theirs.
    fn interested_in_room(&self, outbox: &Outbox, index: usize, room_id: &RoomId, at: Option<u64>) -> Result<bool> {
        let service = &outbox.queues[index].service;
        if service.is_room_in_namespace(room_id) {
            return Ok(true);
        }
        let key = (index, room_id.to_owned());
        let candidates = match outbox.interest.get(&key) {
            Some(known) => known,
            None => {
                let found = Arc::new(namespace_members(self, service, room_id)?);
                outbox.interest.insert(key, Arc::clone(&found));
                found
            }
        };
        if !candidates.is_empty() {
            let members = self.rooms.members(room_id)?;
            for user in candidates.iter() {
                let Some(now) = members.membership_of(user) else {
                    continue;
                };
                let joined = match at {
                    Some(at) if now.position > at => self
                        .rooms
                        .member_at(room_id, user, at)?
                        .and_then(|pdu| pdu.content_str("membership"))
                        .is_some_and(|m| m == "join"),
                    _ => now.membership == "join",
                };
                if joined {
                    return Ok(true);
                }
            }
        }
        alias_interest(self, service, room_id)
    }

    /// Queues room event `event_id` for each interested service with a URL, in `batch` (the
    /// push worker's batch that takes the event off its pending list, so the event is queued
    /// exactly once). Call [`Self::appservice_events_queued`] once the batch is written.
    pub fn queue_appservice_event(&self, batch: &mut Batch, position: u64, room_id: &RoomId, pdu: &Pdu) -> Result<()> {
        let Some(outbox) = self.appservices.outbox() else {
            return Ok(());
        };
        if pdu.rejected {
            return Ok(());
        }
        let kind = pdu.kind.to_string();
        let target = (kind == "m.room.member")
            .then(|| pdu.state_key.as_deref().and_then(|s| UserId::parse(s).ok()))
            .flatten();
        // Who is in the room may have changed.
        if kind == "m.room.member" {
            for index in 0..outbox.queues.len() {
                outbox.interest.remove(&(index, room_id.to_owned()));
            }
        }
        let mut client: Option<Vec<u8>> = None;
        for (index, queue) in outbox.queues.iter().enumerate() {
            let service = &queue.service;
            if service.registration.url.is_none() {
                continue;
            }
            let interested = service.is_user_in_namespace(&pdu.sender)
                || target.as_deref().is_some_and(|t| service.is_user_in_namespace(t))
                || self.interested_in_room(outbox, index, room_id, Some(position))?;
            if !interested {
                continue;
            }
            if client.is_none() {
                client = Some(pdu.to_client_json()?.get().as_bytes().to_vec());
            }
            if let Some(bytes) = &client {
                outbox.append(batch, queue, bytes)?;
                queue.lock().appended = true;
            }
        }
        Ok(())
    }

    /// After the batch of [`Self::queue_appservice_event`] is written: delivery of the
    /// services that got events starts.
    pub fn appservice_events_queued(&self) {
        let Some(outbox) = self.appservices.outbox() else {
            return;
        };
        for queue in &outbox.queues {
            let appended = std::mem::take(&mut queue.lock().appended);
            if appended {
                outbox.kick(queue);
            }
        }
    }

    /// Ephemeral event `event` (`m.typing`, `m.receipt`) of `room_id` for the services that
    /// receive ephemeral data and are interested in the room.
    pub fn appservice_ephemeral(&self, room_id: &RoomId, event: Value) {
        let Some(outbox) = self.appservices.outbox() else {
            return;
        };
        for (index, queue) in outbox.queues.iter().enumerate() {
            let service = &queue.service;
            if !service.receive_ephemeral || service.registration.url.is_none() {
                continue;
            }
            match self.interested_in_room(outbox, index, room_id, None) {
                Ok(true) => outbox.push_ephemeral(queue, event.clone(), false),
                Ok(false) => {}
                Err(e) => tracing::warn!(appservice = service.id(), %room_id, error = %e, "ephemeral event not queued"),
            }
        }
    }

    /// The room's typing users changed: the services that care get the new `m.typing`.
    pub fn appservice_typing(&self, room_id: &RoomId) {
        if self.appservices.outbox().is_none() {
            return;
        }
        let users = self.typing.changed_since(room_id, None, u64::MAX).unwrap_or_default();
        self.appservice_ephemeral(
            room_id,
            json!({"type": "m.typing", "room_id": room_id, "content": {"user_ids": users}}),
        );
    }

    /// A public read receipt: the services that care get it as an `m.receipt`.
    pub fn appservice_receipt(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        event_id: &ruma::EventId,
        thread: Option<&str>,
    ) {
        if self.appservices.outbox().is_none() {
            return;
        }
        let mut data = json!({"ts": crate::util::now_ms()});
        if let Some(thread) = thread {
            data["thread_id"] = json!(thread);
        }
        self.appservice_ephemeral(
            room_id,
            json!({
                "type": "m.receipt",
                "room_id": room_id,
                "content": {event_id.as_str(): {"m.read": {user_id.as_str(): data}}},
            }),
        );
    }

    /// To-device messages sent to local users: those for devices of namespace users go to
    /// the services receiving ephemeral data, as MSC2409 has them (`to_user_id`,
    /// `to_device_id`). `messages`: (recipient, device or `None` for all, content).
    pub fn appservice_to_device(
        &self,
        sender: &UserId,
        event_type: &str,
        messages: &[(ruma::OwnedUserId, Option<String>, Value)],
    ) {
        let Some(outbox) = self.appservices.outbox() else {
            return;
        };
        for queue in &outbox.queues {
            let service = &queue.service;
            if !service.receive_ephemeral || service.registration.url.is_none() {
                continue;
            }
            for (user, device, content) in messages {
                if !service.is_user_in_namespace(user) {
                    continue;
                }
                let known = self.device_ids(user, None, None).unwrap_or_default();
                let devices = match device {
                    Some(device) => known.into_iter().filter(|d| d == device).collect(),
                    None => known,
                };
                for device in devices {
                    outbox.push_ephemeral(
                        queue,
                        json!({
                            "type": event_type,
                            "sender": sender,
                            "content": content,
                            "to_user_id": user,
                            "to_device_id": device,
                        }),
                        true,
                    );
                }
            }
        }
    }
}
