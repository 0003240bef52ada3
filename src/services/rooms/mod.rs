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
//!
//! Heads are kept for a bounded number of rooms ([`HEADS_PER_MIB`] per MiB of
//! `database.cache_size_mb`: 1024 by default), the least recently written dropped first; a
//! room's head is dropped only while nobody holds its lock (no send is building on it or
//! waiting for its write), so what is stored is then all there is, and the next send reloads
//! it from there.
//!
//! This file holds the service and its event and state reads; `write.rs` is the write path,
//! `timeline.rs` reads by stream position, `membership.rs` and `power.rs` answer who is in a
//! room and with what power, `visibility.rs` who may read what, `redaction.rs` what a
//! redaction redacts and how events are served, `relations.rs` the relations index, bundled
//! aggregations, `/relations` and `/threads`.

mod backfill;
pub mod create;
pub mod federation_reads;
mod import;
pub mod members;
pub mod membership;
pub mod pdu;
mod power;
mod redaction;
pub mod relations;
pub mod remote;
pub mod remote_invites;
mod search_hooks;
mod state;
pub mod state_res_v1;
mod sync_hooks;
mod timeline;
pub mod upgrade;
pub mod visibility;
mod write;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::Mutex as AsyncMutex;

use ruma::{CanonicalJsonObject, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, UserId};

pub(crate) use self::power::validate_power_levels;
use self::{pdu::Pdu, write::Head};
pub use self::{state::Selection, write::RoomDraft};
use super::{directory::Directory, server_keys::ServerKeys, sync::notifier::Notifier};
use crate::{
    Error, Result,
    storage::{
        Db,
        commit_queue::CommitQueue,
        positions::Positions,
        tables::{
            membership::MembershipTable,
            pdus::{Outcome, PdusTable},
            relations::RelationsTable,
            search::SearchTable,
            shortids::ShortIds,
            state::StateTable,
            timeline::TimelineTable,
            transactions::TransactionsTable,
        },
    },
    util::{self, bounded::BoundedMap},
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

    /// A message event (no transaction, the time now) with the JSON object `content`: for tests.
    #[cfg(test)]
    pub fn message(content: serde_json::Value) -> Self {
        let Ok(ruma::CanonicalJsonValue::Object(content)) = ruma::CanonicalJsonValue::try_from(content) else {
            panic!("message content must be a JSON object within canonical JSON's limits")
        };
        Self {
            kind: "m.room.message",
            state_key: None,
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

/// The rooms service.
pub struct Rooms {
    db: Arc<Db>,
    ids: ShortIds,
    pdus: PdusTable,
    relations: RelationsTable,
    timeline: TimelineTable,
    state: StateTable,
    transactions: TransactionsTable,
    memberships: MembershipTable,
    /// The search index, written in the events' batches (see `search_hooks`).
    search: SearchTable,
    positions: Arc<Positions>,
    keys: Arc<ServerKeys>,
    server_name: OwnedServerName,
    /// Per room: the lock guarding its head (see the module documentation).
    locks: BoundedMap<OwnedRoomId, Arc<AsyncMutex<Option<Head>>>>,
    /// Room versions, which never change.
    versions: quick_cache::sync::Cache<OwnedRoomId, RoomVersionId>,
    commits: CommitQueue,
    /// Timestamp of the last create event (see [`Rooms::create`]).
    last_create_ts: Mutex<u64>,
    /// Canonical bytes of queued events, by short event id, until they are durable.
    pending: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    /// Client transactions of queued events: (user, device, txn) → event id.
    pending_txns: Mutex<HashMap<(String, String, String), OwnedEventId>>,
    /// Consulted to validate `m.room.canonical_alias` content.
    directory: Arc<Directory>,
    /// Told about durable member events and room state changes.
    user_directory: Arc<super::user_directory::UserDirectory>,
    /// Wakes long-polling syncs (see `sync_hooks`).
    notifier: Arc<Notifier>,
    /// Member lists of rooms (see `members`).
    member_lists: members::MemberCache,
    /// History-visibility decisions per state snapshot and reader (see `visibility`).
    history_decisions: visibility::HistoryDecisions,
    /// Stored events parsed, by short event id: what is stored under a short id never changes
    /// (a redaction is applied on the way out), so nothing invalidates them.
    parsed: quick_cache::sync::Cache<u64, Arc<Pdu>, PduWeight>,
    /// Where this server's own events go once durable, when federation is on (see
    /// [`Rooms::forward_local_events`]).
    outbound: std::sync::OnceLock<tokio::sync::mpsc::Sender<Outbound>>,
    /// Taken while a remote invite is counted against its bound and written, so concurrent
    /// invites cannot both take the last place (see `remote_invites`).
    remote_invite_writes: AsyncMutex<()>,
}

/// A durable event of this server for the other servers in its room.
#[derive(Debug)]
pub struct Outbound {
    /// Its room.
    pub room_id: OwnedRoomId,
    /// Its id.
    pub event_id: OwnedEventId,
    /// Its short id (for [`Rooms::forwarded`]).
    pub short_event: u64,
    /// The servers with joined members, ours left out.
    pub destinations: Vec<OwnedServerName>,
    /// Its canonical JSON.
    pub bytes: Arc<Vec<u8>>,
}

/// Rooms whose head (current state included) is kept in memory, per MiB of the configured
/// cache (at least 16 rooms).
pub const HEADS_PER_MIB: usize = 16;

/// Most bytes of parsed events held (by their content size, plus the rest of a PDU).
const PARSED_BYTES: u64 = 16 << 20;

/// Weighs a parsed event by its content and a fixed share for its other fields.
#[derive(Clone)]
struct PduWeight;

impl quick_cache::Weighter<u64, Arc<Pdu>> for PduWeight {
    fn weight(&self, _short: &u64, pdu: &Arc<Pdu>) -> u64 {
        pdu.content.get().len() as u64 + 512
    }
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
        user_directory: Arc<super::user_directory::UserDirectory>,
    ) -> Result<Self> {
        let heads = ((db.cache_bytes() >> 20) * HEADS_PER_MIB).max(16);
        let rooms = Self {
            commits: CommitQueue::start(Arc::clone(&db))?,
            last_create_ts: Mutex::new(0),
            pending: Mutex::new(HashMap::new()),
            pending_txns: Mutex::new(HashMap::new()),
            notifier: Arc::new(Notifier::new(positions.watermark())),
            member_lists: members::MemberCache::default(),
            history_decisions: visibility::HistoryDecisions::new(100_000),
            parsed: quick_cache::sync::Cache::with_weighter(16_384, PARSED_BYTES, PduWeight),
            ids: ShortIds::new(Arc::clone(&db)),
            pdus: PdusTable::new(Arc::clone(&db)),
            relations: RelationsTable::new(Arc::clone(&db)),
            timeline: TimelineTable::new(Arc::clone(&db)),
            state: StateTable::new(Arc::clone(&db))?,
            transactions: TransactionsTable::new(Arc::clone(&db)),
            memberships: MembershipTable::new(Arc::clone(&db)),
            search: SearchTable::new(Arc::clone(&db)),
            db,
            positions,
            keys,
            server_name,
            locks: BoundedMap::new(heads),
            versions: quick_cache::sync::Cache::new(100_000),
            directory,
            user_directory,
            outbound: std::sync::OnceLock::new(),
            remote_invite_writes: AsyncMutex::new(()),
        };
        rooms.index_relations()?;
        Ok(rooms)
    }

    /// This server's name.
    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// From now on, every event of this server that becomes durable in a room with members on
    /// other servers is handed to the returned receiver (`capacity` at a time: writers wait when
    /// it is full). Federation calls this once at start.
    pub fn forward_local_events(&self, capacity: usize) -> Option<tokio::sync::mpsc::Receiver<Outbound>> {
        let (sender, receiver) = tokio::sync::mpsc::channel(capacity);
        self.outbound.set(sender).ok().map(|()| receiver)
    }

    /// The servers an event of this server in `room_id` goes to: those with joined members,
    /// and for a member event its target's (a user kicked, banned or invited there must hear
    /// of it); ours left out.
    fn federation_destinations(&self, room_id: &RoomId, target: Option<&UserId>) -> Result<Vec<OwnedServerName>> {
        let members = self.members(room_id)?;
        let mut servers: Vec<OwnedServerName> = members
            .joined_servers()
            .iter()
            .cloned()
            .chain(target.map(|t| t.server_name().to_owned()))
            .filter(|s| *s != self.server_name)
            .collect();
        servers.sort();
        servers.dedup();
        Ok(servers)
    }

    /// Federation has queued our event `short` (or it had nowhere to go): its unsent mark
    /// goes. Unsynced: a mark that outlives a crash only sends the event again, which
    /// receivers ignore.
    pub fn forwarded(&self, short: u64) {
        let mut batch = self.db.batch();
        self.pdus.queue_sent(&mut batch, short);
        if let Err(e) = batch.commit_unsynced() {
            tracing::warn!(short, error = %e, "cannot clear an event's unsent mark");
        }
    }

    /// Up to `limit` of our durable events that federation had not queued when the server
    /// last stopped, oldest first, with where they go now (federation queues them at start).
    pub fn unsent_local_events(&self, limit: usize) -> Result<Vec<Outbound>> {
        let mut out = Vec::new();
        for short in self.pdus.unsent(limit)? {
            let event = self
                .ids
                .event_id(short)?
                .and_then(|id| EventId::parse(id).ok())
                .and_then(|id| self.original_event(&id).ok().flatten().map(|pdu| (id, pdu)));
            let (Some((event_id, pdu)), Some(bytes)) = (event, self.pdus.get(short)?) else {
                self.forwarded(short);
                continue;
            };
            let room_id = pdu.room()?;
            let target = match (&pdu.state_key, pdu.kind.to_string() == "m.room.member") {
                (Some(key), true) => UserId::parse(key.as_str()).ok(),
                _ => None,
            };
            out.push(Outbound {
                destinations: self.federation_destinations(&room_id, target.as_deref())?,
                room_id,
                event_id,
                short_event: short,
                bytes: Arc::new(bytes),
            });
        }
        Ok(out)
    }

    fn room_lock(&self, room_id: &RoomId) -> Arc<AsyncMutex<Option<Head>>> {
        self.locks.get_or_insert_with(
            room_id,
            || room_id.to_owned(),
            Default::default,
            |lock| Arc::clone(lock),
        )
    }

    /// How many rooms have their head in memory (each may hold none yet).
    pub fn heads_held(&self) -> usize {
        self.locks.len()
    }

    /// Loads a stored event by id, as clients see it (redacted when a redaction of it took
    /// effect).
    pub fn event(&self, event_id: &EventId) -> Result<Option<Pdu>> {
        let Some(short) = self.ids.event(event_id.as_str())? else {
            return Ok(None);
        };
        match self.stored_event(short, event_id.to_owned())? {
            Some(pdu) if !pdu.rejected && !pdu.soft_failed => self.apply_redaction(short, pdu).map(Some),
            _ => Ok(None),
        }
    }

    /// Loads a stored event by id exactly as stored, never redacted: what the authorization
    /// rules read.
    fn original_event(&self, event_id: &EventId) -> Result<Option<Pdu>> {
        match self.ids.event(event_id.as_str())? {
            Some(short) => self.stored_event(short, event_id.to_owned()),
            None => Ok(None),
        }
    }

    /// An event as it stands: redacted (per its room version's rules) when a redaction of it
    /// took effect.
    fn event_by_short(&self, short: u64, event_id: OwnedEventId) -> Result<Pdu> {
        let pdu = self.raw_event_by_short(short, event_id)?;
        self.apply_redaction(short, pdu)
    }

    /// An event exactly as stored, never redacted.
    fn raw_event_by_short(&self, short: u64, event_id: OwnedEventId) -> Result<Pdu> {
        let missing = format!("event {event_id} has no PDU");
        self.stored_event(short, event_id)?
            .ok_or_else(|| Error::internal(missing))
    }

    /// An event exactly as stored, or `None` when its id was interned but the event never
    /// stored (an event built and then refused or abandoned).
    fn stored_event(&self, short: u64, event_id: OwnedEventId) -> Result<Option<Pdu>> {
        if let Some(bytes) = locked(&self.pending).get(&short).cloned() {
            return Pdu::parse(event_id, &bytes).map(Some);
        }
        if let Some(pdu) = self.parsed.get(&short) {
            return Ok(Some((*pdu).clone()));
        }
        let Some(bytes) = self.pdus.get(short)? else {
            return Ok(None);
        };
        let mut pdu = Pdu::parse(event_id, &bytes)?;
        match self.pdus.outcome(short)? {
            Some((Outcome::Rejected, _)) => pdu.rejected = true,
            Some((Outcome::SoftFailed, _)) => pdu.soft_failed = true,
            None => {}
        }
        self.parsed.insert(short, Arc::new(pdu.clone()));
        Ok(Some(pdu))
    }

    /// Stored events by short id, exactly as stored (never redacted), in the order of
    /// `shorts`: parsed ones from the cache, the others read in one go.
    fn stored_events(&self, shorts: &[u64]) -> Result<Vec<Pdu>> {
        let events = util::cached_many(&self.parsed, shorts, |missing| {
            let ids = self.ids.event_ids(missing)?;
            let jsons = self.pdus.get_many(missing)?;
            ids.into_iter()
                .zip(jsons)
                .map(|(id, json)| {
                    let (Some(id), Some(json)) = (id, json) else {
                        return Ok(None);
                    };
                    let id = EventId::parse(id).map_err(|e| Error::internal(e.to_string()))?;
                    Ok(Some(Arc::new(Pdu::parse(id, &json)?)))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        events
            .into_iter()
            .map(|pdu| {
                pdu.map(|p| (*p).clone())
                    .ok_or_else(|| Error::internal("an index names an unknown event"))
            })
            .collect()
    }

    /// The canonical JSON of a stored event.
    pub fn event_json(&self, event_id: &EventId) -> Result<Option<Vec<u8>>> {
        let Some(short) = self.ids.event(event_id.as_str())? else {
            return Ok(None);
        };
        Ok(self.pdus.get(short)?)
    }

    /// The reference hash of a stored (or pending) event under `rules`: how events of room
    /// versions 1 and 2 name their prev and auth events.
    pub fn reference_hash(
        &self,
        event_id: &EventId,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> Option<String> {
        let short = self.ids.event(event_id.as_str()).ok()??;
        let pending = locked(&self.pending).get(&short).cloned();
        let bytes = match pending {
            Some(bytes) => bytes,
            None => Arc::new(self.pdus.get(short).ok()??),
        };
        let object: ruma::CanonicalJsonObject = serde_json::from_slice(&bytes).ok()?;
        ruma::signatures::reference_hash(&object, rules).ok()
    }

    /// The room's version, from its create event.
    ///
    /// A room's version never changes, so it is cached after the first read.
    pub fn room_version(&self, room_id: &RoomId) -> Result<Option<RoomVersionId>> {
        if let Some(version) = self.versions.get(room_id) {
            return Ok(Some(version));
        }
        let version = self.read_room_version(room_id)?;
        if let Some(version) = &version {
            self.versions.insert(room_id.to_owned(), version.clone());
        }
        Ok(version)
    }

    fn read_room_version(&self, room_id: &RoomId) -> Result<Option<RoomVersionId>> {
        // The create event as stored: a redaction of it must not hide the room version.
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(None);
        };
        let Some(current) = self.current_state(short_room)? else {
            return Ok(None);
        };
        let Some(create) = self.original_lookup(&current, "m.room.create", "")? else {
            return Ok(None);
        };
        #[derive(serde::Deserialize)]
        struct Create {
            #[serde(default)]
            room_version: Option<RoomVersionId>,
        }
        let content: Create = serde_json::from_str(create.content.get()).map_err(|e| Error::internal(e.to_string()))?;
        Ok(Some(content.room_version.unwrap_or(RoomVersionId::V1)))
    }

    /// The highest stream position every writer has finished.
    pub fn watermark(&self) -> u64 {
        self.positions.watermark()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ruma::{RoomVersionId, UserId, events::StateEventType};

    use super::{
        NewEvent,
        create::{CreateRoom, Preset},
        membership::MemberProfile,
    };
    use crate::services::Services;

    /// A `createRoom` request with a name and nothing else.
    pub(crate) fn named_room(name: &str, preset: Preset, publish: bool) -> CreateRoom {
        CreateRoom {
            creator_profile: MemberProfile::from_profile(&serde_json::Map::new()),
            version: RoomVersionId::V11,
            preset,
            creation_content: Default::default(),
            power_level_override: Default::default(),
            initial_state: Vec::new(),
            name: Some(name.to_owned()),
            topic: None,
            invite: Vec::new(),
            is_direct: false,
            alias_localpart: None,
            publish,
        }
    }

    #[tokio::test]
    async fn room_heads_stay_bounded_and_evicted_rooms_continue_where_they_were() {
        let dir = tempfile::tempdir().unwrap();
        // The smallest cache: heads for 16 rooms.
        let services = Services::for_tests(dir.path(), 1 << 20);
        let rooms = &services.rooms;
        let alice = UserId::parse("@alice:localhost").unwrap();
        let mut ids = Vec::new();
        for n in 0..48 {
            let request = named_room(&format!("room {n}"), Preset::PrivateChat, false);
            ids.push(rooms.create_room(&alice, request).await.unwrap());
        }
        assert!(rooms.heads_held() <= 16, "{} heads held", rooms.heads_held());
        // The first room's head was dropped long ago: the next event is built on what is stored.
        let last = rooms
            .event(
                &rooms
                    .state_event(&ids[0], &StateEventType::RoomName, "")
                    .unwrap()
                    .unwrap()
                    .event_id,
            )
            .unwrap()
            .unwrap();
        let content = serde_json::json!({"topic": "still here"});
        let Ok(ruma::CanonicalJsonValue::Object(content)) = ruma::CanonicalJsonValue::try_from(content) else {
            unreachable!()
        };
        let topic = rooms
            .append(&ids[0], &alice, NewEvent::state("m.room.topic", "", content))
            .await
            .unwrap();
        let topic = rooms.event(&topic.event_id).unwrap().unwrap();
        assert_eq!(topic.prev_events, vec![last.event_id.clone()]);
        let name = rooms
            .state_event(&ids[0], &StateEventType::RoomName, "")
            .unwrap()
            .unwrap();
        assert_eq!(name.event_id, last.event_id, "the state carried over");
    }
}
