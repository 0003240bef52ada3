//! `POST /_matrix/client/v3/rooms/{roomId}/upgrade`
//!
//! Spec: client-server-api "Room Upgrades" (`data/api/client-server/room_upgrades.yaml`).

use ruma::api::client::room::upgrade_room;

use super::room::check_new_room_version;
use crate::{Result, api::extract::Ctx};

/// `POST /_matrix/client/v3/rooms/{roomId}/upgrade`
pub async fn upgrade_room(ctx: Ctx, req: upgrade_room::v3::Request) -> Result<upgrade_room::v3::Response> {
    check_new_room_version(&req.new_version)?;
    let user_id = ctx.user_id()?;
    let rooms = &ctx.services.rooms;
    let replacement = rooms
        .upgrade(&req.room_id, user_id, &req.new_version, &req.additional_creators)
        .await?;
    ctx.services
        .directory
        .move_room(&req.room_id, &replacement.room_id)
        .await?;
    rooms.move_canonical_alias(&replacement).await?;
    rooms.finish_upgrade(&replacement).await?;
    tracing::info!(old = %req.room_id, new = %replacement.room_id, version = %req.new_version, "room upgraded");
    Ok(upgrade_room::v3::Response::new(replacement.room_id))
}
