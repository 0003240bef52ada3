//! Filters.
//!
//! - `POST /_matrix/client/v3/user/{userId}/filter`
//! - `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
//!
//! Spec: client-server-api "Filtering" (`data/api/client-server/filter.yaml`).

use ruma::{
    UserId,
    api::client::filter::{create_filter, get_filter},
};

use crate::{Error, Result, api::extract::Ctx};

fn ensure_own(ctx: &Ctx, user_id: &UserId) -> Result<()> {
    if ctx.user_id()? != user_id {
        return Err(Error::forbidden("Cannot use the filters of other users"));
    }
    Ok(())
}

/// `POST /_matrix/client/v3/user/{userId}/filter`
pub async fn create_filter(ctx: Ctx, req: create_filter::v3::Request) -> Result<create_filter::v3::Response> {
    ensure_own(&ctx, &req.user_id)?;
    let id = ctx.services.filters.create(&req.user_id, &req.filter).await?;
    Ok(create_filter::v3::Response::new(id))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
pub async fn get_filter(ctx: Ctx, req: get_filter::v3::Request) -> Result<get_filter::v3::Response> {
    ensure_own(&ctx, &req.user_id)?;
    let filter = ctx
        .services
        .filters
        .get(&req.user_id, &req.filter_id)?
        .ok_or_else(|| Error::not_found("Filter not found"))?;
    Ok(get_filter::v3::Response::new(filter))
}
