//! End-to-end encryption for other servers (server-server-api "End-to-End Encryption" and
//! "Device Management"): `POST /_matrix/federation/v1/user/keys/query`,
//! `POST /_matrix/federation/v1/user/keys/claim` and
//! `GET /_matrix/federation/v1/user/devices/{userId}`, which a server calls when one of its
//! users encrypts for ours (Synapse fetches the device list of every remote user it shares an
//! encrypted room with). Only our users are answered (others are left out; `user/devices` of
//! another server's user is 400 `M_INVALID_PARAM`, of an unknown one 404); user-signing keys
//! never leave the server, and device display names neither (Synapse's default,
//! `allow_device_name_lookup_over_federation: false`).

use std::collections::BTreeMap;

use ruma::{
    OwnedDeviceId, UInt,
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
    },
};
use serde_json::Value;

use crate::{
    Error, Result,
    api::{client::keys::raw, extract::Ctx},
};

fn is_ours(ctx: &Ctx, user_id: &ruma::UserId) -> bool {
    user_id.server_name() == ctx.services.config.server_name
}

/// `POST /_matrix/federation/v1/user/keys/query`
pub async fn get_keys(ctx: Ctx, req: get_keys::v1::Request) -> Result<get_keys::v1::Response> {
    let users = req
        .device_keys
        .iter()
        .filter(|(user, _)| is_ours(&ctx, user))
        .map(|(u, devices)| (u.clone(), devices.iter().map(|d| d.to_string()).collect()))
        .collect::<BTreeMap<_, Vec<String>>>();
    // The requester is no user of ours: user-signing keys are never included.
    let Some(anyone) = users.keys().next().cloned() else {
        return Ok(get_keys::v1::Response::new(BTreeMap::new()));
    };
    let mut found = ctx.services.keys.query(&anyone, &users, &|_, _| None)?;
    found.user_signing_keys.clear();
    let mut device_keys = BTreeMap::new();
    for (user, devices) in found.device_keys {
        let mut out = BTreeMap::new();
        for (device, keys) in devices {
            out.insert(OwnedDeviceId::from(device), raw(&keys)?);
        }
        device_keys.insert(user, out);
    }
    let convert = |from: BTreeMap<ruma::OwnedUserId, Value>| -> Result<BTreeMap<_, _>> {
        from.into_iter().map(|(u, k)| Ok((u, raw(&k)?))).collect()
    };
    let mut response = get_keys::v1::Response::new(device_keys);
    response.master_keys = convert(found.master_keys)?;
    response.self_signing_keys = convert(found.self_signing_keys)?;
    Ok(response)
}

/// `POST /_matrix/federation/v1/user/keys/claim`
pub async fn claim_keys(ctx: Ctx, req: claim_keys::v1::Request) -> Result<claim_keys::v1::Response> {
    let wanted = req
        .one_time_keys
        .iter()
        .filter(|(user, _)| is_ours(&ctx, user))
        .map(|(u, devices)| {
            let devices = devices
                .iter()
                .map(|(d, a)| (d.to_string(), a.as_str().to_owned()))
                .collect();
            (u.clone(), devices)
        })
        .collect();
    let (claimed, _) = ctx.services.keys.claim(&wanted).await?;
    let keys = crate::api::client::keys::claimed_map(claimed)?;
    Ok(claim_keys::v1::Response::new(keys))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`: the user's devices with their keys.
/// `stream_id` is that of the last `m.device_list_update` sent about the user (0 before any),
/// so the asking server can chain the next update on it.
pub async fn get_devices(ctx: Ctx, req: get_devices::v1::Request) -> Result<get_devices::v1::Response> {
    let user_id = &req.user_id;
    if !is_ours(&ctx, user_id) {
        return Err(Error::invalid_param("The user is not on this server"));
    }
    if ctx.services.accounts.get(user_id)?.is_none() {
        return Err(Error::not_found("Unknown user"));
    }
    let users = BTreeMap::from([(user_id.clone(), Vec::new())]);
    let mut found = ctx.services.keys.query(user_id, &users, &|_, _| None)?;
    let mut keys = found.device_keys.remove(user_id).unwrap_or_default();
    let stream_id = ctx.services.keys.device_list_stream_id(user_id)?;
    let mut response = get_devices::v1::Response::new(user_id.clone(), UInt::new_saturating(stream_id));
    for device in ctx.services.sessions.list_devices(user_id)? {
        // A device without uploaded keys cannot be encrypted for: left out, as Synapse does.
        if let Some(device_keys) = keys.remove(device.device_id.as_str()) {
            response
                .devices
                .push(get_devices::v1::UserDevice::new(device.device_id, raw(&device_keys)?));
        }
    }
    response.master_key = found.master_keys.remove(user_id).map(|k| raw(&k)).transpose()?;
    response.self_signing_key = found.self_signing_keys.remove(user_id).map(|k| raw(&k)).transpose()?;
    Ok(response)
}
