//! Device management.
//!
//! - `GET /_matrix/client/v3/devices`, `GET/PUT/DELETE /_matrix/client/v3/devices/{deviceId}`
//! - `POST /_matrix/client/v3/delete_devices`
//!
//! Spec: client-server-api "Device management" (`data/api/client-server/device_management.yaml`).
//! Deleting devices requires user-interactive authentication with the account's password.

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

/// `PUT /_matrix/client/v3/devices/{deviceId}`
pub async fn update_device(ctx: Ctx, req: update_device::v3::Request) -> Result<update_device::v3::Response> {
    if !ctx
        .services
        .sessions
        .rename_device(ctx.user_id()?, req.device_id.as_str(), req.display_name)
        .await?
    {
        return Err(Error::not_found("Device not found"));
    }
    Ok(update_device::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`
pub async fn delete_device(ctx: Ctx, req: delete_device::v3::Request) -> Result<delete_device::v3::Response> {
    let user_id = &ctx.confirm_with_password(req.auth.as_ref()).await?.user_id;
    let services = &ctx.services;
    services
        .delete_devices(user_id, Some(&[req.device_id.to_string()]), None)
        .await?;
    Ok(delete_device::v3::Response::new())
}

/// `POST /_matrix/client/v3/delete_devices`
pub async fn delete_devices(ctx: Ctx, req: delete_devices::v3::Request) -> Result<delete_devices::v3::Response> {
    let user_id = &ctx.confirm_with_password(req.auth.as_ref()).await?.user_id;
    let services = &ctx.services;
    let ids: Vec<String> = req.devices.iter().map(|d| d.to_string()).collect();
    services.delete_devices(user_id, Some(&ids), None).await?;
    Ok(delete_devices::v3::Response::new())
}
