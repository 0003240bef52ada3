//! Thread subscriptions.
//!
//! - `PUT|GET|DELETE /_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/{threadRootId}/subscription`
//! - `GET /_matrix/client/unstable/io.element.msc4308/thread_subscriptions` (backpagination of
//!   subscription changes)
//!
//! Spec: not in the spec yet; `shared/msc/4306-thread-subscriptions.md` (unstable prefixes:
//! errcodes `IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION` and `…M_NOT_IN_THREAD`) and
//! `shared/msc/4308-sliding-sync-ext-thread-subscriptions.md`. A room the user may not read is
//! 403 (and a subscription needs the user joined); a thread root that does not exist in the
//! room, that history visibility hides, or that is itself a relation (so cannot start a
//! thread) is 404, as is `GET` without a subscription. Tokens are `t{upper}_{lower}` stream
//! positions; `to` also takes such a token or a bare position (a sliding-sync `pos` names no
//! position once acknowledged, so the lower end travels in the `from` token).

use ruma::{
    EventId, RoomId, UserId,
    api::client::threads::{
        get_thread_subscription, get_thread_subscriptions_changes, subscribe_thread, unsubscribe_thread,
    },
    api::error::ErrorKind,
};

use crate::{
    Error, Result,
    api::extract::Ctx,
    services::{
        Services,
        rooms::relations::relates_to,
        thread_subs::{PageToken, Subscribe},
    },
};

/// Default number of changes per page (the MSC's).
const DEFAULT_LIMIT: u64 = 100;
/// Most changes per page.
const MAX_LIMIT: u64 = 1000;

/// Checks that `root` is a thread root `user_id` may see in `room_id`: 403 for a room they
/// may not read (or are not joined to, when `joined`), 404 for the rest.
fn check_root(services: &Services, user_id: &UserId, room_id: &RoomId, root: &EventId, joined: bool) -> Result<()> {
    let rooms = &services.rooms;
    let scope = rooms.read_scope(room_id, user_id)?;
    if joined && rooms.membership(room_id, user_id)?.as_deref() != Some("join") {
        return Err(Error::forbidden(format!("{user_id} is not joined to {room_id}")));
    }
    let history = rooms.history_filter(user_id, scope);
    let not_found = || Error::not_found("No such thread root");
    let (_, pdu) = history.visible_event(room_id, root).map_err(|_| not_found())?;
    // A relation cannot start a thread (spec "Threading").
    if relates_to(&pdu.content).is_some() {
        return Err(not_found());
    }
    Ok(())
}

/// `PUT /_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/{threadRootId}/subscription`
pub async fn subscribe_thread(
    ctx: Ctx,
    req: subscribe_thread::unstable::Request,
) -> Result<subscribe_thread::unstable::Response> {
    let user_id = ctx.user_id()?;
    let services = &ctx.services;
    check_root(services, user_id, &req.room_id, &req.thread_root, true)?;
    let how = match &req.automatic {
        None => Subscribe::Manual,
        Some(cause) => {
            let rooms = &services.rooms;
            let history = rooms.history_filter(user_id, rooms.read_scope(&req.room_id, user_id)?);
            let (position, pdu) = history
                .visible_event(&req.room_id, cause)
                .map_err(|_| Error::not_found("Automatic subscription event not found"))?;
            match relates_to(&pdu.content) {
                Some((rel_type, parent)) if rel_type == "m.thread" && parent == req.thread_root => {}
                _ => {
                    return Err(Error::new(
                        http::StatusCode::BAD_REQUEST,
                        ErrorKind::NotInThread,
                        "Automatic subscription must use an event in the thread",
                    ));
                }
            }
            Subscribe::Automatic {
                cause_position: position,
            }
        }
    };
    services
        .thread_subs
        .subscribe(user_id, &req.room_id, &req.thread_root, how)
        .await?;
    Ok(subscribe_thread::unstable::Response::new())
}

/// `GET /_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/{threadRootId}/subscription`
pub async fn get_thread_subscription(
    ctx: Ctx,
    req: get_thread_subscription::unstable::Request,
) -> Result<get_thread_subscription::unstable::Response> {
    let user_id = ctx.user_id()?;
    let services = &ctx.services;
    check_root(services, user_id, &req.room_id, &req.thread_root, false)?;
    match services.thread_subs.get(user_id, &req.room_id, &req.thread_root)? {
        Some((record, _)) if record.subscribed => {
            Ok(get_thread_subscription::unstable::Response::new(record.automatic))
        }
        _ => Err(Error::not_found("Not subscribed to that thread")),
    }
}

/// `DELETE /_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/{threadRootId}/subscription`
pub async fn unsubscribe_thread(
    ctx: Ctx,
    req: unsubscribe_thread::unstable::Request,
) -> Result<unsubscribe_thread::unstable::Response> {
    let user_id = ctx.user_id()?;
    let services = &ctx.services;
    check_root(services, user_id, &req.room_id, &req.thread_root, false)?;
    services
        .thread_subs
        .unsubscribe(user_id, &req.room_id, &req.thread_root)
        .await?;
    Ok(unsubscribe_thread::unstable::Response::new())
}

/// `GET /_matrix/client/unstable/io.element.msc4308/thread_subscriptions`
pub async fn get_thread_subscriptions_changes(
    ctx: Ctx,
    req: get_thread_subscriptions_changes::unstable::Request,
) -> Result<get_thread_subscriptions_changes::unstable::Response> {
    let user_id = ctx.user_id()?;
    let services = &ctx.services;
    let limit = req.limit.map_or(DEFAULT_LIMIT, u64::from);
    if limit == 0 {
        return Err(Error::invalid_param("limit must be greater than zero"));
    }
    let watermark = services.rooms.watermark();
    let from = match req.from.as_deref() {
        None => PageToken {
            upper: watermark,
            lower: 0,
        },
        Some(token) => PageToken::parse(token).ok_or_else(|| Error::invalid_param("Unknown from token"))?,
    };
    // A sliding-sync `pos` is not a position: the `from` token carries the lower end then.
    let to = req.to.as_deref().and_then(PageToken::parse).map_or(0, |t| t.upper);
    let lower = from.lower.max(to);
    let upper = from.upper.min(watermark);
    let page = services
        .thread_subs
        .page(user_id, lower, upper, limit.min(MAX_LIMIT) as usize)?;
    let mut response = get_thread_subscriptions_changes::unstable::Response::new();
    response.subscribed = page.subscribed;
    response.unsubscribed = page.unsubscribed;
    response.end = page.older;
    Ok(response)
}
