//! Invites over federation (server-server-api "Inviting to a room", `PUT /v2/invite`).
//!
//! Inbound: a user of another server invites one of ours. The event must be an invite sent by
//! a user of the requesting server to an active local user; it is countersigned, checked like
//! any PDU and returned. For a room this server has, it goes into the room's graph; for one it
//! does not, it is kept with the stripped state sent along (`Rooms::store_remote_invite`) so
//! the user sees it, and accepting it is a join over federation.
//!
//! Outbound: one of our users invites a user of another server. The invite is written in the
//! room first (like any event), then sent to the invitee's server with the room's stripped
//! state as full PDUs; if that server refuses, the invite is withdrawn again.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, RoomId, RoomVersionId, ServerName, UserId,
    api::federation::membership::{RawStrippedState, create_invite},
};
use serde_json::value::RawValue;

use super::Federation;
use crate::{
    Error, Result,
    services::{
        Services, events,
        rooms::{Rooms, remote_invites::RemoteInviteLimits},
    },
};

/// Pending remote invites one user may have, from all servers together (the per-server bound
/// is `federation.max_remote_invites_per_server`; see `RemoteInviteLimits` for why further ones
/// are refused).
const MAX_REMOTE_INVITES: usize = 1_000;
/// Stripped state events kept with an invite, and the size of each.
const MAX_STRIPPED: usize = 50;
const MAX_STRIPPED_BYTES: usize = 65_536;
/// The state event types sent along with an invite (the spec's recommended stripped state).
const STRIPPED_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.encryption",
];

fn text<'a>(object: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    match object.get(name) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

/// The client-facing stripped form of a stripped-state entry (a full PDU or already stripped).
fn stripped(entry: &RawStrippedState) -> Option<serde_json::Value> {
    let json = match entry {
        RawStrippedState::Pdu(pdu) => pdu.get(),
        #[allow(deprecated)]
        RawStrippedState::Stripped(raw) => raw.json().get(),
        _ => return None,
    };
    if json.len() > MAX_STRIPPED_BYTES {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let (kind, state_key, sender) = (value.get("type")?, value.get("state_key")?, value.get("sender")?);
    Some(serde_json::json!({
        "type": kind, "state_key": state_key, "sender": sender, "content": value.get("content")?,
    }))
}

/// The stripped state sent with an invite or a knock's answer, in the client-facing form, as
/// one JSON array (at most `MAX_STRIPPED` entries, each at most `MAX_STRIPPED_BYTES`).
pub(super) fn stripped_list(entries: &[RawStrippedState]) -> Result<Vec<u8>> {
    let state: Vec<serde_json::Value> = entries.iter().filter_map(stripped).take(MAX_STRIPPED).collect();
    serde_json::to_vec(&state).map_err(|e| Error::internal(e.to_string()))
}

fn to_raw(bytes: Vec<u8>) -> Result<Box<RawValue>> {
    RawValue::from_string(String::from_utf8(bytes).map_err(|e| Error::internal(e.to_string()))?)
        .map_err(|e| Error::internal(e.to_string()))
}

impl Federation {
    /// `PUT /v2/invite/{roomId}/{eventId}` from `origin`: the countersigned event.
    #[allow(clippy::too_many_arguments)]
    pub async fn receive_invite(
        &self,
        services: &Services,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        version: &RoomVersionId,
        event: &RawValue,
        invite_room_state: &[RawStrippedState],
    ) -> Result<Box<RawValue>> {
        let rules = events::rules(version)?;
        let mut object: CanonicalJsonObject = serde_json::from_str(event.get())
            .map_err(|e| Error::bad_json(format!("The invite is not canonical JSON: {e}")))?;
        let sender = text(&object, "sender").and_then(|s| UserId::parse(s).ok());
        let target = text(&object, "state_key").and_then(|s| UserId::parse(s).ok());
        let membership = match object.get("content") {
            Some(CanonicalJsonValue::Object(content)) => match content.get("membership") {
                Some(CanonicalJsonValue::String(m)) => Some(m.clone()),
                _ => None,
            },
            _ => None,
        };
        let (Some(sender), Some(target)) = (sender, target) else {
            return Err(Error::bad_json("The invite has no valid sender or state key"));
        };
        if text(&object, "type") != Some("m.room.member") || membership.as_deref() != Some("invite") {
            return Err(Error::bad_json("Not an invite"));
        }
        if sender.server_name() != origin {
            return Err(Error::forbidden(
                "The inviting user does not belong to the requesting server",
            ));
        }
        if target.server_name() != self.server_name() || !services.accounts.is_active(&target)? {
            return Err(Error::not_found("No such user here"));
        }
        ruma::signatures::hash_and_sign_event(
            self.server_name().as_str(),
            &self.own_keys.current().keypair,
            &mut object,
            &rules.redaction,
        )
        .map_err(|e| Error::bad_json(format!("Cannot countersign the invite: {e}")))?;
        let raw = serde_json::value::to_raw_value(&object).map_err(|e| Error::internal(e.to_string()))?;
        let checked = self.check_pdu(version, &raw).await?;
        if checked.event_id != event_id || checked.room_id != room_id {
            return Err(Error::bad_json("The event id or room does not match the request"));
        }
        let rooms = &services.rooms;
        if rooms.room_version(room_id)?.is_some() {
            // A room this server has: the invite joins its graph, what it misses fetched from
            // the inviting server first.
            let budget = std::sync::atomic::AtomicUsize::new(super::intake::FETCHES_PER_TRANSACTION);
            self.receive_checked(rooms, origin, version, room_id, checked, true, &budget)
                .await
                .map_err(|reason| Error::forbidden(format!("The invite is not allowed: {reason}")))?;
        } else {
            let state = stripped_list(invite_room_state)?;
            let federation = &services.config.federation;
            let limits = RemoteInviteLimits {
                per_server: federation.max_remote_invites_per_server,
                total: MAX_REMOTE_INVITES,
            };
            rooms
                .store_remote_invite(room_id, &target, origin, event_id, checked.bytes, state, limits)
                .await?;
        }
        Ok(raw)
    }

    /// The room's stripped state (its descriptive state events) as full PDUs, sent with an
    /// invite and in answer to a knock.
    pub fn stripped_state(&self, rooms: &Rooms, room_id: &RoomId) -> Result<Vec<RawStrippedState>> {
        let mut state = Vec::new();
        for kind in STRIPPED_TYPES {
            if let Some(pdu) = rooms.state_event(room_id, &(*kind).into(), "")?
                && let Some(bytes) = rooms.event_json(&pdu.event_id)?
            {
                state.push(RawStrippedState::Pdu(to_raw(bytes)?));
            }
        }
        Ok(state)
    }

    /// Sends the invite `event_id` (already in the room) to its target's server, with the
    /// room's stripped state as full PDUs.
    pub async fn send_invite(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        event_id: &EventId,
        target: &UserId,
    ) -> Result<()> {
        let version = rooms
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let event = rooms
            .event_json(event_id)?
            .ok_or_else(|| Error::internal("the invite is not stored"))?;
        let state = self.stripped_state(rooms, room_id)?;
        let request =
            create_invite::v2::Request::new(room_id.to_owned(), event_id.to_owned(), version, to_raw(event)?, state);
        self.send_signed(target.server_name(), request).await?;
        Ok(())
    }
}
