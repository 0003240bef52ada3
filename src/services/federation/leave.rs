//! Leaving and knocking through another server (server-server-api "Leaving Rooms (Rejecting
//! Invites)", "Knocking upon a room"): `make_leave`/`send_leave` (v2) both ways, and
//! `make_knock`/`send_knock` served. Inbound, a user of another server leaves (or declines an
//! invite to) or knocks on one of our rooms: a template built on our state (refused when the
//! room's rules would refuse it), then the signed event through the checks every PDU gets,
//! passed on to the room's other servers; a knock is answered with the room's stripped state.
//! Outbound, one of our users declines an invite to (or withdraws a knock on) a room this
//! server does not have, or knocks on one: the template is rebuilt as for a join (only the DAG
//! position is taken from it), signed and sent; a knock's answer (`knock_room_state`) is kept
//! with it (`Rooms::store_remote_knock`) for `/sync`.
//!
//! A room this server only knows through an invite or a knock has no state to check events
//! against, so its events are dropped, but for one (Synapse's "rescinded invite" rule, applied
//! to refused knocks too): a leave of our user, sent by someone else, signed by its sender's
//! server (the origin), that names our invite or knock among its auth events; for an invite,
//! its sender must be the inviter. It ends the invite or knock here.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
    api::{
        error::ErrorKind,
        federation::membership::{create_knock_event, create_leave_event, prepare_knock_event, prepare_leave_event},
    },
};
use serde_json::value::RawValue;

use super::{Federation, membership::supported_versions};
use crate::{Error, Result, services::rooms::Rooms};

/// Servers tried, in order, for one outbound knock.
const KNOCK_CANDIDATES: usize = 5;

/// How telling an error of one candidate server is, to choose which to give the client when
/// none let us knock: a refusal (the room's rules, its version) over "unknown room" over a
/// failure to reach the server.
fn weight(error: &Error) -> u8 {
    match error.status().as_u16() {
        400 | 403 => 3,
        404 => 1,
        _ => 2,
    }
}

fn text<'a>(object: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    match object.get(name) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

impl Federation {
    /// `make_leave`/`make_knock`: the template of `user_id`'s `membership` event, for
    /// `origin` (the user's server).
    pub async fn make_membership(
        &self,
        rooms: &Rooms,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        membership: &str,
    ) -> Result<(RoomVersionId, Box<RawValue>)> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden("The user does not belong to the requesting server"));
        }
        if rooms.room_version(room_id)?.is_none() || !self.resident(rooms, room_id)? {
            return Err(Error::not_found("This server is not in the room"));
        }
        let mut content = CanonicalJsonObject::new();
        content.insert("membership".into(), CanonicalJsonValue::String(membership.into()));
        let (version, template) = rooms
            .event_template(room_id, user_id, "m.room.member", user_id.as_str(), content)
            .await?;
        let template = serde_json::value::to_raw_value(&template).map_err(|e| Error::internal(e.to_string()))?;
        Ok((version, template))
    }

    /// `send_leave`/`send_knock`: `origin`'s signed `membership` event for `room_id`.
    pub async fn send_membership(
        &self,
        rooms: &Rooms,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        pdu: &RawValue,
        membership: &str,
    ) -> Result<()> {
        let version = rooms
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let checked = self.check_pdu(&version, pdu).await?;
        if checked.event_id != event_id || checked.room_id != room_id {
            return Err(Error::bad_json("The event id or room does not match the request"));
        }
        let object = &checked.object;
        let sender = text(object, "sender").and_then(|s| UserId::parse(s).ok());
        let leaving = matches!(object.get("content"), Some(CanonicalJsonValue::Object(c))
            if matches!(c.get("membership"), Some(CanonicalJsonValue::String(m)) if m == membership));
        let Some(sender) = sender.filter(|s| {
            text(object, "type") == Some("m.room.member") && text(object, "state_key") == Some(s.as_str()) && leaving
        }) else {
            return Err(Error::bad_json(format!("Not a {membership} event of its sender")));
        };
        if sender.server_name() != origin {
            return Err(Error::forbidden("The user does not belong to the requesting server"));
        }
        self.accept_member_event(rooms, origin, room_id, &checked, membership)
            .await
    }

    /// Declines `user_id`'s (ours) invite to a room this server does not have, through
    /// `server` (the inviter's).
    pub async fn leave_remote(&self, user_id: &UserId, room_id: &RoomId, server: &ServerName) -> Result<()> {
        self.check_peer(server)?;
        let answer = self
            .send_signed(
                server,
                prepare_leave_event::v1::Request::new(room_id.to_owned(), user_id.to_owned()),
            )
            .await?;
        let version = answer.room_version.unwrap_or(RoomVersionId::V1);
        let (event, event_id) = self.member_event_from_template(
            server,
            &version,
            &answer.event,
            room_id,
            user_id,
            "leave",
            CanonicalJsonObject::new(),
        )?;
        let event = serde_json::value::to_raw_value(&event).map_err(|e| Error::internal(e.to_string()))?;
        self.send_signed(
            server,
            create_leave_event::v2::Request::new(room_id.to_owned(), event_id, event),
        )
        .await?;
        Ok(())
    }

    /// Knocks `user_id` (ours) on `room_id`, a room this server is not in, through the first of
    /// `via` (then the room id's server, for room versions that name one) that takes the knock.
    /// `content` is the member event's content besides `membership` (reason, profile). 404 when
    /// there is no server to ask or none knows the room; a refusal (403, or 400 for a room
    /// version) is relayed.
    pub async fn knock_remote(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        content: CanonicalJsonObject,
    ) -> Result<()> {
        let candidates = self.servers_to_ask(room_id, via, "knock on")?;
        let mut best: Option<Error> = None;
        for server in candidates.into_iter().take(KNOCK_CANDIDATES) {
            match self.knock_via(rooms, user_id, room_id, &server, content.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e, "knock through this server failed");
                    if best.as_ref().is_none_or(|b| weight(&e) > weight(b)) {
                        best = Some(e);
                    }
                }
            }
        }
        Err(best.unwrap_or_else(|| Error::not_found("No server knows the room")))
    }

    async fn knock_via(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        room_id: &RoomId,
        server: &ServerName,
        content: CanonicalJsonObject,
    ) -> Result<()> {
        self.check_peer(server)?;
        let mut request = prepare_knock_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
        request.ver = supported_versions();
        let answer = self.send_signed(server, request).await?;
        let version = answer.room_version;
        if !supported_versions().contains(&version) {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::UnsupportedRoomVersion,
                format!("The room is version {version}, which this server does not support"),
            ));
        }
        let (event, event_id) =
            self.member_event_from_template(server, &version, &answer.event, room_id, user_id, "knock", content)?;
        let bytes = serde_json::to_vec(&event).map_err(|e| Error::internal(e.to_string()))?;
        let raw = serde_json::value::to_raw_value(&event).map_err(|e| Error::internal(e.to_string()))?;
        let answer = self
            .send_signed(
                server,
                create_knock_event::v1::Request::new(room_id.to_owned(), event_id.clone(), raw),
            )
            .await?;
        let state = super::invite::stripped_list(&answer.knock_room_state)?;
        rooms
            .store_remote_knock(room_id, user_id, &event_id, bytes, state, server, &version)
            .await
    }

    /// A leave for one of our users in a room this server does not have, which ends their
    /// invite (rescinded) or knock (refused) if it is one (see the module documentation). The
    /// event id when it did.
    pub(super) async fn receive_out_of_band_leave(
        &self,
        rooms: &Rooms,
        origin: &ServerName,
        room_id: &RoomId,
        raw: &RawValue,
    ) -> Option<ruma::OwnedEventId> {
        let object: CanonicalJsonObject = serde_json::from_str(raw.get()).ok()?;
        let target = text(&object, "state_key").and_then(|s| UserId::parse(s).ok())?;
        let sender = text(&object, "sender").and_then(|s| UserId::parse(s).ok())?;
        let leave = matches!(object.get("content"), Some(CanonicalJsonValue::Object(c))
            if matches!(c.get("membership"), Some(CanonicalJsonValue::String(m)) if m == "leave"));
        if text(&object, "type") != Some("m.room.member")
            || !leave
            || target.server_name() != self.server_name()
            || sender == target
            || sender.server_name() != origin
        {
            return None;
        }
        // What we hold: the event the leave must build on, who must send it, the room version.
        let (ours, inviter, version) = if let Some((invite, stripped)) = rooms.remote_invite(room_id, &target).ok()? {
            let create = stripped
                .iter()
                .find(|e| e["type"] == "m.room.create" && e["state_key"] == "")?;
            let version = create["content"]["room_version"].as_str().unwrap_or("1");
            let version = RoomVersionId::try_from(version).ok()?;
            (invite.event_id, Some(invite.sender), version)
        } else {
            let knock = rooms.remote_knock(room_id, &target).ok()??;
            (knock.event.event_id, None, knock.room_version)
        };
        if inviter.is_some_and(|inviter| inviter != sender) {
            return None;
        }
        let checked = self.check_pdu(&version, raw).await.ok()?;
        // Event ids, or `[id, hashes]` pairs in room versions 1 and 2.
        let names_ours = |entry: &CanonicalJsonValue| match entry {
            CanonicalJsonValue::String(id) => *id == ours.as_str(),
            CanonicalJsonValue::Array(pair) => {
                matches!(pair.first(), Some(CanonicalJsonValue::String(id)) if *id == ours.as_str())
            }
            _ => false,
        };
        let builds_on_ours = matches!(checked.object.get("auth_events"), Some(CanonicalJsonValue::Array(ids))
            if ids.iter().any(names_ours));
        if checked.room_id != room_id || !builds_on_ours {
            return None;
        }
        match rooms.drop_remote_invite(room_id, &target).await {
            Ok(()) => Some(checked.event_id),
            Err(e) => {
                tracing::info!(%room_id, %target, error = %e, "an out-of-band leave was not applied");
                None
            }
        }
    }
}
