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
            world_readable_now: self.history_visibility(room_id)? == "world_readable",
            decisions: HashMap::new(),
        })
    }
}

/// Which events of one room a server may see (Synapse's `filter_events_for_server`), decided
/// on the state before each event, once per state snapshot: `world_readable` always; `shared`
/// when the server has a joined member now or had one then; `invited` when one of its users
/// was invited or joined then; `joined` when one was joined then. A change of history
/// visibility, or of one of the server's users' membership, counts with the state after it
/// too. Events Hearth holds no state for (outliers) are visible to servers in the room now,
/// and to all while the room is `world_readable`.
pub struct ServerFilter<'a> {
    rooms: &'a Rooms,
    server: OwnedServerName,
    /// The server's users with a membership of the room (at most [`MAX_SERVER_USERS`]).
    users: Vec<OwnedUserId>,
    in_room_now: bool,
    /// Whether the room's current history visibility is `world_readable`.
    world_readable_now: bool,
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
            // No state before it (an outlier): open to servers in the room, and to all while
            // the room is world-readable.
            return Ok(self.in_room_now || self.world_readable_now);
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use ruma::{OwnedEventId, OwnedRoomId, RoomVersionId, ServerName, UserId, events::StateEventType};
    use serde_json::{Value, json};

    use super::{FedEvent, MAX_BACKFILL};
    use crate::services::{
        Services, events,
        rooms::{NewEvent, create::Preset, tests::named_room},
    };

    async fn message(services: &Services, room: &ruma::RoomId, body: &str) -> OwnedEventId {
        let alice = UserId::parse("@alice:localhost").unwrap();
        let content = json!({"msgtype": "m.text", "body": body});
        services
            .rooms
            .append(room, &alice, NewEvent::message(content))
            .await
            .unwrap()
            .event_id
    }

    async fn set_visibility(services: &Services, room: &ruma::RoomId, visibility: &str) {
        let alice = UserId::parse("@alice:localhost").unwrap();
        let Ok(ruma::CanonicalJsonValue::Object(content)) =
            ruma::CanonicalJsonValue::try_from(json!({"history_visibility": visibility}))
        else {
            unreachable!()
        };
        services
            .rooms
            .append(room, &alice, NewEvent::state("m.room.history_visibility", "", content))
            .await
            .unwrap();
    }

    async fn room(services: &Services, preset: Preset) -> OwnedRoomId {
        let alice = UserId::parse("@alice:localhost").unwrap();
        services
            .rooms
            .create_room(&alice, named_room("fed", preset, false))
            .await
            .unwrap()
    }

    fn ids(events: &[FedEvent]) -> Vec<OwnedEventId> {
        events.iter().map(|e| e.pdu.event_id.clone()).collect()
    }

    /// Every auth event of every event in `events` and of the chain is in the chain.
    fn assert_closed(events: &[&FedEvent], chain: &[FedEvent]) {
        let have: HashSet<&OwnedEventId> = chain.iter().map(|e| &e.pdu.event_id).collect();
        for event in events.iter().copied().chain(chain.iter()) {
            for auth in &event.pdu.auth_events {
                assert!(
                    have.contains(auth),
                    "{auth} (auth event of {}) missing",
                    event.pdu.event_id
                );
            }
        }
    }

    /// The state before a message is the room's state then, whole, as stored PDUs; its auth
    /// chain and the message's are closed under `auth_events` and start at the create event.
    #[tokio::test]
    async fn state_before_an_event_and_auth_chains_are_complete() {
        let dir = tempfile::tempdir().unwrap();
        let services = Services::for_tests(dir.path(), 8 << 20);
        let rooms = &services.rooms;
        let room = room(&services, Preset::PublicChat).await;
        let first = message(&services, &room, "one").await;
        let state_then: HashSet<OwnedEventId> = rooms
            .full_state(&room)
            .unwrap()
            .into_iter()
            .map(|p| p.event_id)
            .collect();
        // A later state change is not in the state before `first`.
        set_visibility(&services, &room, "joined").await;

        let event = rooms.federation_event_in(&room, &first).unwrap();
        let state = rooms.federation_state_before(&room, &event).unwrap();
        let got: HashSet<OwnedEventId> = ids(&state).into_iter().collect();
        assert_eq!(got, state_then);
        // As stored: the canonical JSON bytes.
        for e in &state {
            assert_eq!(
                e.json.get().as_bytes(),
                rooms.event_json(&e.pdu.event_id).unwrap().unwrap()
            );
        }
        let chain = rooms.auth_chain(&room, &state.iter().collect::<Vec<_>>()).unwrap();
        assert_closed(&state.iter().collect::<Vec<_>>(), &chain);
        assert_eq!(chain[0].pdu.kind.to_string(), "m.room.create", "oldest first");

        let chain = rooms.auth_chain(&room, &[&event]).unwrap();
        assert_closed(&[&event], &chain);
        let kinds: HashSet<String> = chain.iter().map(|e| e.pdu.kind.to_string()).collect();
        assert!(
            kinds.contains("m.room.create") && kinds.contains("m.room.power_levels") && kinds.contains("m.room.member")
        );
        assert!(!ids(&chain).contains(&first), "the event is not its own auth event");

        // The create event has an empty state before it; an event of another room is 404.
        let create = rooms
            .state_event(&room, &StateEventType::RoomCreate, "")
            .unwrap()
            .unwrap();
        let create = rooms.federation_event_in(&room, &create.event_id).unwrap();
        assert!(rooms.federation_state_before(&room, &create).unwrap().is_empty());
        let other = self::room(&services, Preset::PublicChat).await;
        assert_eq!(
            rooms.federation_event_in(&other, &first).unwrap_err().errcode(),
            "M_NOT_FOUND"
        );
    }

    /// Backfill walks back from the given events, newest first, up to the limit, the given
    /// events included; never past the create event, never into another room, at most 100.
    #[tokio::test]
    async fn backfill_walks_back_newest_first_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let services = Services::for_tests(dir.path(), 8 << 20);
        let rooms = &services.rooms;
        let room = room(&services, Preset::PublicChat).await;
        let mut sent = Vec::new();
        for n in 0..10 {
            sent.push(message(&services, &room, &format!("m{n}")).await);
        }
        let page = rooms.backfill(&room, &[sent[9].clone()], 4).unwrap();
        assert_eq!(
            ids(&page),
            vec![sent[9].clone(), sent[8].clone(), sent[7].clone(), sent[6].clone()]
        );
        let page = rooms.backfill(&room, &[sent[3].clone()], 2).unwrap();
        assert_eq!(ids(&page), vec![sent[3].clone(), sent[2].clone()]);

        // Everything back to the create event, depth descending.
        let all = rooms.backfill(&room, &[sent[9].clone()], 1_000).unwrap();
        assert_eq!(all.last().unwrap().pdu.kind.to_string(), "m.room.create");
        assert!(all.windows(2).all(|w| w[0].pdu.depth > w[1].pdu.depth));
        let distinct: HashSet<_> = ids(&all).into_iter().collect();
        assert_eq!(distinct.len(), all.len());
        assert!(rooms.backfill(&room, &[sent[9].clone()], 0).unwrap().is_empty());

        // A seed of another room is ignored.
        let other = self::room(&services, Preset::PublicChat).await;
        assert!(rooms.backfill(&other, &[sent[9].clone()], 10).unwrap().is_empty());

        // The cap.
        for n in 0..MAX_BACKFILL {
            sent.push(message(&services, &room, &format!("more {n}")).await);
        }
        let capped = rooms.backfill(&room, &[sent.last().unwrap().clone()], 10_000).unwrap();
        assert_eq!(capped.len(), MAX_BACKFILL);
    }

    /// Missing events: what lies between earliest and latest, oldest first, latest and
    /// earliest themselves excluded, the limit keeping the newest, `min_depth` respected.
    #[tokio::test]
    async fn missing_events_lie_between_earliest_and_latest_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let services = Services::for_tests(dir.path(), 8 << 20);
        let rooms = &services.rooms;
        let room = room(&services, Preset::PublicChat).await;
        let mut m = Vec::new();
        for n in 0..10 {
            m.push(message(&services, &room, &format!("m{n}")).await);
        }
        let got = rooms
            .missing_events(&room, &[m[2].clone()], &[m[9].clone()], 10, 0)
            .unwrap();
        assert_eq!(ids(&got), m[3..9].to_vec());
        let got = rooms
            .missing_events(&room, &[m[2].clone()], &[m[9].clone()], 3, 0)
            .unwrap();
        assert_eq!(ids(&got), m[6..9].to_vec());
        let depth5 = u64::from(rooms.federation_event(&m[5]).unwrap().unwrap().pdu.depth);
        let got = rooms
            .missing_events(&room, &[m[2].clone()], &[m[9].clone()], 10, depth5)
            .unwrap();
        assert_eq!(ids(&got), m[5..9].to_vec());
        // Capped at 20; a latest event of another room gives nothing.
        for n in 0..30 {
            m.push(message(&services, &room, &format!("n{n}")).await);
        }
        let got = rooms
            .missing_events(&room, &[m[0].clone()], &[m[39].clone()], 1_000, 0)
            .unwrap();
        assert_eq!(ids(&got), m[19..39].to_vec());
        let other = self::room(&services, Preset::PublicChat).await;
        assert!(
            rooms
                .missing_events(&other, &[], &[m[9].clone()], 10, 0)
                .unwrap()
                .is_empty()
        );
    }

    /// Server-level history visibility: `joined` history is hidden from a server with no
    /// member then and shown once one of its users joined; `world_readable` is open to all.
    /// A redacted event is served in its redacted form, still signed.
    #[tokio::test]
    async fn servers_see_what_their_users_could_see() {
        let dir = tempfile::tempdir().unwrap();
        let services = Services::for_tests(dir.path(), 8 << 20);
        let rooms = &services.rooms;
        let room = room(&services, Preset::PublicChat).await;
        let other = ServerName::parse("other.example").unwrap();
        let third = ServerName::parse("third.example").unwrap();
        set_visibility(&services, &room, "joined").await;
        let before = message(&services, &room, "before").await;
        let before = rooms.federation_event(&before).unwrap().unwrap();
        assert!(!rooms.server_filter(&room, &other).unwrap().allows(&before).unwrap());
        assert!(!rooms.server_in_room(&room, &other).unwrap());

        // @bob:other.example joins (as a federation join would store it).
        let id_of = |kind: StateEventType| rooms.state_event(&room, &kind, "").unwrap().unwrap().event_id;
        let auth = vec![
            id_of(StateEventType::RoomCreate),
            id_of(StateEventType::RoomPowerLevels),
            id_of(StateEventType::RoomJoinRules),
        ];
        let bob = UserId::parse("@bob:other.example").unwrap();
        let Ok(ruma::CanonicalJsonValue::Object(content)) =
            ruma::CanonicalJsonValue::try_from(json!({"membership": "join"}))
        else {
            unreachable!()
        };
        let join = events::build(
            &services.server_keys,
            "localhost",
            events::NewPdu {
                room_version: &RoomVersionId::V11,
                room_id: Some(&room),
                sender: &bob,
                kind: "m.room.member",
                state_key: Some(bob.as_str()),
                content,
                prev_events: vec![before.pdu.event_id.clone()],
                auth_events: auth,
                depth: 10,
                origin_server_ts: 1,
                redacts: None,
                reference_hashes: None,
            },
        )
        .unwrap();
        let join_id = join.event_id.clone();
        rooms
            .import_state(&room, vec![(join.event_id, join.bytes)])
            .await
            .unwrap();
        let after = message(&services, &room, "after").await;
        let after = rooms.federation_event(&after).unwrap().unwrap();
        let mut filter = rooms.server_filter(&room, &other).unwrap();
        assert!(filter.in_room_now());
        assert!(filter.allows(&after).unwrap());
        assert!(filter.joined_at(&after).unwrap());
        assert!(
            !filter.allows(&before).unwrap(),
            "joined history before the join stays hidden"
        );
        let mut outsider = rooms.server_filter(&room, &third).unwrap();
        assert!(!outsider.in_room_now());
        assert!(!outsider.allows(&after).unwrap());
        assert!(!outsider.joined_at(&after).unwrap());

        // An event without a state before it (the imported join) follows the room's current
        // membership and history visibility; the create event, the `shared` rule of the empty
        // state before it.
        let create = rooms
            .state_event(&room, &StateEventType::RoomCreate, "")
            .unwrap()
            .unwrap();
        let create = rooms.federation_event(&create.event_id).unwrap().unwrap();
        let bobs_join = rooms.federation_event(&join_id).unwrap().unwrap();
        assert!(filter.allows(&create).unwrap() && filter.allows(&bobs_join).unwrap());
        assert!(!outsider.allows(&create).unwrap() && !outsider.allows(&bobs_join).unwrap());

        set_visibility(&services, &room, "world_readable").await;
        assert!(rooms.server_filter(&room, &third).unwrap().allows(&bobs_join).unwrap());
        let open = message(&services, &room, "open").await;
        let open = rooms.federation_event(&open).unwrap().unwrap();
        assert!(rooms.server_filter(&room, &third).unwrap().allows(&open).unwrap());

        // Redacted: the redacted PDU, hashes and signatures kept.
        let alice = UserId::parse("@alice:localhost").unwrap();
        rooms
            .redact(
                &room,
                &alice,
                &open.pdu.event_id,
                None,
                ("@alice:localhost", "DEV", "t1"),
            )
            .await
            .unwrap();
        let served: Value =
            serde_json::from_str(rooms.federation_event(&open.pdu.event_id).unwrap().unwrap().json.get()).unwrap();
        assert!(served["content"].get("body").is_none(), "{served}");
        assert!(served.get("signatures").is_some() && served.get("hashes").is_some());
        let pruned: Value = serde_json::from_str(rooms.pruned(&after).unwrap().get()).unwrap();
        assert!(pruned["content"].get("body").is_none());
        assert_eq!(pruned["sender"], "@alice:localhost");
    }
}
