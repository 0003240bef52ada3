//! Sending events.
//!
//! - `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}` (idempotent per device
//!   and transaction id)
//!
//! Spec: client-server-api "Sending events to a room" (`data/api/client-server/room_send.yaml`).

use ruma::api::client::message::send_message_event;

use super::room::canonical_object;
use crate::{Result, api::extract::Ctx, services::rooms::NewEvent};

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`
pub async fn send_message_event(
    ctx: Ctx,
    req: send_message_event::v3::Request,
) -> Result<send_message_event::v3::Response> {
    let session = ctx.session()?;
    let content = canonical_object(&req.body, "Event content")?;
    let kind = req.event_type.to_string();
    let event = NewEvent {
        kind: &kind,
        state_key: None,
        content,
        redacts: None,
        txn: Some((
            session.user_id.as_str(),
            session.device_id.as_str(),
            req.txn_id.as_str(),
        )),
    };
    let rooms = &ctx.services.rooms;
    rooms.ensure_joined(&req.room_id, &session.user_id)?;
    let appended = rooms.append(&req.room_id, &session.user_id, event).await?;
    Ok(send_message_event::v3::Response::new(appended.event_id))
}
