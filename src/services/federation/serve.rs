//! Serving reads to other servers (server-server-api "Retrieving events", "Backfilling and
//! retrieving missing events", "Room state", "Querying for room aliases", "Public room
//! directory"): who may read what, over the DAG reads of `rooms::federation_reads`.
//!
//! Access, as Synapse decides it (read as an attacker):
//! - `/event`: Synapse's `filter_events_for_server` on the state before the event
//!   (`world_readable` to anyone; `shared` to a server with a joined member now or then;
//!   `invited`/`joined` to a server one of whose users was invited/joined then); anything else
//!   is 404 `M_NOT_FOUND`, as an unknown event, so existence does not leak.
//! - `/state`, `/state_ids`, `/event_auth`: the origin needs a joined member in the room now,
//!   or at the event asked about; otherwise 403 `M_FORBIDDEN` (also when the event is unknown
//!   or of another room, so a server outside the room learns nothing about its events).
//! - `/backfill`, `/get_missing_events`, `/timestamp_to_event`: a joined member now, else 403;
//!   events the origin may not see are sent in their redacted form (Synapse's `redact=True`),
//!   which keeps the DAG walkable and hides their content.
//! - A server the room's `m.room.server_acl` bars gets 403 for all of them but `/event`
//!   (as Synapse).
//! - An unknown room is 404 `M_NOT_FOUND` for all of them.

use ruma::{EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedServerName, RoomAliasId, RoomId, ServerName};
use serde_json::value::RawValue;

use crate::{
    Error, Result,
    services::{
        Services,
        directory::{ListPage, ListQuery},
        rooms::{
            Rooms,
            federation_reads::{FedEvent, ServerFilter},
        },
    },
};

/// PDUs as sent.
pub type Pdus = Vec<Box<RawValue>>;

/// Most rooms one public room list answer holds.
pub const MAX_PUBLIC_ROOMS: usize = 500;
/// Most servers a `query/directory` answer names.
pub const MAX_ALIAS_SERVERS: usize = 100;

fn not_in_room(server: &ServerName, room_id: &RoomId) -> Error {
    Error::forbidden(format!("{server} is not in the room {room_id}"))
}

/// 404 for a room Hearth does not know.
fn known_room(rooms: &Rooms, room_id: &RoomId) -> Result<()> {
    match rooms.room_version(room_id)? {
        Some(_) => Ok(()),
        None => Err(Error::not_found(format!("Unknown room {room_id}"))),
    }
}

/// The event `event_id` of `room_id`, if `origin` may read the room at it (a joined member
/// now or at the event); 403 otherwise, unknown events included, 404 for an unknown event
/// when the origin is in the room.
fn event_for_member(rooms: &Rooms, origin: &ServerName, room_id: &RoomId, event_id: &EventId) -> Result<FedEvent> {
    known_room(rooms, room_id)?;
    super::acl::check(rooms, origin, room_id)?;
    let mut filter = rooms.server_filter(room_id, origin)?;
    let event = match rooms.federation_event_in(room_id, event_id) {
        Ok(event) => event,
        Err(e) if filter.in_room_now() => return Err(e),
        Err(_) => return Err(not_in_room(origin, room_id)),
    };
    if !filter.in_room_now() && !filter.joined_at(&event)? {
        return Err(not_in_room(origin, room_id));
    }
    Ok(event)
}

/// A filter for reads that need the origin in the room now (403 otherwise).
fn filter_for_member<'a>(rooms: &'a Rooms, origin: &ServerName, room_id: &RoomId) -> Result<ServerFilter<'a>> {
    known_room(rooms, room_id)?;
    super::acl::check(rooms, origin, room_id)?;
    let filter = rooms.server_filter(room_id, origin)?;
    if !filter.in_room_now() {
        return Err(not_in_room(origin, room_id));
    }
    Ok(filter)
}

/// Events as the filter lets its server see them: whole, or redacted.
fn filtered(rooms: &Rooms, filter: &mut ServerFilter<'_>, events: Vec<FedEvent>) -> Result<Vec<Box<RawValue>>> {
    events
        .into_iter()
        .map(|event| {
            if filter.allows(&event)? {
                Ok(event.json)
            } else {
                rooms.pruned(&event)
            }
        })
        .collect()
}

/// `GET /event/{eventId}`: the PDU, if `origin` may see it; 404 `M_NOT_FOUND` otherwise.
pub fn event(rooms: &Rooms, origin: &ServerName, event_id: &EventId) -> Result<Box<RawValue>> {
    let not_found = || Error::not_found("Event not found");
    let event = rooms.federation_event(event_id)?.ok_or_else(not_found)?;
    let room_id = event.pdu.room()?;
    if !rooms.server_filter(&room_id, origin)?.allows(&event)? {
        return Err(not_found());
    }
    Ok(event.json)
}

/// `GET /state/{roomId}?event_id=`: the state before the event and its auth chain, as PDUs.
pub fn state(rooms: &Rooms, origin: &ServerName, room_id: &RoomId, event_id: &EventId) -> Result<(Pdus, Pdus)> {
    let event = event_for_member(rooms, origin, room_id, event_id)?;
    let state = rooms.federation_state_before(room_id, &event)?;
    let chain = rooms.auth_chain(room_id, &state.iter().collect::<Vec<_>>())?;
    Ok((
        state.into_iter().map(|e| e.json).collect(),
        chain.into_iter().map(|e| e.json).collect(),
    ))
}

/// `GET /state_ids/{roomId}?event_id=`: [`state`] by event ids.
pub fn state_ids(
    rooms: &Rooms,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>)> {
    let event = event_for_member(rooms, origin, room_id, event_id)?;
    let state = rooms.federation_state_before(room_id, &event)?;
    let chain = rooms.auth_chain(room_id, &state.iter().collect::<Vec<_>>())?;
    Ok((
        state.into_iter().map(|e| e.pdu.event_id).collect(),
        chain.into_iter().map(|e| e.pdu.event_id).collect(),
    ))
}

/// `GET /event_auth/{roomId}/{eventId}`: the event's full auth chain.
pub fn event_auth(
    rooms: &Rooms,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<Vec<Box<RawValue>>> {
    let event = event_for_member(rooms, origin, room_id, event_id)?;
    let chain = rooms.auth_chain(room_id, &[&event])?;
    Ok(chain.into_iter().map(|e| e.json).collect())
}

/// `GET /backfill/{roomId}`: up to `limit` (at most 100) events from `v` backwards, newest
/// first.
pub fn backfill(
    rooms: &Rooms,
    origin: &ServerName,
    room_id: &RoomId,
    v: &[OwnedEventId],
    limit: u64,
) -> Result<Vec<Box<RawValue>>> {
    let mut filter = filter_for_member(rooms, origin, room_id)?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let events = rooms.backfill(room_id, v, limit)?;
    filtered(rooms, &mut filter, events)
}

/// `POST /get_missing_events/{roomId}`: the events between `earliest` and `latest` (at most
/// `limit`, capped at 20, none below `min_depth`), oldest first.
pub fn missing_events(
    rooms: &Rooms,
    origin: &ServerName,
    room_id: &RoomId,
    earliest: &[OwnedEventId],
    latest: &[OwnedEventId],
    limit: u64,
    min_depth: u64,
) -> Result<Vec<Box<RawValue>>> {
    let mut filter = filter_for_member(rooms, origin, room_id)?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let events = rooms.missing_events(room_id, earliest, latest, limit, min_depth)?;
    filtered(rooms, &mut filter, events)
}

/// `GET /timestamp_to_event/{roomId}`: the event closest to `ts` in direction `forwards`
/// (or backwards); 404 when there is none.
pub fn timestamp_to_event(
    rooms: &Rooms,
    origin: &ServerName,
    room_id: &RoomId,
    ts: u64,
    forwards: bool,
) -> Result<(OwnedEventId, MilliSecondsSinceUnixEpoch)> {
    filter_for_member(rooms, origin, room_id)?;
    let (_, pdu) = rooms
        .event_near_timestamp(room_id, ts, forwards, rooms.watermark())?
        .ok_or_else(|| Error::not_found(format!("No event found near {ts} in {room_id}")))?;
    Ok((pdu.event_id, pdu.origin_server_ts))
}

/// `GET /query/directory?room_alias=`: the room a local alias names and the servers in it
/// (ours first); 404 `M_NOT_FOUND` for an unknown alias, 400 for another server's alias.
pub fn query_directory(services: &Services, alias: &RoomAliasId) -> Result<(ruma::OwnedRoomId, Vec<OwnedServerName>)> {
    let ours = &services.config.server_name;
    if alias.server_name() != ours {
        return Err(Error::invalid_param("Room alias is not hosted on this homeserver"));
    }
    let room_id = services
        .directory
        .resolve_local(alias)?
        .ok_or_else(|| Error::not_found(format!("Room alias {alias} not found")))?;
    let mut servers = vec![ours.clone()];
    let members = services.rooms.members(&room_id)?;
    for user in members.with("join") {
        let server = user.server_name();
        if servers.len() >= MAX_ALIAS_SERVERS {
            break;
        }
        if !servers.iter().any(|s| s == server) {
            servers.push(server.to_owned());
        }
    }
    Ok((room_id, servers))
}

/// `GET`/`POST /publicRooms`: a page of the local public room list (the client API's list),
/// at most [`MAX_PUBLIC_ROOMS`] rooms (`limit` 0 or absent: that many); a room whose server
/// ACL bars `origin` is left out (as Synapse).
pub fn public_rooms(services: &Services, origin: &ServerName, query: ListQuery<'_>) -> Result<ListPage> {
    let limit = query.limit.unwrap_or(MAX_PUBLIC_ROOMS).clamp(1, MAX_PUBLIC_ROOMS);
    let query = ListQuery {
        limit: Some(limit),
        ..query
    };
    let mut page = services.directory.public_rooms(&services.rooms, &query)?;
    let mut kept = Vec::with_capacity(page.chunk.len());
    for room in std::mem::take(&mut page.chunk) {
        if super::acl::allows(&services.rooms, origin, &room.room_id)? {
            kept.push(room);
        }
    }
    page.chunk = kept;
    Ok(page)
}

#[cfg(test)]
mod tests {
    use ruma::{OwnedEventId, OwnedRoomId, RoomVersionId, ServerName, UserId, events::StateEventType};
    use serde_json::{Value, json};

    use crate::services::{
        Services, events,
        rooms::{NewEvent, create::Preset, tests::named_room},
    };

    fn object(value: Value) -> ruma::CanonicalJsonObject {
        let Ok(ruma::CanonicalJsonValue::Object(o)) = ruma::CanonicalJsonValue::try_from(value) else {
            unreachable!()
        };
        o
    }

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

    /// Stores a membership of `@bob:other.example` as a federation join would (an outlier
    /// that becomes the room's state).
    async fn bob(services: &Services, room: &OwnedRoomId, membership: &str, prev: &OwnedEventId) -> OwnedEventId {
        let rooms = &services.rooms;
        let id_of = |kind: StateEventType, key: &str| rooms.state_event(room, &kind, key).unwrap().map(|p| p.event_id);
        let bob = UserId::parse("@bob:other.example").unwrap();
        let mut auth = vec![
            id_of(StateEventType::RoomCreate, "").unwrap(),
            id_of(StateEventType::RoomPowerLevels, "").unwrap(),
        ];
        match id_of(StateEventType::RoomMember, bob.as_str()) {
            Some(own) => auth.push(own),
            None => auth.push(id_of(StateEventType::RoomJoinRules, "").unwrap()),
        }
        let event = events::build(
            &services.server_keys,
            "localhost",
            events::NewPdu {
                room_version: &RoomVersionId::V11,
                room_id: Some(room),
                sender: &bob,
                kind: "m.room.member",
                state_key: Some(bob.as_str()),
                content: object(json!({"membership": membership})),
                prev_events: vec![prev.clone()],
                auth_events: auth,
                depth: 20,
                origin_server_ts: 1,
                redacts: None,
                reference_hashes: None,
            },
        )
        .unwrap();
        let id = event.event_id.clone();
        rooms
            .import_state(room, vec![(event.event_id, event.bytes)])
            .await
            .unwrap();
        id
    }

    fn bodies(pdus: &[Box<serde_json::value::RawValue>]) -> Vec<Option<String>> {
        pdus.iter()
            .map(|p| {
                let v: Value = serde_json::from_str(p.get()).unwrap();
                v["content"]["body"].as_str().map(str::to_owned)
            })
            .collect()
    }

    /// In a `joined` room: a server with a joined member reads the state, auth chains,
    /// backfill and missing events (what came before its join redacted), another server gets
    /// 403 (404 for `/event`); once its member left, it still reads the state at events from
    /// its time in the room, but nothing later and no more backfill.
    #[tokio::test]
    async fn servers_read_rooms_as_their_members_could() {
        let dir = tempfile::tempdir().unwrap();
        let services = Services::for_tests(dir.path(), 8 << 20);
        let rooms = &services.rooms;
        let alice = UserId::parse("@alice:localhost").unwrap();
        let room = rooms
            .create_room(&alice, named_room("fed", Preset::PublicChat, false))
            .await
            .unwrap();
        rooms
            .append(
                &room,
                &alice,
                NewEvent::state(
                    "m.room.history_visibility",
                    "",
                    object(json!({"history_visibility": "joined"})),
                ),
            )
            .await
            .unwrap();
        let other = ServerName::parse("other.example").unwrap();
        let third = ServerName::parse("third.example").unwrap();
        let forbidden = |e: crate::Error| e.errcode() == "M_FORBIDDEN";
        let not_found = |e: crate::Error| e.errcode() == "M_NOT_FOUND";

        let m0 = message(&services, &room, "m0").await;
        assert!(super::backfill(rooms, &other, &room, std::slice::from_ref(&m0), 10).is_err_and(forbidden));
        let join = bob(&services, &room, "join", &m0).await;
        let m1 = message(&services, &room, "m1").await;
        let m2 = message(&services, &room, "m2").await;

        // /event: after the join only.
        assert!(super::event(rooms, &other, &m1).is_ok());
        assert!(super::event(rooms, &other, &m0).is_err_and(not_found));
        assert!(super::event(rooms, &third, &m1).is_err_and(not_found));

        // State at m1: the member server reads it, with bob's join and a closed auth chain.
        let (pdus, chain) = super::state_ids(rooms, &other, &room, &m1).unwrap();
        assert!(pdus.contains(&join));
        assert!(!chain.is_empty() && !chain.contains(&m1));
        let (full, full_chain) = super::state(rooms, &other, &room, &m1).unwrap();
        assert_eq!((full.len(), full_chain.len()), (pdus.len(), chain.len()));
        assert!(!super::event_auth(rooms, &other, &room, &m1).unwrap().is_empty());
        for (server, expect) in [(&third, forbidden as fn(crate::Error) -> bool), (&other, not_found)] {
            let unknown = OwnedEventId::try_from("$unknown").unwrap();
            assert!(super::state_ids(rooms, server, &room, &unknown).is_err_and(expect));
        }
        assert!(super::state_ids(rooms, &third, &room, &m1).is_err_and(forbidden));
        assert!(super::event_auth(rooms, &third, &room, &m1).is_err_and(forbidden));
        let nowhere = OwnedRoomId::try_from("!nowhere:localhost").unwrap();
        assert!(super::state_ids(rooms, &other, &nowhere, &m1).is_err_and(not_found));

        // Backfill and missing events: whole after the join, redacted before it.
        let back = super::backfill(rooms, &other, &room, std::slice::from_ref(&m2), 3).unwrap();
        let got = bodies(&back);
        assert_eq!(got[0].as_deref(), Some("m2"));
        assert_eq!(got[1].as_deref(), Some("m1"));
        let back = super::backfill(rooms, &other, &room, std::slice::from_ref(&m0), 1).unwrap();
        assert_eq!(bodies(&back), vec![None], "m0 redacted for a server that joined later");
        let missing = super::missing_events(rooms, &other, &room, &[], std::slice::from_ref(&m2), 2, 0).unwrap();
        assert_eq!(bodies(&missing), vec![None, Some("m1".to_owned())]);
        assert!(
            super::missing_events(rooms, &third, &room, &[], std::slice::from_ref(&m2), 2, 0).is_err_and(forbidden)
        );
        assert!(super::timestamp_to_event(rooms, &other, &room, 0, true).is_ok());
        assert!(super::timestamp_to_event(rooms, &third, &room, 0, true).is_err_and(forbidden));

        // A server ACL barring the member server: 403 for its room reads.
        rooms
            .append(
                &room,
                &alice,
                NewEvent::state(
                    "m.room.server_acl",
                    "",
                    object(json!({"allow": ["*"], "deny": ["other.example"]})),
                ),
            )
            .await
            .unwrap();
        assert!(super::backfill(rooms, &other, &room, std::slice::from_ref(&m2), 3).is_err_and(forbidden));
        assert!(super::state_ids(rooms, &other, &room, &m1).is_err_and(forbidden));
        rooms
            .append(
                &room,
                &alice,
                NewEvent::state("m.room.server_acl", "", object(json!({"allow": ["*"]}))),
            )
            .await
            .unwrap();
        assert!(super::backfill(rooms, &other, &room, std::slice::from_ref(&m2), 3).is_ok());

        // Bob leaves: the state at m1 stays readable, later events and backfill do not.
        bob(&services, &room, "leave", &m2).await;
        let m3 = message(&services, &room, "m3").await;
        assert!(super::state_ids(rooms, &other, &room, &m1).is_ok());
        assert!(super::state_ids(rooms, &other, &room, &m3).is_err_and(forbidden));
        assert!(super::backfill(rooms, &other, &room, std::slice::from_ref(&m3), 10).is_err_and(forbidden));
        assert!(super::event(rooms, &other, &m3).is_err_and(not_found));
        assert!(super::event(rooms, &other, &m1).is_ok(), "seen while joined");
    }
}
