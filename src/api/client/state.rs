//! Room state.
//!
//! - `GET /_matrix/client/v3/rooms/{roomId}/state`
//! - `GET/PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
//!
//! Spec: client-server-api "Getting events for a room", "Sending events to a room"
//! (`data/api/client-server/room_state.yaml`, `rooms.yaml`).

use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};

use super::room::{canonical_object, raw_event};
use crate::{
    Error, Result,
    api::extract::Ctx,
    services::rooms::{NewEvent, Selection},
};

/// `GET /_matrix/client/v3/rooms/{roomId}/state`
pub async fn get_state_events(ctx: Ctx, req: get_state_events::v3::Request) -> Result<get_state_events::v3::Response> {
    let rooms = &ctx.services.rooms;
    let scope = rooms.read_scope(&req.room_id, ctx.user_id()?)?;
    let events = rooms
        .visible_state(&req.room_id, &scope, Selection::All)?
        .iter()
        .map(raw_event)
        .collect::<Result<_>>()?;
    Ok(get_state_events::v3::Response::new(events))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn get_state_event_for_key(
    ctx: Ctx,
    req: get_state_event_for_key::v3::Request,
) -> Result<get_state_event_for_key::v3::Response> {
    let rooms = &ctx.services.rooms;
    let scope = rooms.read_scope(&req.room_id, ctx.user_id()?)?;
    let pdu = match scope.departed_with {
        None => rooms.state_event(&req.room_id, &req.event_type, &req.state_key)?,
        Some(_) => {
            let kind = req.event_type.to_string();
            let state = rooms.visible_state(&req.room_id, &scope, Selection::All)?;
            state
                .into_iter()
                .find(|p| p.kind.to_string() == kind && p.state_key.as_deref() == Some(req.state_key.as_str()))
        }
    };
    let pdu = pdu.ok_or_else(|| Error::not_found("Event not found"))?;
    let body = match req.format {
        get_state_event_for_key::v3::StateEventFormat::Event => {
            serde_json::value::to_raw_value(&pdu.to_client()?).map_err(|e| Error::internal(e.to_string()))?
        }
        _ => pdu.content,
    };
    Ok(get_state_event_for_key::v3::Response::new(body))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn send_state_event(ctx: Ctx, req: send_state_event::v3::Request) -> Result<send_state_event::v3::Response> {
    let session = ctx.session()?;
    let user_id = &session.user_id;
    let content = canonical_object(&req.body, "Event content")?;
    let kind = req.event_type.to_string();
    let rooms = &ctx.services.rooms;
    rooms.ensure_joined(&req.room_id, user_id)?;
    let mut event = NewEvent::state(&kind, &req.state_key, content);
    event.origin_server_ts = super::message::massaged_ts(session, req.timestamp);
    let appended = rooms.append(&req.room_id, user_id, event).await?;
    Ok(send_state_event::v3::Response::new(appended.event_id))
}
