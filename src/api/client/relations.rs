//! Event relationships and threads.
//!
//! - `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}`
//! - `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}`
//! - `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}`
//! - `GET /_matrix/client/v1/rooms/{roomId}/threads`
//!
//! Spec: client-server-api "Forming relationships between events" and "Threading"
//! (`data/api/client-server/relations.yaml`, `threads_list.yaml`). Tokens are the room
//! pagination tokens of `services::tokens` (`from` is exclusive going forwards and inclusive
//! going backwards, as in `/messages`); `limit` defaults to 5 and is capped at 1000 (Synapse).

use ruma::{
    EventId, RoomId, UInt,
    api::{
        Direction,
        client::{
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            threads::get_threads::{self, v1::IncludeThreads},
        },
    },
    serde::Raw,
};

use super::room::raw_event;
use crate::{
    Error, Result,
    api::extract::Ctx,
    services::rooms::relations::{RECURSION_DEPTH, Reader, RelationsQuery},
};

/// Default page size (Synapse's).
const DEFAULT_LIMIT: u64 = 5;
/// Largest page (Synapse's).
const MAX_LIMIT: u64 = 1000;

/// The common query of the three `/relations` shapes.
struct Query<'a> {
    room_id: &'a RoomId,
    event_id: &'a EventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    dir: Direction,
    limit: Option<UInt>,
    recurse: bool,
}

/// The answer of the three `/relations` shapes.
struct Answer<T> {
    chunk: Vec<Raw<T>>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    recursion_depth: Option<UInt>,
}

fn relations<T>(ctx: &Ctx, query: Query<'_>) -> Result<Answer<T>> {
    let rooms = &ctx.services.rooms;
    let user_id = ctx.user_id()?;
    let history = rooms.history_filter(user_id, rooms.read_scope(query.room_id, user_id)?);
    let ignored = ctx.services.account_data.ignored_users(user_id)?;
    let reader = Reader {
        history: &history,
        ignored: &ignored,
    };
    let point = |param: &str, token: Option<&str>| {
        token
            .map(|token| rooms.pagination_point(query.room_id, param, token))
            .transpose()
    };
    let limit = query.limit.map_or(DEFAULT_LIMIT, u64::from).clamp(1, MAX_LIMIT) as usize;
    let wanted = RelationsQuery {
        rel_type: query.rel_type.as_deref(),
        event_type: query.event_type.as_deref(),
        backwards: query.dir == Direction::Backward,
        from: point("from", query.from)?,
        to: point("to", query.to)?,
        limit,
        recurse: query.recurse,
    };
    let (events, next) = rooms.relations(&reader, query.room_id, query.event_id, &wanted)?;
    Ok(Answer {
        chunk: events.iter().map(raw_event).collect::<Result<_>>()?,
        next_batch: next.map(|n| rooms.room_token(query.room_id, n)).transpose()?,
        prev_batch: query.from.map(str::to_owned),
        recursion_depth: query.recurse.then(|| UInt::from(RECURSION_DEPTH as u32)),
    })
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}`
pub async fn get_relating_events(
    ctx: Ctx,
    req: get_relating_events::v1::Request,
) -> Result<get_relating_events::v1::Response> {
    let answer = relations(
        &ctx,
        Query {
            room_id: &req.room_id,
            event_id: &req.event_id,
            rel_type: None,
            event_type: None,
            from: req.from.as_deref(),
            to: req.to.as_deref(),
            dir: req.dir,
            limit: req.limit,
            recurse: req.recurse,
        },
    )?;
    let mut response = get_relating_events::v1::Response::new(answer.chunk);
    response.next_batch = answer.next_batch;
    response.prev_batch = answer.prev_batch;
    response.recursion_depth = answer.recursion_depth;
    Ok(response)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}`
pub async fn get_relating_events_with_rel_type(
    ctx: Ctx,
    req: get_relating_events_with_rel_type::v1::Request,
) -> Result<get_relating_events_with_rel_type::v1::Response> {
    let answer = relations(
        &ctx,
        Query {
            room_id: &req.room_id,
            event_id: &req.event_id,
            rel_type: Some(req.rel_type.to_string()),
            event_type: None,
            from: req.from.as_deref(),
            to: req.to.as_deref(),
            dir: req.dir,
            limit: req.limit,
            recurse: req.recurse,
        },
    )?;
    let mut response = get_relating_events_with_rel_type::v1::Response::new(answer.chunk);
    response.next_batch = answer.next_batch;
    response.prev_batch = answer.prev_batch;
    response.recursion_depth = answer.recursion_depth;
    Ok(response)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}`
pub async fn get_relating_events_with_rel_type_and_event_type(
    ctx: Ctx,
    req: get_relating_events_with_rel_type_and_event_type::v1::Request,
) -> Result<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    let answer = relations(
        &ctx,
        Query {
            room_id: &req.room_id,
            event_id: &req.event_id,
            rel_type: Some(req.rel_type.to_string()),
            event_type: Some(req.event_type.to_string()),
            from: req.from.as_deref(),
            to: req.to.as_deref(),
            dir: req.dir,
            limit: req.limit,
            recurse: req.recurse,
        },
    )?;
    let mut response = get_relating_events_with_rel_type_and_event_type::v1::Response::new(answer.chunk);
    response.next_batch = answer.next_batch;
    response.prev_batch = answer.prev_batch;
    response.recursion_depth = answer.recursion_depth;
    Ok(response)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/threads`
///
/// Thread roots by latest activity, newest first; `next_batch` is a room token.
pub async fn get_threads(ctx: Ctx, req: get_threads::v1::Request) -> Result<get_threads::v1::Response> {
    let rooms = &ctx.services.rooms;
    let user_id = ctx.user_id()?;
    let participated = match req.include {
        IncludeThreads::All => false,
        IncludeThreads::Participated => true,
        _ => {
            return Err(Error::invalid_param(format!(
                "include must be \"all\" or \"participated\", not \"{}\"",
                req.include.as_str().chars().take(64).collect::<String>()
            )));
        }
    };
    let history = rooms.history_filter(user_id, rooms.read_scope(&req.room_id, user_id)?);
    let ignored = ctx.services.account_data.ignored_users(user_id)?;
    let reader = Reader {
        history: &history,
        ignored: &ignored,
    };
    let from = req
        .from
        .as_deref()
        .map(|token| rooms.pagination_point(&req.room_id, "from", token))
        .transpose()?;
    let limit = req.limit.map_or(DEFAULT_LIMIT, u64::from).clamp(1, MAX_LIMIT) as usize;
    let (roots, next) = rooms.threads(&reader, &req.room_id, participated, from, limit)?;
    let mut response = get_threads::v1::Response::new(roots.iter().map(raw_event).collect::<Result<_>>()?);
    response.next_batch = next.map(|n| rooms.room_token(&req.room_id, n)).transpose()?;
    Ok(response)
}
