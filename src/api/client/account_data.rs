//! Account data, global and per room, and room tags (kept as `m.tag` room account data).
//!
//! - `GET/PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
//! - `GET/PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
//! - `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`
//! - `PUT/DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
//!
//! Spec: client-server-api "Client Config" and "Room Tagging"
//! (`data/api/client-server/account-data.yaml`, `tags.yaml`).

use ruma::{
    UserId,
    api::client::{
        config::{get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data},
        tag::{create_tag, delete_tag, get_tags},
    },
    serde::Raw,
};
use serde_json::value::RawValue;

use crate::{Error, Result, api::extract::Ctx};

fn ensure_own(ctx: &Ctx, user_id: &UserId) -> Result<()> {
    if ctx.user_id()? != user_id {
        return Err(Error::forbidden("Cannot access account data of other users"));
    }
    Ok(())
}

/// The requester's own account data of `kind` (in `room`, or global): 404 when unset.
fn read_own(ctx: &Ctx, user_id: &UserId, room: Option<&str>, kind: &str) -> Result<Box<RawValue>> {
    ensure_own(ctx, user_id)?;
    ctx.services
        .account_data
        .get(user_id, room, kind)?
        .ok_or_else(|| Error::not_found("Account data not found"))
}

/// Sets the requester's own account data of `kind` (in `room`, or global).
async fn write_own(ctx: &Ctx, user_id: &UserId, room: Option<&str>, kind: &str, data: &RawValue) -> Result<()> {
    ensure_own(ctx, user_id)?;
    ctx.services.account_data.set(user_id, room, kind, data).await
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn get_global_account_data(
    ctx: Ctx,
    req: get_global_account_data::v3::Request,
) -> Result<get_global_account_data::v3::Response> {
    let raw = read_own(&ctx, &req.user_id, None, &req.event_type.to_string())?;
    Ok(get_global_account_data::v3::Response::new(Raw::from_json(raw)))
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn set_global_account_data(
    ctx: Ctx,
    req: set_global_account_data::v3::Request,
) -> Result<set_global_account_data::v3::Response> {
    write_own(&ctx, &req.user_id, None, &req.event_type.to_string(), req.data.json()).await?;
    Ok(set_global_account_data::v3::Response::new())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn get_room_account_data(
    ctx: Ctx,
    req: get_room_account_data::v3::Request,
) -> Result<get_room_account_data::v3::Response> {
    let room = Some(req.room_id.as_str());
    let raw = read_own(&ctx, &req.user_id, room, &req.event_type.to_string())?;
    Ok(get_room_account_data::v3::Response::new(Raw::from_json(raw)))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn set_room_account_data(
    ctx: Ctx,
    req: set_room_account_data::v3::Request,
) -> Result<set_room_account_data::v3::Response> {
    let room = Some(req.room_id.as_str());
    write_own(&ctx, &req.user_id, room, &req.event_type.to_string(), req.data.json()).await?;
    Ok(set_room_account_data::v3::Response::new())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`
pub async fn get_tags(ctx: Ctx, req: get_tags::v3::Request) -> Result<get_tags::v3::Response> {
    ensure_own(&ctx, &req.user_id)?;
    let tags = ctx.services.account_data.tags(&req.user_id, &req.room_id)?;
    let tags = serde_json::from_value(serde_json::Value::Object(tags))
        .map_err(|e| Error::internal(format!("stored tags: {e}")))?;
    Ok(get_tags::v3::Response::new(tags))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn create_tag(ctx: Ctx, req: create_tag::v3::Request) -> Result<create_tag::v3::Response> {
    ensure_own(&ctx, &req.user_id)?;
    let info = serde_json::to_value(&req.tag_info).map_err(|e| Error::internal(e.to_string()))?;
    ctx.services
        .account_data
        .set_tag(&req.user_id, &req.room_id, &req.tag, Some(info))
        .await?;
    Ok(create_tag::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn delete_tag(ctx: Ctx, req: delete_tag::v3::Request) -> Result<delete_tag::v3::Response> {
    ensure_own(&ctx, &req.user_id)?;
    ctx.services
        .account_data
        .set_tag(&req.user_id, &req.room_id, &req.tag, None)
        .await?;
    Ok(delete_tag::v3::Response::new())
}
