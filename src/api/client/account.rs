//! The account itself.
//!
//! - `GET /_matrix/client/v3/account/whoami`
//! - `POST /_matrix/client/v3/account/password` (user-interactive auth)
//! - `POST /_matrix/client/v3/account/deactivate` (user-interactive auth)
//!
//! Spec: client-server-api "Account management" (`data/api/client-server/registration.yaml`,
//! `whoami.yaml`).

use ruma::api::client::account::{ThirdPartyIdRemovalStatus, change_password, deactivate, whoami};

use crate::{Result, api::extract::Ctx};

/// `GET /_matrix/client/v3/account/whoami`
pub async fn whoami(ctx: Ctx, _req: whoami::v3::Request) -> Result<whoami::v3::Response> {
    let session = ctx.session()?;
    let mut response = whoami::v3::Response::new(session.user_id.clone(), false);
    response.device_id = session.device().ok().map(ToOwned::to_owned);
    Ok(response)
}

/// `POST /_matrix/client/v3/account/password`
pub async fn change_password(ctx: Ctx, req: change_password::v3::Request) -> Result<change_password::v3::Response> {
    let session = ctx.confirm_with_password(req.auth.as_ref()).await?;
    ctx.services
        .change_password(
            &session.user_id,
            &req.new_password,
            req.logout_devices,
            Some(session.device_id.as_str()),
        )
        .await?;
    tracing::info!(user_id = %session.user_id, "password changed");
    Ok(change_password::v3::Response::new())
}

/// `POST /_matrix/client/v3/account/deactivate`
pub async fn deactivate(ctx: Ctx, req: deactivate::v3::Request) -> Result<deactivate::v3::Response> {
    let session = ctx.confirm_with_password(req.auth.as_ref()).await?;
    ctx.services.deactivate_user(&session.user_id).await?;
    Ok(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}
