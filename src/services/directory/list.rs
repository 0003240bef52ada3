//! The public room list and room summaries: each room's directory entry ([`RoomInfo`], read
//! from the state events it shows and the cached member list, cached until a change to the
//! room is durable), the sorted list of published rooms built from them (cached until a
//! published room changes or the set changes), its pages and their tokens, and the summary's
//! visibility rules (spec "Listing rooms", "Room summary").

use std::sync::Arc;

use base64::Engine as _;
use http::StatusCode;
use ruma::{
    EventEncryptionAlgorithm, OwnedMxcUri, OwnedRoomAliasId, OwnedRoomId, RoomId, RoomOrAliasId, RoomVersionId, UInt,
    UserId,
    directory::{PublicRoomsChunk, PublicRoomsChunkInit, RoomTypeFilter},
    room::{JoinRule, RestrictedSummary, RoomSummary, RoomType},
};
use serde_json::Value;

use super::{Directory, Listing, SHOWN_STATE};
use crate::{Error, Result, services::rooms::Rooms};

/// What the public room list is asked for.
#[derive(Default)]
pub struct ListQuery<'a> {
    /// Page size (`None`: everything).
    pub limit: Option<usize>,
    /// A `next_batch` or `prev_batch` token of an earlier page.
    pub since: Option<&'a str>,
    /// Case-insensitive substring of the name, topic or canonical alias.
    pub search: Option<&'a str>,
    /// Room types to keep (empty: all).
    pub room_types: &'a [RoomTypeFilter],
}

/// One page of the public room list.
pub struct ListPage {
    /// The rooms.
    pub chunk: Vec<PublicRoomsChunk>,
    /// Token of the following page.
    pub next_batch: Option<String>,
    /// Token of the preceding page.
    pub prev_batch: Option<String>,
    /// How many rooms match the query in all.
    pub total: u64,
}

/// A room's directory-relevant state.
pub(super) struct RoomInfo {
    room_id: OwnedRoomId,
    name: Option<String>,
    topic: Option<String>,
    canonical_alias: Option<OwnedRoomAliasId>,
    avatar_url: Option<OwnedMxcUri>,
    join_rule: JoinRule,
    world_readable: bool,
    guest_can_join: bool,
    room_type: Option<RoomType>,
    room_version: Option<RoomVersionId>,
    encryption: Option<EventEncryptionAlgorithm>,
    joined: u64,
}

impl RoomInfo {
    fn listable(&self) -> bool {
        let open = matches!(
            self.join_rule,
            JoinRule::Public | JoinRule::Knock | JoinRule::KnockRestricted(_)
        );
        (open || self.world_readable) && self.joined > 0
    }

    fn matches(&self, query: &ListQuery<'_>) -> bool {
        if let Some(term) = query.search.map(str::to_lowercase).filter(|t| !t.is_empty()) {
            let found = [
                self.name.as_deref(),
                self.topic.as_deref(),
                self.canonical_alias.as_ref().map(|a| a.as_str()),
            ]
            .into_iter()
            .flatten()
            .any(|field| field.to_lowercase().contains(&term));
            if !found {
                return false;
            }
        }
        query.room_types.is_empty()
            || query.room_types.iter().any(|wanted| match (wanted, &self.room_type) {
                (RoomTypeFilter::Default, None) => true,
                (wanted, Some(kind)) => wanted.as_str() == Some(kind.as_str()),
                _ => false,
            })
    }

    fn chunk(&self) -> PublicRoomsChunk {
        let mut chunk: PublicRoomsChunk = PublicRoomsChunkInit {
            num_joined_members: UInt::new_saturating(self.joined),
            room_id: self.room_id.clone(),
            world_readable: self.world_readable,
            guest_can_join: self.guest_can_join,
        }
        .into();
        chunk.name = self.name.clone();
        chunk.topic = self.topic.clone();
        chunk.canonical_alias = self.canonical_alias.clone();
        chunk.avatar_url = self.avatar_url.clone();
        chunk.join_rule = self.join_rule.kind();
        chunk.room_type = self.room_type.clone();
        chunk
    }
}

/// Where a page of the list starts: after (forwards) or before (backwards) the room with this
/// member count and id, in the list's order (members descending, then room id descending).
#[derive(Debug, PartialEq, Eq)]
struct Cursor {
    forwards: bool,
    joined: u64,
    room_id: String,
}

impl Cursor {
    fn encode(&self) -> String {
        let dir = if self.forwards { 'n' } else { 'p' };
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{dir}{}|{}", self.joined, self.room_id))
    }

    fn decode(token: &str) -> Result<Cursor> {
        let bad = || Error::invalid_param("Invalid pagination token");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let forwards = match text.chars().next() {
            Some('n') => true,
            Some('p') => false,
            _ => return Err(bad()),
        };
        let (joined, room_id) = text[1..].split_once('|').ok_or_else(bad)?;
        Ok(Cursor {
            forwards,
            joined: joined.parse().map_err(|_| bad())?,
            room_id: room_id.to_owned(),
        })
    }

    /// The list's sort key of a room: larger rooms first, then room id descending (Synapse).
    fn key(joined: u64, room_id: &str) -> (std::cmp::Reverse<u64>, std::cmp::Reverse<String>) {
        (std::cmp::Reverse(joined), std::cmp::Reverse(room_id.to_owned()))
    }
}

impl Directory {
    /// A room's directory entry, from the cache or read.
    fn entry(&self, rooms: &Rooms, room_id: &RoomId) -> Result<Option<Arc<RoomInfo>>> {
        self.entries.get_or_read(
            room_id,
            || room_id.to_owned(),
            || {
                self.entry_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(room_info(rooms, room_id)?.map(Arc::new))
            },
        )
    }

    /// The published rooms that belong on the list, in its order (cached until one changes).
    fn listing(&self, rooms: &Rooms) -> Result<Listing> {
        self.listing.get_or_read(
            &(),
            || (),
            || {
                let mut listed = Vec::new();
                for room_id in self.table.published()? {
                    let Ok(room_id) = OwnedRoomId::try_from(room_id) else {
                        continue;
                    };
                    if let Some(info) = self.entry(rooms, &room_id)?
                        && info.listable()
                    {
                        listed.push(info);
                    }
                }
                listed.sort_by_key(|info| Cursor::key(info.joined, info.room_id.as_str()));
                Ok(Arc::new(listed))
            },
        )
    }

    /// A page of the public room list: published rooms that are public, knockable or
    /// world-readable and have a joined member, largest first (then by room id, descending).
    /// Tokens name the room a page ends at, so pages stay stable while rooms come and go.
    pub fn public_rooms(&self, rooms: &Rooms, query: &ListQuery<'_>) -> Result<ListPage> {
        let cursor = query.since.map(Cursor::decode).transpose()?;
        let listing = self.listing(rooms)?;
        let listed: Vec<&RoomInfo> = listing.iter().map(|i| &**i).filter(|i| i.matches(query)).collect();
        let total = listed.len() as u64;
        // The page is `start..end` of the sorted list.
        let (start, end) = match &cursor {
            None => (0, query.limit.map_or(listed.len(), |l| l.min(listed.len()))),
            Some(c) => {
                let at = Cursor::key(c.joined, &c.room_id);
                let split = listed.partition_point(|i| Cursor::key(i.joined, i.room_id.as_str()) <= at);
                if c.forwards {
                    let end = query.limit.map_or(listed.len(), |l| (split + l).min(listed.len()));
                    (split, end)
                } else {
                    // Strictly before the cursor's room.
                    let before = listed.partition_point(|i| Cursor::key(i.joined, i.room_id.as_str()) < at);
                    let start = query.limit.map_or(0, |l| before.saturating_sub(l));
                    (start, before)
                }
            }
        };
        let cursor_at = |info: &RoomInfo, forwards| Cursor {
            forwards,
            joined: info.joined,
            room_id: info.room_id.to_string(),
        };
        let next_batch = (end < listed.len() && end > 0).then(|| cursor_at(listed[end - 1], true).encode());
        let prev_batch = (start > 0 && start < listed.len()).then(|| cursor_at(listed[start], false).encode());
        Ok(ListPage {
            chunk: listed[start..end].iter().map(|info| info.chunk()).collect(),
            next_batch,
            prev_batch,
            total,
        })
    }

    /// `GET /room_summary/{roomIdOrAlias}` (spec v1.15, MSC3266): the summary of a room and the
    /// requester's membership (`leave` when they have none; absent when unauthenticated).
    ///
    /// Visible when the room is public, knockable or world-readable, when the requester is
    /// joined or invited, or (restricted rooms) joined to one of the rooms the join rule allows,
    /// as Synapse decides; otherwise 404 `M_NOT_FOUND`, as for a room Hearth does not know.
    pub fn summary(
        &self,
        rooms: &Rooms,
        requester: Option<&UserId>,
        target: &RoomOrAliasId,
    ) -> Result<(RoomSummary, Option<String>)> {
        let not_found = || Error::not_found(format!("Room {target} not found"));
        let room_id = match self.resolve_room(target) {
            Ok(room_id) => room_id,
            Err(Error::Matrix { status, .. }) if status == StatusCode::NOT_FOUND => return Err(not_found()),
            Err(e) => return Err(e),
        };
        self.visible_summary(rooms, requester, &room_id)?.ok_or_else(not_found)
    }

    /// A room's summary and the requester's membership (`leave` when they have none; `None`
    /// when unauthenticated), if the requester may see the room: the rules of
    /// [`Self::summary`], which the space hierarchy applies to each room too. `None` for a
    /// room the requester may not see and for one Hearth does not know.
    pub fn visible_summary(
        &self,
        rooms: &Rooms,
        requester: Option<&UserId>,
        room_id: &RoomId,
    ) -> Result<Option<(RoomSummary, Option<String>)>> {
        let Some(info) = self.entry(rooms, room_id)? else {
            return Ok(None);
        };
        let membership = requester
            .map(|user| rooms.membership(room_id, user))
            .transpose()?
            .flatten();
        let open = matches!(
            info.join_rule,
            JoinRule::Public | JoinRule::Knock | JoinRule::KnockRestricted(_)
        );
        let member = matches!(membership.as_deref(), Some("join" | "invite"));
        let mut via_allowed_room = false;
        if let (JoinRule::Restricted(restricted), Some(user)) = (&info.join_rule, requester) {
            for room in RestrictedSummary::from(restricted.clone()).allowed_room_ids {
                if rooms.membership(&room, user)?.as_deref() == Some("join") {
                    via_allowed_room = true;
                    break;
                }
            }
        }
        if !(open || info.world_readable || member || via_allowed_room) {
            return Ok(None);
        }
        let mut summary = RoomSummary::new(
            info.room_id.clone(),
            info.join_rule.clone().into(),
            info.guest_can_join,
            UInt::new_saturating(info.joined),
            info.world_readable,
        );
        summary.canonical_alias = info.canonical_alias.clone();
        summary.name = info.name.clone();
        summary.topic = info.topic.clone();
        summary.avatar_url = info.avatar_url.clone();
        summary.room_type = info.room_type.clone();
        summary.encryption = info.encryption.clone();
        summary.room_version = info.room_version.clone();
        let membership = requester.map(|_| membership.unwrap_or_else(|| "leave".to_owned()));
        Ok(Some((summary, membership)))
    }
}

/// The directory-relevant state of a room (`None` if Hearth does not know it): the state
/// events it shows, as they stand (a redacted name or topic is not shown), and the joined
/// members counted from the cached member list.
fn room_info(rooms: &Rooms, room_id: &RoomId) -> Result<Option<RoomInfo>> {
    let wanted: Vec<(&str, &str)> = SHOWN_STATE.iter().map(|kind| (*kind, "")).collect();
    let Some(state) = rooms.state_events(room_id, &wanted)? else {
        return Ok(None);
    };
    let mut info = RoomInfo {
        room_id: room_id.to_owned(),
        name: None,
        topic: None,
        canonical_alias: None,
        avatar_url: None,
        join_rule: JoinRule::Invite,
        world_readable: false,
        guest_can_join: false,
        room_type: None,
        room_version: None,
        encryption: None,
        joined: rooms.members(room_id)?.count("join") as u64,
    };
    for (kind, pdu) in SHOWN_STATE.iter().zip(state) {
        let Some(pdu) = pdu else { continue };
        let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
        let text = |field: &str| content.get(field).and_then(Value::as_str).map(str::to_owned);
        match *kind {
            "m.room.create" => {
                info.room_type = text("type").map(RoomType::from);
                info.room_version = Some(
                    text("room_version")
                        .and_then(|v| RoomVersionId::try_from(v).ok())
                        .unwrap_or(RoomVersionId::V1),
                );
            }
            "m.room.name" => info.name = text("name").filter(|n| !n.is_empty()),
            "m.room.topic" => info.topic = text("topic").filter(|t| !t.is_empty()),
            "m.room.canonical_alias" => {
                info.canonical_alias = text("alias").and_then(|a| OwnedRoomAliasId::try_from(a).ok())
            }
            "m.room.avatar" => info.avatar_url = text("url").filter(|u| !u.is_empty()).map(OwnedMxcUri::from),
            "m.room.join_rules" => {
                info.join_rule = serde_json::from_value(content.clone()).unwrap_or(JoinRule::Invite);
            }
            "m.room.history_visibility" => {
                info.world_readable = text("history_visibility").as_deref() == Some("world_readable")
            }
            "m.room.guest_access" => info.guest_can_join = text("guest_access").as_deref() == Some("can_join"),
            "m.room.encryption" => info.encryption = text("algorithm").map(EventEncryptionAlgorithm::from),
            _ => {}
        }
    }
    Ok(Some(info))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use ruma::{CanonicalJsonObject, CanonicalJsonValue};

    use super::*;
    use crate::services::{
        Services,
        rooms::NewEvent,
        rooms::{create::Preset, tests::named_room},
    };

    #[tokio::test]
    async fn the_public_room_list_is_served_from_its_cache_until_a_room_changes() {
        let dir = tempfile::tempdir().unwrap();
        let services = Services::for_tests(dir.path(), 64 << 20);
        let (rooms, directory) = (&services.rooms, &services.directory);
        let alice = ruma::UserId::parse("@alice:localhost").unwrap();
        let mut ids = Vec::new();
        for name in ["one", "two"] {
            let request = named_room(name, Preset::PublicChat, true);
            ids.push(rooms.create_room(&alice, request).await.unwrap());
        }
        let list = || directory.public_rooms(rooms, &ListQuery::default()).unwrap();
        let reads = || directory.entry_reads.load(Ordering::Relaxed);
        assert_eq!(list().chunk.len(), 2);
        let after_first = reads();
        for _ in 0..5 {
            assert_eq!(list().chunk.len(), 2);
        }
        assert_eq!(reads(), after_first, "later requests read no room");
        let mut content = CanonicalJsonObject::new();
        content.insert("topic".into(), CanonicalJsonValue::String("news".into()));
        rooms
            .append(&ids[0], &alice, NewEvent::state("m.room.topic", "", content))
            .await
            .unwrap();
        let page = list();
        assert_eq!(reads(), after_first + 1, "only the changed room is read again");
        let changed = page.chunk.iter().find(|c| c.room_id == ids[0]).unwrap();
        assert_eq!(changed.topic.as_deref(), Some("news"));
    }

    #[test]
    fn cursors_round_trip_and_bad_tokens_are_refused() {
        for forwards in [true, false] {
            let cursor = Cursor {
                forwards,
                joined: 42,
                room_id: "!abc:hearth.test".into(),
            };
            assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        }
        for bad in [
            "",
            "!!",
            "eDE",
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("n12"),
        ] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
