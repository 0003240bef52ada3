//! Third-party identifiers (email addresses, phone numbers) of an account.
//!
//! - `GET /_matrix/client/v3/account/3pid`
//! - `POST /_matrix/client/v3/account/3pid/email/requestToken` and `/msisdn/requestToken`
//! - `POST /_matrix/client/v3/account/3pid/add`, `/bind`, `/delete`, `/unbind`
//!
//! Spec: client-server-api "Adding Account Administrative Contact Information"
//! (`data/api/client-server/administrative_contact.yaml`). Hearth sends no email or SMS and
//! talks to no identity server, so no account has a third-party identifier: the list is
//! empty, validation cannot start (400 `M_THREEPID_MEDIUM_NOT_SUPPORTED`), no validation
//! session exists to add or bind (400 `M_THREEPID_AUTH_FAILED`), and removal reports
//! `no-support` for the identity server, as Synapse does without one. `capabilities` says
//! `m.3pid_changes` is off.

use ruma::api::{
    client::account::{
        ThirdPartyIdRemovalStatus, add_3pid, bind_3pid, delete_3pid, get_3pids,
        request_3pid_management_token_via_email, request_3pid_management_token_via_msisdn, unbind_3pid,
    },
    error::ErrorKind,
};

use crate::{Error, Result, api::extract::Ctx};

// Every route here requires an access token (the route table takes it from ruma's metadata).

fn not_supported(medium: &str) -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        ErrorKind::ThreepidMediumNotSupported,
        format!("This server does not verify {medium}"),
    )
}

fn no_session() -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        ErrorKind::ThreepidAuthFailed,
        "No validated third-party identifier session: this server does not verify email addresses or phone numbers",
    )
}

/// `GET /_matrix/client/v3/account/3pid`
pub async fn get_3pids(_ctx: Ctx, _req: get_3pids::v3::Request) -> Result<get_3pids::v3::Response> {
    Ok(get_3pids::v3::Response::new(Vec::new()))
}

/// `POST /_matrix/client/v3/account/3pid/email/requestToken`
pub async fn request_email_token(
    _ctx: Ctx,
    _req: request_3pid_management_token_via_email::v3::Request,
) -> Result<request_3pid_management_token_via_email::v3::Response> {
    Err(not_supported("email addresses"))
}

/// `POST /_matrix/client/v3/account/3pid/msisdn/requestToken`
pub async fn request_msisdn_token(
    _ctx: Ctx,
    _req: request_3pid_management_token_via_msisdn::v3::Request,
) -> Result<request_3pid_management_token_via_msisdn::v3::Response> {
    Err(not_supported("phone numbers"))
}

/// `POST /_matrix/client/v3/account/3pid/add`
pub async fn add_3pid(_ctx: Ctx, _req: add_3pid::v3::Request) -> Result<add_3pid::v3::Response> {
    Err(no_session())
}

/// `POST /_matrix/client/v3/account/3pid/bind`
pub async fn bind_3pid(_ctx: Ctx, _req: bind_3pid::v3::Request) -> Result<bind_3pid::v3::Response> {
    Err(no_session())
}

/// `POST /_matrix/client/v3/account/3pid/delete`
pub async fn delete_3pid(_ctx: Ctx, _req: delete_3pid::v3::Request) -> Result<delete_3pid::v3::Response> {
    Ok(delete_3pid::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}

/// `POST /_matrix/client/v3/account/3pid/unbind`
pub async fn unbind_3pid(_ctx: Ctx, _req: unbind_3pid::v3::Request) -> Result<unbind_3pid::v3::Response> {
    Ok(unbind_3pid::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport))
}
