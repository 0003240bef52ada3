//! Reading rooms from other servers (server-server-api "Retrieving events", "Room state",
//! "Backfilling and retrieving missing events", "Timestamp to event"):
//!
//! - `GET /_matrix/federation/v1/event/{eventId}`;
//! - `GET /_matrix/federation/v1/state/{roomId}` and `GET /_matrix/federation/v1/state_ids/{roomId}`;
//! - `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`;
//! - `GET /_matrix/federation/v1/backfill/{roomId}`;
//! - `POST /_matrix/federation/v1/get_missing_events/{roomId}`;
//! - `GET /_matrix/federation/v1/timestamp_to_event/{roomId}`.
//!
//! Who may read what is `services::federation::serve`; events are sent as stored PDUs.

use ruma::{
    MilliSecondsSinceUnixEpoch, ServerName,
    api::{
        Direction,
        federation::{
            authorization::get_event_authorization,
            backfill::get_backfill,
            event::{get_event, get_event_by_timestamp, get_missing_events, get_room_state, get_room_state_ids},
        },
    },
};

use crate::{Error, Result, api::extract::Ctx, services::federation::serve};

/// The server that signed the request.
pub(super) fn origin(ctx: &Ctx) -> Result<&ServerName> {
    ctx.origin
        .as_deref()
        .ok_or_else(|| Error::forbidden("The request is not signed by a server"))
}

fn now() -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch::now()
}

/// `GET /_matrix/federation/v1/event/{eventId}`
pub async fn get_event(ctx: Ctx, req: get_event::v1::Request) -> Result<get_event::v1::Response> {
    let pdu = serve::event(&ctx.services.rooms, origin(&ctx)?, &req.event_id)?;
    Ok(get_event::v1::Response::new(
        ctx.services.config.server_name.clone(),
        now(),
        pdu,
    ))
}

/// `GET /_matrix/federation/v1/state/{roomId}`
pub async fn get_room_state(ctx: Ctx, req: get_room_state::v1::Request) -> Result<get_room_state::v1::Response> {
    let (pdus, auth_chain) = serve::state(&ctx.services.rooms, origin(&ctx)?, &req.room_id, &req.event_id)?;
    Ok(get_room_state::v1::Response::new(auth_chain, pdus))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}`
pub async fn get_room_state_ids(
    ctx: Ctx,
    req: get_room_state_ids::v1::Request,
) -> Result<get_room_state_ids::v1::Response> {
    let (pdu_ids, auth_chain_ids) = serve::state_ids(&ctx.services.rooms, origin(&ctx)?, &req.room_id, &req.event_id)?;
    Ok(get_room_state_ids::v1::Response::new(auth_chain_ids, pdu_ids))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`
pub async fn get_event_authorization(
    ctx: Ctx,
    req: get_event_authorization::v1::Request,
) -> Result<get_event_authorization::v1::Response> {
    let chain = serve::event_auth(&ctx.services.rooms, origin(&ctx)?, &req.room_id, &req.event_id)?;
    Ok(get_event_authorization::v1::Response::new(chain))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}`
pub async fn get_backfill(ctx: Ctx, req: get_backfill::v1::Request) -> Result<get_backfill::v1::Response> {
    let pdus = serve::backfill(
        &ctx.services.rooms,
        origin(&ctx)?,
        &req.room_id,
        &req.v,
        u64::from(req.limit),
    )?;
    Ok(get_backfill::v1::Response::new(
        ctx.services.config.server_name.clone(),
        now(),
        pdus,
    ))
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`
pub async fn get_missing_events(
    ctx: Ctx,
    req: get_missing_events::v1::Request,
) -> Result<get_missing_events::v1::Response> {
    let events = serve::missing_events(
        &ctx.services.rooms,
        origin(&ctx)?,
        &req.room_id,
        &req.earliest_events,
        &req.latest_events,
        u64::from(req.limit),
        u64::from(req.min_depth),
    )?;
    Ok(get_missing_events::v1::Response::new(events))
}

/// `GET /_matrix/federation/v1/timestamp_to_event/{roomId}`
pub async fn get_event_by_timestamp(
    ctx: Ctx,
    req: get_event_by_timestamp::v1::Request,
) -> Result<get_event_by_timestamp::v1::Response> {
    let forwards = matches!(req.dir, Direction::Forward);
    let (event_id, ts) = serve::timestamp_to_event(
        &ctx.services.rooms,
        origin(&ctx)?,
        &req.room_id,
        u64::from(req.ts.get()),
        forwards,
    )?;
    Ok(get_event_by_timestamp::v1::Response::new(event_id, ts))
}
