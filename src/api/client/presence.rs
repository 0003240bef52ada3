//! Presence.
//!
//! - `GET /_matrix/client/v3/presence/{userId}/status` (oneself, or a user sharing a room)
//! - `PUT /_matrix/client/v3/presence/{userId}/status` (oneself only)
//!
//! Spec: client-server-api "Presence" (`data/api/client-server/presence.yaml`).

use std::time::Duration;

use ruma::{
    api::client::presence::{get_presence, set_presence},
    presence::PresenceState,
};

use crate::{Error, Result, api::extract::Ctx};

/// `PUT /_matrix/client/v3/presence/{userId}/status`
pub async fn set_presence(ctx: Ctx, req: set_presence::v3::Request) -> Result<set_presence::v3::Response> {
    let user_id = ctx.user_id()?;
    if user_id != req.user_id {
        return Err(Error::forbidden("Cannot set the presence of another user"));
    }
    if !matches!(
        req.presence,
        PresenceState::Online | PresenceState::Offline | PresenceState::Unavailable
    ) {
        return Err(Error::invalid_param(format!(
            "presence must be online, offline or unavailable, not {:?}",
            req.presence.as_str().chars().take(32).collect::<String>()
        )));
    }
    ctx.services.set_presence(user_id, req.presence, Some(req.status_msg))?;
    Ok(set_presence::v3::Response::new())
}

/// `GET /_matrix/client/v3/presence/{userId}/status`
pub async fn get_presence(ctx: Ctx, req: get_presence::v3::Request) -> Result<get_presence::v3::Response> {
    let user_id = ctx.user_id()?;
    let services = &ctx.services;
    if user_id != req.user_id && !services.share_a_room(user_id, &req.user_id)? {
        return Err(Error::forbidden("You do not share a room with this user"));
    }
    let Some(status) = services.presence.get(&req.user_id) else {
        return Ok(get_presence::v3::Response::new(PresenceState::Offline));
    };
    let mut response = get_presence::v3::Response::new(status.state);
    response.status_msg = status.status_msg;
    response.currently_active = Some(status.currently_active);
    response.last_active_ago = Some(Duration::from_millis(status.last_active_ago));
    Ok(response)
}
