//! Joining, inviting and leaving.
//!
//! - `POST /_matrix/client/v3/rooms/{roomId}/join`
//! - `POST /_matrix/client/v3/rooms/{roomId}/invite`
//! - `POST /_matrix/client/v3/rooms/{roomId}/leave`
//!
//! Spec: client-server-api "Room membership" (`data/api/client-server/joining.yaml`,
//! `inviting.yaml`, `leaving.yaml`). Whether a change is allowed is decided by the room's
//! authorization rules, like any other event.

use ruma::api::client::membership::{invite_user, join_room_by_id, leave_room};

use crate::{Error, Result, api::extract::Ctx};

/// `POST /_matrix/client/v3/rooms/{roomId}/join`
pub async fn join_room_by_id(ctx: Ctx, req: join_room_by_id::v3::Request) -> Result<join_room_by_id::v3::Response> {
    let user_id = ctx.user_id()?;
    ctx.services
        .rooms
        .set_membership(&req.room_id, user_id, user_id, "join", req.reason.as_deref())
        .await?;
    Ok(join_room_by_id::v3::Response::new(req.room_id))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`
pub async fn invite_user(ctx: Ctx, req: invite_user::v3::Request) -> Result<invite_user::v3::Response> {
    let invite_user::v3::InvitationRecipient::UserId(recipient) = &req.recipient else {
        return Err(Error::invalid_param("Third-party invites are not supported"));
    };
    let user_id = ctx.user_id()?;
    let rooms = &ctx.services.rooms;
    rooms.ensure_joined(&req.room_id, user_id)?;
    if !ctx.services.accounts.is_active(&recipient.user_id)? {
        return Err(Error::not_found(format!("Unknown user {}", recipient.user_id)));
    }
    rooms
        .set_membership(
            &req.room_id,
            user_id,
            &recipient.user_id,
            "invite",
            recipient.reason.as_deref(),
        )
        .await?;
    Ok(invite_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`
pub async fn leave_room(ctx: Ctx, req: leave_room::v3::Request) -> Result<leave_room::v3::Response> {
    let user_id = ctx.user_id()?;
    let rooms = &ctx.services.rooms;
    if !matches!(
        rooms.membership(&req.room_id, user_id)?.as_deref(),
        Some("join" | "invite" | "knock")
    ) {
        return Err(Error::forbidden(format!(
            "{user_id} is not in the room {}",
            req.room_id
        )));
    }
    rooms
        .set_membership(&req.room_id, user_id, user_id, "leave", req.reason.as_deref())
        .await?;
    Ok(leave_room::v3::Response::new())
}
