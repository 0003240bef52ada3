//! Queries (server-server-api "Query"): `GET /_matrix/federation/v1/query/profile`, the profile
//! of one of our users for another server (404 `M_NOT_FOUND` for a user that does not exist
//! here or was deactivated, 400 for a user of another server).

use ruma::api::federation::query::get_profile_information;

use crate::{Error, Result, api::extract::Ctx};

/// `GET /_matrix/federation/v1/query/profile`
pub async fn get_profile_information(
    ctx: Ctx,
    req: get_profile_information::v1::Request,
) -> Result<get_profile_information::v1::Response> {
    if req.user_id.server_name() != ctx.services.config.server_name {
        return Err(Error::invalid_param("The user is not on this server"));
    }
    let profile = ctx
        .services
        .profile
        .get(&req.user_id)?
        .ok_or_else(|| Error::not_found("Profile not found"))?;
    let wanted = req.field.as_ref().map(|f| f.as_str().to_owned());
    Ok(profile
        .into_iter()
        .filter(|(name, _)| wanted.as_ref().is_none_or(|w| w == name))
        .collect())
}
