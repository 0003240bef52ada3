//! Rooms: creation, single events, history.
//!
//! - `POST /_matrix/client/v3/createRoom`
//! - `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
//! - `GET /_matrix/client/v3/rooms/{roomId}/messages`
//! - `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`
//! - `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`
//!
//! Spec: client-server-api "Rooms" and "Getting events for a room"
//! (`data/api/client-server/create_room.yaml`, `rooms.yaml`, `message_pagination.yaml`).

use std::collections::BTreeSet;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, RoomVersionId,
    api::{
        Direction,
        client::{
            context::get_context,
            message::get_message_events,
            room::{Visibility, create_room, get_event_by_timestamp, get_room_event},
        },
    },
    serde::Raw,
};

use crate::{
    Error, Result,
    api::extract::Ctx,
    services::rooms::{
        Selection,
        create::{CreateRoom, Preset},
        membership::MemberProfile,
        pdu::Pdu,
        relations::Reader,
    },
};

/// Event content (or a content-like body) as a canonical JSON object, or 400 `M_BAD_JSON`.
pub(crate) fn canonical_object<T>(raw: &Raw<T>, what: &str) -> Result<CanonicalJsonObject> {
    crate::services::events::canonical_object(raw.json(), what)
}

/// A client-format event as ruma's raw type.
pub(crate) fn raw_event<T>(pdu: &Pdu) -> Result<Raw<T>> {
    let value = pdu.to_client()?;
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(&value).map_err(|e| Error::internal(e.to_string()))?,
    ))
}

/// `POST /_matrix/client/v3/createRoom`
pub async fn create_room(ctx: Ctx, req: create_room::v3::Request) -> Result<create_room::v3::Response> {
    let creator = ctx.owned_user_id()?;
    if !req.invite_3pid.is_empty() {
        return Err(Error::invalid_param("Third-party invites are not supported"));
    }
    let version = req
        .room_version
        .clone()
        .unwrap_or_else(|| ctx.services.config.default_room_version.clone());
    check_new_room_version(&version)?;
    if let Some(localpart) = &req.room_alias_name
        && let Ok(alias) = ruma::RoomAliasId::parse(format!("#{localpart}:{}", ctx.services.config.server_name))
    {
        match ctx.session.as_ref().and_then(|s| s.appservice.as_ref()) {
            Some(service) => crate::services::appservice::client_server::check_alias_of_service(service, &alias)?,
            None => crate::services::appservice::client_server::check_alias_not_exclusive(&ctx.services, &alias, None)?,
        }
    }
    let preset = match req.preset {
        Some(create_room::v3::RoomPreset::PublicChat) => Preset::PublicChat,
        Some(create_room::v3::RoomPreset::TrustedPrivateChat) => Preset::TrustedPrivateChat,
        Some(create_room::v3::RoomPreset::PrivateChat) => Preset::PrivateChat,
        None if req.visibility == Visibility::Public => Preset::PublicChat,
        _ => Preset::PrivateChat,
    };
    let mut initial_state = Vec::new();
    for event in &req.initial_state {
        #[derive(serde::Deserialize)]
        struct Initial {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            state_key: String,
            content: serde_json::Value,
        }
        let initial: Initial =
            serde_json::from_str(event.json().get()).map_err(|e| Error::bad_json(format!("initial_state: {e}")))?;
        let content = match CanonicalJsonValue::try_from(initial.content) {
            Ok(CanonicalJsonValue::Object(o)) => o,
            _ => return Err(Error::bad_json("initial_state content must be an object")),
        };
        initial_state.push((initial.kind, initial.state_key, content));
    }
    let profile = ctx.services.profile.get(&creator)?.unwrap_or_default();
    let request = CreateRoom {
        creator_profile: MemberProfile::from_profile(&profile),
        version,
        preset,
        creation_content: req
            .creation_content
            .as_ref()
            .map(|c| canonical_object(c, "creation_content"))
            .transpose()?
            .unwrap_or_default(),
        power_level_override: req
            .power_level_content_override
            .as_ref()
            .map(|c| canonical_object(c, "power_level_content_override"))
            .transpose()?
            .unwrap_or_default(),
        initial_state,
        name: req.name,
        topic: req.topic,
        invite: req.invite,
        is_direct: req.is_direct,
        alias_localpart: req.room_alias_name,
        publish: req.visibility == Visibility::Public,
    };
    let room_id = ctx.services.rooms.create_room(&creator, request).await?;
    tracing::info!(%room_id, %creator, "room created");
    Ok(create_room::v3::Response::new(room_id))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
pub async fn get_room_event(ctx: Ctx, req: get_room_event::v3::Request) -> Result<get_room_event::v3::Response> {
    let rooms = &ctx.services.rooms;
    let user_id = ctx.user_id()?;
    let history = rooms.history_filter(user_id, rooms.read_scope(&req.room_id, user_id)?);
    let (_, mut pdu) = history.visible_event(&req.room_id, &req.event_id)?;
    let ignored = ctx.services.account_data.ignored_users(user_id)?;
    let reader = Reader {
        history: &history,
        ignored: &ignored,
    };
    rooms.bundle(&reader, [&mut pdu])?;
    Ok(get_room_event::v3::Response::new(raw_event(&pdu)?))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`
///
/// Tokens name stream positions (`services::tokens`): `from` is where reading starts (exclusive going forwards,
/// inclusive going backwards), `end` where the next page starts.
pub async fn get_message_events(
    ctx: Ctx,
    req: get_message_events::v3::Request,
) -> Result<get_message_events::v3::Response> {
    let rooms = &ctx.services.rooms;
    let user_id = ctx.user_id()?;
    let history = rooms.history_filter(user_id, rooms.read_scope(&req.room_id, user_id)?);
    let point = |param: &str, token: &Option<String>| {
        token
            .as_deref()
            .map(|token| rooms.pagination_point(&req.room_id, param, token))
            .transpose()
    };
    let limit = u64::from(req.limit).clamp(1, 1000) as usize;
    // Former members read up to their departure.
    let watermark = history.scope().up_to;
    let backwards = req.dir == Direction::Backward;
    let (start, range) = if backwards {
        let from = point("from", &req.from)?.unwrap_or(watermark).min(watermark);
        let to = point("to", &req.to)?.unwrap_or(0);
        (from, (to, from))
    } else {
        let from = point("from", &req.from)?.unwrap_or(0);
        let to = point("to", &req.to)?.unwrap_or(watermark).min(watermark);
        (from, (from, to))
    };
    let ignored = ctx.services.account_data.ignored_users(user_id)?;
    let keep =
        |pos: u64, pdu: &Pdu| pdu.matches(&req.filter) && !ignored.contains(&pdu.sender) && history.allows(pos, pdu);
    let (mut events, mut end) = rooms.timeline_page(&req.room_id, range, backwards, limit, keep)?;
    // Paging back past the earliest event here, in a room joined over federation: the
    // history before it is fetched from a server in the room, once per request.
    if backwards
        && end.is_none()
        && events.len() < limit
        && ctx.services.federation.backfill(rooms, &req.room_id, limit).await? > 0
    {
        (events, end) = rooms.timeline_page(&req.room_id, range, backwards, limit, keep)?;
    }
    let reader = Reader {
        history: &history,
        ignored: &ignored,
    };
    rooms.bundle(&reader, events.iter_mut().map(|(_, pdu)| pdu))?;
    let mut response = get_message_events::v3::Response::new();
    response.start = rooms.room_token(&req.room_id, start)?;
    response.end = end.map(|e| rooms.room_token(&req.room_id, e)).transpose()?;
    response.chunk = events.iter().map(|(_, pdu)| raw_event(pdu)).collect::<Result<_>>()?;
    // With lazy-loaded members, the member events of the page's senders (as Synapse: the
    // state at the first event returned).
    if !req.filter.lazy_load_options.is_disabled()
        && let Some((_, first)) = events.first()
    {
        let senders: BTreeSet<&str> = events.iter().map(|(_, p)| p.sender.as_str()).collect();
        response.state = rooms
            .members_after(first, senders)?
            .iter()
            .map(raw_event)
            .collect::<Result<_>>()?;
    }
    Ok(response)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`
///
/// Up to `limit` events around the event (about half before, half after), filtered like
/// `/messages`, with the room state after the last event returned.
pub async fn get_context(ctx: Ctx, req: get_context::v3::Request) -> Result<get_context::v3::Response> {
    let rooms = &ctx.services.rooms;
    let user_id = ctx.user_id()?;
    let history = rooms.history_filter(user_id, rooms.read_scope(&req.room_id, user_id)?);
    let (position, mut event) = history.visible_event(&req.room_id, &req.event_id)?;
    let limit = u64::from(req.limit).min(100) as usize;
    let keep = |pos: u64, pdu: &Pdu| pdu.matches(&req.filter) && history.allows(pos, pdu);
    let (mut before, _) = rooms.timeline_page(&req.room_id, (0, position - 1), true, limit / 2, keep)?;
    let (mut after, _) = rooms.timeline_page(
        &req.room_id,
        (position, history.scope().up_to),
        false,
        limit - limit / 2,
        keep,
    )?;
    let ignored = ctx.services.account_data.ignored_users(user_id)?;
    let reader = Reader {
        history: &history,
        ignored: &ignored,
    };
    let page = before.iter_mut().chain(after.iter_mut()).map(|(_, pdu)| pdu);
    rooms.bundle(&reader, page.chain([&mut event]))?;
    let last = after.last().map_or(&event, |(_, pdu)| pdu);
    let mut response = get_context::v3::Response::new();
    let start = before.last().map_or(position, |(pos, _)| *pos).saturating_sub(1);
    response.start = Some(rooms.room_token(&req.room_id, start)?);
    let end = after.last().map_or(position, |(pos, _)| *pos);
    response.end = Some(rooms.room_token(&req.room_id, end)?);
    // With lazy-loaded members, only the members of the events' senders (as /messages).
    let senders: BTreeSet<String> = before
        .iter()
        .chain(&after)
        .map(|(_, p)| p.sender.to_string())
        .chain([event.sender.to_string()])
        .collect();
    let selection = if req.filter.lazy_load_options.is_disabled() {
        Selection::All
    } else {
        Selection::MembersOf(&senders)
    };
    response.state = rooms
        .state_after(last, selection)?
        .iter()
        .map(raw_event)
        .collect::<Result<_>>()?;
    response.events_before = before.iter().map(|(_, pdu)| raw_event(pdu)).collect::<Result<_>>()?;
    response.events_after = after.iter().map(|(_, pdu)| raw_event(pdu)).collect::<Result<_>>()?;
    response.event = Some(raw_event(&event)?);
    Ok(response)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`
///
/// The event nearest to `ts` in direction `dir` among those the requester may read.
pub async fn get_event_by_timestamp(
    ctx: Ctx,
    req: get_event_by_timestamp::v1::Request,
) -> Result<get_event_by_timestamp::v1::Response> {
    let rooms = &ctx.services.rooms;
    let user_id = ctx.user_id()?;
    let history = rooms.history_filter(user_id, rooms.read_scope(&req.room_id, user_id)?);
    let ts = u64::from(req.ts.get());
    let forwards = req.dir == Direction::Forward;
    let not_found = || {
        Error::not_found(format!(
            "No event found {} {ts}",
            if forwards { "after" } else { "before" }
        ))
    };
    let up_to = history.scope().up_to;
    let (position, nearest) = rooms
        .event_near_timestamp(&req.room_id, ts, forwards, up_to)?
        .ok_or_else(not_found)?;
    // The nearest event the reader may see: that one, or the next visible one beyond it.
    let pdu = if history.allows(position, &nearest) {
        nearest
    } else {
        let range = if forwards { (position, up_to) } else { (0, position) };
        let keep = |pos: u64, pdu: &Pdu| history.allows(pos, pdu);
        let (mut page, _) = rooms.timeline_page(&req.room_id, range, !forwards, 1, keep)?;
        page.pop().ok_or_else(not_found)?.1
    };
    Ok(get_event_by_timestamp::v1::Response::new(
        pdu.event_id,
        pdu.origin_server_ts,
    ))
}

/// 400 `M_UNSUPPORTED_ROOM_VERSION` unless new rooms may be created in `version`.
pub(crate) fn check_new_room_version(version: &RoomVersionId) -> Result<()> {
    if crate::config::NEW_ROOM_VERSIONS.contains(&version.as_str()) {
        return Ok(());
    }
    Err(Error::new(
        http::StatusCode::BAD_REQUEST,
        ruma::api::error::ErrorKind::UnsupportedRoomVersion,
        format!("Room version {version} is not supported for new rooms (10, 11, 12 are)"),
    ))
}
