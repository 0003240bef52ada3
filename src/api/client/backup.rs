//! Server-side key backup.
//!
//! - `POST/GET /_matrix/client/v3/room_keys/version`
//! - `GET/PUT/DELETE /_matrix/client/v3/room_keys/version/{version}`
//! - `GET/PUT/DELETE /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]`
//!
//! Spec: client-server-api "Server-side key backups" (`modules/end_to_end_encryption.md`,
//! `data/api/client-server/key_backup.yaml`).

use std::collections::BTreeMap;

use ruma::{
    OwnedRoomId, UInt,
    api::client::backup::{
        RoomKeyBackup, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
        delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
        get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
        get_latest_backup_info, update_backup_version,
    },
    serde::Raw,
};
use serde_json::value::RawValue;

use crate::{Error, Result, api::extract::Ctx};

fn count(n: u64) -> UInt {
    UInt::try_from(n).unwrap_or(UInt::MAX)
}

/// `POST /_matrix/client/v3/room_keys/version`
pub async fn create_backup_version(
    ctx: Ctx,
    req: create_backup_version::v3::Request,
) -> Result<create_backup_version::v3::Response> {
    let version = ctx
        .services
        .key_backup
        .create_version(ctx.user_id()?, req.algorithm.json())
        .await?;
    Ok(create_backup_version::v3::Response::new(version))
}

/// `GET /_matrix/client/v3/room_keys/version`
pub async fn get_latest_backup_info(
    ctx: Ctx,
    _req: get_latest_backup_info::v3::Request,
) -> Result<get_latest_backup_info::v3::Response> {
    let info = ctx.services.key_backup.version_info(ctx.user_id()?, None)?;
    Ok(get_latest_backup_info::v3::Response::new(
        Raw::from_json(info.algorithm),
        count(info.count),
        info.etag,
        info.version,
    ))
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`
pub async fn get_backup_info(ctx: Ctx, req: get_backup_info::v3::Request) -> Result<get_backup_info::v3::Response> {
    let info = ctx
        .services
        .key_backup
        .version_info(ctx.user_id()?, Some(&req.version))?;
    Ok(get_backup_info::v3::Response::new(
        Raw::from_json(info.algorithm),
        count(info.count),
        info.etag,
        info.version,
    ))
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`
pub async fn update_backup_version(
    ctx: Ctx,
    req: update_backup_version::v3::Request,
) -> Result<update_backup_version::v3::Response> {
    // The body may repeat the version; it must then be the one in the path.
    let body: serde_json::Value =
        serde_json::from_str(req.algorithm.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
    if let Some(v) = body.get("version")
        && v.as_str() != Some(req.version.as_str())
    {
        return Err(Error::invalid_param("The version in the body differs from the path"));
    }
    ctx.services
        .key_backup
        .update_version(ctx.user_id()?, &req.version, req.algorithm.json())
        .await?;
    Ok(update_backup_version::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`
pub async fn delete_backup_version(
    ctx: Ctx,
    req: delete_backup_version::v3::Request,
) -> Result<delete_backup_version::v3::Response> {
    ctx.services
        .key_backup
        .delete_version(ctx.user_id()?, &req.version)
        .await?;
    Ok(delete_backup_version::v3::Response::new())
}

async fn put(ctx: &Ctx, version: &str, keys: Vec<(String, String, Box<RawValue>)>) -> Result<(String, UInt)> {
    let (etag, n) = ctx.services.key_backup.put_keys(ctx.user_id()?, version, keys).await?;
    Ok((etag, count(n)))
}

/// `PUT /_matrix/client/v3/room_keys/keys`
pub async fn add_backup_keys(ctx: Ctx, req: add_backup_keys::v3::Request) -> Result<add_backup_keys::v3::Response> {
    let keys = req
        .rooms
        .iter()
        .flat_map(|(room, backup)| {
            backup
                .sessions
                .iter()
                .map(move |(session, key)| (room.to_string(), session.clone(), key.json().to_owned()))
        })
        .collect();
    let (etag, n) = put(&ctx, &req.version, keys).await?;
    Ok(add_backup_keys::v3::Response::new(etag, n))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn add_backup_keys_for_room(
    ctx: Ctx,
    req: add_backup_keys_for_room::v3::Request,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let keys = req
        .sessions
        .iter()
        .map(|(session, key)| (req.room_id.to_string(), session.clone(), key.json().to_owned()))
        .collect();
    let (etag, n) = put(&ctx, &req.version, keys).await?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, n))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn add_backup_keys_for_session(
    ctx: Ctx,
    req: add_backup_keys_for_session::v3::Request,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let keys = vec![(
        req.room_id.to_string(),
        req.session_id.clone(),
        req.session_data.json().to_owned(),
    )];
    let (etag, n) = put(&ctx, &req.version, keys).await?;
    Ok(add_backup_keys_for_session::v3::Response::new(etag, n))
}

/// `GET /_matrix/client/v3/room_keys/keys`
pub async fn get_backup_keys(ctx: Ctx, req: get_backup_keys::v3::Request) -> Result<get_backup_keys::v3::Response> {
    let keys = ctx.services.key_backup.keys(ctx.user_id()?, &req.version, None, None)?;
    let mut rooms: BTreeMap<OwnedRoomId, BTreeMap<String, _>> = BTreeMap::new();
    for (room, session, key) in keys {
        let room = OwnedRoomId::try_from(room).map_err(|e| Error::internal(e.to_string()))?;
        rooms.entry(room).or_default().insert(session, Raw::from_json(key));
    }
    let rooms = rooms
        .into_iter()
        .map(|(room, sessions)| (room, RoomKeyBackup::new(sessions)))
        .collect();
    Ok(get_backup_keys::v3::Response::new(rooms))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn get_backup_keys_for_room(
    ctx: Ctx,
    req: get_backup_keys_for_room::v3::Request,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let keys = ctx
        .services
        .key_backup
        .keys(ctx.user_id()?, &req.version, Some(req.room_id.as_str()), None)?;
    let sessions = keys
        .into_iter()
        .map(|(_, session, key)| (session, Raw::from_json(key)))
        .collect();
    Ok(get_backup_keys_for_room::v3::Response::new(sessions))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn get_backup_keys_for_session(
    ctx: Ctx,
    req: get_backup_keys_for_session::v3::Request,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let key = ctx
        .services
        .key_backup
        .keys(
            ctx.user_id()?,
            &req.version,
            Some(req.room_id.as_str()),
            Some(&req.session_id),
        )?
        .into_iter()
        .next()
        .ok_or_else(|| Error::not_found("No key for this session"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(Raw::from_json(key.2)))
}

/// `DELETE /_matrix/client/v3/room_keys/keys`
pub async fn delete_backup_keys(
    ctx: Ctx,
    req: delete_backup_keys::v3::Request,
) -> Result<delete_backup_keys::v3::Response> {
    let (etag, n) = ctx
        .services
        .key_backup
        .delete_keys(ctx.user_id()?, &req.version, None, None)
        .await?;
    Ok(delete_backup_keys::v3::Response::new(etag, count(n)))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn delete_backup_keys_for_room(
    ctx: Ctx,
    req: delete_backup_keys_for_room::v3::Request,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let (etag, n) = ctx
        .services
        .key_backup
        .delete_keys(ctx.user_id()?, &req.version, Some(req.room_id.as_str()), None)
        .await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, count(n)))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn delete_backup_keys_for_session(
    ctx: Ctx,
    req: delete_backup_keys_for_session::v3::Request,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let (etag, n) = ctx
        .services
        .key_backup
        .delete_keys(
            ctx.user_id()?,
            &req.version,
            Some(req.room_id.as_str()),
            Some(&req.session_id),
        )
        .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(etag, count(n)))
}
