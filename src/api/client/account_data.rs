//! Global account data.
//!
//! - `GET/PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
//!
//! Spec: client-server-api "Client Config" (`data/api/client-server/account-data.yaml`).
//! Per-room account data arrives with rooms.

use ruma::{
    UserId,
    api::client::config::{get_global_account_data, set_global_account_data},
    serde::Raw,
};

use crate::{Error, Result, api::extract::Ctx};

fn ensure_own(ctx: &Ctx, user_id: &UserId) -> Result<()> {
    if ctx.user_id()? != user_id {
        return Err(Error::forbidden("Cannot access account data of other users"));
    }
    Ok(())
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn get_global_account_data(
    ctx: Ctx,
    req: get_global_account_data::v3::Request,
) -> Result<get_global_account_data::v3::Response> {
    ensure_own(&ctx, &req.user_id)?;
    let kind = req.event_type.to_string();
    let raw = ctx
        .services
        .account_data
        .get(&req.user_id, None, &kind)?
        .ok_or_else(|| Error::not_found("Account data not found"))?;
    Ok(get_global_account_data::v3::Response::new(Raw::from_json(raw)))
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn set_global_account_data(
    ctx: Ctx,
    req: set_global_account_data::v3::Request,
) -> Result<set_global_account_data::v3::Response> {
    ensure_own(&ctx, &req.user_id)?;
    ctx.services
        .account_data
        .set(&req.user_id, None, &req.event_type.to_string(), req.data.json())
        .await?;
    Ok(set_global_account_data::v3::Response::new())
}
