//! Room account data and room tags.
//!
//! - `GET/PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
//! - `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`
//! - `PUT/DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
//!
//! Spec: client-server-api "Client Config" and "Room Tagging"
//! (`data/api/client-server/account-data.yaml`, `tags.yaml`).

use ruma::{
    UserId,
    api::client::{
        config::{get_room_account_data, set_room_account_data},
        tag::{create_tag, delete_tag, get_tags},
    },
    serde::Raw,
};

use crate::{Error, Result, api::extract::Ctx};

fn ensure_own(ctx: &Ctx, user_id: &UserId) -> Result<()> {
    if ctx.user_id()? != user_id {
        return Err(Error::forbidden("Cannot access account data of other users"));
    }
    Ok(())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn get_room_account_data(
    ctx: Ctx,
    req: get_room_account_data::v3::Request,
) -> Result<get_room_account_data::v3::Response> {
    ensure_own(&ctx, &req.user_id)?;
    let raw = ctx
        .services
        .account_data
        .get(&req.user_id, Some(req.room_id.as_str()), &req.event_type.to_string())?
        .ok_or_else(|| Error::not_found("Account data not found"))?;
    Ok(get_room_account_data::v3::Response::new(Raw::from_json(raw)))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn set_room_account_data(
    ctx: Ctx,
    req: set_room_account_data::v3::Request,
) -> Result<set_room_account_data::v3::Response> {
    ensure_own(&ctx, &req.user_id)?;
    ctx.services
        .account_data
        .set(
            &req.user_id,
            Some(req.room_id.as_str()),
            &req.event_type.to_string(),
            req.data.json(),
        )
        .await?;
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
