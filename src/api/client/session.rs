//! Logging in and out, and refreshing tokens.
//!
//! - `GET/POST /_matrix/client/v3/login`
//! - `POST /_matrix/client/v3/refresh`
//! - `POST /_matrix/client/v3/logout`, `POST /_matrix/client/v3/logout/all`
//!
//! Spec: client-server-api "Login", "Refreshing access tokens", "Logout"
//! (`data/api/client-server/login.yaml`, `refresh.yaml`, `logout.yaml`).

use ruma::api::{
    client::{
        session::{
            get_login_types::v3::{self as get_login_types, ApplicationServiceLoginType, LoginType, PasswordLoginType},
            login::v3::{self as login, DiscoveryInfo, HomeserverInfo, LoginInfo},
            logout, logout_all, refresh_token,
        },
        uiaa::UserIdentifier,
    },
    error::ErrorKind,
};

use crate::{Error, Result, api::extract::Ctx, services::accounts::LoginCheck};

/// `GET /_matrix/client/v3/login`
pub async fn get_login_types(_ctx: Ctx, _req: get_login_types::Request) -> Result<get_login_types::Response> {
    Ok(get_login_types::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
        LoginType::ApplicationService(ApplicationServiceLoginType::new()),
    ]))
}

/// `POST /_matrix/client/v3/login`
pub async fn login(ctx: Ctx, req: login::Request) -> Result<login::Response> {
    let services = &ctx.services;
    let user_id = match &req.login_info {
        LoginInfo::Password(password) => {
            // The deprecated top-level `user` is still in the spec and still sent by older clients.
            #[allow(deprecated)]
            let user = match (&password.identifier, &password.user) {
                (Some(UserIdentifier::Matrix(identifier)), _) => &identifier.user,
                (None, Some(user)) => user,
                _ => {
                    return Err(Error::bad_json("Only the m.id.user identifier is supported"));
                }
            };
            match services.accounts.check_login(user, &password.password).await? {
                LoginCheck::Valid(user_id) => user_id,
                LoginCheck::Deactivated => return Err(Error::user_deactivated()),
                LoginCheck::Invalid => return Err(Error::forbidden("Invalid username or password")),
            }
        }
        LoginInfo::ApplicationService(info) => {
            #[allow(deprecated)]
            let user = match (&info.identifier, &info.user) {
                (Some(UserIdentifier::Matrix(identifier)), _) => &identifier.user,
                (None, Some(user)) => user,
                _ => return Err(Error::bad_json("Only the m.id.user identifier is supported")),
            };
            appservice_login_user(&ctx, user)?
        }
        _ => {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::Unknown,
                "Only m.login.password and m.login.application_service are supported",
            ));
        }
    };
    let grant = services
        .sessions
        .login(
            &user_id,
            req.device_id,
            req.initial_device_display_name,
            req.refresh_token,
            ctx.ip.clone(),
        )
        .await?;
    if grant.new_device {
        services
            .keys
            .device_added(&services.rooms, &user_id, grant.device_id.as_str())
            .await?;
    }
    tracing::info!(%user_id, device_id = %grant.device_id, "logged in");
    let mut response = login::Response::new(user_id, grant.access_token, grant.device_id);
    response.refresh_token = grant.refresh_token;
    response.expires_in = grant.expires_in;
    response.well_known = services
        .config
        .well_known_client
        .clone()
        .map(|url| DiscoveryInfo::new(HomeserverInfo::new(url)));
    Ok(response)
}

/// The user an application service logs in as (`m.login.application_service`): its `as_token`
/// is required, and the user must exist and be in its users namespace (403 otherwise).
fn appservice_login_user(ctx: &Ctx, user: &str) -> Result<ruma::OwnedUserId> {
    let Some(service) = ctx.session.as_ref().and_then(|s| s.appservice.as_ref()) else {
        return Err(if ctx.token_sent {
            Error::unknown_token(false)
        } else {
            Error::missing_token()
        });
    };
    let services = &ctx.services;
    let user_id = services
        .accounts
        .resolve_local_user(user)?
        .ok_or_else(|| Error::forbidden("Invalid username or password"))?;
    if !service.is_user_in_namespace(&user_id) {
        return Err(Error::forbidden("Invalid access_token"));
    }
    if !services.accounts.is_active(&user_id)? {
        return Err(Error::user_deactivated());
    }
    Ok(user_id)
}

/// `POST /_matrix/client/v3/refresh`
pub async fn refresh_token(ctx: Ctx, req: refresh_token::v3::Request) -> Result<refresh_token::v3::Response> {
    let grant = ctx.services.sessions.refresh(&req.refresh_token).await?;
    let mut response = refresh_token::v3::Response::new(grant.access_token);
    response.refresh_token = grant.refresh_token;
    response.expires_in_ms = grant.expires_in;
    Ok(response)
}

/// `POST /_matrix/client/v3/logout`
pub async fn logout(ctx: Ctx, _req: logout::v3::Request) -> Result<logout::v3::Response> {
    let session = ctx.session()?;
    // An application service acting without a device has no session to end.
    if let Ok(device_id) = session.device() {
        ctx.services
            .delete_devices(&session.user_id, Some(&[device_id.to_string()]), None)
            .await?;
    }
    Ok(logout::v3::Response::new())
}

/// `POST /_matrix/client/v3/logout/all`
pub async fn logout_all(ctx: Ctx, _req: logout_all::v3::Request) -> Result<logout_all::v3::Response> {
    ctx.services.delete_devices(ctx.user_id()?, None, None).await?;
    Ok(logout_all::v3::Response::new())
}
