//! Account registration.
//!
//! - `POST /_matrix/client/v3/register`
//! - `GET /_matrix/client/v3/register/available`
//! - `GET /_matrix/client/v1/register/m.login.registration_token/validity`
//!
//! Spec: client-server-api "Account registration" (`data/api/client-server/registration.yaml`).

use ruma::api::{
    client::account::{check_registration_token_validity, get_username_availability, register},
    error::ErrorKind,
};

use crate::{Error, Result, api::extract::Ctx, config::RegistrationMode, services::appservice, util};

/// `POST /_matrix/client/v3/register`
pub async fn register(ctx: Ctx, req: register::v3::Request) -> Result<register::v3::Response> {
    let services = &ctx.services;
    if req.kind == register::RegistrationKind::Guest {
        return Err(Error::new(
            http::StatusCode::FORBIDDEN,
            ErrorKind::GuestAccessForbidden,
            "Guest access is disabled",
        ));
    }
    if req.login_type == Some(register::LoginType::ApplicationService) {
        return register_appservice_user(&ctx, req).await;
    }
    let flows = services.registration.flows()?;
    // Fail fast on a bad, taken or reserved name, before the client goes through the stages.
    let requested = req
        .username
        .as_deref()
        .map(|name| appservice::client_server::check_available(services, name))
        .transpose()?;
    let completed = services
        .uiaa
        .authenticate(services, flows, req.auth.as_ref(), None)
        .await?;
    let user_id = match requested {
        Some(user_id) => user_id,
        None => appservice::client_server::check_available(
            services,
            &format!("u{}", util::random_string(11).to_lowercase()),
        )?,
    };

    let mut batch = services.new_account_batch(&user_id)?;
    let _token_use = match &completed.registration_token {
        Some(token) => Some(services.registration.queue_use(&mut batch, token).await?),
        None => None,
    };
    let grant = if req.inhibit_login {
        None
    } else {
        Some(services.sessions.queue_grant(
            &mut batch,
            &user_id,
            req.device_id,
            req.initial_device_display_name,
            req.refresh_token,
            ctx.ip.clone(),
        )?)
    };
    services
        .accounts
        .create(&user_id, req.password.as_deref(), false, batch)
        .await?;
    tracing::info!(%user_id, "registered a new account");
    if let Err(e) = services
        .user_directory
        .account_created(&services.profile, &services.rooms, &user_id)
    {
        tracing::warn!(%user_id, error = %e, "new account not added to the user directory");
    }

    let mut response = register::v3::Response::new(user_id);
    if let Some(grant) = grant {
        response.access_token = Some(grant.access_token);
        response.device_id = Some(grant.device_id);
        response.refresh_token = grant.refresh_token;
        response.expires_in = grant.expires_in;
    }
    Ok(response)
}

/// `POST /register` with `type: m.login.application_service`: the service's `as_token` stands
/// in for user-interactive auth; the user must be in the service's namespace. Registration
/// being closed does not apply (spec "Server admin style permissions").
async fn register_appservice_user(ctx: &Ctx, req: register::v3::Request) -> Result<register::v3::Response> {
    let services = &ctx.services;
    let Some(service) = ctx.session.as_ref().and_then(|s| s.appservice.as_ref()) else {
        return Err(if ctx.token_sent {
            Error::unknown_token(false)
        } else {
            Error::missing_token()
        });
    };
    let user_id = appservice::client_server::user_to_register(services, service, req.username.as_deref())?;
    let mut batch = services.new_account_batch(&user_id)?;
    let grant = if req.inhibit_login {
        None
    } else {
        Some(services.sessions.queue_grant(
            &mut batch,
            &user_id,
            req.device_id,
            req.initial_device_display_name,
            req.refresh_token,
            ctx.ip.clone(),
        )?)
    };
    services.accounts.create(&user_id, None, false, batch).await?;
    tracing::info!(%user_id, appservice = service.id(), "registered an application service user");
    if let Err(e) = services
        .user_directory
        .account_created(&services.profile, &services.rooms, &user_id)
    {
        tracing::warn!(%user_id, error = %e, "new account not added to the user directory");
    }
    let mut response = register::v3::Response::new(user_id);
    if let Some(grant) = grant {
        response.access_token = Some(grant.access_token);
        response.device_id = Some(grant.device_id);
        response.refresh_token = grant.refresh_token;
        response.expires_in = grant.expires_in;
    }
    Ok(response)
}

/// `GET /_matrix/client/v3/register/available`
pub async fn get_username_availability(
    ctx: Ctx,
    req: get_username_availability::v3::Request,
) -> Result<get_username_availability::v3::Response> {
    appservice::client_server::check_available(&ctx.services, &req.username)?;
    Ok(get_username_availability::v3::Response::new(true))
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`
pub async fn check_registration_token_validity(
    ctx: Ctx,
    req: check_registration_token_validity::v1::Request,
) -> Result<check_registration_token_validity::v1::Response> {
    if ctx.services.registration.mode() != RegistrationMode::Token {
        return Err(Error::forbidden("Registration tokens are not enabled on this server"));
    }
    Ok(check_registration_token_validity::v1::Response::new(
        ctx.services.registration.token_is_usable(&req.token)?,
    ))
}
