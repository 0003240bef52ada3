//! Leaving and knocking through another server (server-server-api "Leaving Rooms (Rejecting
//! Invites)", "Knocking upon a room"): `make_leave`/`send_leave` (v2) both ways, and
//! `make_knock`/`send_knock` served. Inbound, a user of another server leaves (or declines an
//! invite to) or knocks on one of our rooms: a template built on our state (refused when the
//! room's rules would refuse it), then the signed event through the checks every PDU gets,
//! passed on to the room's other servers; a knock is answered with the room's stripped state.
//! Outbound, one of our users declines an invite to a room this server does not have: the
//! template is rebuilt as for a join (only the DAG position is taken from it), signed and sent.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, RoomId, RoomVersionId, ServerName, UserId,
    api::federation::membership::{create_leave_event, prepare_leave_event},
};
use serde_json::value::RawValue;

use super::Federation;
use crate::{Error, Result, services::rooms::Rooms};

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
}
