//! Device management.
//!
//! - `GET /_matrix/client/v3/devices`, `GET/PUT/DELETE /_matrix/client/v3/devices/{deviceId}`
//! - `POST /_matrix/client/v3/delete_devices`
//!
//! Spec: client-server-api "Device management" (`data/api/client-server/device_management.yaml`).
//! Deleting devices requires user-interactive authentication with the account's password,
//! except for an application service with MSC4190 (`io.element.msc4190`), which also creates
//! devices of its users with `PUT` (201).

use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::client::device::{Device, delete_device, delete_devices, get_device, get_devices, update_device},
};

use crate::{Error, Result, api::extract::Ctx, services::sessions::DeviceInfo};

fn to_ruma(info: DeviceInfo) -> Device {
    let mut device = Device::new(info.device_id);
    device.display_name = info.display_name;
    device.last_seen_ip = info.last_seen_ip;
    device.last_seen_ts = info.last_seen_ms.and_then(UInt::new).map(MilliSecondsSinceUnixEpoch);
    device
}

/// `GET /_matrix/client/v3/devices`
pub async fn get_devices(ctx: Ctx, _req: get_devices::v3::Request) -> Result<get_devices::v3::Response> {
    let devices = ctx
        .services
        .sessions
        .list_devices(ctx.user_id()?)?
        .into_iter()
        .map(to_ruma)
        .collect();
    Ok(get_devices::v3::Response::new(devices))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`
pub async fn get_device(ctx: Ctx, req: get_device::v3::Request) -> Result<get_device::v3::Response> {
    let info = ctx
        .services
        .sessions
        .device(ctx.user_id()?, req.device_id.as_str())?
        .ok_or_else(|| Error::not_found("Device not found"))?;
    Ok(get_device::v3::Response::new(to_ruma(info)))
}

/// Whether `PUT /devices/{deviceId}` created the device (MSC4190: 201) or renamed it (200).
pub struct Updated(bool);

/// The answer to `PUT /devices/{deviceId}`: `{}` with 201 for a new device, else 200.
pub fn updated_answer(updated: Updated) -> actix_web::HttpResponse {
    let status = if updated.0 {
        actix_web::http::StatusCode::CREATED
    } else {
        actix_web::http::StatusCode::OK
    };
    actix_web::HttpResponse::build(status)
        .content_type("application/json")
        .body("{}")
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`. An application service with MSC4190 creates
/// the device when it does not exist.
pub async fn update_device(ctx: Ctx, req: update_device::v3::Request) -> Result<Updated> {
    let services = &ctx.services;
    let session = ctx.session()?;
    let user_id = &session.user_id;
    if services
        .sessions
        .rename_device(user_id, req.device_id.as_str(), req.display_name.clone())
        .await?
    {
        return Ok(Updated(false));
    }
    if !session.appservice.as_ref().is_some_and(|s| s.msc4190) {
        return Err(Error::not_found("Device not found"));
    }
    let created = services
        .sessions
        .create_device(user_id, req.device_id.as_str(), req.display_name)
        .await?;
    if created {
        services
            .keys
            .device_added(&services.rooms, user_id, req.device_id.as_str())
            .await?;
    }
    Ok(Updated(created))
}

/// The user whose devices a request deletes: an application service with MSC4190 needs no
/// user-interactive auth; anyone else proves their password.
async fn deleting_user<'a>(ctx: &'a Ctx, auth: Option<&ruma::api::client::uiaa::AuthData>) -> Result<&'a ruma::UserId> {
    let session = ctx.session()?;
    if session.appservice.as_ref().is_some_and(|s| s.msc4190) {
        return Ok(&session.user_id);
    }
    Ok(&ctx.confirm_with_password(auth).await?.user_id)
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`
pub async fn delete_device(ctx: Ctx, req: delete_device::v3::Request) -> Result<delete_device::v3::Response> {
    let user_id = deleting_user(&ctx, req.auth.as_ref()).await?;
    let services = &ctx.services;
    services
        .delete_devices(user_id, Some(&[req.device_id.to_string()]), None)
        .await?;
    Ok(delete_device::v3::Response::new())
}

/// `POST /_matrix/client/v3/delete_devices`
pub async fn delete_devices(ctx: Ctx, req: delete_devices::v3::Request) -> Result<delete_devices::v3::Response> {
    let user_id = deleting_user(&ctx, req.auth.as_ref()).await?;
    let services = &ctx.services;
    let ids: Vec<String> = req.devices.iter().map(|d| d.to_string()).collect();
    services.delete_devices(user_id, Some(&ids), None).await?;
    Ok(delete_devices::v3::Response::new())
}
