//! Joining, inviting and leaving.
//!
//! - `POST /_matrix/client/v3/rooms/{roomId}/join`
//! - `POST /_matrix/client/v3/rooms/{roomId}/invite`
//! - `POST /_matrix/client/v3/rooms/{roomId}/leave`
//! - `POST /_matrix/client/v3/rooms/{roomId}/kick`, `…/ban`, `…/unban`
//! - `GET /_matrix/client/v3/rooms/{roomId}/joined_members`, `…/members`
//! - `POST /_matrix/client/v3/join/{roomIdOrAlias}`, `GET /_matrix/client/v3/joined_rooms`
//! - `POST /_matrix/client/v3/knock/{roomIdOrAlias}`, `POST /_matrix/client/v3/rooms/{roomId}/forget`
//!
//! Spec: client-server-api "Room membership" (`data/api/client-server/joining.yaml`,
//! `inviting.yaml`, `leaving.yaml`). Whether a change is allowed is decided by the room's
//! authorization rules, like any other event.

use std::collections::BTreeMap;

use ruma::{
    RoomId, UserId,
    api::client::{
        knock::knock_room,
        membership::{
            ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias,
            joined_members, joined_rooms, kick_user, leave_room, unban_user,
        },
    },
};

use super::room::raw_event;
use crate::{
    Error, Result,
    api::extract::Ctx,
    services::rooms::{Selection, membership::MemberProfile},
};

/// The requester's display name and avatar, copied into their member events.
fn member_profile(ctx: &Ctx) -> Result<MemberProfile> {
    let profile = ctx.services.profile.get(ctx.user_id()?)?.unwrap_or_default();
    Ok(MemberProfile::from_profile(&profile))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`
pub async fn join_room_by_id(ctx: Ctx, req: join_room_by_id::v3::Request) -> Result<join_room_by_id::v3::Response> {
    join(&ctx, &req.room_id, &[], req.reason.as_deref()).await?;
    Ok(join_room_by_id::v3::Response::new(req.room_id))
}

/// Joins the requester to a room: here, or over federation when federation is on and none of
/// our users is in the room (this server does not have it, or has only the state it saw when
/// its last user left, which may be stale): through `via`, then the servers that had members
/// joined when we last knew the room. As Synapse, a server not in the room never joins on its
/// own copy of the state, unless no other server is known to be in it.
async fn join(ctx: &Ctx, room_id: &RoomId, via: &[ruma::OwnedServerName], reason: Option<&str>) -> Result<()> {
    let profile = member_profile(ctx)?;
    let services = &ctx.services;
    let user_id = ctx.user_id()?;
    if services.federation.enabled {
        let known = services.rooms.room_version(room_id)?.is_some();
        let resident = known && services.federation.resident(&services.rooms, room_id)?;
        let mut servers = Vec::new();
        let former = if known && !resident {
            services.rooms.members(room_id)?.joined_servers().to_vec()
        } else {
            Vec::new()
        };
        // An invite names a server that is in the room: the inviter's.
        let inviter = match services.rooms.remote_invite(room_id, user_id)? {
            Some((invite, _)) => vec![invite.sender.server_name().to_owned()],
            None => Vec::new(),
        };
        for server in via.iter().chain(&former).chain(&inviter) {
            if !servers.contains(server) && server != services.federation.server_name() {
                servers.push(server.clone());
            }
        }
        if !known || (!resident && !servers.is_empty()) {
            let mut content = profile.content();
            if let Some(reason) = reason {
                content.insert("reason".into(), ruma::CanonicalJsonValue::String(reason.to_owned()));
            }
            services
                .federation
                .join_remote(&services.rooms, user_id, room_id, &servers, content)
                .await?;
            // The room's servers hear of the joiner's presence (a local join's goes with it).
            services.presence_on_join(room_id, user_id);
            // An invite or knock that led here is over.
            return services.rooms.clear_remote_records(room_id, user_id).await;
        }
    }
    services.rooms.join(room_id, user_id, reason, &profile).await?;
    Ok(())
}

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}` (local aliases are resolved through the
/// directory, remote ones over federation). A room none of our users is in is knocked on
/// through another server (`via`, the alias's servers, then the servers that had members
/// joined when we last knew the room), as a join would be.
pub async fn knock_room(ctx: Ctx, req: knock_room::v3::Request) -> Result<knock_room::v3::Response> {
    let services = &ctx.services;
    let (room_id, via) = room_and_servers(&ctx, &req.room_id_or_alias, &req.via).await?;
    let profile = member_profile(&ctx)?;
    let user_id = ctx.user_id()?;
    if services.federation.enabled {
        let known = services.rooms.room_version(&room_id)?.is_some();
        let resident = known && services.federation.resident(&services.rooms, &room_id)?;
        let mut servers = Vec::new();
        let former = if known && !resident {
            services.rooms.members(&room_id)?.joined_servers().to_vec()
        } else {
            Vec::new()
        };
        for server in via.iter().chain(&former) {
            if !servers.contains(server) && server != services.federation.server_name() {
                servers.push(server.clone());
            }
        }
        if !known || (!resident && !servers.is_empty()) {
            let mut content = profile.content();
            if let Some(reason) = &req.reason {
                content.insert("reason".into(), ruma::CanonicalJsonValue::String(reason.clone()));
            }
            services
                .federation
                .knock_remote(&services.rooms, user_id, &room_id, &servers, content)
                .await?;
            return Ok(knock_room::v3::Response::new(room_id));
        }
    }
    services
        .rooms
        .knock(&room_id, user_id, req.reason.as_deref(), &profile)
        .await?;
    Ok(knock_room::v3::Response::new(room_id))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`
pub async fn forget_room(ctx: Ctx, req: forget_room::v3::Request) -> Result<forget_room::v3::Response> {
    ctx.services.rooms.forget(&req.room_id, ctx.user_id()?).await?;
    Ok(forget_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`
pub async fn invite_user(ctx: Ctx, req: invite_user::v3::Request) -> Result<invite_user::v3::Response> {
    let invite_user::v3::InvitationRecipient::UserId(recipient) = &req.recipient else {
        return Err(Error::invalid_param("Third-party invites are not supported"));
    };
    let user_id = ctx.user_id()?;
    let services = &ctx.services;
    let rooms = &services.rooms;
    rooms.ensure_joined(&req.room_id, user_id)?;
    let remote = recipient.user_id.server_name() != services.config.server_name;
    if remote && !services.federation.enabled {
        return Err(Error::forbidden("Federation is disabled on this server"));
    }
    if remote {
        services.federation.check_peer(recipient.user_id.server_name())?;
    } else if !services.accounts.is_active(&recipient.user_id)? {
        // A user of an application service's namespace may be created by the service now.
        let created =
            crate::services::appservice::client_server::user_exists_asking_services(services, &recipient.user_id)
                .await?;
        if !created || !services.accounts.is_active(&recipient.user_id)? {
            return Err(Error::not_found(format!("Unknown user {}", recipient.user_id)));
        }
    }
    let invite = rooms
        .set_membership(
            &req.room_id,
            user_id,
            &recipient.user_id,
            "invite",
            recipient.reason.as_deref(),
        )
        .await?;
    if remote
        && let Err(refused) = services
            .federation
            .send_invite(rooms, &req.room_id, &invite.event_id, &recipient.user_id)
            .await
    {
        // Their server would not take it: the invite is withdrawn.
        rooms
            .set_membership(&req.room_id, user_id, &recipient.user_id, "leave", None)
            .await?;
        return Err(refused);
    }
    Ok(invite_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`
pub async fn leave_room(ctx: Ctx, req: leave_room::v3::Request) -> Result<leave_room::v3::Response> {
    let user_id = ctx.user_id()?;
    let rooms = &ctx.services.rooms;
    // Declining an invite to a room this server does not have: told to the inviter's server
    // (`make_leave`/`send_leave`); if it cannot be reached, declined here only (as Synapse).
    if let Some((invite, _)) = rooms.remote_invite(&req.room_id, user_id)?
        && rooms.room_version(&req.room_id)?.is_none()
    {
        if let Err(e) = ctx
            .services
            .federation
            .leave_remote(user_id, &req.room_id, invite.sender.server_name())
            .await
        {
            tracing::info!(room_id = %req.room_id, error = %e, "invite declined here only");
        }
        rooms.drop_remote_invite(&req.room_id, user_id).await?;
        return Ok(leave_room::v3::Response::new());
    }
    // Withdrawing a knock on a room none of our users is in: told to the server the knock went
    // through; if it cannot be reached, withdrawn here only (as a declined invite).
    if let Some(knock) = rooms.remote_knock(&req.room_id, user_id)?
        && !ctx.services.federation.resident(rooms, &req.room_id)?
    {
        if let Err(e) = ctx
            .services
            .federation
            .leave_remote(user_id, &req.room_id, &knock.via)
            .await
        {
            tracing::info!(room_id = %req.room_id, error = %e, "knock withdrawn here only");
        }
        rooms.drop_remote_invite(&req.room_id, user_id).await?;
        return Ok(leave_room::v3::Response::new());
    }
    if !matches!(
        rooms.membership(&req.room_id, user_id)?.as_deref(),
        Some("join" | "invite" | "knock")
    ) {
        return Err(Error::forbidden(format!(
            "{user_id} is not in the room {}",
            req.room_id
        )));
    }
    rooms
        .set_membership(&req.room_id, user_id, user_id, "leave", req.reason.as_deref())
        .await?;
    Ok(leave_room::v3::Response::new())
}

/// Kick, ban and unban share one shape: a membership change about someone else, decided by the
/// room's power levels through the authorization rules.
async fn moderate(ctx: &Ctx, room_id: &RoomId, target: &UserId, membership: &str, reason: Option<&str>) -> Result<()> {
    let user_id = ctx.user_id()?;
    let rooms = &ctx.services.rooms;
    rooms.ensure_joined(room_id, user_id)?;
    rooms
        .set_membership(room_id, user_id, target, membership, reason)
        .await?;
    Ok(())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`
pub async fn kick_user(ctx: Ctx, req: kick_user::v3::Request) -> Result<kick_user::v3::Response> {
    if !matches!(
        ctx.services.rooms.membership(&req.room_id, &req.user_id)?.as_deref(),
        Some("join" | "invite" | "knock")
    ) {
        return Err(Error::forbidden(format!("{} is not in the room", req.user_id)));
    }
    moderate(&ctx, &req.room_id, &req.user_id, "leave", req.reason.as_deref()).await?;
    Ok(kick_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`
pub async fn ban_user(ctx: Ctx, req: ban_user::v3::Request) -> Result<ban_user::v3::Response> {
    moderate(&ctx, &req.room_id, &req.user_id, "ban", req.reason.as_deref()).await?;
    Ok(ban_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`
pub async fn unban_user(ctx: Ctx, req: unban_user::v3::Request) -> Result<unban_user::v3::Response> {
    if ctx.services.rooms.membership(&req.room_id, &req.user_id)?.as_deref() != Some("ban") {
        return Err(Error::forbidden(format!("{} is not banned", req.user_id)));
    }
    moderate(&ctx, &req.room_id, &req.user_id, "leave", req.reason.as_deref()).await?;
    Ok(unban_user::v3::Response::new())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`
pub async fn joined_members(ctx: Ctx, req: joined_members::v3::Request) -> Result<joined_members::v3::Response> {
    let rooms = &ctx.services.rooms;
    rooms.ensure_joined(&req.room_id, ctx.user_id()?)?;
    let mut joined = BTreeMap::new();
    for pdu in rooms.full_state(&req.room_id)? {
        #[derive(serde::Deserialize)]
        struct Member {
            membership: String,
            displayname: Option<String>,
            avatar_url: Option<ruma::OwnedMxcUri>,
        }
        let (Some(key), true) = (&pdu.state_key, pdu.kind.to_string() == "m.room.member") else {
            continue;
        };
        let Ok(member) = serde_json::from_str::<Member>(pdu.content.get()) else {
            continue;
        };
        if member.membership == "join"
            && let Ok(user) = ruma::OwnedUserId::try_from(key.as_str())
        {
            let mut entry = joined_members::v3::RoomMember::new();
            entry.display_name = member.displayname;
            entry.avatar_url = member.avatar_url;
            joined.insert(user, entry);
        }
    }
    Ok(joined_members::v3::Response::new(joined))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`
pub async fn get_member_events(
    ctx: Ctx,
    req: get_member_events::v3::Request,
) -> Result<get_member_events::v3::Response> {
    let rooms = &ctx.services.rooms;
    let user_id = ctx.user_id()?;
    let scope = rooms.read_scope(&req.room_id, user_id)?;
    let state = match req.at.as_deref() {
        None => rooms.visible_state(&req.room_id, &scope, Selection::All)?,
        Some(token) => {
            let at = rooms.pagination_point(&req.room_id, "at", token)?;
            rooms.visible_state_at(&req.room_id, &rooms.history_filter(user_id, scope), at)?
        }
    };
    let wanted = req.membership.as_ref().map(|m| m.to_string());
    let unwanted = req.not_membership.as_ref().map(|m| m.to_string());
    let mut chunk = Vec::new();
    for pdu in state {
        if pdu.kind.to_string() != "m.room.member" {
            continue;
        }
        #[derive(serde::Deserialize)]
        struct Member {
            membership: String,
        }
        let Ok(member) = serde_json::from_str::<Member>(pdu.content.get()) else {
            continue;
        };
        if wanted.as_ref().is_some_and(|w| *w != member.membership)
            || unwanted.as_ref().is_some_and(|u| *u == member.membership)
        {
            continue;
        }
        chunk.push(raw_event(&pdu)?);
    }
    Ok(get_member_events::v3::Response::new(chunk))
}

/// The room `room_id_or_alias` names, and the servers to ask about it: `via`, then for an
/// alias of another server the servers its directory answer names (local aliases are resolved
/// through our directory).
async fn room_and_servers(
    ctx: &Ctx,
    room_id_or_alias: &ruma::RoomOrAliasId,
    via: &[ruma::OwnedServerName],
) -> Result<(ruma::OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    let services = &ctx.services;
    let mut via = via.to_vec();
    let room_id = match <&ruma::RoomAliasId>::try_from(room_id_or_alias) {
        Ok(alias) if alias.server_name() != services.config.server_name && services.federation.enabled => {
            let (room_id, servers) = services.federation.remote_alias(alias).await?;
            via.extend(servers);
            room_id
        }
        Ok(alias) => {
            crate::services::appservice::client_server::resolve_alias_asking_services(services, alias)
                .await?
                .0
        }
        Err(room_id) => room_id.to_owned(),
    };
    Ok((room_id, via))
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}` (local aliases are resolved through the
/// directory; remote ones need federation)
pub async fn join_room_by_id_or_alias(
    ctx: Ctx,
    req: join_room_by_id_or_alias::v3::Request,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let (room_id, via) = room_and_servers(&ctx, &req.room_id_or_alias, &req.via).await?;
    join(&ctx, &room_id, &via, req.reason.as_deref()).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

/// `GET /_matrix/client/v3/joined_rooms`
pub async fn joined_rooms(ctx: Ctx, _req: joined_rooms::v3::Request) -> Result<joined_rooms::v3::Response> {
    Ok(joined_rooms::v3::Response::new(
        ctx.services.rooms.joined_rooms(ctx.user_id()?)?,
    ))
}
