//! End-to-end encryption keys.
//!
//! - `POST /_matrix/client/v3/keys/upload`
//! - `POST /_matrix/client/v3/keys/query`
//! - `POST /_matrix/client/v3/keys/claim`
//!
//!   (other servers' users: `keys/query` answers from the cached device list of a user sharing
//!   a room with ours, else asks their servers over federation when it is on, one request per
//!   server, all within the request's `timeout` (10 s by default); a server that fails or does
//!   not answer in time is named under `failures`; `keys/claim` asks their servers the same
//!   way, every time: one-time keys are not cached)
//! - `GET /_matrix/client/v3/keys/changes`
//! - `POST /_matrix/client/v3/keys/device_signing/upload` (user-interactive auth to replace a
//!   master key)
//! - `POST /_matrix/client/v3/keys/signatures/upload`
//!
//! Spec: client-server-api "End-to-End Encryption" (`modules/end_to_end_encryption.md`,
//! `data/api/client-server/keys.yaml`, `cross_signing.yaml`).

use std::collections::BTreeMap;

use ruma::{
    OwnedDeviceId, OwnedOneTimeKeyId, UInt,
    api::client::keys::{claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys},
    serde::Raw,
};
use serde_json::Value;

use crate::{Error, Result, api::extract::Ctx};

/// One-time keys by user, device and key id, as `keys/claim` answers them.
pub(crate) type OneTimeKeys<T> =
    BTreeMap<ruma::OwnedUserId, BTreeMap<OwnedDeviceId, BTreeMap<OwnedOneTimeKeyId, Raw<T>>>>;

/// Claimed one-time keys in the shape of a `keys/claim` answer (client and federation).
pub(crate) fn claimed_map<T>(claimed: crate::services::keys::device_keys::Claimed) -> Result<OneTimeKeys<T>> {
    let mut keys = BTreeMap::new();
    for (user, devices) in claimed {
        let mut by_device = BTreeMap::new();
        for (device, found) in devices {
            let mut by_id = BTreeMap::new();
            for (key_id, key) in found {
                let key_id = OwnedOneTimeKeyId::try_from(key_id.as_str())
                    .map_err(|e| Error::internal(format!("stored key id {key_id}: {e}")))?;
                by_id.insert(key_id, raw(&key)?);
            }
            by_device.insert(OwnedDeviceId::from(device), by_id);
        }
        keys.insert(user, by_device);
    }
    Ok(keys)
}

pub(crate) fn raw<T>(value: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(value).map_err(|e| Error::internal(e.to_string()))?,
    ))
}

/// Splits `users` into ours (and everyone when federation is off: the keys service then
/// reports the others as failures) and those of each other server.
fn split_remote<T>(
    ctx: &Ctx,
    users: BTreeMap<ruma::OwnedUserId, T>,
) -> (
    BTreeMap<ruma::OwnedUserId, T>,
    BTreeMap<ruma::OwnedServerName, BTreeMap<ruma::OwnedUserId, T>>,
) {
    let mut local = BTreeMap::new();
    let mut remote: BTreeMap<ruma::OwnedServerName, BTreeMap<_, _>> = BTreeMap::new();
    for (user, value) in users {
        if ctx.services.federation.enabled && user.server_name() != ctx.services.config.server_name {
            remote
                .entry(user.server_name().to_owned())
                .or_default()
                .insert(user, value);
        } else {
            local.insert(user, value);
        }
    }
    (local, remote)
}

/// A `failures` entry for a server that could not be asked.
fn failure(error: &Error) -> Value {
    serde_json::json!({"status": 503, "message": error.to_string()})
}

/// `POST /_matrix/client/v3/keys/upload`
pub async fn upload_keys(ctx: Ctx, req: upload_keys::v3::Request) -> Result<upload_keys::v3::Response> {
    let session = ctx.session()?;
    let otks: Vec<(String, &serde_json::value::RawValue)> = req
        .one_time_keys
        .iter()
        .map(|(id, k)| (id.to_string(), k.json()))
        .collect();
    let fallbacks: Vec<(String, &serde_json::value::RawValue)> = req
        .fallback_keys
        .iter()
        .map(|(id, k)| (id.to_string(), k.json()))
        .collect();
    let counts = ctx
        .services
        .keys
        .upload(
            &ctx.services.rooms,
            (&session.user_id, session.device()?.as_str()),
            req.device_keys.as_ref().map(Raw::json),
            &otks,
            &fallbacks,
        )
        .await?;
    let counts = counts
        .into_iter()
        .map(|(a, n)| (a.as_str().into(), UInt::try_from(n).unwrap_or(UInt::MAX)))
        .collect();
    Ok(upload_keys::v3::Response::new(counts))
}

/// `POST /_matrix/client/v3/keys/query`
pub async fn get_keys(ctx: Ctx, req: get_keys::v3::Request) -> Result<get_keys::v3::Response> {
    let user_id = ctx.user_id()?;
    let users = req
        .device_keys
        .iter()
        .map(|(u, devices)| (u.clone(), devices.iter().map(|d| d.to_string()).collect()))
        .collect();
    let sessions = &ctx.services.sessions;
    let display_name = |user: &ruma::UserId, device: &str| {
        sessions
            .device(user, device)
            .ok()
            .flatten()
            .and_then(|d| d.display_name)
    };
    let (users, remote) = split_remote(&ctx, users);
    let found = ctx.services.keys.query(user_id, &users, &display_name)?;
    let mut response = get_keys::v3::Response::new();
    response.failures = found.failures;
    if !remote.is_empty() {
        let timeout = req
            .timeout
            .unwrap_or(crate::services::federation::device_lists::DEFAULT_QUERY_TIMEOUT)
            .min(std::time::Duration::from_secs(60));
        let answer = ctx
            .services
            .federation
            .query_remote_keys(&ctx.services, remote, timeout)
            .await;
        response.failures.extend(answer.failures);
        for (user, devices) in answer.device_keys {
            let mut out = BTreeMap::new();
            for (device, keys) in devices {
                out.insert(OwnedDeviceId::from(device), raw(&keys)?);
            }
            response.device_keys.insert(user, out);
        }
        for (from, to) in [
            (answer.master_keys, &mut response.master_keys),
            (answer.self_signing_keys, &mut response.self_signing_keys),
        ] {
            for (user, key) in from {
                to.insert(user, raw(&key)?);
            }
        }
    }
    for (user, devices) in found.device_keys {
        let mut out = BTreeMap::new();
        for (device, keys) in devices {
            out.insert(OwnedDeviceId::from(device), raw(&keys)?);
        }
        response.device_keys.insert(user, out);
    }
    for (from, to) in [
        (found.master_keys, &mut response.master_keys),
        (found.self_signing_keys, &mut response.self_signing_keys),
        (found.user_signing_keys, &mut response.user_signing_keys),
    ] {
        for (user, key) in from {
            to.insert(user, raw(&key)?);
        }
    }
    Ok(response)
}

/// `POST /_matrix/client/v3/keys/claim`
pub async fn claim_keys(ctx: Ctx, req: claim_keys::v3::Request) -> Result<claim_keys::v3::Response> {
    ctx.user_id()?;
    let wanted = req
        .one_time_keys
        .iter()
        .map(|(u, devices)| {
            let devices = devices
                .iter()
                .map(|(d, a)| (d.to_string(), a.as_str().to_owned()))
                .collect();
            (u.clone(), devices)
        })
        .collect();
    let (wanted, remote) = split_remote(&ctx, wanted);
    let (claimed, mut failures) = ctx.services.keys.claim(&wanted).await?;
    // Every other server at once, each within the request's timeout.
    let timeout = req
        .timeout
        .unwrap_or(crate::services::federation::device_lists::DEFAULT_QUERY_TIMEOUT)
        .min(std::time::Duration::from_secs(60));
    let asks = remote.into_iter().map(|(server, wanted)| {
        let mut claims = BTreeMap::new();
        for (user, devices) in wanted {
            let mut by_device = BTreeMap::new();
            for (device, algorithm) in devices {
                by_device.insert(OwnedDeviceId::from(device), algorithm.as_str().into());
            }
            claims.insert(user, by_device);
        }
        let federation = &ctx.services.federation;
        async move {
            let answer = tokio::time::timeout(timeout, federation.remote_claim_keys(&server, claims)).await;
            (server, answer)
        }
    });
    let mut from_remote = BTreeMap::new();
    for (server, answer) in futures_util::future::join_all(asks).await {
        match answer {
            Ok(Ok(keys)) => from_remote.extend(keys),
            Ok(Err(e)) => {
                failures.insert(server.to_string(), failure(&e));
            }
            Err(_) => {
                failures.insert(
                    server.to_string(),
                    serde_json::json!({"status": 504, "message": "The server did not answer in time"}),
                );
            }
        }
    }
    let mut keys = claimed_map(claimed)?;
    keys.extend(from_remote);
    let mut response = claim_keys::v3::Response::new(keys);
    response.failures = failures;
    Ok(response)
}

/// `GET /_matrix/client/v3/keys/changes`
pub async fn get_key_changes(ctx: Ctx, req: get_key_changes::v3::Request) -> Result<get_key_changes::v3::Response> {
    let user_id = ctx.user_id()?;
    let services = &ctx.services;
    let from = services.rooms.sync_point("from", &req.from)?;
    let up_to = services.rooms.sync_point("to", &req.to)?.position;
    let (changed, left) = services
        .keys
        .device_list_changes(&services.rooms, user_id, from.position, up_to)?;
    Ok(get_key_changes::v3::Response::new(changed, left))
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`
pub async fn upload_signing_keys(
    ctx: Ctx,
    req: upload_signing_keys::v3::Request,
) -> Result<upload_signing_keys::v3::Response> {
    let services = &ctx.services;
    let user_id = ctx.user_id()?;
    let master = req.master_key.as_ref().map(Raw::json);
    // MSC4190: an application service replaces its users' keys without user-interactive auth.
    let msc4190 = ctx.session()?.appservice.as_ref().is_some_and(|s| s.msc4190);
    if !msc4190 && services.keys.replaces_master_key(user_id, master)? {
        ctx.confirm_with_password(req.auth.as_ref()).await?;
    }
    services
        .keys
        .upload_signing_keys(
            &services.rooms,
            user_id,
            master,
            req.self_signing_key.as_ref().map(Raw::json),
            req.user_signing_key.as_ref().map(Raw::json),
        )
        .await?;
    Ok(upload_signing_keys::v3::Response::new())
}

/// `POST /_matrix/client/v3/keys/signatures/upload`
pub async fn upload_signatures(
    ctx: Ctx,
    req: upload_signatures::v3::Request,
) -> Result<upload_signatures::v3::Response> {
    let user_id = ctx.user_id()?;
    let signed = req
        .signed_keys
        .iter()
        .flat_map(|(user, keys)| {
            keys.iter()
                .map(move |(id, object)| (user.clone(), id.to_owned(), object.to_owned()))
        })
        .collect();
    let failures = ctx
        .services
        .keys
        .upload_signatures(&ctx.services.rooms, user_id, signed)
        .await?;
    let mut response = upload_signatures::v3::Response::new();
    for (user, by_key) in failures {
        let mut out = BTreeMap::new();
        for (key, failure) in by_key {
            let failure = serde_json::from_value(failure).map_err(|e| Error::internal(e.to_string()))?;
            out.insert(key, failure);
        }
        response.failures.insert(user, out);
    }
    Ok(response)
}
