//! The request and answer of one sliding-sync round as the engine sees them, whichever endpoint
//! they came through: the unstable one Element X speaks (ruma's `v5` types, converted here) and
//! the accepted `/_matrix/client/v4/sync` (converted by its handler).

use std::{collections::BTreeMap, time::Duration};

use ruma::{
    OwnedRoomId,
    api::client::sync::sync_events::v5::{self, request, response},
    presence::PresenceState,
};

/// A list's or subscription's room config as asked.
#[derive(Clone, Debug, Default, Hash)]
pub struct RoomRule {
    /// The most timeline events to send.
    pub timeline_limit: u64,
    /// `(type, state_key)` to send; `*` matches anything, `$ME` the user, and
    /// `(m.room.member, $LAZY)` asks for lazy members.
    pub include: Vec<(String, String)>,
    /// `(type, state_key)` left out of what `include` matches (the accepted form's `exclude`).
    pub exclude: Vec<(String, String)>,
}

/// A list's filters (`None`: not filtered on that).
#[derive(Clone, Debug, Default, Hash)]
pub struct ListFilter {
    /// Only DMs, or none.
    pub is_dm: Option<bool>,
    /// Only encrypted rooms, or none.
    pub is_encrypted: Option<bool>,
    /// Only invites, or none.
    pub is_invite: Option<bool>,
    /// Only rooms of these types (`None` in the list: rooms without a type).
    pub room_types: Option<Vec<Option<String>>>,
    /// No room of these types.
    pub not_room_types: Vec<Option<String>>,
    /// Only rooms that are children of these spaces (that the user has joined).
    pub spaces: Option<Vec<OwnedRoomId>>,
    /// Only rooms with one of these tags.
    pub tags: Option<Vec<String>>,
    /// No room with one of these tags.
    pub not_tags: Vec<String>,
}

/// A list.
#[derive(Clone, Debug, Default, Hash)]
pub struct ListConfig {
    /// Inclusive index ranges into the filtered, sorted list (empty: all of it).
    pub ranges: Vec<(u64, u64)>,
    /// The config of its rooms.
    pub rule: RoomRule,
    /// Its filters.
    pub filters: ListFilter,
}

/// One request.
#[derive(Clone, Debug, Default)]
pub struct SlidingRequest {
    /// The connection (`""` when not named).
    pub conn_id: String,
    /// The position of the previous answer.
    pub pos: Option<String>,
    /// How long to wait for news.
    pub timeout: Option<Duration>,
    /// Presence to set.
    pub set_presence: PresenceState,
    /// The lists.
    pub lists: BTreeMap<String, ListConfig>,
    /// The room subscriptions.
    pub subscriptions: BTreeMap<OwnedRoomId, RoomRule>,
    /// The extensions (same fields on both endpoints).
    pub extensions: request::Extensions,
    /// Echoed back.
    pub txn_id: Option<String>,
}

/// One room of an answer.
#[derive(Debug)]
pub struct RoomOut {
    /// The room's fields (ruma's unstable shape).
    pub room: response::Room,
    /// The user's membership.
    pub membership: String,
    /// The lists whose windows hold it.
    pub lists: Vec<String>,
    /// Whether the timeline was resent longer because the timeline limit grew.
    pub expanded_timeline: bool,
    /// Whether the room's name was removed since the client had it (`name: null`).
    pub name_removed: bool,
}

/// One answer.
#[derive(Debug, Default)]
pub struct SlidingResponse {
    /// The next position.
    pub pos: String,
    /// List name → count.
    pub lists: BTreeMap<String, u64>,
    /// The rooms.
    pub rooms: BTreeMap<OwnedRoomId, RoomOut>,
    /// The extensions (ruma's unstable shapes).
    pub extensions: response::Extensions,
    /// The request's `txn_id`.
    pub txn_id: Option<String>,
}

fn rule(details: &request::RoomDetails) -> RoomRule {
    RoomRule {
        timeline_limit: details.timeline_limit.into(),
        include: details
            .required_state
            .iter()
            .map(|(t, k)| (t.to_string(), k.clone()))
            .collect(),
        exclude: Vec::new(),
    }
}

impl From<v5::Request> for SlidingRequest {
    fn from(req: v5::Request) -> Self {
        let lists = req
            .lists
            .into_iter()
            .map(|(name, list)| {
                let filters = list.filters.map_or_else(ListFilter::default, |f| ListFilter {
                    is_dm: f.is_dm,
                    is_encrypted: f.is_encrypted,
                    is_invite: f.is_invite,
                    room_types: (!f.room_types.is_empty())
                        .then(|| f.room_types.iter().map(|t| t.as_str().map(str::to_owned)).collect()),
                    not_room_types: f.not_room_types.iter().map(|t| t.as_str().map(str::to_owned)).collect(),
                    ..ListFilter::default()
                });
                let config = ListConfig {
                    ranges: list
                        .ranges
                        .iter()
                        .map(|(s, e)| (u64::from(*s), u64::from(*e)))
                        .collect(),
                    rule: rule(&list.room_details),
                    filters,
                };
                (name, config)
            })
            .collect();
        let subscriptions = req
            .room_subscriptions
            .into_iter()
            .map(|(room, sub)| {
                let mut details = request::RoomDetails::default();
                details.required_state = sub.required_state;
                details.timeline_limit = sub.timeline_limit;
                (room, rule(&details))
            })
            .collect();
        SlidingRequest {
            conn_id: req.conn_id.unwrap_or_default(),
            pos: req.pos,
            timeout: req.timeout,
            set_presence: req.set_presence,
            lists,
            subscriptions,
            extensions: req.extensions,
            txn_id: req.txn_id,
        }
    }
}

impl From<SlidingResponse> for v5::Response {
    fn from(answer: SlidingResponse) -> Self {
        let mut response = v5::Response::new(answer.pos);
        response.txn_id = answer.txn_id;
        for (name, count) in answer.lists {
            let mut list = response::List::default();
            list.count = ruma::UInt::try_from(count).unwrap_or(ruma::UInt::MAX);
            response.lists.insert(name, list);
        }
        response.rooms = answer.rooms.into_iter().map(|(id, out)| (id, out.room)).collect();
        response.extensions = answer.extensions;
        response
    }
}
