//! Storing a room's state in bulk: what a federation join (`send_join`'s `state` and
//! `auth_chain`) delivers, 50,000–200,000 events for a public room. Every event is parsed and
//! checked against the authorization rules that do not depend on the room's state (its auth
//! events must be among those given or already stored, of the same room, of the right types),
//! stored as an outlier (no timeline position), and the state becomes ONE new layer over what
//! the room had: at this size a base, written once. The cost is `O(n log n)` for the sort of
//! the layer and `O(n)` for everything else; events are parsed, checked and written in chunks
//! (unsynced: nothing refers to them until the layer does), so memory holds the given bytes
//! and the state's entries, not every event parsed; the layer, the room's current pointer and
//! the membership index go in one synced batch, so a crash leaves either the old state or the
//! new one (a refused event stops the import before that batch: nothing changes).

use std::{collections::HashMap, sync::Mutex};

use ruma::{EventId, OwnedEventId, RoomId, state_res};

use super::{Rooms, locked, pdu::Pdu};
use crate::{
    Error, Result,
    services::events,
    storage::tables::{membership::Membership, state::Changes},
};

/// Events written per unsynced batch.
const CHUNK: usize = 5_000;

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

        // Where each event is, for the auth checks of the events that name it: events are
        // parsed as they are checked, and again when another names them (auth events are few
        // per event); the non-member ones (create, power levels, join rules: a few, named by
        // nearly every event) are kept parsed.
        let index: HashMap<&EventId, usize> = events.iter().enumerate().map(|(i, (id, _))| (&**id, i)).collect();
        let kept: Mutex<HashMap<OwnedEventId, Pdu>> = Mutex::new(HashMap::new());
        let fetch = |id: &EventId| {
            if let Some(pdu) = locked(&kept).get(id) {
                return Some(pdu.clone());
            }
            let Some(&i) = index.get(id) else {
                return self.original_event(id).ok().flatten();
            };
            let pdu = Pdu::parse(id.to_owned(), &events[i].1).ok()?;
            if pdu.kind.to_string() != "m.room.member" {
                locked(&kept).insert(id.to_owned(), pdu.clone());
            }
            Some(pdu)
        };

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
                state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, fetch)
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
            let state_ids: std::collections::HashSet<&EventId> = state.iter().map(|(id, _)| &**id).collect();
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
                    let short_event = self.ids.event_or_create(event_id.as_str())?;
                    self.pdus.put(&mut batch, short_event, bytes);
                }
                batch.commit_unsynced()?;
            }
        }
        self.import_state(room_id, state).await
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

    /// Join events of `count` made-up users of this server, each authorised by the room's
    /// create, power-levels and join-rules events (`auth`), all built on `prev`.
    fn joins(
        services: &Services,
        room_id: &ruma::RoomId,
        auth: &[OwnedEventId],
        prev: &OwnedEventId,
        count: usize,
    ) -> Vec<(OwnedEventId, Vec<u8>)> {
        (0..count)
            .map(|n| {
                let user = UserId::parse(format!("@imported{n}:localhost")).unwrap();
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
        let mut bad = joins(&services, &room, &auth[1..], &prev, 1);
        bad.extend(joins(&services, &room, &auth, &prev, 10).into_iter().skip(1));
        let refused = rooms.import_state(&room, bad).await.unwrap_err();
        assert_eq!(refused.errcode(), "M_FORBIDDEN");
        assert_eq!(rooms.full_state(&room).unwrap().len() as u64, before);

        let imported = joins(&services, &room, &auth, &prev, 3_000);
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
}
