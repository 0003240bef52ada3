//! The space hierarchy (spec client-server-api "Spaces", `GET /rooms/{roomId}/hierarchy`): the
//! rooms below a space, found through its `m.space.child` state events.
//!
//! The walk is depth-first, as the spec and Synapse do it: a room's children are visited in
//! their `order` (valid orders first, then by the child event's timestamp, then by room id)
//! before the room's next sibling, and each room at most once. A child event counts only with a
//! non-empty `via` list of strings (an event without one, e.g. redacted, removes the child);
//! `suggested_only` keeps only children marked `suggested: true`. Children of rooms at
//! `max_depth` are not visited, and only spaces (`type: m.space`) have children.
//!
//! A room is shown when the requester may see its summary (the room summary's rules, shared
//! with [`Directory::visible_summary`]): joined or invited, join rule `public`, `knock` or
//! `knock_restricted`, `restricted` with the requester joined to an allowed room, or history
//! `world_readable`. Rooms not shown are skipped with everything below them; if the root itself
//! is not shown (or unknown) the answer is 403 `M_FORBIDDEN`, as in the spec and Synapse.
//!
//! Pages: the `next_batch` token names the walk (requester, root, `suggested_only`,
//! `max_depth`) and how many rooms earlier pages returned; the next page walks again and skips
//! those. So no session is kept on the server, and a token used with other parameters (or by
//! someone else) is refused with 400 `M_INVALID_PARAM`. A walk visits at most
//! [`MAX_VISITS`] rooms, which bounds the work of one request.

use std::{cmp::Ordering, collections::HashSet};

use base64::Engine as _;
use ruma::{
    OwnedRoomId, RoomId, UserId, events::space::child::HierarchySpaceChildEvent, room::RoomSummary, serde::Raw,
};
use serde_json::Value;

use super::{directory::Directory, rooms::Rooms};
use crate::{Error, Result};

/// Rooms per page when the client names no limit, and the most it may ask for (Synapse).
pub const MAX_LIMIT: u64 = 50;

/// Rooms one request visits at most (shown or not, skipped pages included).
pub const MAX_VISITS: usize = 2_000;

/// What a hierarchy request asks for.
#[derive(Clone, Debug, Default)]
pub struct HierarchyQuery<'a> {
    /// A `next_batch` token.
    pub from: Option<&'a str>,
    /// Page size.
    pub limit: Option<u64>,
    /// How deep to go (0: the root only).
    pub max_depth: Option<u64>,
    /// Only children marked `suggested`.
    pub suggested_only: bool,
}

/// One room of a page.
pub struct HierarchyRoom {
    /// Its summary.
    pub summary: RoomSummary,
    /// Its `m.space.child` events, stripped, with `origin_server_ts`.
    pub children_state: Vec<Raw<HierarchySpaceChildEvent>>,
}

/// One page of the hierarchy.
pub struct HierarchyPage {
    /// The rooms.
    pub rooms: Vec<HierarchyRoom>,
    /// The token of the next page.
    pub next_batch: Option<String>,
}

/// What a token carries.
#[derive(Debug, PartialEq, Eq)]
struct Token {
    requester: String,
    root: String,
    suggested_only: bool,
    max_depth: Option<u64>,
    skip: u64,
}

impl Token {
    fn encode(&self) -> String {
        let depth = self.max_depth.map_or_else(|| "-".to_owned(), |d| d.to_string());
        let text = format!(
            "h1\n{}\n{}\n{}\n{depth}\n{}",
            self.requester, self.root, self.suggested_only as u8, self.skip
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    fn decode(token: &str) -> Option<Token> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let parts: Vec<&str> = text.split('\n').collect();
        let [version, requester, root, suggested, depth, skip] = parts[..] else {
            return None;
        };
        if version != "h1" {
            return None;
        }
        Some(Token {
            requester: requester.to_owned(),
            root: root.to_owned(),
            suggested_only: match suggested {
                "0" => false,
                "1" => true,
                _ => return None,
            },
            max_depth: match depth {
                "-" => None,
                d => Some(d.parse().ok()?),
            },
            skip: skip.parse().ok()?,
        })
    }
}

/// A child event that counts, with what orders it.
struct Child {
    room_id: OwnedRoomId,
    order: Option<String>,
    ts: u64,
    stripped: Value,
}

impl Child {
    fn cmp(&self, other: &Child) -> Ordering {
        (self.order.is_none(), &self.order, self.ts, &self.room_id).cmp(&(
            other.order.is_none(),
            &other.order,
            other.ts,
            &other.room_id,
        ))
    }
}

/// A valid `order`: at most 50 characters between 0x20 and 0x7E (spec `m.space.child`).
fn valid_order(order: &str) -> bool {
    order.len() <= 50 && order.chars().all(|c| (' '..='~').contains(&c))
}

/// The room's children that count, in the walk's order.
fn children(rooms: &Rooms, room_id: &RoomId, suggested_only: bool) -> Result<Vec<Child>> {
    let mut out = Vec::new();
    for pdu in rooms.current_state_of_type(room_id, "m.space.child")? {
        let Some(state_key) = pdu.state_key.as_deref() else {
            continue;
        };
        let Ok(child) = OwnedRoomId::try_from(state_key) else {
            continue;
        };
        let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
        let via_ok = content
            .get("via")
            .and_then(Value::as_array)
            .is_some_and(|via| !via.is_empty() && via.iter().all(Value::is_string));
        if !via_ok {
            continue;
        }
        if suggested_only && content.get("suggested").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let order = content
            .get("order")
            .and_then(Value::as_str)
            .filter(|o| valid_order(o))
            .map(str::to_owned);
        let ts = u64::from(pdu.origin_server_ts.get());
        let stripped = serde_json::json!({
            "type": "m.space.child",
            "state_key": state_key,
            "content": content,
            "sender": pdu.sender,
            "origin_server_ts": ts,
        });
        out.push(Child {
            room_id: child,
            order,
            ts,
            stripped,
        });
    }
    out.sort_by(Child::cmp);
    Ok(out)
}

/// `GET /rooms/{roomId}/hierarchy`.
pub fn hierarchy(
    directory: &Directory,
    rooms: &Rooms,
    requester: &UserId,
    root: &RoomId,
    query: &HierarchyQuery<'_>,
) -> Result<HierarchyPage> {
    let limit = match query.limit {
        Some(0) => return Err(Error::invalid_param("limit must be greater than zero")),
        Some(limit) => limit.min(MAX_LIMIT),
        None => MAX_LIMIT,
    };
    let skip = match query.from {
        None => 0,
        Some(from) => {
            let token = Token::decode(from)
                .filter(|t| {
                    t.requester == requester.as_str()
                        && t.root == root.as_str()
                        && t.suggested_only == query.suggested_only
                        && t.max_depth == query.max_depth
                })
                .ok_or_else(|| Error::invalid_param("Unknown pagination token for this hierarchy request"))?;
            token.skip
        }
    };
    if directory.visible_summary(rooms, Some(requester), root)?.is_none() {
        return Err(Error::forbidden(format!("You may not view the room {root}")));
    }
    // The stack of rooms to visit (the next one last) with their depth.
    let mut stack: Vec<(OwnedRoomId, u64)> = vec![(root.to_owned(), 0)];
    let mut seen: HashSet<OwnedRoomId> = HashSet::new();
    let mut shown = 0u64;
    let mut page = Vec::new();
    let mut visits = 0;
    while let Some((room_id, depth)) = stack.pop() {
        if page.len() as u64 >= limit || visits >= MAX_VISITS {
            stack.push((room_id, depth));
            break;
        }
        if !seen.insert(room_id.clone()) {
            continue;
        }
        visits += 1;
        let Some((summary, _)) = directory.visible_summary(rooms, Some(requester), &room_id)? else {
            continue;
        };
        let is_space = summary.room_type.as_ref().is_some_and(|t| t.as_str() == "m.space");
        let children = if is_space {
            children(rooms, &room_id, query.suggested_only)?
        } else {
            Vec::new()
        };
        if query.max_depth.is_none_or(|max| depth < max) {
            stack.extend(children.iter().rev().map(|c| (c.room_id.clone(), depth + 1)));
        }
        if shown >= skip {
            let children_state = children
                .into_iter()
                .map(|c| {
                    serde_json::value::to_raw_value(&c.stripped)
                        .map(Raw::from_json)
                        .map_err(|e| Error::internal(e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            page.push(HierarchyRoom {
                summary,
                children_state,
            });
        }
        shown += 1;
    }
    let more = visits < MAX_VISITS && stack.iter().any(|(room, _)| !seen.contains(room));
    let next_batch = more.then(|| {
        Token {
            requester: requester.to_string(),
            root: root.to_string(),
            suggested_only: query.suggested_only,
            max_depth: query.max_depth,
            skip: shown,
        }
        .encode()
    });
    Ok(HierarchyPage {
        rooms: page,
        next_batch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let token = Token {
            requester: "@a:hs".into(),
            root: "!r:hs".into(),
            suggested_only: true,
            max_depth: Some(3),
            skip: 50,
        };
        assert_eq!(Token::decode(&token.encode()), Some(token));
        let token = Token {
            max_depth: None,
            suggested_only: false,
            requester: "@a:hs".into(),
            root: "!r:hs".into(),
            skip: 0,
        };
        assert_eq!(Token::decode(&token.encode()), Some(token));
        for bad in ["", "!!", "aDE", "dDFcbkBhOmhz"] {
            assert_eq!(Token::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn orders_are_checked() {
        assert!(valid_order("a") && valid_order("~ !"));
        assert!(!valid_order("\u{7f}") && !valid_order("é") && !valid_order(&"a".repeat(51)));
    }
}
