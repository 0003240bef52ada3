//! Joining over federation (server-server-api "Joining Rooms"):
//!
//! - `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
//! - `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`
//! - `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}` ("Inviting to a room")
//! - `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`,
//!   `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}` ("Leaving Rooms")
//! - `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`,
//!   `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}` ("Knocking upon a room")
//!
//! Each is 403 `M_FORBIDDEN` when the room's server ACL bars the requesting server.

use ruma::api::federation::membership::{
    create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event, prepare_knock_event,
    prepare_leave_event,
};

use super::origin;
use crate::{Error, Result, api::extract::Ctx};

/// 403 when the room's server ACL bars the requesting server (`federation::acl`).
fn acl(ctx: &Ctx, room_id: &ruma::RoomId) -> Result<()> {
    crate::services::federation::acl::check(&ctx.services.rooms, origin(ctx)?, room_id)
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
pub async fn make_join(ctx: Ctx, req: prepare_join_event::v1::Request) -> Result<prepare_join_event::v1::Response> {
    acl(&ctx, &req.room_id)?;
    let services = &ctx.services;
    let (version, event) = services
        .federation
        .make_join(&services.rooms, origin(&ctx)?, &req.room_id, &req.user_id, &req.ver)
        .await?;
    let mut response = prepare_join_event::v1::Response::new(event);
    response.room_version = Some(version);
    Ok(response)
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`
pub async fn send_join(ctx: Ctx, req: create_join_event::v2::Request) -> Result<serde_json::Value> {
    acl(&ctx, &req.room_id)?;
    let services = &ctx.services;
    let answer = services
        .federation
        .send_join(&services.rooms, origin(&ctx)?, &req.room_id, &req.event_id, &req.pdu)
        .await?;
    if let Some((room_id, user_id)) = crate::services::federation::presence::joined_member(req.pdu.get()) {
        services.presence_after_send_join(&room_id, &user_id);
    }
    serde_json::to_value(answer).map_err(|e| Error::internal(e.to_string()))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`
pub async fn invite(ctx: Ctx, req: create_invite::v2::Request) -> Result<create_invite::v2::Response> {
    acl(&ctx, &req.room_id)?;
    let services = &ctx.services;
    let event = services
        .federation
        .receive_invite(
            services,
            origin(&ctx)?,
            &req.room_id,
            &req.event_id,
            &req.room_version,
            &req.event,
            &req.invite_room_state,
        )
        .await?;
    Ok(create_invite::v2::Response::new(event))
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`
pub async fn make_leave(ctx: Ctx, req: prepare_leave_event::v1::Request) -> Result<prepare_leave_event::v1::Response> {
    acl(&ctx, &req.room_id)?;
    let services = &ctx.services;
    let (version, event) = services
        .federation
        .make_membership(&services.rooms, origin(&ctx)?, &req.room_id, &req.user_id, "leave")
        .await?;
    Ok(prepare_leave_event::v1::Response::new(Some(version), event))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`
pub async fn send_leave(ctx: Ctx, req: create_leave_event::v2::Request) -> Result<create_leave_event::v2::Response> {
    acl(&ctx, &req.room_id)?;
    let services = &ctx.services;
    services
        .federation
        .send_membership(
            &services.rooms,
            origin(&ctx)?,
            &req.room_id,
            &req.event_id,
            &req.pdu,
            "leave",
        )
        .await?;
    Ok(create_leave_event::v2::Response::new())
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`
pub async fn make_knock(ctx: Ctx, req: prepare_knock_event::v1::Request) -> Result<prepare_knock_event::v1::Response> {
    acl(&ctx, &req.room_id)?;
    let services = &ctx.services;
    let version = services
        .rooms
        .room_version(&req.room_id)?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    if !req.ver.contains(&version) {
        return Err(crate::services::federation::membership::incompatible_room_version(
            &version,
        ));
    }
    let (version, event) = services
        .federation
        .make_membership(&services.rooms, origin(&ctx)?, &req.room_id, &req.user_id, "knock")
        .await?;
    Ok(prepare_knock_event::v1::Response::new(version, event))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`
pub async fn send_knock(ctx: Ctx, req: create_knock_event::v1::Request) -> Result<create_knock_event::v1::Response> {
    acl(&ctx, &req.room_id)?;
    let services = &ctx.services;
    let federation = &services.federation;
    federation
        .send_membership(
            &services.rooms,
            origin(&ctx)?,
            &req.room_id,
            &req.event_id,
            &req.pdu,
            "knock",
        )
        .await?;
    Ok(create_knock_event::v1::Response::new(
        federation.stripped_state(&services.rooms, &req.room_id)?,
    ))
}
