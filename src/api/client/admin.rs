//! The spec's one admin endpoint for clients.
//!
//! - `GET /_matrix/client/v3/admin/whois/{userId}`
//!
//! Spec: client-server-api "Server Administration" (`data/api/client-server/admin.yaml`).
//! A user may ask about themselves; server admins about anyone.

use std::collections::BTreeMap;

use ruma::{MilliSecondsSinceUnixEpoch, UInt, api::client::admin::get_user_info};

use crate::{Error, Result, api::extract::Ctx};

/// `GET /_matrix/client/v3/admin/whois/{userId}`: the user's devices, each with its last
/// connection (address and time).
pub async fn get_user_info(ctx: Ctx, req: get_user_info::v3::Request) -> Result<get_user_info::v3::Response> {
    let services = &ctx.services;
    let requester = ctx.user_id()?;
    if requester != req.user_id && !services.accounts.get(requester)?.is_some_and(|a| a.admin) {
        return Err(Error::forbidden("Only server admins may look up other users"));
    }
    if services.accounts.get(&req.user_id)?.is_none() {
        return Err(Error::not_found(format!("No such user {}", req.user_id)));
    }
    let mut devices = BTreeMap::new();
    for device in services.sessions.list_devices(&req.user_id)? {
        let mut connection = get_user_info::v3::ConnectionInfo::new();
        connection.ip = device.last_seen_ip;
        connection.last_seen = device.last_seen_ms.and_then(UInt::new).map(MilliSecondsSinceUnixEpoch);
        let mut session = get_user_info::v3::SessionInfo::new();
        session.connections.push(connection);
        let mut info = get_user_info::v3::DeviceInfo::new();
        info.sessions.push(session);
        devices.insert(device.device_id.to_string(), info);
    }
    let mut response = get_user_info::v3::Response::new();
    response.user_id = Some(req.user_id);
    response.devices = devices;
    Ok(response)
}
