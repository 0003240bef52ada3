//! Typing notifications.
//!
//! - `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
//!
//! Spec: client-server-api "Typing Notifications" (`data/api/client-server/typing.yaml`).

use ruma::api::client::typing::create_typing_event::{self, v3::Typing};

use crate::{Error, Result, api::extract::Ctx};

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
pub async fn create_typing_event(
    ctx: Ctx,
    req: create_typing_event::v3::Request,
) -> Result<create_typing_event::v3::Response> {
    let user_id = ctx.user_id()?;
    if user_id != req.user_id {
        return Err(Error::forbidden("Cannot set the typing state of another user"));
    }
    ctx.services.rooms.ensure_joined(&req.room_id, user_id)?;
    let timeout = match req.state {
        Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    ctx.services.typing.set(&req.room_id, user_id, timeout);
    ctx.services.appservice_typing(&req.room_id);
    ctx.services
        .federation
        .send_typing(&ctx.services.rooms, &req.room_id, user_id, timeout.is_some());
    Ok(create_typing_event::v3::Response::new())
}
