//! Rooms: the signed event DAG, its state and its timeline.
//!
//! Every event, local or (later) remote, is a full PDU. Creating one for a room is serialised
//! by a per-room lock so local sends never fork the DAG: under the lock the event is built on
//! the room's forward extremities, checked against the authorization rules of the room version
//! (ruma-state-res, the same check a remote event gets), and written in one batch with its
//! timeline position, its state-before pointer and, for state events, the new current state.
//!
//! The lock is held while the event is built, checked and queued for writing, not across the
//! disk sync: the lock guards the room's *head* (forward extremities, depth, current state) in
//! memory, so the next sender builds on an event that is still being written. Batches go
//! through the ordered [`CommitQueue`], which syncs every group of queued events once, so
//! concurrent senders share a WAL sync and a crash keeps a prefix of the room's events. Until
//! an event is durable its bytes are served from memory (`pending`), and its stream position
//! stays above the readers' watermark.

pub mod create;
pub mod membership;
pub mod pdu;
mod sync_hooks;
pub mod upgrade;
pub mod visibility;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::Mutex as AsyncMutex;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId,
    RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
    state_res,
};
use serde_json::value::RawValue;

use self::pdu::Pdu;
use super::{directory::Directory, events, server_keys::ServerKeys, sync::notifier::Notifier};
use crate::{
    Error, Result,
    storage::{
        Db,
        commit_queue::{CommitQueue, Queued},
        positions::{Positions, Ticket},
        tables::{
            membership::MembershipTable,
            pdus::PdusTable,
            shortids::ShortIds,
            state::{Loaded, StateMap, StateTable},
            timeline::TimelineTable,
            transactions::TransactionsTable,
        },
    },
    util,
};

/// A new event, before it is placed in the DAG.
pub struct NewEvent<'a> {
    /// Type.
    pub kind: &'a str,
    /// State key, for state events.
    pub state_key: Option<&'a str>,
    /// Content object.
    pub content: CanonicalJsonObject,
    /// For redactions before room version 11: the redacted event.
    pub redacts: Option<&'a EventId>,
    /// The client transaction that sends it: (user id, device id, transaction id).
    pub txn: Option<(&'a str, &'a str, &'a str)>,
    /// Its timestamp (`None`: now).
    pub origin_server_ts: Option<u64>,
}

impl<'a> NewEvent<'a> {
    /// A state event.
    pub fn state(kind: &'a str, state_key: &'a str, content: CanonicalJsonObject) -> Self {
        Self {
            kind,
            state_key: Some(state_key),
            content,
            redacts: None,
            txn: None,
            origin_server_ts: None,
        }
    }
}

/// An event once it is stored.
#[derive(Clone, Debug)]
pub struct Appended {
    /// Its id.
    pub event_id: OwnedEventId,
    /// Its room (new for a create event).
    pub room_id: OwnedRoomId,
    /// Its stream position (0 when a retried transaction returned an earlier event).
    pub position: u64,
}

/// What the next event of a room builds on, kept in memory under the room's lock.
struct Head {
    /// Forward extremities: short id and event id.
    extremities: Vec<(u64, OwnedEventId)>,
    /// The greatest depth among them.
    depth: u64,
    /// The current state.
    current: Arc<Loaded>,
}

/// An event built and queued, not yet durable.
struct Staged {
    appended: Appended,
    short_event: u64,
    txn: Option<(String, String, String)>,
    ticket: Ticket,
    queued: Queued,
}

/// The rooms service.
pub struct Rooms {
    db: Arc<Db>,
    ids: ShortIds,
    pdus: PdusTable,
    timeline: TimelineTable,
    state: StateTable,
    transactions: TransactionsTable,
    memberships: MembershipTable,
    positions: Arc<Positions>,
    keys: Arc<ServerKeys>,
    server_name: OwnedServerName,
    locks: Mutex<HashMap<OwnedRoomId, Arc<AsyncMutex<Option<Head>>>>>,
    versions: Mutex<HashMap<OwnedRoomId, RoomVersionId>>,
    commits: CommitQueue,
    /// Timestamp of the last create event (see [`Rooms::create`]).
    last_create_ts: Mutex<u64>,
    /// Canonical bytes of queued events, by short event id, until they are durable.
    pending: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    /// Client transactions of queued events: (user, device, txn) → event id.
    pending_txns: Mutex<HashMap<(String, String, String), OwnedEventId>>,
    /// Consulted to validate `m.room.canonical_alias` content.
    directory: Arc<Directory>,
    /// Wakes long-polling syncs (see `sync_hooks`).
    notifier: Arc<Notifier>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Rooms {
    /// Builds the service.
    pub fn new(
        db: Arc<Db>,
        positions: Arc<Positions>,
        keys: Arc<ServerKeys>,
        server_name: OwnedServerName,
        directory: Arc<Directory>,
    ) -> Result<Self> {
        Ok(Self {
            commits: CommitQueue::start(Arc::clone(&db))?,
            last_create_ts: Mutex::new(0),
            pending: Mutex::new(HashMap::new()),
            pending_txns: Mutex::new(HashMap::new()),
            notifier: Arc::new(Notifier::new()),
            ids: ShortIds::new(Arc::clone(&db)),
            pdus: PdusTable::new(Arc::clone(&db)),
            timeline: TimelineTable::new(Arc::clone(&db)),
            state: StateTable::new(Arc::clone(&db)),
            transactions: TransactionsTable::new(Arc::clone(&db)),
            memberships: MembershipTable::new(Arc::clone(&db)),
            db,
            positions,
            keys,
            server_name,
            locks: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
            directory,
        })
    }

    fn room_lock(&self, room_id: &RoomId) -> Arc<AsyncMutex<Option<Head>>> {
        Arc::clone(locked(&self.locks).entry(room_id.to_owned()).or_default())
    }

    /// Loads a stored event by id.
    pub fn event(&self, event_id: &EventId) -> Result<Option<Pdu>> {
        let Some(short) = self.ids.event(event_id.as_str())? else {
            return Ok(None);
        };
        self.event_by_short(short, event_id.to_owned()).map(Some)
    }

    /// An event as it stands: redacted (per its room version's rules) when a redaction of it
    /// was accepted.
    fn event_by_short(&self, short: u64, event_id: OwnedEventId) -> Result<Pdu> {
        let pdu = self.raw_event_by_short(short, event_id)?;
        self.apply_redaction(short, pdu)
    }

    /// The event's redacted form when a redaction of it was accepted.
    fn apply_redaction(&self, short: u64, mut pdu: Pdu) -> Result<Pdu> {
        if let Some(redaction_id) = self.pdus.redacted_by(short)? {
            let version = self.room_version(&pdu.room()?)?.unwrap_or(RoomVersionId::V1);
            let rules = events::rules(&version)?;
            let mut content = match serde_json::from_str::<CanonicalJsonValue>(pdu.content.get()) {
                Ok(CanonicalJsonValue::Object(o)) => o,
                _ => CanonicalJsonObject::new(),
            };
            ruma::canonical_json::redact_content_in_place(&mut content, &rules.redaction, pdu.kind.to_string());
            pdu.content = RawValue::from_string(CanonicalJsonValue::Object(content).to_string())
                .map_err(|e| Error::internal(e.to_string()))?;
            let redaction_id = EventId::parse(redaction_id).map_err(|e| Error::internal(e.to_string()))?;
            if let Some(short) = self.ids.event(redaction_id.as_str())? {
                pdu.redacted_because = Some(self.raw_event_by_short(short, redaction_id)?.to_client()?);
            }
        }
        Ok(pdu)
    }

    /// An event exactly as stored, never redacted.
    fn raw_event_by_short(&self, short: u64, event_id: OwnedEventId) -> Result<Pdu> {
        if let Some(bytes) = locked(&self.pending).get(&short).cloned() {
            return Pdu::parse(event_id, &bytes);
        }
        let bytes = self
            .pdus
            .get(short)?
            .ok_or_else(|| Error::internal(format!("event {event_id} has no PDU")))?;
        Pdu::parse(event_id, &bytes)
    }

    /// The canonical JSON of a stored event.
    pub fn event_json(&self, event_id: &EventId) -> Result<Option<Vec<u8>>> {
        let Some(short) = self.ids.event(event_id.as_str())? else {
            return Ok(None);
        };
        Ok(self.pdus.get(short)?)
    }

    /// The room's version, from its create event.
    ///
    /// A room's version never changes, so it is cached after the first read.
    pub fn room_version(&self, room_id: &RoomId) -> Result<Option<RoomVersionId>> {
        if let Some(version) = self.versions.lock().unwrap_or_else(|p| p.into_inner()).get(room_id) {
            return Ok(Some(version.clone()));
        }
        let version = self.read_room_version(room_id)?;
        if let Some(version) = &version {
            self.versions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(room_id.to_owned(), version.clone());
        }
        Ok(version)
    }

    fn read_room_version(&self, room_id: &RoomId) -> Result<Option<RoomVersionId>> {
        // The create event as stored: a redaction of it must not hide the room version.
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(None);
        };
        let Some(current) = self.state.current(short_room)? else {
            return Ok(None);
        };
        let loaded = self.state.load(current)?;
        let state = &loaded.state;
        let Some(key) = self.ids.state_key("m.room.create", "")? else {
            return Ok(None);
        };
        let Some(&short) = state.get(&key) else { return Ok(None) };
        let id = self
            .ids
            .event_id(short)?
            .ok_or_else(|| Error::internal("create event without id"))?;
        let create = self.raw_event_by_short(short, EventId::parse(id).map_err(|e| Error::internal(e.to_string()))?)?;
        #[derive(serde::Deserialize)]
        struct Create {
            #[serde(default)]
            room_version: Option<RoomVersionId>,
        }
        let content: Create = serde_json::from_str(create.content.get()).map_err(|e| Error::internal(e.to_string()))?;
        Ok(Some(content.room_version.unwrap_or(RoomVersionId::V1)))
    }

    /// The current state of a room (`None` if Hearth has no such room).
    fn current_state(&self, short_room: u64) -> Result<Option<Arc<Loaded>>> {
        match self.state.current(short_room)? {
            Some(id) => Ok(Some(self.state.load(id)?)),
            None => Ok(None),
        }
    }

    fn lookup(&self, state: &StateMap, kind: &str, state_key: &str) -> Result<Option<Pdu>> {
        let Some(key) = self.ids.state_key(kind, state_key)? else {
            return Ok(None);
        };
        let Some(&short_event) = state.get(&key) else {
            return Ok(None);
        };
        let event_id = self
            .ids
            .event_id(short_event)?
            .ok_or_else(|| Error::internal("state names an unknown event"))?;
        let event_id = EventId::parse(event_id).map_err(|e| Error::internal(e.to_string()))?;
        self.event_by_short(short_event, event_id).map(Some)
    }

    /// One event of the room's current state.
    pub fn state_event(&self, room_id: &RoomId, kind: &StateEventType, state_key: &str) -> Result<Option<Pdu>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(None);
        };
        let Some(current) = self.current_state(short_room)? else {
            return Ok(None);
        };
        self.lookup(&current.state, &kind.to_string(), state_key)
    }

    /// Every event of the room's current state.
    pub fn full_state(&self, room_id: &RoomId) -> Result<Vec<Pdu>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(Vec::new());
        };
        let Some(current) = self.current_state(short_room)? else {
            return Ok(Vec::new());
        };
        let shorts: Vec<u64> = current.state.values().copied().collect();
        let ids = self.ids.event_ids(&shorts)?;
        let jsons = self.pdus.get_many(&shorts)?;
        ids.into_iter()
            .zip(jsons)
            .map(|(id, json)| {
                let (Some(id), Some(json)) = (id, json) else {
                    return Err(Error::internal("state names an unknown event"));
                };
                Pdu::parse(EventId::parse(id).map_err(|e| Error::internal(e.to_string()))?, &json)
            })
            .collect()
    }

    /// Creates a room: builds and stores its `m.room.create` event, returning the new room id
    /// (derived from the event in room version 12, `!random:server` before).
    pub async fn create(
        &self,
        version: &RoomVersionId,
        creator: &UserId,
        content: CanonicalJsonObject,
    ) -> Result<Appended> {
        let rules = events::rules(version)?;
        let room_id = if rules.authorization.room_create_event_id_as_room_id {
            None
        } else {
            Some(
                RoomId::parse(format!("!{}:{}", util::random_string(18), self.server_name))
                    .map_err(|e| Error::internal(e.to_string()))?,
            )
        };
        // In room version 12 the room id is the create event's hash: two rooms created by one
        // user with the same content in the same millisecond would be one room. Create events
        // get strictly increasing timestamps, and an id already taken is refused below.
        let ts = {
            let mut last = locked(&self.last_create_ts);
            *last = util::now_ms().max(*last + 1);
            *last
        };
        let mut event = NewEvent::state("m.room.create", "", content);
        event.origin_server_ts = Some(ts);
        let staged = self.stage(version, room_id.as_deref(), creator, event, &mut None)?;
        self.finish(staged, None).await
    }

    /// Builds, authorizes and stores an event in an existing room.
    pub async fn append(&self, room_id: &RoomId, sender: &UserId, event: NewEvent<'_>) -> Result<Appended> {
        let lock = self.room_lock(room_id);
        let mut head = lock.lock().await;
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        // A retried transaction gets the event it produced the first time.
        if let Some((user, device, txn)) = event.txn {
            let key = (user.to_owned(), device.to_owned(), txn.to_owned());
            let queued = locked(&self.pending_txns).get(&key).cloned();
            let stored = match queued {
                Some(id) => Some(id),
                None => self
                    .transactions
                    .get(user, device, txn)?
                    .map(|id| EventId::parse(id).map_err(|e| Error::internal(e.to_string())))
                    .transpose()?,
            };
            if let Some(event_id) = stored {
                return Ok(Appended {
                    event_id,
                    room_id: room_id.to_owned(),
                    position: 0,
                });
            }
        }
        let staged = self.stage(&version, Some(room_id), sender, event, &mut head)?;
        drop(head);
        self.finish(staged, Some(&lock)).await
    }

    /// The room's head as stored (used when no head is in memory).
    fn load_head(&self, room_id: &RoomId) -> Result<Option<Head>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(None);
        };
        let Some(current) = self.current_state(short_room)? else {
            return Ok(None);
        };
        let shorts = self.timeline.extremities(short_room)?;
        let mut extremities = Vec::new();
        let mut depth = 0u64;
        for (short, id) in shorts.iter().zip(self.ids.event_ids(&shorts)?) {
            let id = EventId::parse(id.ok_or_else(|| Error::internal("unknown extremity"))?)
                .map_err(|e| Error::internal(e.to_string()))?;
            depth = depth.max(u64::from(self.raw_event_by_short(*short, id.clone())?.depth));
            extremities.push((*short, id));
        }
        Ok(Some(Head {
            extremities,
            depth,
            current,
        }))
    }

    /// Waits until a staged event is durable, then publishes its position. If the write failed,
    /// the room's head is dropped so the next sender rebuilds it from what is stored.
    async fn finish(&self, staged: Staged, lock: Option<&AsyncMutex<Option<Head>>>) -> Result<Appended> {
        let written = staged.queued.durable().await;
        locked(&self.pending).remove(&staged.short_event);
        if let Some(txn) = &staged.txn {
            locked(&self.pending_txns).remove(txn);
        }
        match written {
            Ok(()) => {
                staged.ticket.complete();
                self.notifier.flush(self.positions.watermark());
                Ok(staged.appended)
            }
            Err(e) => {
                if let Some(lock) = lock {
                    *lock.lock().await = None;
                }
                drop(staged.ticket);
                self.notifier.flush(self.positions.watermark());
                Err(e.into())
            }
        }
    }

    /// The write path proper, under the room's lock (or for a new room): builds the event on
    /// `head`, checks it, queues its batch and moves `head` past it. Nothing here waits.
    fn stage(
        &self,
        version: &RoomVersionId,
        room_id: Option<&RoomId>,
        sender: &UserId,
        event: NewEvent<'_>,
        head: &mut Option<Head>,
    ) -> Result<Staged> {
        let rules = events::rules(version)?;
        if event.kind == "m.room.power_levels" {
            validate_power_levels(&event.content)?;
        }
        if head.is_none()
            && let Some(room) = room_id
        {
            *head = self.load_head(room)?;
        }
        let empty = StateMap::new();
        let state = head.as_ref().map_or(&empty, |h| &h.current.state);
        if event.kind == "m.room.canonical_alias"
            && let Some(room_id) = room_id
        {
            let previous = self.lookup(state, event.kind, event.state_key.unwrap_or_default())?;
            let previous = previous.as_ref().map(|p| p.content.get());
            self.directory
                .check_canonical_alias(room_id, &event.content, previous)?;
        }

        // Auth events: the relevant subset of the current state.
        let content_raw = RawValue::from_string(ruma::CanonicalJsonValue::Object(event.content.clone()).to_string())
            .map_err(|e| Error::internal(e.to_string()))?;
        let kind = TimelineEventType::from(event.kind);
        let auth_types =
            state_res::auth_types_for_event(&kind, sender, event.state_key, &content_raw, &rules.authorization)
                .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?;
        let mut auth_events = Vec::new();
        for (auth_kind, auth_key) in &auth_types {
            if let Some(pdu) = self.lookup(state, &auth_kind.to_string(), auth_key)? {
                auth_events.push(pdu.event_id);
            }
        }

        // Prev events: the room's forward extremities; depth one past the deepest.
        let prev_events: Vec<OwnedEventId> = head
            .as_ref()
            .map(|h| h.extremities.iter().map(|(_, id)| id.clone()).collect())
            .unwrap_or_default();
        let depth = head.as_ref().map_or(0, |h| h.depth);

        let signed = events::build(
            &self.keys,
            self.server_name.as_str(),
            events::NewPdu {
                room_version: version,
                room_id,
                sender,
                kind: event.kind,
                state_key: event.state_key,
                content: event.content,
                prev_events,
                auth_events,
                depth: depth + 1,
                origin_server_ts: event.origin_server_ts.unwrap_or_else(util::now_ms),
                redacts: event.redacts,
            },
        )?;
        let pdu = Pdu::parse(signed.event_id.clone(), &signed.bytes)?;
        if event.kind == "m.room.create" && self.ids.room(signed.room_id.as_str())?.is_some() {
            return Err(Error::internal(format!("room id {} is already taken", signed.room_id)));
        }

        // The same checks a remote event gets: against its auth events, then the current state.
        let fetch_event = |id: &EventId| self.event(id).ok().flatten();
        state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, fetch_event)
            .map_err(|reason| Error::forbidden(format!("{} event is not authorized: {reason}", event.kind)))?;
        let fetch_state = |kind: &StateEventType, key: &str| self.lookup(state, &kind.to_string(), key).ok().flatten();
        state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, fetch_state)
            .map_err(|reason| Error::forbidden(format!("{} event is not authorized: {reason}", event.kind)))?;

        // One batch: the event, its place in the timeline and the state around it.
        let short_room = self.ids.room_or_create(signed.room_id.as_str())?;
        let short_event = self.ids.event_or_create(signed.event_id.as_str())?;
        let mut batch = self.db.batch();
        self.pdus.put(&mut batch, short_event, &signed.bytes);
        if let Some((user, device, txn)) = event.txn {
            self.transactions
                .put(&mut batch, user, device, txn, signed.event_id.as_str());
            sync_hooks::queue_event_txn(&self.db, &mut batch, short_event, (user, device, txn));
        }
        let before = match head.as_ref() {
            Some(head) => Arc::clone(&head.current),
            None => self.state.queue_snapshot(&mut batch, None, StateMap::new())?,
        };
        self.state.queue_before_event(&mut batch, short_event, before.id);
        if event.kind == "m.room.redaction" {
            let in_content = match signed.object.get("content") {
                Some(CanonicalJsonValue::Object(o)) => match o.get("redacts") {
                    Some(CanonicalJsonValue::String(id)) => Some(id.clone()),
                    _ => None,
                },
                _ => None,
            };
            let target = event.redacts.map(|id| id.to_string()).or(in_content);
            if let Some(target_short) = target.map(|t| self.ids.event(&t)).transpose()?.flatten() {
                self.pdus
                    .queue_redacted_by(&mut batch, target_short, signed.event_id.as_str());
            }
        }
        if event.kind == "m.room.member"
            && let (Some(target), Some(CanonicalJsonValue::String(membership))) = (
                event.state_key,
                signed.object.get("content").and_then(|c| match c {
                    CanonicalJsonValue::Object(o) => o.get("membership"),
                    _ => None,
                }),
            )
        {
            self.memberships
                .queue_set(&mut batch, target, signed.room_id.as_str(), membership);
        }
        let after = if let Some(state_key) = event.state_key {
            let key = self.ids.state_key_or_create(event.kind, state_key)?;
            let mut after = before.state.clone();
            after.insert(key, short_event);
            let after = self.state.queue_snapshot(&mut batch, Some(&*before), after)?;
            self.state.queue_current(&mut batch, short_room, after.id);
            after
        } else {
            if head.is_none() {
                self.state.queue_current(&mut batch, short_room, before.id);
            }
            before
        };
        self.timeline
            .queue_set_extremities(&mut batch, short_room, &[short_event])?;
        let ticket = self.positions.allocate()?;
        let position = ticket.position();
        self.notifier.mark(
            position,
            sync_hooks::concerns(signed.room_id.as_str(), event.kind, event.state_key),
        );
        self.timeline
            .queue_append(&mut batch, short_room, position, short_event);

        // Until it is durable, the event is served from memory and its transaction remembered.
        locked(&self.pending).insert(short_event, Arc::new(signed.bytes.clone()));
        let txn = event
            .txn
            .map(|(user, device, txn)| (user.to_owned(), device.to_owned(), txn.to_owned()));
        if let Some(txn) = &txn {
            locked(&self.pending_txns).insert(txn.clone(), signed.event_id.clone());
        }
        let queued = self.commits.enqueue(batch);
        *head = Some(Head {
            extremities: vec![(short_event, signed.event_id.clone())],
            depth: depth + 1,
            current: after,
        });
        Ok(Staged {
            appended: Appended {
                event_id: signed.event_id,
                room_id: signed.room_id,
                position,
            },
            short_event,
            txn,
            ticket,
            queued,
        })
    }

    /// Up to `limit` events of a room with `after < position <= up_to`, oldest first or newest
    /// first when `backwards`, with their positions.
    pub fn timeline(
        &self,
        room_id: &RoomId,
        after: u64,
        up_to: u64,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(u64, Pdu)>> {
        self.timeline_raw(room_id, after, up_to, backwards, limit)?
            .into_iter()
            .map(|(pos, short, pdu)| Ok((pos, self.for_client(short, pdu)?)))
            .collect()
    }

    /// Up to `limit` events with `after < position <= up_to`, oldest first, exactly as stored
    /// (no redaction applied): for server-side evaluation such as push rules.
    pub fn timeline_undecorated(
        &self,
        room_id: &RoomId,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Pdu)>> {
        Ok(self
            .timeline_raw(room_id, after, up_to, false, limit)?
            .into_iter()
            .map(|(pos, _, pdu)| (pos, pdu))
            .collect())
    }

    /// An event as a client sees it in a timeline: redacted when it was, and a state event
    /// with what it replaced (`unsigned.prev_content`, `prev_sender`, `replaces_state`).
    fn for_client(&self, short: u64, pdu: Pdu) -> Result<Pdu> {
        let mut pdu = self.apply_redaction(short, pdu)?;
        let Some(state_key) = pdu.state_key.clone() else {
            return Ok(pdu);
        };
        let Some(key) = self.ids.state_key(&pdu.kind.to_string(), &state_key)? else {
            return Ok(pdu);
        };
        let Some(snapshot) = self.state.before_event(short)? else {
            return Ok(pdu);
        };
        let Some(&previous) = self.state.load(snapshot)?.state.get(&key) else {
            return Ok(pdu);
        };
        let id = self
            .ids
            .event_id(previous)?
            .ok_or_else(|| Error::internal("state names an unknown event"))?;
        let id = EventId::parse(id).map_err(|e| Error::internal(e.to_string()))?;
        let previous = self.event_by_short(previous, id)?;
        let content: serde_json::Value =
            serde_json::from_str(previous.content.get()).map_err(|e| Error::internal(e.to_string()))?;
        pdu.unsigned_extra.insert("prev_content".into(), content);
        pdu.unsigned_extra
            .insert("prev_sender".into(), previous.sender.as_str().into());
        pdu.unsigned_extra
            .insert("replaces_state".into(), previous.event_id.as_str().into());
        Ok(pdu)
    }

    /// [`Self::timeline`] as stored: position, short event id, event.
    fn timeline_raw(
        &self,
        room_id: &RoomId,
        after: u64,
        up_to: u64,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(u64, u64, Pdu)>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(Vec::new());
        };
        let entries = self.timeline.range(short_room, after, up_to, backwards, limit)?;
        let shorts: Vec<u64> = entries.iter().map(|(_, e)| *e).collect();
        let ids = self.ids.event_ids(&shorts)?;
        let jsons = self.pdus.get_many(&shorts)?;
        entries
            .into_iter()
            .zip(ids.into_iter().zip(jsons))
            .map(|((pos, short), (id, json))| {
                let (Some(id), Some(json)) = (id, json) else {
                    return Err(Error::internal("timeline names an unknown event"));
                };
                let id = EventId::parse(id).map_err(|e| Error::internal(e.to_string()))?;
                Ok((pos, short, Pdu::parse(id, &json)?))
            })
            .collect()
    }

    /// A page of a room's timeline between two stream positions (`after < position <= up_to`),
    /// holding up to `limit` events that `keep` accepts, newest first when `backwards`. Returns
    /// the page and the token where the next page starts (`None` when the range is exhausted).
    /// Scans at most 20 raw pages per call, so a filter matching nothing cannot make one request
    /// walk a whole room.
    pub fn timeline_page(
        &self,
        room_id: &RoomId,
        (after, up_to): (u64, u64),
        backwards: bool,
        limit: usize,
        keep: impl Fn(u64, &Pdu) -> bool,
    ) -> Result<(Vec<(u64, Pdu)>, Option<u64>)> {
        let (mut low, mut high) = (after, up_to);
        let batch = limit.max(50);
        let mut page = Vec::new();
        for _ in 0..20 {
            let raw = self.timeline(room_id, low, high, backwards, batch)?;
            let exhausted = raw.len() < batch;
            for (pos, pdu) in raw {
                // The cursor moves past every scanned event, kept or not.
                if backwards {
                    high = pos - 1
                } else {
                    low = pos
                }
                if keep(pos, &pdu) {
                    page.push((pos, pdu));
                    if page.len() == limit {
                        let more = low < high;
                        return Ok((page, more.then_some(if backwards { high } else { low })));
                    }
                }
            }
            if exhausted || low >= high {
                return Ok((page, None));
            }
        }
        Ok((page, Some(if backwards { high } else { low })))
    }

    /// The event closest to `ts` at or after it (`forwards`) or at or before it, among
    /// positions up to `up_to`. Local events are stamped in stream order, so timestamps grow
    /// with positions and a binary search over positions finds it in a few dozen reads.
    pub fn event_near_timestamp(
        &self,
        room_id: &RoomId,
        ts: u64,
        forwards: bool,
        up_to: u64,
    ) -> Result<Option<(u64, Pdu)>> {
        let first_after = |position: u64| -> Result<Option<(u64, Pdu)>> {
            Ok(self.timeline(room_id, position, up_to, false, 1)?.pop())
        };
        // P(x): the first event after x is at or past ts (or there is none). P is monotone, so
        // the smallest x with P(x) is found by bisection, and the first event after it is the
        // first event at or past ts.
        let at_or_past = |event: &Option<(u64, Pdu)>| {
            event
                .as_ref()
                .is_none_or(|(_, pdu)| u64::from(pdu.origin_server_ts.get()) >= ts)
        };
        let (mut low, mut high) = (0u64, up_to);
        while low < high {
            let mid = low + (high - low) / 2;
            let event = first_after(mid)?;
            if at_or_past(&event) {
                high = mid;
            } else {
                // P is false up to that event's position too.
                low = (mid + 1).max(event.map_or(0, |(pos, _)| pos));
            }
        }
        let found = first_after(low)?;
        if forwards {
            return Ok(found);
        }
        // Backwards: that event if it is exactly at ts, else the one before it.
        let before = found.as_ref().map_or(up_to, |(pos, _)| *pos);
        if let Some((_, pdu)) = &found
            && u64::from(pdu.origin_server_ts.get()) == ts
        {
            return Ok(found);
        }
        Ok(self
            .timeline(room_id, 0, before.saturating_sub(u64::from(found.is_some())), true, 1)?
            .pop())
    }

    /// Where an event sits in its room's timeline: its stream position.
    pub fn position_of(&self, event_id: &EventId) -> Result<Option<u64>> {
        let Some(short) = self.ids.event(event_id.as_str())? else {
            return Ok(None);
        };
        Ok(self.timeline.position_of(short)?.map(|(_, pos)| pos))
    }

    /// The room state right after an event (the state before it, plus the event itself when
    /// it is a state event).
    pub fn state_after(&self, pdu: &Pdu) -> Result<Vec<Pdu>> {
        let short = self
            .ids
            .event(pdu.event_id.as_str())?
            .ok_or_else(|| Error::not_found("Event not found"))?;
        let before = self
            .state
            .before_event(short)?
            .ok_or_else(|| Error::internal("event without state"))?;
        let mut state = self.state.load(before)?.state.clone();
        if let Some(key) = &pdu.state_key {
            state.insert(self.ids.state_key_or_create(&pdu.kind.to_string(), key)?, short);
        }
        let shorts: Vec<u64> = state.values().copied().collect();
        self.ids
            .event_ids(&shorts)?
            .into_iter()
            .zip(shorts)
            .map(|(id, short)| {
                let id = EventId::parse(id.ok_or_else(|| Error::internal("state names an unknown event"))?)
                    .map_err(|e| Error::internal(e.to_string()))?;
                self.event_by_short(short, id)
            })
            .collect()
    }

    /// A user's membership in a room (`join`, `invite`, `leave`, `ban`, `knock`), if any.
    ///
    /// A point lookup in the membership index, which is written in the same batch as the
    /// `m.room.member` event, so it always agrees with the current state.
    pub fn membership(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<String>> {
        Ok(self.memberships.get(user_id.as_str(), room_id.as_str())?)
    }

    /// Fails with 403 unless the user is joined to the room. (History-visibility rules that
    /// let former members read what they saw come with the rest of the rooms work.)
    pub fn ensure_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        match self.membership(room_id, user_id)?.as_deref() {
            Some("join") => Ok(()),
            _ => Err(Error::forbidden(format!("{user_id} is not in the room {room_id}"))),
        }
    }

    /// Changes a user's membership (join, leave, invite, kick, ban…): an `m.room.member` event
    /// about `target` sent by `sender`, authorized like any other event.
    pub async fn set_membership(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<Appended> {
        self.change_membership(room_id, sender, target, membership, reason, CanonicalJsonObject::new())
            .await
    }

    /// [`Self::set_membership`] with more content fields (profile, join authorisation).
    async fn change_membership(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
        mut content: CanonicalJsonObject,
    ) -> Result<Appended> {
        content.insert(
            "membership".into(),
            ruma::CanonicalJsonValue::String(membership.to_owned()),
        );
        if let Some(reason) = reason {
            content.insert("reason".into(), ruma::CanonicalJsonValue::String(reason.to_owned()));
        }
        if self.room_version(room_id)?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        self.append(
            room_id,
            sender,
            NewEvent::state("m.room.member", target.as_str(), content),
        )
        .await
    }

    /// Redacts an event (spec "Redactions"): anyone may redact their own events, others need
    /// the room's `redact` power level.
    pub async fn redact(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &EventId,
        reason: Option<&str>,
        txn: (&str, &str, &str),
    ) -> Result<Appended> {
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = events::rules(&version)?;
        let original = self.event(target)?.filter(|p| p.room().is_ok_and(|r| r == room_id));
        let original = original.ok_or_else(|| Error::not_found("Event not found"))?;
        if original.sender != sender
            && self.power_level(room_id, sender)? < self.required_level(room_id, "redact", 50)?
        {
            return Err(Error::forbidden("You may only redact your own events in this room"));
        }
        let mut content = CanonicalJsonObject::new();
        if let Some(reason) = reason {
            content.insert("reason".into(), CanonicalJsonValue::String(reason.to_owned()));
        }
        let top_level = if rules.redaction.content_field_redacts {
            content.insert("redacts".into(), CanonicalJsonValue::String(target.to_string()));
            None
        } else {
            Some(target)
        };
        let event = NewEvent {
            kind: "m.room.redaction",
            state_key: None,
            content,
            redacts: top_level,
            txn: Some(txn),
            origin_server_ts: None,
        };
        self.append(room_id, sender, event).await
    }

    /// A user's power level: from `m.room.power_levels`, unbounded for the creators of rooms whose
    /// version privileges them (v12), 100 for the creator of a room without power levels.
    pub fn power_level(&self, room_id: &RoomId, user_id: &UserId) -> Result<i64> {
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = events::rules(&version)?;
        let create = self
            .state_event(room_id, &StateEventType::RoomCreate, "")?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        if rules.authorization.explicitly_privilege_room_creators {
            #[derive(serde::Deserialize)]
            struct Create {
                #[serde(default)]
                additional_creators: Vec<String>,
            }
            let extra: Create = serde_json::from_str(create.content.get()).unwrap_or(Create {
                additional_creators: Vec::new(),
            });
            if create.sender == user_id || extra.additional_creators.iter().any(|c| c == user_id.as_str()) {
                return Ok(i64::MAX);
            }
        }
        let Some(levels) = self.power_levels(room_id)? else {
            return Ok(if create.sender == user_id { 100 } else { 0 });
        };
        let level = levels
            .get("users")
            .and_then(|u| u.get(user_id.as_str()))
            .or_else(|| levels.get("users_default"));
        Ok(level.and_then(as_level).unwrap_or(0))
    }

    /// The level an action (`redact`, `kick`, `ban`, `invite`…) needs in the room.
    pub fn required_level(&self, room_id: &RoomId, action: &str, default: i64) -> Result<i64> {
        Ok(self
            .power_levels(room_id)?
            .and_then(|l| l.get(action).and_then(as_level))
            .unwrap_or(default))
    }

    fn power_levels(&self, room_id: &RoomId) -> Result<Option<serde_json::Value>> {
        let Some(pdu) = self.state_event(room_id, &StateEventType::RoomPowerLevels, "")? else {
            return Ok(None);
        };
        Ok(serde_json::from_str(pdu.content.get()).ok())
    }

    /// The rooms a user has joined.
    pub fn joined_rooms(&self, user_id: &UserId) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .memberships
            .rooms_of(user_id.as_str())?
            .into_iter()
            .filter(|(_, membership)| membership == "join")
            .filter_map(|(room, _)| OwnedRoomId::try_from(room).ok())
            .collect())
    }

    /// The highest stream position every writer has finished.
    pub fn watermark(&self) -> u64 {
        self.positions.watermark()
    }
}

/// A power level from JSON: an integer, or (in old room versions) a string holding one.
fn as_level(value: &serde_json::Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

/// Rejects malformed `m.room.power_levels` content with 400 before it reaches the authorization
/// rules (which would answer 403): levels are integers, `users` keys are user ids.
pub(crate) fn validate_power_levels(content: &CanonicalJsonObject) -> Result<()> {
    let bad = |what: String| Err(Error::bad_json(format!("Invalid power levels: {what}")));
    for key in [
        "ban",
        "kick",
        "redact",
        "invite",
        "events_default",
        "state_default",
        "users_default",
    ] {
        if let Some(value) = content.get(key)
            && !matches!(value, CanonicalJsonValue::Integer(_))
        {
            return bad(format!("`{key}` must be an integer"));
        }
    }
    for map in ["users", "events", "notifications"] {
        match content.get(map) {
            None => {}
            Some(CanonicalJsonValue::Object(entries)) => {
                for (key, value) in entries {
                    if !matches!(value, CanonicalJsonValue::Integer(_)) {
                        return bad(format!("`{map}.{key}` must be an integer"));
                    }
                    if map == "users" && UserId::parse(key.as_str()).is_err() {
                        return bad(format!("`users` key {key} is not a user id"));
                    }
                }
            }
            Some(_) => return bad(format!("`{map}` must be an object")),
        }
    }
    Ok(())
}
