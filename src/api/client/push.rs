//! Pushers and the notification log.
//!
//! - `GET /_matrix/client/v3/pushers`
//! - `POST /_matrix/client/v3/pushers/set`
//! - `GET /_matrix/client/v3/notifications`
//!
//! Spec: client-server-api "Push Notifications" (`data/api/client-server/pusher.yaml`,
//! `notifications.yaml`); delivery to gateways is `services::push::worker`.

use ruma::api::client::push::{get_notifications, get_pushers, set_pusher};

use crate::{Result, api::extract::Ctx};

/// `GET /_matrix/client/v3/pushers`
pub async fn get_pushers(ctx: Ctx, _req: get_pushers::v3::Request) -> Result<get_pushers::v3::Response> {
    Ok(get_pushers::v3::Response::new(ctx.services.pushers(ctx.user_id()?)?))
}

/// `POST /_matrix/client/v3/pushers/set`
pub async fn set_pusher(ctx: Ctx, req: set_pusher::v3::Request) -> Result<set_pusher::v3::Response> {
    let session = ctx.session()?;
    ctx.services
        .set_pusher(&session.user_id, session.device_id.as_str(), req.action)
        .await?;
    Ok(set_pusher::v3::Response::new())
}

/// `GET /_matrix/client/v3/notifications`
pub async fn get_notifications(
    ctx: Ctx,
    req: get_notifications::v3::Request,
) -> Result<get_notifications::v3::Response> {
    // Up to `SCAN_BUDGET` events are read and evaluated: on the blocking pool, as `/search`,
    // so a long page never holds up the HTTP thread's other requests.
    let services = std::sync::Arc::clone(&ctx.services);
    let user_id = ctx.user_id()?.to_owned();
    tokio::task::spawn_blocking(move || {
        services.notifications(&user_id, req.from.as_deref(), req.limit, req.only.as_deref())
    })
    .await
    .map_err(|e| crate::Error::internal(e.to_string()))?
}
