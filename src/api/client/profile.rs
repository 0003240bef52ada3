//! User profiles.
//!
//! - `GET /_matrix/client/v3/profile/{userId}`
//! - `GET/PUT/DELETE /_matrix/client/v3/profile/{userId}/{keyName}` (displayname, avatar_url,
//!   m.tz and custom fields, spec v1.16)
//!
//! Spec: client-server-api "Profiles" (`data/api/client-server/profile.yaml`).

use ruma::{
    UserId,
    api::client::profile::{
        ProfileFieldValue, UserProfile, delete_profile_field, get_profile, get_profile_field, set_profile_field,
    },
};

use crate::{
    Error, Result,
    api::extract::Ctx,
    services::{appservice, rooms::membership::MemberProfile},
};

/// The profile of a local user, or of a remote one asked of their server when federation is on.
async fn profile_of(
    ctx: &Ctx,
    user_id: &UserId,
    field: Option<&str>,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let federation = &ctx.services.federation;
    if user_id.server_name() != ctx.services.config.server_name && federation.enabled {
        return federation.remote_profile(user_id, field).await;
    }
    if let Some(profile) = ctx.services.profile.get(user_id)? {
        return Ok(profile);
    }
    // A user an application service has not created yet: it may create it now.
    if appservice::client_server::user_exists_asking_services(&ctx.services, user_id).await?
        && let Some(profile) = ctx.services.profile.get(user_id)?
    {
        return Ok(profile);
    }
    Err(Error::not_found("Profile not found"))
}

fn ensure_own(ctx: &Ctx, user_id: &UserId) -> Result<()> {
    if ctx.user_id()? != user_id {
        return Err(Error::forbidden("Cannot change another user's profile"));
    }
    Ok(())
}

/// A new display name or avatar is announced in the user's rooms.
async fn shown_in_rooms(
    ctx: &Ctx,
    user_id: &UserId,
    field: &str,
    profile: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    if matches!(field, "displayname" | "avatar_url") {
        ctx.services.user_directory.profile_changed(user_id, profile);
        let profile = MemberProfile::from_profile(profile);
        ctx.services.rooms.refresh_member_profile(user_id, &profile).await?;
    }
    Ok(())
}

/// `GET /_matrix/client/v3/profile/{userId}`
pub async fn get_profile(ctx: Ctx, req: get_profile::v3::Request) -> Result<get_profile::v3::Response> {
    let mut profile = UserProfile::new();
    for (key, value) in profile_of(&ctx, &req.user_id, None).await? {
        profile.set(key, value);
    }
    let mut response = get_profile::v3::Response::new();
    response.data = profile;
    Ok(response)
}

/// `GET /_matrix/client/v3/profile/{userId}/{keyName}`
pub async fn get_profile_field(
    ctx: Ctx,
    req: get_profile_field::v3::Request,
) -> Result<get_profile_field::v3::Response> {
    let field = req.field.as_str();
    let value = profile_of(&ctx, &req.user_id, Some(field))
        .await?
        .remove(field)
        .ok_or_else(|| Error::not_found(format!("The user has no {field}")))?;
    let value = ProfileFieldValue::new(field, value)
        .map_err(|e| Error::internal(format!("stored profile field {field}: {e}")))?;
    Ok(get_profile_field::v3::Response::new(value))
}

/// `PUT /_matrix/client/v3/profile/{userId}/{keyName}`
pub async fn set_profile_field(
    ctx: Ctx,
    req: set_profile_field::v3::Request,
) -> Result<set_profile_field::v3::Response> {
    ensure_own(&ctx, &req.user_id)?;
    let field = req.value.field_name();
    let value = req.value.value().into_owned();
    let profile = ctx
        .services
        .profile
        .set_field(&req.user_id, field.as_str(), Some(value))
        .await?;
    shown_in_rooms(&ctx, &req.user_id, field.as_str(), &profile).await?;
    Ok(set_profile_field::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/profile/{userId}/{keyName}`
pub async fn delete_profile_field(
    ctx: Ctx,
    req: delete_profile_field::v3::Request,
) -> Result<delete_profile_field::v3::Response> {
    ensure_own(&ctx, &req.user_id)?;
    let profile = ctx
        .services
        .profile
        .set_field(&req.user_id, req.field.as_str(), None)
        .await?;
    shown_in_rooms(&ctx, &req.user_id, req.field.as_str(), &profile).await?;
    Ok(delete_profile_field::v3::Response::new())
}
