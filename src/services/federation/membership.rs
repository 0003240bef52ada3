//! Joining over federation (server-server-api "Joining Rooms").
//!
//! Inbound, a user of another server joins one of our rooms: `make_join` answers a template
//! built on our current state (`Rooms::event_template`, refused with 403 when the room's rules
//! would refuse the join), and `send_join` takes the signed event through the checks every
//! PDU gets (ours countersigns a restricted join one of our members authorises) and answers the
//! state before it with its auth chain.
//!
//! Outbound, one of our users joins a room this server is not in: a resident server is asked
//! for a template, which is re-checked and rebuilt (type, state key, sender, membership and room
//! are ours to decide: we sign what we asked for, never what we were handed), signed and sent
//! with `send_join`; every event of the answer is checked, the room's state stored, and the
//! join event received with that state before it.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
    api::{
        error::ErrorKind,
        federation::membership::{create_join_event, prepare_join_event},
    },
    room_version_rules::EventIdFormatVersion,
    state_res::StateMap,
};
use serde_json::value::RawValue;

use super::{Federation, pdu::CheckedPdu};
use crate::services::rooms::federation_reads::FedEvent;
use crate::{
    Error, Result,
    services::{
        events,
        rooms::{Rooms, remote::Received},
    },
    util,
};

/// Servers tried, in order, for one outbound join.
const JOIN_CANDIDATES: usize = 5;
/// Events accepted in one `send_join` answer (state and auth chain together).
const MAX_JOIN_EVENTS: usize = 200_000;

/// Every room version this server can join over federation.
pub fn supported_versions() -> Vec<RoomVersionId> {
    ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"]
        .into_iter()
        .filter_map(|v| RoomVersionId::try_from(v).ok())
        .collect()
}

fn text<'a>(object: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    match object.get(name) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

fn content_text<'a>(object: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    match object.get("content") {
        Some(CanonicalJsonValue::Object(content)) => match content.get(name) {
            Some(CanonicalJsonValue::String(s)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn raw(object: &CanonicalJsonObject) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(object).map_err(|e| Error::internal(e.to_string()))
}

/// 400 `M_INCOMPATIBLE_ROOM_VERSION`: the requesting server does not support `version`
/// (`make_join`, `make_knock`).
pub fn incompatible_room_version(version: &RoomVersionId) -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        ErrorKind::IncompatibleRoomVersion(ruma::api::error::IncompatibleRoomVersionErrorData::new(version.clone())),
        format!("The room is version {version}, which the requesting server does not support"),
    )
}

/// What `send_join` answers.
#[derive(serde::Serialize)]
pub struct JoinAnswer {
    /// Our server name.
    pub origin: String,
    /// The state before the join.
    pub state: Vec<Box<RawValue>>,
    /// The auth chain of that state and of the join.
    pub auth_chain: Vec<Box<RawValue>>,
    /// The join as countersigned by us (restricted joins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Box<RawValue>>,
    /// Never: every member is sent.
    pub members_omitted: bool,
}

impl Federation {
    /// `make_join`: the template of `user_id`'s join, for `origin` (the user's server).
    pub async fn make_join(
        &self,
        rooms: &Rooms,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        versions: &[RoomVersionId],
    ) -> Result<(RoomVersionId, Box<RawValue>)> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden("The user does not belong to the requesting server"));
        }
        let version = rooms
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        if !versions.contains(&version) {
            return Err(incompatible_room_version(&version));
        }
        if !self.resident(rooms, room_id)? {
            return Err(Error::not_found("This server is not in the room"));
        }
        let mut content = CanonicalJsonObject::new();
        content.insert("membership".into(), CanonicalJsonValue::String("join".into()));
        let (version, template) = rooms
            .event_template(room_id, user_id, "m.room.member", user_id.as_str(), content)
            .await?;
        Ok((version, raw(&template)?))
    }

    /// Whether one of our users is joined to the room.
    pub fn resident(&self, rooms: &Rooms, room_id: &RoomId) -> Result<bool> {
        Ok(rooms
            .members(room_id)?
            .with("join")
            .any(|member| member.server_name() == self.server_name()))
    }

    /// `send_join`: `origin`'s signed join event for `room_id`.
    pub async fn send_join(
        &self,
        rooms: &Rooms,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        pdu: &RawValue,
    ) -> Result<JoinAnswer> {
        let version = rooms
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = events::rules(&version)?;
        let mut object: CanonicalJsonObject = serde_json::from_str(pdu.get())
            .map_err(|e| Error::bad_json(format!("The event is not canonical JSON: {e}")))?;
        let sender = text(&object, "sender")
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| Error::bad_json("The event has no valid sender"))?;
        if sender.server_name() != origin {
            return Err(Error::forbidden(
                "The joining user does not belong to the requesting server",
            ));
        }
        if text(&object, "type") != Some("m.room.member")
            || text(&object, "state_key") != Some(sender.as_str())
            || content_text(&object, "membership") != Some("join")
        {
            return Err(Error::bad_json("Not a join event of its sender"));
        }
        // A restricted join one of our members authorises carries our signature too.
        let countersign = content_text(&object, "join_authorised_via_users_server")
            .and_then(|u| UserId::parse(u).ok())
            .is_some_and(|u| u.server_name() == self.server_name());
        if countersign {
            ruma::signatures::hash_and_sign_event(
                self.server_name().as_str(),
                &self.own_keys.current().keypair,
                &mut object,
                &rules.redaction,
            )
            .map_err(|e| Error::bad_json(format!("Cannot countersign the join: {e}")))?;
        }
        let checked = self.check_pdu(&version, &raw(&object)?).await?;
        if checked.event_id != event_id || checked.room_id != room_id {
            return Err(Error::bad_json("The event id or room does not match the request"));
        }
        self.accept_member_event(rooms, origin, room_id, &checked, "join")
            .await?;
        let join = rooms.federation_event_in(room_id, event_id)?;
        let state = rooms.federation_state_before(room_id, &join)?;
        let mut roots: Vec<&FedEvent> = state.iter().collect();
        roots.push(&join);
        let chain = rooms.auth_chain(room_id, &roots)?;
        Ok(JoinAnswer {
            origin: self.server_name().to_string(),
            auth_chain: chain.into_iter().map(|e| e.json).collect(),
            state: state.into_iter().map(|e| e.json).collect(),
            event: countersign.then(|| raw(&checked.object)).transpose()?,
            members_omitted: false,
        })
    }

    /// Takes a member event that a user of `origin` signed (`send_join`, `send_leave`,
    /// `send_knock`) into the room, and passes it on to the room's other servers: the resident
    /// server's duty. 403 when the room's rules refuse it.
    pub(super) async fn accept_member_event(
        &self,
        rooms: &Rooms,
        origin: &ServerName,
        room_id: &RoomId,
        checked: &CheckedPdu,
        membership: &str,
    ) -> Result<()> {
        match rooms
            .receive_remote(room_id, checked.event_id.clone(), checked.bytes.clone(), None)
            .await?
        {
            Received::Accepted(_) | Received::Known => {}
            Received::Rejected(reason) | Received::SoftFailed(reason) => {
                return Err(Error::forbidden(format!("The {membership} is not allowed: {reason}")));
            }
        }
        let others: Vec<OwnedServerName> = rooms
            .members(room_id)?
            .joined_servers()
            .iter()
            .filter(|s| **s != origin)
            .cloned()
            .collect();
        self.queue_pdu(&others, &checked.event_id, &checked.bytes).await
    }

    /// The servers to ask about `room_id` for a `what` (join, knock): `via`, then the room id's
    /// server (room versions before 12 name one), each once, ours left out; 404 when none.
    pub(super) fn servers_to_ask(
        &self,
        room_id: &RoomId,
        via: &[OwnedServerName],
        what: &str,
    ) -> Result<Vec<OwnedServerName>> {
        let mut candidates: Vec<OwnedServerName> = Vec::new();
        for server in via.iter().cloned().chain(room_id.server_name().map(ToOwned::to_owned)) {
            if server != self.server_name() && !candidates.contains(&server) {
                candidates.push(server);
            }
        }
        if candidates.is_empty() {
            return Err(Error::not_found(format!(
                "No server to {what} the room through: give one with `via`"
            )));
        }
        Ok(candidates)
    }

    /// Joins `user_id` (ours) to `room_id` through the first of `via` (then the room id's
    /// server, for room versions that name one) that lets them in. `content` is the member
    /// event's content besides `membership` (display name, avatar).
    pub async fn join_remote(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        content: CanonicalJsonObject,
    ) -> Result<()> {
        let candidates = self.servers_to_ask(room_id, via, "join")?;
        let mut last = None;
        for server in candidates.into_iter().take(JOIN_CANDIDATES) {
            match self.join_via(rooms, user_id, room_id, &server, content.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e, "join through this server failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::not_found("No server let us join the room")))
    }

    async fn join_via(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        room_id: &RoomId,
        server: &ServerName,
        content: CanonicalJsonObject,
    ) -> Result<()> {
        let mut request = prepare_join_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
        request.ver = supported_versions();
        let answer = self.send_signed(server, request).await?;
        let version = answer.room_version.unwrap_or(RoomVersionId::V1);
        let (event, event_id) =
            self.member_event_from_template(server, &version, &answer.event, room_id, user_id, "join", content)?;
        let request = create_join_event::v2::Request::new(room_id.to_owned(), event_id.clone(), raw(&event)?);
        let joined = self.send_signed(server, request).await?.room_state;

        // The resident's copy (countersigned for a restricted join) must be the same event.
        let join = match &joined.event {
            Some(theirs) => {
                let checked = self.check_pdu(&version, theirs).await?;
                if checked.event_id != event_id {
                    return Err(Error::forbidden(format!("{server} returned another join event")));
                }
                checked
            }
            None => self.check_pdu(&version, &raw(&event)?).await?,
        };
        if joined.state.len() + joined.auth_chain.len() > MAX_JOIN_EVENTS {
            return Err(Error::forbidden(format!(
                "{server} sent more than {MAX_JOIN_EVENTS} events"
            )));
        }
        let mut state = Vec::with_capacity(joined.state.len());
        let mut state_map: StateMap<OwnedEventId> = StateMap::with_capacity(joined.state.len());
        for raw_event in &joined.state {
            let checked = self.checked_in_room(&version, raw_event, room_id).await?;
            let (Some(kind), Some(key)) = (text(&checked.object, "type"), text(&checked.object, "state_key")) else {
                return Err(Error::forbidden(format!(
                    "{server} sent a state event without a state key"
                )));
            };
            state_map.insert((kind.into(), key.to_owned()), checked.event_id.clone());
            state.push((checked.event_id, checked.bytes));
        }
        let mut chain = Vec::with_capacity(joined.auth_chain.len());
        for raw_event in &joined.auth_chain {
            let checked = self.checked_in_room(&version, raw_event, room_id).await?;
            chain.push((checked.event_id, checked.bytes));
        }
        rooms.import_remote_room(room_id, &version, chain, state).await?;
        if rooms.earliest_event(room_id)?.is_none() {
            rooms.reserve_history()?;
        }
        match rooms
            .receive_remote(room_id, join.event_id, join.bytes, Some(state_map))
            .await?
        {
            Received::Accepted(_) | Received::Known => Ok(()),
            Received::Rejected(reason) | Received::SoftFailed(reason) => {
                Err(Error::forbidden(format!("The join was not allowed: {reason}")))
            }
        }
    }

    /// Our member event built from another server's `make_join`/`make_leave` template, signed:
    /// the template may only choose the DAG position (`prev_events`, `auth_events`, `depth`)
    /// and, for a join, the authorising member of a restricted join; type, state key, sender,
    /// membership and room are ours (we never sign what we were handed). Returns the event and
    /// its id.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn member_event_from_template(
        &self,
        server: &ServerName,
        version: &RoomVersionId,
        template: &RawValue,
        room_id: &RoomId,
        user_id: &UserId,
        membership: &str,
        mut content: CanonicalJsonObject,
    ) -> Result<(CanonicalJsonObject, OwnedEventId)> {
        let rules = events::rules(version)?;
        let template: CanonicalJsonObject = serde_json::from_str(template.get())
            .map_err(|e| Error::bad_json(format!("{server} sent a template that is not canonical JSON: {e}")))?;
        if text(&template, "type") != Some("m.room.member")
            || text(&template, "state_key") != Some(user_id.as_str())
            || text(&template, "sender") != Some(user_id.as_str())
            || content_text(&template, "membership") != Some(membership)
            || text(&template, "room_id").is_some_and(|r| r != room_id.as_str())
        {
            return Err(Error::forbidden(format!(
                "{server} sent a {membership} template for something else"
            )));
        }
        content.insert("membership".into(), CanonicalJsonValue::String(membership.into()));
        if membership == "join"
            && let Some(via) = content_text(&template, "join_authorised_via_users_server")
            && UserId::parse(via).is_ok()
        {
            content.insert(
                "join_authorised_via_users_server".into(),
                CanonicalJsonValue::String(via.to_owned()),
            );
        }
        let mut event = CanonicalJsonObject::new();
        for field in ["prev_events", "auth_events", "depth"] {
            let value = template
                .get(field)
                .cloned()
                .ok_or_else(|| Error::forbidden(format!("{server} sent a template without {field}")))?;
            event.insert(field.into(), value);
        }
        let string = |s: &str| CanonicalJsonValue::String(s.to_owned());
        event.insert("type".into(), string("m.room.member"));
        event.insert("state_key".into(), string(user_id.as_str()));
        event.insert("sender".into(), string(user_id.as_str()));
        event.insert("room_id".into(), string(room_id.as_str()));
        event.insert("content".into(), CanonicalJsonValue::Object(content));
        event.insert("origin".into(), string(self.server_name().as_str()));
        event.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(ruma::Int::try_from(util::now_ms()).unwrap_or_default()),
        );
        if rules.event_id_format == EventIdFormatVersion::V1 {
            event.insert(
                "event_id".into(),
                string(&format!("${}:{}", util::random_string(18), self.server_name())),
            );
        }
        ruma::signatures::hash_and_sign_event(
            self.server_name().as_str(),
            &self.own_keys.current().keypair,
            &mut event,
            &rules.redaction,
        )
        .map_err(|e| Error::internal(format!("cannot sign the {membership}: {e}")))?;
        let event_id = super::pdu::event_id_of(&mut event.clone(), version)?;
        Ok((event, event_id))
    }

    pub(super) async fn checked_in_room(
        &self,
        version: &RoomVersionId,
        raw_event: &RawValue,
        room_id: &RoomId,
    ) -> Result<CheckedPdu> {
        let checked = self.check_pdu(version, raw_event).await?;
        if checked.room_id != room_id {
            return Err(Error::forbidden(format!(
                "{} belongs to another room",
                checked.event_id
            )));
        }
        Ok(checked)
    }
}
