//! What application services may do on the client-server API (the spec's "Client-Server API
//! Extensions" of the Application Service API, MSC3202 device masquerading): who a request
//! made with an `as_token` acts as, registering users of the service's namespace, and the
//! exclusivity of namespaces against everyone else.
//!
//! A request with the `as_token` acts as the service's sender, or as the `user_id` it names
//! when that user is in the service's users namespace (and registered); `device_id` (or
//! MSC3202's `org.matrix.msc3202.device_id`) picks one of that user's existing devices. Without
//! a device the request has none: operations that need one (uploading keys) are refused. The
//! sender's account is created the first time the service uses it, as Synapse creates it at
//! start.

use std::sync::Arc;

use http::StatusCode;
use ruma::{OwnedDeviceId, OwnedUserId, RoomAliasId, UserId, api::error::ErrorKind};

use super::Registered;
use crate::{Error, Result, services::Services, services::sessions::Session};

/// The device id a request of a service carries when it names no device. No device of a user
/// can have it: generated ids are upper-case letters, and clients cannot choose a colon-led
/// id through a service's masquerading (only existing devices can be named).
const NO_DEVICE: &str = ":appservice";

/// 400 `M_EXCLUSIVE`.
pub fn exclusive(message: impl Into<String>) -> Error {
    Error::new(StatusCode::BAD_REQUEST, ErrorKind::Exclusive, message)
}

/// Who a request made with `service`'s token acts as: `user_id` and `device_id` are the query
/// parameters of the same names, when given.
pub async fn authenticate(
    services: &Services,
    service: &Arc<Registered>,
    user_id: Option<&str>,
    device_id: Option<&str>,
) -> Result<Session> {
    let user_id: OwnedUserId = match user_id {
        None => service.sender.clone(),
        Some(text) => {
            let user_id = UserId::parse(text).map_err(|e| Error::invalid_param(format!("Invalid user_id: {e}")))?;
            if user_id.server_name() != services.config.server_name || !service.is_user_in_namespace(&user_id) {
                return Err(Error::forbidden(format!(
                    "Application service cannot masquerade as this user ({user_id})"
                )));
            }
            user_id
        }
    };
    if user_id == service.sender {
        ensure_sender(services, service).await?;
    } else if services.accounts.get(&user_id)?.is_none() {
        return Err(Error::forbidden(format!(
            "Application service has not registered this user ({user_id})"
        )));
    }
    let device_id = match device_id {
        None => None,
        Some(id) => {
            if services.sessions.device(&user_id, id)?.is_none() {
                return Err(Error::new(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::UnknownDevice,
                    format!("Application service trying to use a device that doesn't exist ('{id}' for {user_id})"),
                ));
            }
            Some(OwnedDeviceId::from(id))
        }
    };
    Ok(Session {
        user_id,
        deviceless: device_id.is_none(),
        device_id: device_id.unwrap_or_else(|| OwnedDeviceId::from(NO_DEVICE)),
        appservice: Some(Arc::clone(service)),
    })
}

/// Creates the service's sender account when it does not exist yet.
async fn ensure_sender(services: &Services, service: &Registered) -> Result<()> {
    if services.accounts.get(&service.sender)?.is_some() {
        return Ok(());
    }
    create_user(services, &service.sender).await
}

/// Creates a passwordless account for a service; one created concurrently is no error.
pub async fn create_user(services: &Services, user_id: &UserId) -> Result<()> {
    let batch = services.new_account_batch(user_id)?;
    match services.accounts.create(user_id, None, false, batch).await {
        Ok(()) => {
            tracing::info!(%user_id, "created an application service user");
            if let Err(e) = services
                .user_directory
                .account_created(&services.profile, &services.rooms, user_id)
            {
                tracing::warn!(%user_id, error = %e, "new account not added to the user directory");
            }
            Ok(())
        }
        Err(e) if e.errcode() == "M_USER_IN_USE" => Ok(()),
        Err(e) => Err(e),
    }
}

/// The user id `service` asks to register (`/register` with `m.login.application_service`):
/// a localpart or a full id of this server, in its users namespace (400 `M_EXCLUSIVE` outside
/// it, as Synapse answers).
pub fn user_to_register(services: &Services, service: &Registered, username: Option<&str>) -> Result<OwnedUserId> {
    let username = username.ok_or_else(|| Error::invalid_username("An application service must name the user"))?;
    let text = if username.starts_with('@') {
        username.to_owned()
    } else {
        format!("@{username}:{}", services.config.server_name)
    };
    let user_id = UserId::parse(&text)
        .and_then(|u| u.validate_strict().map(|()| u))
        .map_err(|e| Error::invalid_username(format!("Invalid user ID: {e}")))?;
    if user_id.server_name() != services.config.server_name {
        return Err(Error::invalid_username("User ID is not of this server"));
    }
    if !service.is_user_in_namespace(&user_id) {
        return Err(exclusive("Invalid user localpart for this application service."));
    }
    check_user_not_exclusive(services, &user_id, Some(service))?;
    Ok(user_id)
}

/// 400 `M_EXCLUSIVE` when a service other than `allowed` holds `user_id` exclusively; for
/// every way an account is created (registration, the admin API and CLI, OAuth).
pub fn check_user_not_exclusive(services: &Services, user_id: &UserId, allowed: Option<&Registered>) -> Result<()> {
    match services.appservices.exclusive_owner_of_user(user_id) {
        Some(owner) if allowed.is_none_or(|a| a.id() != owner.id()) => {
            Err(exclusive("This user ID is reserved by an application service."))
        }
        _ => Ok(()),
    }
}

/// 400 `M_EXCLUSIVE` unless `alias` is in `service`'s aliases namespace: a service manages
/// the aliases of its namespace only (as Synapse).
pub fn check_alias_of_service(service: &Registered, alias: &RoomAliasId) -> Result<()> {
    if service.is_alias_in_namespace(alias) {
        Ok(())
    } else {
        Err(exclusive(
            "This application service has not reserved this kind of alias.",
        ))
    }
}

/// 400 `M_EXCLUSIVE` when a service other than the requester's holds `alias` exclusively.
pub fn check_alias_not_exclusive(services: &Services, alias: &RoomAliasId, session: Option<&Session>) -> Result<()> {
    let requester = session.and_then(|s| s.appservice.as_ref());
    match services.appservices.exclusive_owner_of_alias(alias) {
        Some(owner) if requester.is_none_or(|a| a.id() != owner.id()) => {
            Err(exclusive("This alias is reserved by an application service."))
        }
        _ => Ok(()),
    }
}

/// The user id for a new account named `username` (a localpart or full id) that is free and
/// held exclusively by no application service: `Accounts::check_available` plus
/// 400 `M_EXCLUSIVE`. Every way a person creates an account goes through it.
pub fn check_available(services: &Services, username: &str) -> Result<OwnedUserId> {
    let user_id = services.accounts.user_id_for_new_account(username)?;
    check_user_not_exclusive(services, &user_id, None)?;
    services.accounts.check_available(username)
}

/// Before a local user is declared unknown: when no account has `user_id` and a service's
/// users namespace covers it, the service is asked (spec "Querying": `GET /users/{userId}`);
/// it creates the user before answering 200. `true` when the account exists afterwards.
pub async fn user_exists_asking_services(services: &Services, user_id: &UserId) -> Result<bool> {
    if user_id.server_name() != services.config.server_name {
        return Ok(false);
    }
    if services.accounts.get(user_id)?.is_some() {
        return Ok(true);
    }
    if !services.appservices.query_user(user_id).await {
        return Ok(false);
    }
    Ok(services.accounts.get(user_id)?.is_some())
}

/// The room a local alias points at, asking the services whose aliases namespace covers it
/// when it is unknown (spec "Querying": `GET /rooms/{roomAlias}`, after which the service has
/// created it); the directory's own answer (404 `M_NOT_FOUND`) otherwise.
pub async fn resolve_alias_asking_services(
    services: &Services,
    alias: &RoomAliasId,
) -> Result<(ruma::OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    match services.directory.resolve(alias) {
        Err(e)
            if e.errcode() == "M_NOT_FOUND"
                && alias.server_name() == services.config.server_name
                && services.appservices.query_alias(alias).await =>
        {
            services.directory.resolve(alias)
        }
        other => other,
    }
}
