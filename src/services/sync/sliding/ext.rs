//! The extensions of sliding sync on the unstable endpoint (MSC3884 e2ee, MSC3885 to-device,
//! MSC3959 account data, MSC3960 receipts, MSC3961 typing, MSC4308 thread subscriptions), read with the same services as
//! `/sync`. The room-scoped ones (account data, receipts, typing) apply to the rooms their
//! `lists` and `rooms` name (each defaulting to `*`: every list, every subscription) among those
//! of this answer's windows. An extension enabled for the first time on a connection starts
//! from nothing (all global account data, the rooms' receipts and typing as for a new room).

use std::collections::{BTreeMap, BTreeSet};

use ruma::{
    OwnedRoomId, UInt, UserId,
    api::client::sync::sync_events::v5::{request, response},
    serde::Raw,
};
use serde_json::json;

use super::{conn::ConnState, room::Build};
use crate::{
    Error, Result,
    services::{account_data::Change, sync::build::raw},
};

/// The rooms of this answer's windows: per list, and the subscribed ones.
pub struct Windows {
    /// List name → the rooms in its ranges.
    pub lists: BTreeMap<String, Vec<OwnedRoomId>>,
    /// Subscribed rooms the user may see.
    pub subscribed: BTreeSet<OwnedRoomId>,
    /// The rooms of the windows the user is joined to (receipts and typing are read only there:
    /// an invite or a former room shows neither).
    pub joined: BTreeSet<OwnedRoomId>,
}

impl Windows {
    /// The rooms an extension's `lists` and `rooms` select.
    fn select(
        &self,
        lists: Option<&Vec<String>>,
        rooms: Option<&Vec<request::ExtensionRoomConfig>>,
    ) -> BTreeSet<OwnedRoomId> {
        let mut out = BTreeSet::new();
        let all_lists = lists.is_none_or(|l| l.iter().any(|n| n == "*"));
        for (name, ids) in &self.lists {
            if all_lists || lists.is_some_and(|l| l.contains(name)) {
                out.extend(ids.iter().cloned());
            }
        }
        match rooms {
            None => out.extend(self.subscribed.iter().cloned()),
            Some(rooms) => {
                for room in rooms {
                    match room {
                        request::ExtensionRoomConfig::AllSubscribed => out.extend(self.subscribed.iter().cloned()),
                        request::ExtensionRoomConfig::Room(id) if self.subscribed.contains(id) => {
                            out.insert(id.clone());
                        }
                        _ => {}
                    }
                }
            }
        }
        out
    }
}

/// Most thread-subscription changes per answer (and the default, as the MSC's).
const THREAD_SUBSCRIPTIONS_LIMIT: u64 = 100;

fn on(enabled: Option<bool>) -> bool {
    enabled == Some(true)
}

/// Parses the to-device `since` (a stream position this extension handed out).
pub fn to_device_since(since: Option<&str>) -> Result<Option<u64>> {
    since
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| Error::invalid_param("extensions.to_device.since is not a to-device token"))
        })
        .transpose()
}

impl Build<'_> {
    /// The extensions' answers. `base` is what the connection had; `initial_rooms` the rooms
    /// this answer sends whole.
    pub fn extensions(
        &self,
        req: &request::Extensions,
        windows: &Windows,
        base: &ConnState,
        initial_rooms: &BTreeSet<OwnedRoomId>,
    ) -> Result<response::Extensions> {
        let services = self.services;
        let user_id: &UserId = self.user_id;
        let mut out = response::Extensions::default();
        if on(req.to_device.enabled) {
            let after = to_device_since(req.to_device.since.as_deref())?.unwrap_or(0);
            let events = services
                .keys
                .to_device_messages(user_id, self.device_id, after, self.up_to)?
                .into_iter()
                .map(Raw::from_json)
                .collect();
            let mut to_device = response::ToDevice::default();
            to_device.next_batch = self.up_to.max(after).to_string();
            to_device.events = events;
            out.to_device = Some(to_device);
        }
        if on(req.e2ee.enabled) {
            let keys = &services.keys;
            let counts = keys.key_counts(user_id, self.device_id)?;
            for (algorithm, count) in &counts.one_time {
                out.e2ee
                    .device_one_time_keys_count
                    .insert(algorithm.as_str().into(), UInt::try_from(*count).unwrap_or(UInt::MAX));
            }
            out.e2ee.device_unused_fallback_key_types =
                Some(counts.unused_fallback.iter().map(|a| a.as_str().into()).collect());
            if let Some(after) = self.after {
                let (changed, left) = keys.device_list_changes(&services.rooms, user_id, after, self.up_to)?;
                out.e2ee.device_lists.changed = changed;
                out.e2ee.device_lists.left = left;
            }
        }
        let room_since = |room: &OwnedRoomId, extension: &str| -> Option<u64> {
            if initial_rooms.contains(room) || !base.extensions_on.contains(extension) {
                return None;
            }
            base.rooms
                .get(room)
                .filter(|r| r.membership != "invite")
                .map(|r| r.up_to)
        };
        if on(req.account_data.enabled) {
            let room_since = |room: &OwnedRoomId| room_since(room, "account_data");
            let data = &services.account_data;
            let selected = windows.select(req.account_data.lists.as_ref(), req.account_data.rooms.as_ref());
            let after = self.after.filter(|_| base.extensions_on.contains("account_data"));
            let global: Vec<Change> = match after {
                None => data.list(user_id, None)?,
                Some(after) => data
                    .changes(user_id, after, self.up_to)?
                    .into_iter()
                    .filter(|c| c.room_id.is_none())
                    .collect(),
            };
            out.account_data.global = events(global.iter())?;
            let earliest = selected.iter().filter_map(room_since).min();
            let changes = match earliest {
                Some(after) => data.changes(user_id, after, self.up_to)?,
                None => Vec::new(),
            };
            for room in &selected {
                let list = match room_since(room) {
                    None => events(data.list(user_id, Some(room.as_str()))?.iter())?,
                    Some(_) => events(changes.iter().filter(|c| c.room_id.as_deref() == Some(room.as_str())))?,
                };
                if !list.is_empty() {
                    out.account_data.rooms.insert(room.clone(), list);
                }
            }
        }
        if on(req.receipts.enabled) {
            let selected = windows.select(req.receipts.lists.as_ref(), req.receipts.rooms.as_ref());
            let ignored = &self.ignored;
            let skip = |u: &UserId| ignored.contains(u);
            let room_since = |room: &OwnedRoomId| room_since(room, "receipts");
            for room in selected.intersection(&windows.joined) {
                if let Some(content) =
                    services
                        .receipts
                        .content_since(room, user_id, room_since(room), self.up_to, &skip)?
                {
                    out.receipts
                        .rooms
                        .insert(room.clone(), raw(&json!({"type": "m.receipt", "content": content}))?);
                }
            }
        }
        if on(req.thread_subscriptions.enabled) {
            // MSC4308: the newest `limit` changes since the connection's last answer (all of
            // them on a connection's first answer with the extension), older ones behind
            // `prev_batch`.
            let after = self
                .after
                .filter(|_| base.extensions_on.contains("thread_subscriptions"))
                .unwrap_or(0);
            let limit = req.thread_subscriptions.limit.map_or(THREAD_SUBSCRIPTIONS_LIMIT, |l| {
                u64::from(l).clamp(1, THREAD_SUBSCRIPTIONS_LIMIT)
            });
            let page = services.thread_subs.page(user_id, after, self.up_to, limit as usize)?;
            out.thread_subscriptions.subscribed = page.subscribed;
            out.thread_subscriptions.unsubscribed = page.unsubscribed;
            out.thread_subscriptions.prev_batch = page.older;
        }
        if on(req.typing.enabled) {
            let selected = windows.select(req.typing.lists.as_ref(), req.typing.rooms.as_ref());
            for room in selected.intersection(&windows.joined) {
                let since = match room_since(room, "typing") {
                    Some(_) => base.rooms.get(room).map(|r| r.ephemeral),
                    None => None,
                };
                if let Some(users) = services.typing.changed_since(room, since, self.ephemeral_up_to) {
                    let users: Vec<_> = users.iter().filter(|u| !self.ignored.contains(*u)).collect();
                    out.typing.rooms.insert(
                        room.clone(),
                        raw(&json!({"type": "m.typing", "content": {"user_ids": users}}))?,
                    );
                }
            }
        }
        Ok(out)
    }
}

fn events<'c, T>(changes: impl Iterator<Item = &'c Change>) -> Result<Vec<Raw<T>>> {
    changes
        .map(|c| {
            let content: serde_json::Value =
                serde_json::from_str(c.content.get()).map_err(|e| Error::internal(e.to_string()))?;
            raw(&json!({"type": c.kind, "content": content}))
        })
        .collect()
}
