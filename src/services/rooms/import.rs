//! Storing events in bulk: what a federation join (`send_join`'s `state` and `auth_chain`)
//! delivers, 50,000–200,000 events for a public room, and the state before an event that
//! arrived after a gap (`store_outliers`, `given_state`). Every event is parsed and checked
//! against the authorization rules with the state its own auth events form
//! (`Rooms::check_by_auth_events`; they must be among those given or already stored),
//! stored as an outlier (no timeline position), and the state becomes ONE new layer over what
//! the room had: at this size a base, written once. The cost is `O(n log n)` for the sort of
//! the layer and `O(n)` for everything else; events are parsed, checked and written in chunks
//! (unsynced: nothing refers to them until the layer does), so memory holds the given bytes
//! and the state's entries, not every event parsed; the layer, the room's current pointer and
//! the membership index go in one synced batch, so a crash leaves either the old state or the
//! new one (a refused event stops the import before that batch: nothing changes).

use std::{collections::HashMap, sync::Mutex};

use ruma::{EventId, OwnedEventId, RoomId, events::StateEventType, state_res::StateMap};

use super::{Rooms, locked, pdu::Pdu};
use crate::{
    Error, Result,
    services::events,
    storage::tables::{membership::Membership, state::Changes},
};

/// Events written per unsynced batch.
const CHUNK: usize = 5_000;

/// Events given in bulk, found by id for the auth checks of the events that name them: parsed
/// when asked for (auth events are few per event), the non-member ones (create, power levels,
/// join rules: a few, named by nearly every event) kept parsed.
struct Given<'a> {
    events: &'a [(OwnedEventId, Vec<u8>)],
    index: HashMap<&'a EventId, usize>,
    kept: Mutex<HashMap<OwnedEventId, Pdu>>,
}

impl<'a> Given<'a> {
    fn new(events: &'a [(OwnedEventId, Vec<u8>)]) -> Self {
        Given {
            events,
            index: events.iter().enumerate().map(|(i, (id, _))| (&**id, i)).collect(),
            kept: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, id: &EventId) -> Option<Pdu> {
        if let Some(pdu) = locked(&self.kept).get(id) {
            return Some(pdu.clone());
        }
        let pdu = Pdu::parse(id.to_owned(), &self.events[*self.index.get(id)?].1).ok()?;
        if pdu.kind.to_string() != "m.room.member" {
            locked(&self.kept).insert(id.to_owned(), pdu.clone());
        }
        Some(pdu)
    }
}

impl Rooms {
    /// Stores `events` (event id, canonical JSON) as the room's state, over its current state;
    /// returns how many entries the state then has. The room must exist. Signatures are the
    /// caller's to verify (federation checks them against the origin's keys).
    pub async fn import_state(&self, room_id: &RoomId, events: Vec<(OwnedEventId, Vec<u8>)>) -> Result<u64> {
        let lock = self.room_lock(room_id);
        let mut head = lock.lock().await;
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = events::rules(&version)?;
        if head.is_none() {
            *head = self.load_head(room_id)?;
        }
        let Some(current) = head.as_ref().map(|h| h.current_layer()) else {
            return Err(Error::not_found("Unknown room"));
        };

        let given = Given::new(&events);
        let fetch = |id: &EventId| given.get(id);

        let mut changes = Changes::default();
        let mut final_batch = self.db.batch();
        let mut members = Vec::new();
        for chunk in events.chunks(CHUNK) {
            let mut batch = self.db.batch();
            for (event_id, bytes) in chunk {
                let pdu = Pdu::parse(event_id.clone(), bytes)?;
                if pdu.room()? != room_id {
                    return Err(Error::bad_json(format!("{event_id} belongs to another room")));
                }
                if pdu.state_key.is_none() {
                    return Err(Error::bad_json(format!("{event_id} is not a state event")));
                }
                self.check_by_auth_events(&rules, &pdu, fetch)
                    .map_err(|reason| Error::forbidden(format!("{event_id} is not authorized: {reason}")))?;
                let kind = pdu.kind.to_string();
                let state_key = pdu.state_key.as_deref().unwrap_or_default();
                let short_event = self.ids.event_or_create(event_id.as_str())?;
                self.pdus.put(&mut batch, short_event, bytes);
                let key = self.ids.state_key_or_create(&kind, state_key)?;
                let member = kind == "m.room.member";
                changes.push(key, short_event, member);
                if member && let Some(membership) = pdu.content_str("membership") {
                    // Position 0: set by an event outside the timeline (readers then look
                    // the event up).
                    self.memberships.queue_set(
                        &mut final_batch,
                        state_key,
                        room_id.as_str(),
                        &Membership {
                            membership,
                            position: 0,
                        },
                    );
                    members.push(state_key.to_owned());
                }
            }
            batch.commit_unsynced()?;
        }
        let short_room = self
            .ids
            .room(room_id.as_str())?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let layer = self.state.queue_snapshot(&mut final_batch, Some(&current), changes)?;
        self.state.queue_current(&mut final_batch, short_room, layer.id);
        let len = layer.len();
        let written = self.commits.enqueue(final_batch).durable().await;
        match written {
            Ok(()) => {
                if let Some(head) = head.as_mut() {
                    head.set_current_layer(layer);
                }
                for user in members {
                    if let Ok(user) = ruma::OwnedUserId::try_from(user) {
                        self.member_lists.invalidate(room_id, &user);
                    }
                }
                self.directory.room_changed(room_id);
                Ok(len)
            }
            Err(e) => {
                *head = None;
                Err(e.into())
            }
        }
    }
}

impl Rooms {
    /// Stores a room this server is joining over federation (`send_join`'s answer, every event
    /// already checked for signatures and hashes): the room with version `version`, the
    /// `auth_chain` events as outliers, and `state` as its current state ([`Self::import_state`],
    /// each state event checked against its auth events). The join event itself then goes
    /// through [`Self::receive_remote`] with that state.
    pub async fn import_remote_room(
        &self,
        room_id: &RoomId,
        version: &ruma::RoomVersionId,
        auth_chain: Vec<(OwnedEventId, Vec<u8>)>,
        state: Vec<(OwnedEventId, Vec<u8>)>,
    ) -> Result<u64> {
        let lock = self.room_lock(room_id);
        {
            let mut head = lock.lock().await;
            let short_room = self.ids.room_or_create(room_id.as_str())?;
            if self.state.current(short_room)?.is_none() {
                let mut batch = self.db.batch();
                let empty = self.state.queue_snapshot(&mut batch, None, Changes::default())?;
                self.state.queue_current(&mut batch, short_room, empty.id);
                self.commits.enqueue(batch).durable().await?;
                *head = None;
            }
            self.versions.insert(room_id.to_owned(), version.clone());
            let rules = events::rules(version)?;
            let state_ids: std::collections::HashSet<&EventId> = state.iter().map(|(id, _)| &**id).collect();
            let (in_chain, in_state) = (Given::new(&auth_chain), Given::new(&state));
            let fetch = |id: &EventId| in_chain.get(id).or_else(|| in_state.get(id));
            for chunk in auth_chain.chunks(CHUNK) {
                let mut batch = self.db.batch();
                for (event_id, bytes) in chunk {
                    if state_ids.contains(&**event_id) || self.ids.event(event_id.as_str())?.is_some() {
                        continue;
                    }
                    let pdu = Pdu::parse(event_id.clone(), bytes)?;
                    if pdu.room()? != room_id {
                        return Err(Error::bad_json(format!("{event_id} belongs to another room")));
                    }
                    // Every event of the chain passes the rules with its own auth events (a
                    // failure refuses the whole answer, so their order does not matter).
                    self.check_by_auth_events(&rules, &pdu, fetch)
                        .map_err(|reason| Error::forbidden(format!("{event_id} is not authorized: {reason}")))?;
                    let short_event = self.ids.event_or_create(event_id.as_str())?;
                    self.pdus.put(&mut batch, short_event, bytes);
                }
                batch.commit_unsynced()?;
            }
        }
        self.import_state(room_id, state).await
    }
}

impl Rooms {
    /// Stores events another server gave as the state before an event of `room_id` and its
    /// auth chain (checked for signatures and hashes), as outliers: no state, no timeline
    /// position. Each must be allowed by its own auth events (among `events` or stored): the
    /// first that is not refuses the whole answer, and nothing is written. Auth events come
    /// before the events they authorise whatever order `events` has; a cycle is refused.
    pub async fn store_outliers(&self, room_id: &RoomId, events: Vec<(OwnedEventId, Vec<u8>)>) -> Result<()> {
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = events::rules(&version)?;
        let mut given: HashMap<OwnedEventId, (Pdu, &[u8])> = HashMap::with_capacity(events.len());
        for (event_id, bytes) in &events {
            if self.event_json(event_id)?.is_some() {
                continue;
            }
            let pdu = Pdu::parse(event_id.clone(), bytes)
                .map_err(|e| Error::bad_json(format!("{event_id} is not a valid event: {e}")))?;
            if pdu.room()? != room_id {
                return Err(Error::bad_json(format!("{event_id} belongs to another room")));
            }
            given.insert(event_id.clone(), (pdu, bytes));
        }
        // Kahn's order over the auth events among those given.
        let mut waiting_on: HashMap<&EventId, usize> = HashMap::with_capacity(given.len());
        let mut unlocks: HashMap<&EventId, Vec<&EventId>> = HashMap::new();
        for (id, (pdu, _)) in &given {
            let inside: Vec<&EventId> = pdu
                .auth_events
                .iter()
                .filter(|a| given.contains_key(*a))
                .map(|a| &**a)
                .collect();
            waiting_on.insert(&**id, inside.len());
            for auth in inside {
                unlocks.entry(auth).or_default().push(&**id);
            }
        }
        let mut ready: Vec<&EventId> = waiting_on.iter().filter(|(_, n)| **n == 0).map(|(id, _)| *id).collect();
        let mut order = Vec::with_capacity(given.len());
        while let Some(id) = ready.pop() {
            order.push(id);
            for next in unlocks.get(id).into_iter().flatten() {
                if let Some(n) = waiting_on.get_mut(next) {
                    *n -= 1;
                    if *n == 0 {
                        ready.push(next);
                    }
                }
            }
        }
        if order.len() < given.len() {
            return Err(Error::forbidden(
                "The events given name each other as auth events in a cycle",
            ));
        }
        let fetch = |id: &EventId| given.get(id).map(|(pdu, _)| pdu.clone());
        let mut batch = self.db.batch();
        for id in order {
            let (pdu, bytes) = &given[id];
            self.check_by_auth_events(&rules, pdu, fetch)
                .map_err(|reason| Error::forbidden(format!("{id} is not allowed by its auth events: {reason}")))?;
            let short_event = self.ids.event_or_create(id.as_str())?;
            self.pdus.put(&mut batch, short_event, bytes);
        }
        self.commits.enqueue(batch).durable().await?;
        Ok(())
    }

    /// The state another server gave by event ids (every event stored) as a state map: each
    /// must be an accepted state event of `room_id`, at most one per type and state key, and
    /// the room's own create event among them; 403 otherwise.
    pub fn given_state(&self, room_id: &RoomId, ids: &[OwnedEventId]) -> Result<StateMap<OwnedEventId>> {
        let create = self
            .state_event(room_id, &StateEventType::RoomCreate, "")?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let mut state = StateMap::with_capacity(ids.len());
        for id in ids {
            let pdu = self
                .original_event(id)?
                .ok_or_else(|| Error::forbidden(format!("The state names {id}, which is unknown")))?;
            if pdu.rejected || pdu.room()? != room_id {
                return Err(Error::forbidden(format!("The state names {id}, which is not usable")));
            }
            let Some(state_key) = pdu.state_key.clone() else {
                return Err(Error::forbidden(format!(
                    "The state names {id}, which is not a state event"
                )));
            };
            let key = (StateEventType::from(pdu.kind.to_string()), state_key);
            if state.insert(key, id.clone()).is_some() {
                return Err(Error::forbidden(format!(
                    "The state names two events for the key of {id}"
                )));
            }
        }
        if state.get(&(StateEventType::RoomCreate, String::new())) != Some(&create.event_id) {
            return Err(Error::forbidden("The state does not hold the room's create event"));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use ruma::{OwnedEventId, RoomVersionId, UserId, events::StateEventType};
    use serde_json::json;

    use crate::services::{
        Services, events,
        rooms::{create::Preset, tests::named_room},
    };

    /// Join events of `count` made-up users of `server`, each authorised by the room's
    /// create, power-levels and join-rules events (`auth`), all built on `prev`.
    fn joins(
        services: &Services,
        room_id: &ruma::RoomId,
        (auth, prev): (&[OwnedEventId], &OwnedEventId),
        server: &str,
        count: usize,
    ) -> Vec<(OwnedEventId, Vec<u8>)> {
        (0..count)
            .map(|n| {
                let user = UserId::parse(format!("@imported{n}:{server}")).unwrap();
                let content = json!({"membership": "join", "displayname": format!("Imported {n}")});
                let ruma::CanonicalJsonValue::Object(content) = ruma::CanonicalJsonValue::try_from(content).unwrap()
                else {
                    unreachable!()
                };
                let signed = events::build(
                    &services.server_keys,
                    "localhost",
                    events::NewPdu {
                        room_version: &RoomVersionId::V11,
                        room_id: Some(room_id),
                        sender: &user,
                        kind: "m.room.member",
                        state_key: Some(user.as_str()),
                        content,
                        prev_events: vec![prev.clone()],
                        auth_events: auth.to_vec(),
                        depth: 10,
                        origin_server_ts: 1,
                        redacts: None,
                        reference_hashes: None,
                    },
                )
                .unwrap();
                (signed.event_id, signed.bytes)
            })
            .collect()
    }

    /// 3,000 members arrive in one import: every one is then a joined member, found by a
    /// state lookup, counted in the member list; the room's own state is kept; and a batch
    /// holding one event whose auth events are wrong is refused whole, leaving the state as
    /// it was.
    #[tokio::test]
    async fn a_bulk_state_import_becomes_the_rooms_state_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let services = Services::for_tests(dir.path(), 8 << 20);
        let rooms = &services.rooms;
        let alice = UserId::parse("@alice:localhost").unwrap();
        let room = rooms
            .create_room(&alice, named_room("big", Preset::PublicChat, false))
            .await
            .unwrap();
        let id_of = |kind: StateEventType| rooms.state_event(&room, &kind, "").unwrap().unwrap().event_id;
        let auth = vec![
            id_of(StateEventType::RoomCreate),
            id_of(StateEventType::RoomPowerLevels),
            id_of(StateEventType::RoomJoinRules),
        ];
        let prev = id_of(StateEventType::RoomName);
        let before = rooms.full_state(&room).unwrap().len() as u64;

        // One forged event (no create event among its auth events) spoils the batch.
        let mut bad = joins(&services, &room, (&auth[1..], &prev), "localhost", 1);
        bad.extend(
            joins(&services, &room, (&auth, &prev), "localhost", 10)
                .into_iter()
                .skip(1),
        );
        let refused = rooms.import_state(&room, bad).await.unwrap_err();
        assert_eq!(refused.errcode(), "M_FORBIDDEN");
        assert_eq!(rooms.full_state(&room).unwrap().len() as u64, before);

        let imported = joins(&services, &room, (&auth, &prev), "localhost", 3_000);
        let len = rooms.import_state(&room, imported).await.unwrap();
        assert_eq!(len, before + 3_000);
        assert_eq!(rooms.full_state(&room).unwrap().len() as u64, len);
        let member = rooms
            .state_event(&room, &StateEventType::RoomMember, "@imported2999:localhost")
            .unwrap()
            .unwrap();
        assert_eq!(member.content_str("displayname").as_deref(), Some("Imported 2999"));
        assert_eq!(rooms.members(&room).unwrap().count("join"), 3_001);
        assert!(
            rooms
                .state_event(&room, &StateEventType::RoomName, "")
                .unwrap()
                .is_some()
        );

        // The room goes on: the creator's next state event builds on the imported state.
        let content = json!({"topic": "after the import"});
        let ruma::CanonicalJsonValue::Object(content) = ruma::CanonicalJsonValue::try_from(content).unwrap() else {
            unreachable!()
        };
        rooms
            .append(
                &room,
                &alice,
                crate::services::rooms::NewEvent::state("m.room.topic", "", content),
            )
            .await
            .unwrap();
        assert_eq!(rooms.full_state(&room).unwrap().len() as u64, len + 1);
    }

    /// Our event in a room with a member on another server is marked unsent in its own batch
    /// and keeps the mark until federation has queued it: after a crash in between, the next
    /// start finds it, with where it goes. An event of a room with only our members has no mark.
    #[tokio::test]
    async fn our_events_for_other_servers_stay_marked_until_queued() {
        let dir = tempfile::tempdir().unwrap();
        let services = Services::for_tests(dir.path(), 8 << 20);
        let rooms = &services.rooms;
        let alice = UserId::parse("@alice:localhost").unwrap();
        let message = || crate::services::rooms::NewEvent::message(json!({"msgtype": "m.text", "body": "hello"}));
        let shared = rooms
            .create_room(&alice, named_room("shared", Preset::PublicChat, false))
            .await
            .unwrap();
        let id_of = |kind: StateEventType| rooms.state_event(&shared, &kind, "").unwrap().unwrap().event_id;
        let auth = vec![
            id_of(StateEventType::RoomCreate),
            id_of(StateEventType::RoomPowerLevels),
            id_of(StateEventType::RoomJoinRules),
        ];
        let prev = id_of(StateEventType::RoomName);
        let remote = joins(&services, &shared, (&auth, &prev), "remote.example", 1);
        rooms.import_state(&shared, remote).await.unwrap();
        let local = rooms
            .create_room(&alice, named_room("local", Preset::PublicChat, false))
            .await
            .unwrap();

        // Federation is on, but its task never takes the events (as if the server died).
        let _never_read = rooms.forward_local_events(8).unwrap();
        rooms.append(&local, &alice, message()).await.unwrap();
        let sent = rooms.append(&shared, &alice, message()).await.unwrap();
        let unsent = rooms.unsent_local_events(10).unwrap();
        assert_eq!(unsent.len(), 1, "{unsent:?}");
        assert_eq!(unsent[0].event_id, sent.event_id);
        assert_eq!(
            unsent[0].destinations,
            vec![ruma::OwnedServerName::try_from("remote.example").unwrap()]
        );

        rooms.forwarded(unsent[0].short_event);
        assert!(rooms.unsent_local_events(10).unwrap().is_empty());
    }

    /// A room with 25 forward extremities (25 messages of another server's user on the same
    /// event): our next event names the newest 20 (other servers refuse more prev events) and
    /// the 5 it does not name stay extremities, with it.
    #[tokio::test]
    async fn a_local_event_names_at_most_twenty_extremities_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let services = Services::for_tests(dir.path(), 8 << 20);
        let rooms = &services.rooms;
        let alice = UserId::parse("@alice:localhost").unwrap();
        let room = rooms
            .create_room(&alice, named_room("forked", Preset::PublicChat, false))
            .await
            .unwrap();
        let id_of = |kind: StateEventType| rooms.state_event(&room, &kind, "").unwrap().unwrap().event_id;
        let (create, power) = (
            id_of(StateEventType::RoomCreate),
            id_of(StateEventType::RoomPowerLevels),
        );
        let auth = vec![create.clone(), power.clone(), id_of(StateEventType::RoomJoinRules)];
        let extremity = rooms.forward_extremities(&room).unwrap().remove(0);
        let mut remote = joins(&services, &room, (&auth, &extremity), "remote.example", 1);
        let (member, bytes) = remote.remove(0);
        rooms.receive_remote(&room, member.clone(), bytes, None).await.unwrap();
        let base = vec![member.clone()];
        let sender = UserId::parse("@imported0:remote.example").unwrap();
        for n in 0..25u64 {
            let ruma::CanonicalJsonValue::Object(content) =
                ruma::CanonicalJsonValue::try_from(json!({"msgtype": "m.text", "body": format!("fork {n}")})).unwrap()
            else {
                unreachable!()
            };
            let signed = events::build(
                &services.server_keys,
                "localhost",
                events::NewPdu {
                    room_version: &RoomVersionId::V11,
                    room_id: Some(&room),
                    sender: &sender,
                    kind: "m.room.message",
                    state_key: None,
                    content,
                    prev_events: base.clone(),
                    auth_events: vec![create.clone(), power.clone(), member.clone()],
                    depth: 20 + n,
                    origin_server_ts: 2 + n,
                    redacts: None,
                    reference_hashes: None,
                },
            )
            .unwrap();
            let received = rooms
                .receive_remote(&room, signed.event_id, signed.bytes, None)
                .await
                .unwrap();
            assert!(
                matches!(received, crate::services::rooms::remote::Received::Accepted(_)),
                "{received:?}"
            );
        }
        assert_eq!(rooms.forward_extremities(&room).unwrap().len(), 25);

        let sent = rooms
            .append(
                &room,
                &alice,
                crate::services::rooms::NewEvent::message(json!({"msgtype": "m.text", "body": "joined up"})),
            )
            .await
            .unwrap();
        let pdu = rooms.event(&sent.event_id).unwrap().unwrap();
        assert_eq!(pdu.prev_events.len(), 20);
        let left = rooms.forward_extremities(&room).unwrap();
        assert_eq!(left.len(), 6, "{left:?}");
        assert!(left.contains(&sent.event_id));
    }
}
