//! Read-only views of the event DAG for other servers (server-server-api "Retrieving events",
//! "Backfilling and retrieving missing events", "Room state"): stored events as PDUs (the
//! canonical JSON as stored, or its redacted form when a redaction of it took effect, never
//! the client format), the state before an event, auth chains, the backward walks of
//! `/backfill` and `/get_missing_events`, and which events a server may see
//! ([`ServerFilter`], Synapse's `filter_events_for_server`).
//!
//! Every walk is bounded: auth chains stop at [`MAX_AUTH_CHAIN`] events, backfill and
//! missing-event walks at their limit, and events are read level by level with multi-gets.

use std::collections::{BinaryHeap, HashMap, HashSet};

use ruma::{CanonicalJsonObject, EventId, OwnedEventId, OwnedServerName, OwnedUserId, RoomId, ServerName};
use serde_json::value::RawValue;

use super::{Rooms, pdu::Pdu, state::StateAt};
use crate::{Error, Result, services::events};

/// Most events an auth chain walk collects.
pub const MAX_AUTH_CHAIN: usize = 50_000;
/// Most events one `/backfill` answer holds (Synapse's cap).
pub const MAX_BACKFILL: usize = 100;
/// Most events one `/get_missing_events` answer holds (Synapse's cap).
pub const MAX_MISSING_EVENTS: usize = 20;
/// Most events named in one request (`v`, `earliest_events`, `latest_events`) that are read.
pub const MAX_NAMED_EVENTS: usize = 100;
/// Most `prev_events` of one event followed by a walk.
const MAX_PREVS_FOLLOWED: usize = 20;
/// Most users of one server whose membership is looked up for a visibility decision.
const MAX_SERVER_USERS: usize = 1_000;
/// Most visibility decisions (per state snapshot) one filter remembers.
const MAX_DECISIONS: usize = 1_024;

/// A stored event as other servers receive it.
#[derive(Clone, Debug)]
pub struct FedEvent {
    /// The event, parsed (as stored: never redacted).
    pub pdu: Pdu,
    /// The PDU: the stored canonical JSON, or its redacted form when a redaction of it took
    /// effect.
    pub json: Box<RawValue>,
    short: u64,
}

impl Rooms {
    /// Stored events by short id as PDUs for other servers, in the order of `shorts`
    /// (`None` for ids without a durable event); one multi-get each for ids, bytes and
    /// redaction marks.
    fn fed_events(&self, shorts: &[u64]) -> Result<Vec<Option<FedEvent>>> {
        let ids = self.ids.event_ids(shorts)?;
        let jsons = self.pdus.get_many(shorts)?;
        let marks = self.pdus.redacted_by_many(shorts)?;
        let mut out = Vec::with_capacity(shorts.len());
        for (((short, id), json), mark) in shorts.iter().zip(ids).zip(jsons).zip(marks) {
            let (Some(id), Some(json)) = (id, json) else {
                out.push(None);
                continue;
            };
            let event_id = EventId::parse(id).map_err(|e| Error::internal(e.to_string()))?;
            let pdu = Pdu::parse(event_id, &json)?;
            let json = match mark {
                Some(_) => self.pruned_json(&pdu, &json)?,
                None => raw(json)?,
            };
            out.push(Some(FedEvent {
                pdu,
                json,
                short: *short,
            }));
        }
        Ok(out)
    }

    /// The redacted form of a stored PDU (ruma's algorithm for its room version): hashes and
    /// signatures stay, so other servers can still check it.
    fn pruned_json(&self, pdu: &Pdu, bytes: &[u8]) -> Result<Box<RawValue>> {
        let version = self.room_version(&pdu.room()?)?.unwrap_or(ruma::RoomVersionId::V1);
        let rules = events::rules(&version)?;
        let object: CanonicalJsonObject =
            serde_json::from_slice(bytes).map_err(|e| Error::internal(format!("stored event: {e}")))?;
        let redacted = ruma::canonical_json::redact(object, &rules.redaction, None)
            .map_err(|e| Error::internal(format!("redacting {}: {e}", pdu.event_id)))?;
        RawValue::from_string(ruma::CanonicalJsonValue::Object(redacted).to_string())
            .map_err(|e| Error::internal(e.to_string()))
    }

    /// The redacted form of an event, for a server that may not see it whole.
    pub fn pruned(&self, event: &FedEvent) -> Result<Box<RawValue>> {
        self.pruned_json(&event.pdu, event.json.get().as_bytes())
    }

    /// Events by id as PDUs, only those stored and of `room_id`, in the order asked.
    fn fed_events_by_id(&self, room_id: &RoomId, event_ids: &[&EventId]) -> Result<Vec<FedEvent>> {
        let mut shorts = Vec::with_capacity(event_ids.len());
        for id in event_ids {
            if let Some(short) = self.ids.event(id.as_str())? {
                shorts.push(short);
            }
        }
        Ok(self
            .fed_events(&shorts)?
            .into_iter()
            .flatten()
            .filter(|e| e.pdu.room().is_ok_and(|r| r == room_id))
            .collect())
    }

    /// One stored event as a PDU (`None` when Hearth has no such durable event).
    pub fn federation_event(&self, event_id: &EventId) -> Result<Option<FedEvent>> {
        let Some(short) = self.ids.event(event_id.as_str())? else {
            return Ok(None);
        };
        Ok(self.fed_events(&[short])?.pop().flatten())
    }

    /// One event of `room_id` as a PDU: 404 `M_NOT_FOUND` when unknown or of another room.
    pub fn federation_event_in(&self, room_id: &RoomId, event_id: &EventId) -> Result<FedEvent> {
        self.federation_event(event_id)?
            .filter(|e| e.pdu.room().is_ok_and(|r| r == room_id))
            .ok_or_else(|| Error::not_found("Event not found"))
    }

    /// The full auth chain of `events` (every event reachable through `auth_events`, the
    /// events themselves excluded unless another one's auth event), oldest first by depth;
    /// only events of `room_id`, at most [`MAX_AUTH_CHAIN`].
    pub fn auth_chain(&self, room_id: &RoomId, events: &[&FedEvent]) -> Result<Vec<FedEvent>> {
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut chain = Vec::new();
        let mut front: Vec<OwnedEventId> = Vec::new();
        for event in events {
            for auth in &event.pdu.auth_events {
                if seen.insert(auth.clone()) {
                    front.push(auth.clone());
                }
            }
        }
        while !front.is_empty() && chain.len() < MAX_AUTH_CHAIN {
            let ids: Vec<&EventId> = front.iter().map(|e| &**e).collect();
            let found = self.fed_events_by_id(room_id, &ids)?;
            let mut next = Vec::new();
            for event in found {
                if chain.len() >= MAX_AUTH_CHAIN {
                    break;
                }
                for auth in &event.pdu.auth_events {
                    if seen.len() < MAX_AUTH_CHAIN * 2 && seen.insert(auth.clone()) {
                        next.push(auth.clone());
                    }
                }
                chain.push(event);
            }
            front = next;
        }
        chain.sort_by_key(|e| (e.pdu.depth, e.short));
        Ok(chain)
    }

    /// The room state before `event` (of `room_id`), as PDUs: empty before the create event;
    /// 404 `M_NOT_FOUND` for an event Hearth holds no state for (an outlier).
    pub fn federation_state_before(&self, room_id: &RoomId, event: &FedEvent) -> Result<Vec<FedEvent>> {
        let Some(state) = self.state_before(event.short)? else {
            if event.pdu.kind.to_string() == "m.room.create" {
                return Ok(Vec::new());
            }
            return Err(Error::not_found("The state at that event is not known here"));
        };
        let Some(top) = state.top() else {
            return Ok(Vec::new());
        };
        let shorts: Vec<u64> = self.state.entries(top)?.values().copied().collect();
        Ok(self
            .fed_events(&shorts)?
            .into_iter()
            .flatten()
            .filter(|e| e.pdu.room().is_ok_and(|r| r == room_id))
            .collect())
    }

    /// `/backfill`: the events `seeds` (of `room_id`) and those before them, walking
    /// `prev_events` backwards, newest (greatest depth) first, at most `limit` (capped at
    /// [`MAX_BACKFILL`]).
    pub fn backfill(&self, room_id: &RoomId, seeds: &[OwnedEventId], limit: usize) -> Result<Vec<FedEvent>> {
        let limit = limit.min(MAX_BACKFILL);
        let mut queued: HashSet<u64> = HashSet::new();
        // Max-heap by (depth, short id): the newest event next.
        let mut heap: BinaryHeap<(u64, u64)> = BinaryHeap::new();
        let mut events: HashMap<u64, FedEvent> = HashMap::new();
        let seeds: Vec<&EventId> = seeds.iter().take(MAX_NAMED_EVENTS).map(|e| &**e).collect();
        for event in self.fed_events_by_id(room_id, &seeds)? {
            if queued.insert(event.short) {
                heap.push((u64::from(event.pdu.depth), event.short));
                events.insert(event.short, event);
            }
        }
        let mut out = Vec::new();
        while out.len() < limit {
            let Some((_, short)) = heap.pop() else {
                break;
            };
            let Some(event) = events.remove(&short) else {
                continue;
            };
            let prevs: Vec<&EventId> = event
                .pdu
                .prev_events
                .iter()
                .take(MAX_PREVS_FOLLOWED)
                .map(|e| &**e)
                .collect();
            for prev in self.fed_events_by_id(room_id, &prevs)? {
                if queued.insert(prev.short) {
                    heap.push((u64::from(prev.pdu.depth), prev.short));
                    events.insert(prev.short, prev);
                }
            }
            out.push(event);
        }
        Ok(out)
    }

    /// `/get_missing_events`: walking `prev_events` back from `latest` (events of `room_id`
    /// only), the events met before reaching `earliest`, at most `limit` (capped at
    /// [`MAX_MISSING_EVENTS`]), none below `min_depth`; oldest first (as Synapse: the walk's
    /// order reversed). `latest` themselves are not included.
    pub fn missing_events(
        &self,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<FedEvent>> {
        let limit = limit.min(MAX_MISSING_EVENTS);
        let mut seen: HashSet<OwnedEventId> = earliest.iter().take(MAX_NAMED_EVENTS * 10).cloned().collect();
        let latest: Vec<&EventId> = latest
            .iter()
            .filter(|e| !seen.contains(*e))
            .take(MAX_NAMED_EVENTS)
            .map(|e| &**e)
            .collect();
        let mut front = self.fed_events_by_id(room_id, &latest)?;
        let mut out = Vec::new();
        while !front.is_empty() && out.len() < limit {
            let mut wanted: Vec<OwnedEventId> = Vec::new();
            for event in &front {
                for prev in event.pdu.prev_events.iter().take(MAX_PREVS_FOLLOWED) {
                    if seen.insert(prev.clone()) {
                        wanted.push(prev.clone());
                    }
                }
            }
            let ids: Vec<&EventId> = wanted.iter().map(|e| &**e).collect();
            let mut next = Vec::new();
            for event in self.fed_events_by_id(room_id, &ids)? {
                if out.len() >= limit {
                    break;
                }
                if u64::from(event.pdu.depth) < min_depth {
                    continue;
                }
                out.push(event.clone());
                next.push(event);
            }
            front = next;
        }
        out.reverse();
        Ok(out)
    }

    /// Whether `server` has a joined member in the room's current state.
    pub fn server_in_room(&self, room_id: &RoomId, server: &ServerName) -> Result<bool> {
        Ok(self
            .members(room_id)?
            .with("join")
            .any(|user| user.server_name() == server))
    }

    /// The history-visibility check of events of `room_id` for `server`.
    pub fn server_filter(&self, room_id: &RoomId, server: &ServerName) -> Result<ServerFilter<'_>> {
        let members = self.members(room_id)?;
        let mut in_room_now = false;
        let mut users = Vec::new();
        for (user, membership) in members.iter() {
            if user.server_name() != server {
                continue;
            }
            in_room_now |= membership == "join";
            if users.len() < MAX_SERVER_USERS {
                users.push(user.to_owned());
            }
        }
        Ok(ServerFilter {
            rooms: self,
            server: server.to_owned(),
            users,
            in_room_now,
            decisions: HashMap::new(),
        })
    }
}

/// Which events of one room a server may see (Synapse's `filter_events_for_server`), decided
/// on the state before each event, once per state snapshot: `world_readable` always; `shared`
/// when the server has a joined member now or had one then; `invited` when one of its users
/// was invited or joined then; `joined` when one was joined then. A change of history
/// visibility, or of one of the server's users' membership, counts with the state after it
/// too. Events Hearth holds no state for (the create event, outliers) are visible.
pub struct ServerFilter<'a> {
    rooms: &'a Rooms,
    server: OwnedServerName,
    /// The server's users with a membership of the room (at most [`MAX_SERVER_USERS`]).
    users: Vec<OwnedUserId>,
    in_room_now: bool,
    /// State snapshot → (history visibility, the server's best membership).
    decisions: HashMap<u64, (String, Option<&'static str>)>,
}

/// Ranks memberships for a server: joined beats invited beats anything else.
fn best(a: Option<&'static str>, b: Option<&'static str>) -> Option<&'static str> {
    let rank = |m: Option<&str>| match m {
        Some("join") => 2,
        Some("invite") => 1,
        _ => 0,
    };
    if rank(b) > rank(a) { b } else { a }
}

fn membership_rank(m: Option<String>) -> Option<&'static str> {
    match m.as_deref() {
        Some("join") => Some("join"),
        Some("invite") => Some("invite"),
        _ => None,
    }
}

impl ServerFilter<'_> {
    /// Whether the server has a joined member in the room's current state.
    pub fn in_room_now(&self) -> bool {
        self.in_room_now
    }

    /// The server the filter decides for.
    pub fn server(&self) -> &ServerName {
        &self.server
    }

    /// Whether the server may see `event`.
    pub fn allows(&mut self, event: &FedEvent) -> Result<bool> {
        let Some(snapshot) = self.rooms.state.before_event(event.short)? else {
            return Ok(true);
        };
        let (visibility, membership) = self.decision(snapshot)?;
        if self.allowed(&visibility, membership) {
            return Ok(true);
        }
        let pdu = &event.pdu;
        let kind = pdu.kind.to_string();
        if kind == "m.room.history_visibility" {
            let after = normalise(pdu.content_str("history_visibility"));
            return Ok(self.allowed(&after, membership));
        }
        if kind == "m.room.member"
            && let Some(target) = pdu.state_key.as_deref()
            && target.rsplit_once(':').is_some_and(|(_, s)| s == self.server.as_str())
        {
            let after = best(membership, membership_rank(pdu.content_str("membership")));
            return Ok(self.allowed(&visibility, after));
        }
        Ok(false)
    }

    /// Whether one of the server's users was joined in the state before `event` or right
    /// after it.
    pub fn joined_at(&mut self, event: &FedEvent) -> Result<bool> {
        let pdu = &event.pdu;
        if pdu.kind.to_string() == "m.room.member"
            && pdu
                .state_key
                .as_deref()
                .is_some_and(|t| t.rsplit_once(':').is_some_and(|(_, s)| s == self.server.as_str()))
            && pdu.content_str("membership").as_deref() == Some("join")
        {
            return Ok(true);
        }
        let Some(snapshot) = self.rooms.state.before_event(event.short)? else {
            return Ok(false);
        };
        Ok(self.decision(snapshot)?.1 == Some("join"))
    }

    fn allowed(&self, visibility: &str, membership: Option<&str>) -> bool {
        match visibility {
            "world_readable" => true,
            "shared" => self.in_room_now || membership == Some("join"),
            "invited" => matches!(membership, Some("join" | "invite")),
            _ => membership == Some("join"),
        }
    }

    /// History visibility and the server's best membership in one state snapshot.
    fn decision(&mut self, snapshot: u64) -> Result<(String, Option<&'static str>)> {
        if let Some(known) = self.decisions.get(&snapshot) {
            return Ok(known.clone());
        }
        let rooms = self.rooms;
        let state = StateAt::layer(rooms.state.layer(snapshot)?);
        let visibility = rooms.original_lookup(&state, "m.room.history_visibility", "")?;
        let visibility = normalise(visibility.and_then(|e| e.content_str("history_visibility")));
        let mut membership = None;
        if visibility != "world_readable" {
            for user in &self.users {
                let m = rooms
                    .original_lookup(&state, "m.room.member", user.as_str())?
                    .and_then(|e| e.content_str("membership"));
                membership = best(membership, membership_rank(m));
                if membership == Some("join") {
                    break;
                }
            }
        }
        if self.decisions.len() >= MAX_DECISIONS {
            self.decisions.clear();
        }
        let decided = (visibility, membership);
        self.decisions.insert(snapshot, decided.clone());
        Ok(decided)
    }
}

fn raw(bytes: Vec<u8>) -> Result<Box<RawValue>> {
    let text = String::from_utf8(bytes).map_err(|e| Error::internal(e.to_string()))?;
    RawValue::from_string(text).map_err(|e| Error::internal(e.to_string()))
}

/// Unset or unknown history visibility counts as `shared` (as in `visibility`).
fn normalise(visibility: Option<String>) -> String {
    match visibility.as_deref() {
        Some("world_readable" | "shared" | "invited" | "joined") => visibility.unwrap_or_default(),
        _ => "shared".to_owned(),
    }
}
