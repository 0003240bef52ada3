//! Simplified sliding sync (MSC4186, the form Element X speaks at
//! `/_matrix/client/unstable/org.matrix.simplified_msc3575/sync`): the client names windows of
//! its room list (`lists` with `ranges`, sorted by recency) and rooms it follows
//! (`room_subscriptions`), each with a room config (`timeline_limit`, `required_state`); an
//! answer carries the rooms in those windows that are new to the connection or changed since
//! its previous answer, the list counts, and the extensions (`ext`).
//!
//! It is the `/sync` engine seen through another window: the same watermark bounds every read
//! (the answer's data ends at it), the same notifier wakes the long-poll (keys registered before
//! the first look), and the rooms are read with the same timeline pages, state reads,
//! history-visibility rules, unread counts, receipts, typing, account data, to-device inboxes
//! and device-list changes. What is particular to sliding sync is the per-connection record of
//! what was sent ([`conn`]), the room list ([`lists`]) and the shape of a room ([`room`]).

pub mod conn;
pub mod ext;
pub mod lists;
pub mod model;
pub mod room;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
    time::Duration,
};

use ruma::{OwnedRoomId, UserId};

use self::{
    conn::{ConnState, Connections, RoomConfig},
    ext::{Windows, to_device_since},
    lists::{BumpCache, Candidate},
    model::{RoomOut, RoomRule, SlidingRequest, SlidingResponse},
    room::Build,
};
use super::{MAX_TIMEOUT, Token};
use crate::{
    Error, Result,
    services::{Services, keys::to_device::TO_DEVICE_LIMIT},
};

/// Most lists per request (the MSC's limit).
const MAX_LISTS: usize = 100;
/// Longest list name, in bytes (the MSC's limit).
const MAX_LIST_NAME: usize = 64;
/// Most room subscriptions per request (the accepted MSC's limit).
const MAX_SUBSCRIPTIONS: usize = 100;
/// Most `required_state` entries per list or subscription.
const MAX_REQUIRED_STATE: usize = 100;
/// Longest `conn_id`, in bytes.
const MAX_CONN_ID: usize = 255;

/// The sliding-sync state of the server: connections and bump stamps.
pub struct SlidingSync {
    /// Every connection's record.
    pub connections: Connections,
    /// Bump stamps per room.
    pub bumps: BumpCache,
}

impl Default for SlidingSync {
    fn default() -> Self {
        SlidingSync {
            connections: Connections::default(),
            bumps: BumpCache::new(100_000),
        }
    }
}

fn validate(req: &SlidingRequest) -> Result<()> {
    use ruma::presence::PresenceState;
    if !matches!(
        req.set_presence,
        PresenceState::Online | PresenceState::Unavailable | PresenceState::Offline
    ) {
        return Err(Error::invalid_param(
            "set_presence must be online, unavailable or offline",
        ));
    }
    if req.lists.len() > MAX_LISTS {
        return Err(Error::invalid_param(format!("at most {MAX_LISTS} lists")));
    }
    if req.subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Err(Error::invalid_param(format!(
            "at most {MAX_SUBSCRIPTIONS} room subscriptions"
        )));
    }
    if req.conn_id.len() > MAX_CONN_ID {
        return Err(Error::invalid_param("conn_id is too long"));
    }
    for (name, list) in &req.lists {
        if name.len() > MAX_LIST_NAME {
            return Err(Error::invalid_param(format!(
                "list names are at most {MAX_LIST_NAME} bytes"
            )));
        }
        if list.ranges.iter().any(|(start, end)| start > end) {
            return Err(Error::invalid_param(format!(
                "lists.{name}: a range must not end before it starts"
            )));
        }
        if list.rule.include.len() + list.rule.exclude.len() > MAX_REQUIRED_STATE {
            return Err(Error::invalid_param(format!(
                "lists.{name}.required_state has too many entries"
            )));
        }
    }
    if req
        .subscriptions
        .values()
        .any(|s| s.include.len() + s.exclude.len() > MAX_REQUIRED_STATE)
    {
        return Err(Error::invalid_param(
            "a room subscription's required_state has too many entries",
        ));
    }
    Ok(())
}

/// A hash of what the request asks for (a changed request is answered even from a caught-up
/// position).
fn shape(req: &SlidingRequest) -> u64 {
    let mut hasher = DefaultHasher::new();
    req.lists.hash(&mut hasher);
    req.subscriptions.hash(&mut hasher);
    serde_json::to_string(&req.extensions)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// Adds a rule's config to a room's combined config (the superset: the largest timeline, every
/// state any rule includes, and excluded only what every rule excludes).
fn merge(configs: &mut BTreeMap<OwnedRoomId, (RoomConfig, Candidate)>, candidate: &Candidate, rule: &RoomRule) {
    let exclude: BTreeSet<(String, String)> = rule.exclude.iter().cloned().collect();
    let (config, _) = configs.entry(candidate.room_id.clone()).or_insert_with(|| {
        (
            RoomConfig {
                exclude: exclude.clone(),
                ..RoomConfig::default()
            },
            candidate.clone(),
        )
    });
    config.timeline_limit = config.timeline_limit.max(rule.timeline_limit);
    config.required_state.extend(rule.include.iter().cloned());
    config.exclude.retain(|e| exclude.contains(e));
}

/// The extensions a request enables.
fn extensions_on(req: &SlidingRequest) -> BTreeSet<&'static str> {
    let ext = &req.extensions;
    [
        ("to_device", ext.to_device.enabled),
        ("e2ee", ext.e2ee.enabled),
        ("account_data", ext.account_data.enabled),
        ("receipts", ext.receipts.enabled),
        ("typing", ext.typing.enabled),
        ("thread_subscriptions", ext.thread_subscriptions.enabled),
    ]
    .into_iter()
    .filter(|(_, on)| *on == Some(true))
    .map(|(name, _)| name)
    .collect()
}

fn has_news(response: &SlidingResponse, base: &ConnState) -> bool {
    let ext = &response.extensions;
    !response.rooms.is_empty()
        || base.counts != response.lists
        || ext.to_device.as_ref().is_some_and(|t| !t.events.is_empty())
        || !ext.e2ee.device_lists.is_empty()
        || !ext.account_data.is_empty()
        || !ext.receipts.is_empty()
        || !ext.typing.is_empty()
        || !ext.thread_subscriptions.is_empty()
}

/// One answer from `base` at the current watermark, and the connection's state after it.
fn build(
    services: &Services,
    (user_id, device_id): (&UserId, &str),
    req: &SlidingRequest,
    base: &ConnState,
    shape: u64,
) -> Result<(SlidingResponse, ConnState)> {
    let rooms = &services.rooms;
    let after = base.at.map(|a| a.position);
    // Fixed first: nothing above these is read.
    let up_to = rooms.watermark().max(after.unwrap_or(0));
    let ephemeral_up_to = rooms.notifier().ephemeral().max(base.at.map_or(0, |a| a.ephemeral));
    let b = Build {
        services,
        user_id,
        device_id,
        up_to,
        ephemeral_up_to,
        after,
        ignored: services.account_data.ignored_users(user_id)?,
        direct: services.direct_rooms(user_id)?,
    };
    let candidates = services.sliding_candidates(user_id, up_to, after, &|r| base.rooms.contains_key(r))?;

    let mut configs: BTreeMap<OwnedRoomId, (RoomConfig, Candidate)> = BTreeMap::new();
    let mut in_lists: BTreeMap<OwnedRoomId, Vec<String>> = BTreeMap::new();
    let mut windows = Windows {
        lists: BTreeMap::new(),
        subscribed: BTreeSet::new(),
        joined: BTreeSet::new(),
    };
    let mut response = SlidingResponse::default();
    for (name, list) in &req.lists {
        let filtered = services.filter_rooms(user_id, &candidates, &list.filters, &b.direct)?;
        response.lists.insert(name.clone(), filtered.len() as u64);
        let mut ids = Vec::new();
        for (index, candidate) in filtered.iter().enumerate() {
            let index = index as u64;
            let in_range =
                list.ranges.is_empty() || list.ranges.iter().any(|(start, end)| index >= *start && index <= *end);
            if in_range {
                ids.push(candidate.room_id.clone());
                in_lists
                    .entry(candidate.room_id.clone())
                    .or_default()
                    .push(name.clone());
                merge(&mut configs, candidate, &list.rule);
            }
        }
        windows.lists.insert(name.clone(), ids);
    }
    for (room_id, rule) in &req.subscriptions {
        // Only rooms the user is in, was in, or is invited to (as Synapse).
        let Some(candidate) = candidates.iter().find(|c| &c.room_id == room_id) else {
            continue;
        };
        windows.subscribed.insert(room_id.clone());
        merge(&mut configs, candidate, rule);
    }
    windows.joined = configs
        .iter()
        .filter(|(_, (_, c))| c.membership == "join")
        .map(|(id, _)| id.clone())
        .collect();

    let memberships = rooms.memberships_of(user_id)?;
    let known: HashSet<&OwnedRoomId> = memberships.iter().map(|(r, _)| r).collect();
    let mut state = ConnState {
        at: Some(Token {
            position: up_to,
            ephemeral: ephemeral_up_to,
        }),
        rooms: base
            .rooms
            .iter()
            .filter(|(r, _)| known.contains(r))
            .map(|(r, s)| (r.clone(), s.clone()))
            .collect(),
        counts: response.lists.clone(),
        shape,
        extensions_on: base.extensions_on.union(&extensions_on(req)).copied().collect(),
    };
    let mut initial_rooms = BTreeSet::new();
    for (room_id, (config, candidate)) in &configs {
        let (room, sent) = b.room(candidate, config, base.rooms.get(room_id))?;
        if let Some(built) = room {
            let room = built.room;
            if room.initial == Some(true) {
                initial_rooms.insert(room_id.clone());
            }
            let out = RoomOut {
                room,
                membership: candidate.membership.clone(),
                lists: in_lists.remove(room_id).unwrap_or_default(),
                expanded_timeline: built.expanded_timeline,
                name_removed: built.name_removed,
            };
            response.rooms.insert(room_id.clone(), out);
        }
        state.rooms.insert(room_id.clone(), sent);
    }
    response.extensions = b.extensions(&req.extensions, &windows, base, &initial_rooms)?;
    response.txn_id = req.txn_id.clone();
    Ok((response, state))
}

/// Runs one sliding-sync request of `user_id`'s `device_id`: answers at once when there is
/// news (or for a connection's first request), else waits until there is or `timeout` passes.
pub async fn sliding_sync(
    services: &Services,
    (user_id, device_id): (&UserId, &str),
    req: SlidingRequest,
) -> Result<SlidingResponse> {
    validate(&req)?;
    let conn_id = req.conn_id.clone();
    let shape = shape(&req);
    let connections = &services.sliding.connections;
    let resumed = connections.resume(user_id, device_id, &conn_id, req.pos.as_deref())?;
    let base = resumed.base;
    let rooms = &services.rooms;
    let keys = super::watched(services, user_id, req.set_presence.clone())?;
    // Registered before the first look, so nothing committed in between is missed.
    let waiter = rooms.notifier().register(keys);
    let to_device = req.extensions.to_device.enabled == Some(true);
    let to_device_after = to_device_since(req.extensions.to_device.since.as_deref())?;
    if to_device && let Some(since) = to_device_after {
        // The client holds the to-device messages up to the `since` it sends.
        services.keys.acknowledge_to_device(user_id, device_id, since).await?;
    }
    let timeout = match req.pos {
        Some(_) => req.timeout.unwrap_or_default().min(MAX_TIMEOUT),
        None => Duration::ZERO,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = tokio::time::Instant::now();
        // Same request, position at the watermark, no ephemeral change: nothing can be new.
        let caught_up = base.shape == shape
            && base
                .at
                .is_some_and(|a| a.position >= rooms.watermark() && a.ephemeral >= rooms.notifier().ephemeral());
        if caught_up && now < deadline {
            tokio::select! {
                _ = waiter.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            continue;
        }
        let (mut response, state) = build(services, (user_id, device_id), &req, &base, shape)?;
        if base.at.is_none() || has_news(&response, &base) || now >= deadline {
            if let Some(to_device) = &response.extensions.to_device
                && to_device.events.len() >= TO_DEVICE_LIMIT
            {
                // What did not fit moves past this answer's `next_batch`.
                let up_to = to_device.next_batch.parse().unwrap_or(0);
                services
                    .keys
                    .requeue_undelivered(user_id, device_id, to_device_after.unwrap_or(0), up_to)
                    .await?;
            }
            response.pos = connections.store(user_id, device_id, &conn_id, resumed.nonce, state);
            return Ok(response);
        }
        tokio::select! {
            _ = waiter.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}
