//! Sending events.
//!
//! - `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}` (idempotent per device
//!   and transaction id)
//! - `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}` (spec "Redactions": the
//!   original stays stored; the redacted form is what is served from then on)
//!
//! Spec: client-server-api "Sending events to a room" (`data/api/client-server/room_send.yaml`).

use ruma::api::client::{message::send_message_event, redact::redact_event};

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
        origin_server_ts: massaged_ts(session, req.timestamp),
    };
    let rooms = &ctx.services.rooms;
    rooms.ensure_joined(&req.room_id, &session.user_id)?;
    let appended = rooms.append(&req.room_id, &session.user_id, event).await?;
    Ok(send_message_event::v3::Response::new(appended.event_id))
}

/// The `ts` of a request (spec "Timestamp massaging"): honoured only for an application
/// service; from anyone else it is ignored, as Synapse ignores it.
pub(super) fn massaged_ts(
    session: &crate::services::sessions::Session,
    ts: Option<ruma::MilliSecondsSinceUnixEpoch>,
) -> Option<u64> {
    ts.filter(|_| session.appservice.is_some())
        .map(|ts| u64::from(ts.get()))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`
pub async fn redact_event(ctx: Ctx, req: redact_event::v3::Request) -> Result<redact_event::v3::Response> {
    let session = ctx.session()?;
    let rooms = &ctx.services.rooms;
    rooms.ensure_joined(&req.room_id, &session.user_id)?;
    let txn = (
        session.user_id.as_str(),
        session.device_id.as_str(),
        req.txn_id.as_str(),
    );
    let appended = rooms
        .redact(
            &req.room_id,
            &session.user_id,
            &req.event_id,
            req.reason.as_deref(),
            txn,
        )
        .await?;
    Ok(redact_event::v3::Response::new(appended.event_id))
}
