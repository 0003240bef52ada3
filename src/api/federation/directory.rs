//! The room directory for other servers (server-server-api "Querying for room aliases" and
//! "Public Room Directory"):
//!
//! - `GET /_matrix/federation/v1/query/directory`: a local alias's room and its servers;
//! - `GET` and `POST /_matrix/federation/v1/publicRooms`: the local public room list (the one
//!   the client API serves), a page of at most 500 rooms.

use ruma::{
    api::federation::{
        directory::{get_public_rooms, get_public_rooms_filtered},
        query::get_room_information,
    },
    directory::RoomNetwork,
};

use crate::{
    Result,
    api::extract::Ctx,
    services::{
        directory::{ListPage, ListQuery},
        federation::serve,
    },
};

/// `GET /_matrix/federation/v1/query/directory`
pub async fn get_room_information(
    ctx: Ctx,
    req: get_room_information::v1::Request,
) -> Result<get_room_information::v1::Response> {
    let (room_id, servers) = serve::query_directory(&ctx.services, &req.room_alias)?;
    Ok(get_room_information::v1::Response::new(room_id, servers))
}

/// A `limit` as the service takes it: 0 or absent means the largest page.
fn limit(value: Option<ruma::UInt>) -> Option<usize> {
    match value.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX)) {
        Some(0) | None => None,
        Some(l) => Some(l),
    }
}

/// The page, or an empty one for a third-party network (Hearth bridges none).
fn page(ctx: &Ctx, network: &RoomNetwork, query: ListQuery<'_>) -> Result<ListPage> {
    if matches!(network, RoomNetwork::ThirdParty(_)) {
        return Ok(ListPage {
            chunk: Vec::new(),
            next_batch: None,
            prev_batch: None,
            total: 0,
        });
    }
    serve::public_rooms(&ctx.services, super::origin(ctx)?, query)
}

/// `GET /_matrix/federation/v1/publicRooms`
pub async fn get_public_rooms(ctx: Ctx, req: get_public_rooms::v1::Request) -> Result<get_public_rooms::v1::Response> {
    let query = ListQuery {
        limit: limit(req.limit),
        since: req.since.as_deref(),
        ..ListQuery::default()
    };
    let page = page(&ctx, &req.room_network, query)?;
    let mut response = get_public_rooms::v1::Response::new();
    response.chunk = page.chunk;
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = Some(ruma::UInt::new_saturating(page.total));
    Ok(response)
}

/// `POST /_matrix/federation/v1/publicRooms`
pub async fn get_public_rooms_filtered(
    ctx: Ctx,
    req: get_public_rooms_filtered::v1::Request,
) -> Result<get_public_rooms_filtered::v1::Response> {
    let query = ListQuery {
        limit: limit(req.limit),
        since: req.since.as_deref(),
        search: req.filter.generic_search_term.as_deref(),
        room_types: &req.filter.room_types,
    };
    let page = page(&ctx, &req.room_network, query)?;
    let mut response = get_public_rooms_filtered::v1::Response::new();
    response.chunk = page.chunk;
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = Some(ruma::UInt::new_saturating(page.total));
    Ok(response)
}
