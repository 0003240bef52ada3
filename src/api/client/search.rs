//! Server-side search.
//!
//! - `POST /_matrix/client/v3/search` (category `room_events`)
//!
//! Spec: client-server-api "Server Side Search" (`data/api/client-server/search.yaml`). The
//! rules (what is indexed, who sees what, ranking, tokens) are in `services::search`.

use std::collections::BTreeMap;

use ruma::{
    OwnedMxcUri,
    api::client::search::search_events::v3::{
        EventContextResult, GroupingKey, OrderBy, ResultCategories, ResultGroup, ResultGroupMap, ResultRoomEvents,
        SearchKeys, SearchResult, UserProfile,
    },
};

use super::room::raw_event;
use crate::{
    Error, Result,
    api::extract::Ctx,
    services::search::{self, FIELD_BODY, FIELD_NAME, FIELD_TOPIC, Order, Query},
};

use ruma::api::client::search::search_events;

/// `POST /_matrix/client/v3/search`
///
/// Answered as JSON built from ruma's response type, with `results` and `highlights` always
/// present (ruma leaves empty lists out; clients such as matrix-js-sdk read `results` as an
/// array, and Synapse always sends both).
pub async fn search(ctx: Ctx, req: search_events::v3::Request) -> Result<serde_json::Value> {
    let user_id = ctx.owned_user_id()?;
    let criteria = req
        .search_categories
        .room_events
        .ok_or_else(|| Error::invalid_param("search_categories must hold room_events, the only category served"))?;
    let fields = match &criteria.keys {
        None => FIELD_BODY | FIELD_NAME | FIELD_TOPIC,
        Some(keys) => keys.iter().try_fold(0u8, |acc, key| match key {
            SearchKeys::ContentBody => Ok(acc | FIELD_BODY),
            SearchKeys::ContentName => Ok(acc | FIELD_NAME),
            SearchKeys::ContentTopic => Ok(acc | FIELD_TOPIC),
            other => Err(Error::invalid_param(format!(
                "Unknown search key {:?}: content.body, content.name and content.topic are searched",
                other.as_str()
            ))),
        })?,
    };
    let order = match &criteria.order_by {
        None | Some(OrderBy::Rank) => Order::Rank,
        Some(OrderBy::Recent) => Order::Recent,
        Some(other) => return Err(Error::invalid_param(format!("Invalid order_by {:?}", other.as_str()))),
    };
    let (mut by_room, mut by_sender) = (false, false);
    for grouping in &criteria.groupings.group_by {
        match &grouping.key {
            Some(GroupingKey::RoomId) => by_room = true,
            Some(GroupingKey::Sender) => by_sender = true,
            Some(other) => {
                return Err(Error::invalid_param(format!(
                    "Invalid group_by key {:?}: room_id and sender are supported",
                    other.as_str()
                )));
            }
            None => return Err(Error::invalid_param("A grouping needs a key")),
        }
    }
    // ruma gives an absent `event_context` its defaults (5 and 5), so context is always
    // returned: the spec's defaults apply (Synapse returns none when the object is absent).
    let limit = |n: ruma::UInt| usize::try_from(u64::from(n)).unwrap_or(search::MAX_CONTEXT);
    let context = Some((
        limit(criteria.event_context.before_limit),
        limit(criteria.event_context.after_limit),
        criteria.event_context.include_profile,
    ));
    let ignored = ctx.services.account_data.ignored_users(&user_id)?;
    let services = std::sync::Arc::clone(&ctx.services);
    let next_batch = req.next_batch;
    let answer = tokio::task::spawn_blocking(move || {
        let query = Query {
            term: &criteria.search_term,
            fields,
            order,
            filter: &criteria.filter,
            context,
            include_state: criteria.include_state.unwrap_or(false),
            next_batch: next_batch.as_deref(),
            ignored: &ignored,
        };
        search::search(&services.rooms, &user_id, &query)
    })
    .await
    .map_err(|e| Error::internal(e.to_string()))??;

    let mut room_events = ResultRoomEvents::new();
    room_events.count = Some(ruma::UInt::try_from(answer.count).unwrap_or(ruma::UInt::MAX));
    room_events.highlights = answer.highlights;
    room_events.next_batch = answer.next_batch;
    if by_room {
        let groups = search::groups(&answer.results, |pdu| pdu.room_id.clone());
        let map = groups
            .into_iter()
            .filter_map(|(room, (order, results))| {
                let room = room?;
                let mut group = ResultGroup::new();
                group.next_batch = answer.room_next_batch.get(&room).cloned();
                group.order = Some(ruma::UInt::from(order as u32));
                group.results = results;
                Some((room, group))
            })
            .collect();
        room_events.groups.insert(ResultGroupMap::RoomId(map));
    }
    if by_sender {
        let groups = search::groups(&answer.results, |pdu| pdu.sender.clone());
        let map = groups
            .into_iter()
            .map(|(sender, (order, results))| {
                let mut group = ResultGroup::new();
                group.order = Some(ruma::UInt::from(order as u32));
                group.results = results;
                (sender, group)
            })
            .collect();
        room_events.groups.insert(ResultGroupMap::Sender(map));
    }
    for (room, state) in answer.state {
        room_events
            .state
            .insert(room, state.iter().map(raw_event).collect::<Result<_>>()?);
    }
    for hit in answer.results {
        let mut result = SearchResult::new();
        result.rank = Some(hit.rank);
        result.result = Some(raw_event(&hit.event)?);
        if let Some(context) = hit.context {
            let mut out = EventContextResult::new();
            out.start = Some(context.start);
            out.end = Some(context.end);
            out.events_before = context.before.iter().map(raw_event).collect::<Result<_>>()?;
            out.events_after = context.after.iter().map(raw_event).collect::<Result<_>>()?;
            out.profile_info = context
                .profiles
                .into_iter()
                .map(|(user, (displayname, avatar))| {
                    let mut profile = UserProfile::new();
                    profile.displayname = displayname;
                    profile.avatar_url = avatar.map(OwnedMxcUri::from);
                    (user, profile)
                })
                .collect::<BTreeMap<_, _>>();
            result.context = out;
        }
        room_events.results.push(result);
    }
    let mut categories = ResultCategories::new();
    categories.room_events = room_events;
    let mut body = serde_json::to_value(categories).map_err(|e| Error::internal(e.to_string()))?;
    if let Some(events) = body
        .as_object_mut()
        .map(|b| b.entry("room_events").or_insert_with(|| serde_json::json!({})))
        && let Some(events) = events.as_object_mut()
    {
        events.entry("results").or_insert_with(|| serde_json::json!([]));
        events.entry("highlights").or_insert_with(|| serde_json::json!([]));
    }
    Ok(serde_json::json!({"search_categories": body}))
}
