//! Receipts (spec "Receipts"): the latest receipt of each (user, type, thread) in a room,
//! stored durably on the global stream (`tables::streams`, family `receipt`, scope the room) so
//! an incremental sync sends only receipts that moved since its token. `m.read` is shown to the
//! room, `m.read.private` only to its owner. Every receipt also marks the room's receipts key
//! on the notifier, so a sync skips reading a room whose receipts did not move.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{EventId, OwnedEventId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use super::sync::{commit_on_stream, notifier::Key, notifier::Notifier};
use crate::{
    Error, Result,
    storage::{Db, codec, positions::Positions, tables::streams::StreamTable},
    util,
};

/// The private read receipt type.
pub const READ_PRIVATE: &str = "m.read.private";

#[derive(Serialize, Deserialize)]
struct Stored {
    event_id: String,
    ts: u64,
}

/// The receipts service.
pub struct Receipts {
    db: Arc<Db>,
    stream: StreamTable,
    positions: Arc<Positions>,
    notifier: Arc<Notifier>,
}

impl Receipts {
    /// Builds the service.
    pub fn new(db: Arc<Db>, positions: Arc<Positions>, notifier: Arc<Notifier>) -> Self {
        Self {
            stream: StreamTable::new(Arc::clone(&db), "receipt"),
            db,
            positions,
            notifier,
        }
    }

    /// Records a receipt (`m.read` or `m.read.private`) of `user_id` at `event_id`, for a thread
    /// or (`None`) unthreaded. The caller checks membership and that the event is in the room.
    pub async fn set(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        kind: &str,
        event_id: &EventId,
        thread: Option<&str>,
    ) -> Result<()> {
        let item = codec::key(&[user_id.as_bytes(), kind.as_bytes(), thread.unwrap_or("").as_bytes()]);
        let value = serde_json::to_vec(&Stored {
            event_id: event_id.to_string(),
            ts: util::now_ms(),
        })
        .map_err(|e| Error::internal(e.to_string()))?;
        let wake = if kind == READ_PRIVATE {
            Key::user(user_id)
        } else {
            Key::room(room_id)
        };
        commit_on_stream(
            &self.db,
            &self.positions,
            &self.notifier,
            vec![wake, Key::receipts(room_id)],
            |batch, position| {
                Ok(self
                    .stream
                    .queue_put(batch, room_id.as_str(), &item, position, &value)?)
            },
        )
        .await?;
        Ok(())
    }

    /// The events the user's own read receipts (`m.read`, `m.read.private`; unthreaded or on
    /// the main timeline) point at.
    pub fn read_marks(&self, room_id: &RoomId, user_id: &UserId) -> Result<Vec<ruma::OwnedEventId>> {
        let mut marks = Vec::new();
        for kind in ["m.read", READ_PRIVATE] {
            for thread in ["", "main"] {
                let item = codec::key(&[user_id.as_bytes(), kind.as_bytes(), thread.as_bytes()]);
                let Some(entry) = self.stream.get(room_id.as_str(), &item)? else {
                    continue;
                };
                if let Ok(stored) = serde_json::from_slice::<Stored>(&entry.value)
                    && let Ok(event_id) = ruma::OwnedEventId::try_from(stored.event_id)
                {
                    marks.push(event_id);
                }
            }
        }
        Ok(marks)
    }

    /// The events the user's own read receipts (`m.read`, `m.read.private`) in one thread
    /// point at: `thread` is a thread root's id, `main`, or empty for unthreaded receipts.
    pub fn read_marks_in(&self, room_id: &RoomId, user_id: &UserId, thread: &str) -> Result<Vec<OwnedEventId>> {
        let mut marks = Vec::new();
        for kind in ["m.read", READ_PRIVATE] {
            let item = codec::key(&[user_id.as_bytes(), kind.as_bytes(), thread.as_bytes()]);
            if let Some(entry) = self.stream.get(room_id.as_str(), &item)?
                && let Ok(stored) = serde_json::from_slice::<Stored>(&entry.value)
                && let Ok(event_id) = OwnedEventId::try_from(stored.event_id)
            {
                marks.push(event_id);
            }
        }
        Ok(marks)
    }

    /// The `m.receipt` event content for receipts of the room that `viewer` may see, moved
    /// after `after` (all when `None`) up to `up_to`; `None` when there are none.
    /// `skip` hides receipts of some users (ignored ones).
    pub fn content_since(
        &self,
        room_id: &RoomId,
        viewer: &UserId,
        after: Option<u64>,
        up_to: u64,
        skip: &dyn Fn(&UserId) -> bool,
    ) -> Result<Option<serde_json::Value>> {
        let entries = match after {
            // Nothing moved since the token: no scan.
            Some(after) if self.notifier.quiet_since(&Key::receipts(room_id), after) => return Ok(None),
            Some(after) => self.stream.since(room_id.as_str(), after, up_to)?,
            None => self.stream.all(room_id.as_str(), up_to)?,
        };
        let mut content: BTreeMap<OwnedEventId, BTreeMap<String, serde_json::Map<String, serde_json::Value>>> =
            BTreeMap::new();
        for entry in entries {
            let mut parts = codec::split(&entry.item);
            let (Some(user), Some(kind), Some(thread)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let (user, kind, thread) = (
                String::from_utf8_lossy(user),
                String::from_utf8_lossy(kind).into_owned(),
                String::from_utf8_lossy(thread),
            );
            let Ok(user) = ruma::OwnedUserId::try_from(user.as_ref()) else {
                continue;
            };
            if (kind == READ_PRIVATE && user != viewer) || skip(&user) {
                continue;
            }
            let Ok(stored) = serde_json::from_slice::<Stored>(&entry.value) else {
                continue;
            };
            let Ok(event_id) = OwnedEventId::try_from(stored.event_id) else {
                continue;
            };
            let mut receipt = serde_json::Map::new();
            receipt.insert("ts".into(), stored.ts.into());
            if !thread.is_empty() {
                receipt.insert("thread_id".into(), thread.as_ref().into());
            }
            content
                .entry(event_id)
                .or_default()
                .entry(kind)
                .or_default()
                .insert(user.to_string(), receipt.into());
        }
        if content.is_empty() {
            return Ok(None);
        }
        serde_json::to_value(content)
            .map(Some)
            .map_err(|e| Error::internal(e.to_string()))
    }
}

impl super::Services {
    /// Receipts and the fully-read marker of `user_id` in a room (`/receipt` and
    /// `/read_markers`): the user must be joined and each event must be in the room.
    /// `m.fully_read` is room account data; `m.read` and `m.read.private` are receipts.
    pub async fn set_read_markers(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        fully_read: Option<&EventId>,
        receipts: &[(&str, &EventId, Option<&str>)],
    ) -> Result<()> {
        self.rooms.ensure_joined(room_id, user_id)?;
        let in_room = |event_id: &EventId| -> Result<()> {
            match self.rooms.event(event_id)? {
                Some(pdu) if pdu.room().is_ok_and(|r| r == room_id) => Ok(()),
                _ => Err(Error::not_found(format!("Event {event_id} not found in {room_id}"))),
            }
        };
        if let Some(event_id) = fully_read {
            in_room(event_id)?;
        }
        for (kind, event_id, _) in receipts {
            if !matches!(*kind, "m.read" | READ_PRIVATE) {
                return Err(Error::invalid_param(format!("Unknown receipt type {kind}")));
            }
            in_room(event_id)?;
        }
        if let Some(event_id) = fully_read {
            let content = serde_json::value::to_raw_value(&serde_json::json!({ "event_id": event_id }))
                .map_err(|e| Error::internal(e.to_string()))?;
            self.account_data
                .set_managed(user_id, Some(room_id.as_str()), "m.fully_read", &content)
                .await?;
        }
        for (kind, event_id, thread) in receipts {
            self.receipts.set(room_id, user_id, kind, event_id, *thread).await?;
            if *kind == "m.read" {
                self.federation
                    .send_receipt(&self.rooms, room_id, user_id, event_id, *thread);
                self.appservice_receipt(room_id, user_id, event_id, *thread);
            }
        }
        Ok(())
    }
}
