//! `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`
//!
//! Spec: client-server-api "Spaces" (`data/api/client-server/space_hierarchy.yaml`).

use ruma::api::client::space::{SpaceHierarchyRoomsChunk, get_hierarchy};

use crate::{
    Error, Result,
    api::extract::Ctx,
    services::spaces::{self, HierarchyQuery},
};

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`
///
/// Answered as JSON because ruma leaves out `join_rule` when it is `public` (the room summary's
/// default when absent); Synapse always sends it, as `/room_summary` does here.
pub async fn get_hierarchy(ctx: Ctx, req: get_hierarchy::v1::Request) -> Result<serde_json::Value> {
    let s = &ctx.services;
    let query = HierarchyQuery {
        from: req.from.as_deref(),
        limit: req.limit.map(u64::from),
        max_depth: req.max_depth.map(u64::from),
        suggested_only: req.suggested_only,
    };
    let page = spaces::hierarchy(&s.directory, &s.rooms, ctx.user_id()?, &req.room_id, &query)?;
    let mut rooms = Vec::with_capacity(page.rooms.len());
    for room in page.rooms {
        let chunk = SpaceHierarchyRoomsChunk::new(room.summary, room.children_state);
        let mut value = serde_json::to_value(&chunk).map_err(|e| Error::internal(e.to_string()))?;
        if let Some(object) = value.as_object_mut() {
            object.entry("join_rule").or_insert_with(|| "public".into());
        }
        rooms.push(value);
    }
    let mut value = serde_json::json!({ "rooms": rooms });
    if let Some(next_batch) = page.next_batch {
        value["next_batch"] = next_batch.into();
    }
    Ok(value)
}
