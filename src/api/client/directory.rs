//! The room directory: aliases, the published room list and room summaries.
//!
//! - `PUT/GET/DELETE /_matrix/client/v3/directory/room/{roomAlias}` (`GET` of another
//!   server's alias asks that server, when federation is on)
//! - `GET /_matrix/client/v3/rooms/{roomId}/aliases`
//! - `GET/POST /_matrix/client/v3/publicRooms` (`?server=` another server: its list, asked
//!   over federation when it is on)
//! - `GET/PUT /_matrix/client/v3/directory/list/room/{roomId}`
//! - `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}`
//!
//! Spec: client-server-api "Room aliases", "Listing rooms", "Room summary"
//! (`data/api/client-server/directory.yaml`, `list_public_rooms.yaml`, `room_summary.yaml`).

use ruma::{
    ServerName,
    api::{
        IncomingRequest, Metadata, auth_scheme,
        client::{
            alias::{create_alias, delete_alias, get_alias},
            directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
            room::{Visibility, aliases, get_summary},
        },
    },
};

use crate::{
    Error, Result,
    api::extract::Ctx,
    services::{
        appservice,
        directory::{ListPage, ListQuery},
    },
};

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn create_alias(ctx: Ctx, req: create_alias::v3::Request) -> Result<create_alias::v3::Response> {
    let s = &ctx.services;
    let session = ctx.session()?;
    if let Some(service) = &session.appservice {
        appservice::client_server::check_alias_of_service(service, &req.room_alias)?;
        s.directory
            .create_alias_for_service(&s.rooms, &session.user_id, &req.room_alias, &req.room_id)
            .await?;
        return Ok(create_alias::v3::Response::new());
    }
    appservice::client_server::check_alias_not_exclusive(s, &req.room_alias, None)?;
    s.directory
        .create_alias(&s.rooms, &s.accounts, ctx.user_id()?, &req.room_alias, &req.room_id)
        .await?;
    Ok(create_alias::v3::Response::new())
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn get_alias(ctx: Ctx, req: get_alias::v3::Request) -> Result<get_alias::v3::Response> {
    let services = &ctx.services;
    let alias = &req.room_alias;
    let (room_id, servers) = if alias.server_name() != services.config.server_name && services.federation.enabled {
        services.federation.remote_alias(alias).await?
    } else {
        appservice::client_server::resolve_alias_asking_services(services, alias).await?
    };
    Ok(get_alias::v3::Response::new(room_id, servers))
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn delete_alias(ctx: Ctx, req: delete_alias::v3::Request) -> Result<delete_alias::v3::Response> {
    let s = &ctx.services;
    let session = ctx.session()?;
    if let Some(service) = &session.appservice {
        appservice::client_server::check_alias_of_service(service, &req.room_alias)?;
        s.directory
            .delete_alias_unchecked(&s.rooms, &session.user_id, &req.room_alias)
            .await?;
        return Ok(delete_alias::v3::Response::new());
    }
    appservice::client_server::check_alias_not_exclusive(s, &req.room_alias, None)?;
    s.directory
        .delete_alias(&s.rooms, &s.accounts, ctx.user_id()?, &req.room_alias)
        .await?;
    Ok(delete_alias::v3::Response::new())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`
pub async fn room_aliases(ctx: Ctx, req: aliases::v3::Request) -> Result<aliases::v3::Response> {
    let s = &ctx.services;
    let aliases = s
        .directory
        .room_aliases(&s.rooms, &s.accounts, ctx.user_id()?, &req.room_id)?;
    Ok(aliases::v3::Response::new(aliases))
}

/// `GET /_matrix/client/v3/publicRooms` with an access token required.
///
/// The spec lets servers serve the list without authentication; Synapse does not by default
/// (`allow_public_rooms_without_auth: false`), and neither does Hearth. ruma declares the
/// endpoint unauthenticated, so this wrapper changes only the authentication scheme.
pub struct PublicRoomsRequest(get_public_rooms::v3::Request);

impl Metadata for PublicRoomsRequest {
    const METHOD: http::Method = <get_public_rooms::v3::Request as Metadata>::METHOD;
    const RATE_LIMITED: bool = <get_public_rooms::v3::Request as Metadata>::RATE_LIMITED;
    type Authentication = auth_scheme::AccessToken;
    type PathBuilder = <get_public_rooms::v3::Request as Metadata>::PathBuilder;
    const PATH_BUILDER: Self::PathBuilder = <get_public_rooms::v3::Request as Metadata>::PATH_BUILDER;
}

impl IncomingRequest for PublicRoomsRequest {
    type EndpointError = <get_public_rooms::v3::Request as IncomingRequest>::EndpointError;
    type OutgoingResponse = get_public_rooms::v3::Response;

    fn try_from_http_request_inner(
        request: http::Request<&[u8]>,
        path_args: &[&str],
    ) -> Result<Self, ruma::api::error::DeserializationError> {
        get_public_rooms::v3::Request::try_from_http_request_inner(request, path_args).map(Self)
    }
}

/// The other server whose list is asked for, if any. Without federation it is refused as
/// Synapse refuses a server its federation settings exclude (403 `M_FORBIDDEN`).
fn other_server<'a>(ctx: &Ctx, server: Option<&'a ServerName>) -> Result<Option<&'a ServerName>> {
    match server {
        Some(server) if server.as_str() != ctx.services.config.server_name.as_str() => {
            if ctx.services.federation.enabled {
                Ok(Some(server))
            } else {
                Err(Error::forbidden(format!(
                    "Federation is not available: cannot list the rooms of {server}"
                )))
            }
        }
        _ => Ok(None),
    }
}

/// A `limit` as the service takes it: 0 means no limit (Synapse).
fn limit(value: Option<ruma::UInt>, default: Option<usize>) -> Option<usize> {
    match value.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX)) {
        Some(0) => None,
        Some(l) => Some(l),
        None => default,
    }
}

/// `GET /_matrix/client/v3/publicRooms`
pub async fn get_public_rooms(ctx: Ctx, req: PublicRoomsRequest) -> Result<get_public_rooms::v3::Response> {
    let req = req.0;
    if let Some(server) = other_server(&ctx, req.server.as_deref())? {
        let page = ctx
            .services
            .federation
            .remote_public_rooms(server, req.limit, req.since, Default::default())
            .await?;
        let mut response = get_public_rooms::v3::Response::new(page.chunk);
        response.next_batch = page.next_batch;
        response.prev_batch = page.prev_batch;
        response.total_room_count_estimate = page.total_room_count_estimate;
        return Ok(response);
    }
    let query = ListQuery {
        limit: limit(req.limit, None),
        since: req.since.as_deref(),
        ..ListQuery::default()
    };
    let page = ctx.services.directory.public_rooms(&ctx.services.rooms, &query)?;
    let ListPage {
        chunk,
        next_batch,
        prev_batch,
        total,
    } = page;
    let mut response = get_public_rooms::v3::Response::new(chunk);
    response.next_batch = next_batch;
    response.prev_batch = prev_batch;
    response.total_room_count_estimate = Some(ruma::UInt::new_saturating(total));
    Ok(response)
}

/// `POST /_matrix/client/v3/publicRooms` (default page size 100, as in Synapse)
pub async fn get_public_rooms_filtered(
    ctx: Ctx,
    req: get_public_rooms_filtered::v3::Request,
) -> Result<get_public_rooms_filtered::v3::Response> {
    if let Some(server) = other_server(&ctx, req.server.as_deref())? {
        let page = ctx
            .services
            .federation
            .remote_public_rooms(server, req.limit, req.since.clone(), req.filter.clone())
            .await?;
        let mut response = get_public_rooms_filtered::v3::Response::new();
        response.chunk = page.chunk;
        response.next_batch = page.next_batch;
        response.prev_batch = page.prev_batch;
        response.total_room_count_estimate = page.total_room_count_estimate;
        return Ok(response);
    }
    let query = ListQuery {
        limit: limit(req.limit, Some(100)),
        since: req.since.as_deref(),
        search: req.filter.generic_search_term.as_deref(),
        room_types: &req.filter.room_types,
    };
    let page = ctx.services.directory.public_rooms(&ctx.services.rooms, &query)?;
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.chunk = page.chunk;
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = Some(ruma::UInt::new_saturating(page.total));
    Ok(response)
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn get_room_visibility(
    ctx: Ctx,
    req: get_room_visibility::v3::Request,
) -> Result<get_room_visibility::v3::Response> {
    let published = ctx.services.directory.is_published(&ctx.services.rooms, &req.room_id)?;
    Ok(get_room_visibility::v3::Response::new(if published {
        Visibility::Public
    } else {
        Visibility::Private
    }))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn set_room_visibility(
    ctx: Ctx,
    req: set_room_visibility::v3::Request,
) -> Result<set_room_visibility::v3::Response> {
    let published = match req.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        _ => return Err(Error::invalid_param("visibility must be `public` or `private`")),
    };
    let s = &ctx.services;
    s.directory
        .set_published(&s.rooms, &s.accounts, ctx.user_id()?, &req.room_id, published)
        .await?;
    Ok(set_room_visibility::v3::Response::new())
}

/// `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}`
///
/// Answered as JSON because ruma leaves out `join_rule` when it is `public` (the spec's
/// default when absent); Synapse always sends it, and clients show it.
pub async fn get_summary(ctx: Ctx, req: get_summary::v1::Request) -> Result<serde_json::Value> {
    let requester = ctx.session.as_ref().map(|s| &*s.user_id);
    let (summary, membership) =
        ctx.services
            .directory
            .summary(&ctx.services.rooms, requester, &req.room_id_or_alias)?;
    let mut value = serde_json::to_value(&summary).map_err(|e| Error::internal(e.to_string()))?;
    if let Some(object) = value.as_object_mut() {
        object.entry("join_rule").or_insert_with(|| "public".into());
        if let Some(membership) = membership {
            object.insert("membership".into(), membership.into());
        }
    }
    Ok(value)
}
