//! The write path: building an event on the room's head under the room's lock, checking it
//! against the authorization rules, queueing its batch on the ordered commit queue, and
//! publishing it once durable (see the module documentation of [`super`]).

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedUserId, RoomId, RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
    state_res,
};
use serde_json::value::RawValue;
use tokio::sync::Mutex as AsyncMutex;

use super::{Appended, Directory, NewEvent, Rooms, locked, pdu::Pdu, sync_hooks, validate_power_levels};
use crate::{
    Error, Result,
    services::events,
    storage::{
        commit_queue::Queued,
        positions::Ticket,
        tables::{
            membership::Membership,
            state::{Loaded, StateMap},
        },
    },
    util,
};

/// What the next event of a room builds on, kept in memory under the room's lock.
pub(super) struct Head {
    /// Forward extremities: short id and event id.
    extremities: Vec<(u64, OwnedEventId)>,
    /// The greatest depth among them.
    depth: u64,
    /// The current state.
    current: Arc<Loaded>,
}

/// An event built and queued, not yet durable.
struct Staged {
    appended: Appended,
    short_event: u64,
    txn: Option<(String, String, String)>,
    ticket: Ticket,
    queued: Queued,
    /// A member event's target: the room's member list and the target's list of rooms change
    /// once it is durable.
    member_target: Option<OwnedUserId>,
    /// Whether the event changes what the room directory shows of the room.
    directory_relevant: bool,
}

impl Rooms {
    /// Creates a room: builds and stores its `m.room.create` event, returning the new room id
    /// (derived from the event in room version 12, `!random:server` before).
    pub async fn create(
        &self,
        version: &RoomVersionId,
        creator: &UserId,
        content: CanonicalJsonObject,
    ) -> Result<Appended> {
        let rules = events::rules(version)?;
        let room_id = if rules.authorization.room_create_event_id_as_room_id {
            None
        } else {
            Some(
                RoomId::parse(format!("!{}:{}", util::random_string(18), self.server_name))
                    .map_err(|e| Error::internal(e.to_string()))?,
            )
        };
        // In room version 12 the room id is the create event's hash: two rooms created by one
        // user with the same content in the same millisecond would be one room. Create events
        // get strictly increasing timestamps, and an id already taken is refused below.
        let ts = {
            let mut last = locked(&self.last_create_ts);
            *last = util::now_ms().max(*last + 1);
            *last
        };
        let mut event = NewEvent::state("m.room.create", "", content);
        event.origin_server_ts = Some(ts);
        let staged = self.stage(version, room_id.as_deref(), creator, event, &mut None)?;
        self.finish(staged, None).await
    }

    /// Builds, authorizes and stores an event in an existing room.
    pub async fn append(&self, room_id: &RoomId, sender: &UserId, event: NewEvent<'_>) -> Result<Appended> {
        let lock = self.room_lock(room_id);
        let mut head = lock.lock().await;
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        // A retried transaction gets the event it produced the first time.
        if let Some((user, device, txn)) = event.txn {
            let key = (user.to_owned(), device.to_owned(), txn.to_owned());
            let queued = locked(&self.pending_txns).get(&key).cloned();
            let stored = match queued {
                Some(id) => Some(id),
                None => self
                    .transactions
                    .get(user, device, txn)?
                    .map(|id| EventId::parse(id).map_err(|e| Error::internal(e.to_string())))
                    .transpose()?,
            };
            if let Some(event_id) = stored {
                return Ok(Appended {
                    event_id,
                    room_id: room_id.to_owned(),
                    position: 0,
                });
            }
        }
        let staged = self.stage(&version, Some(room_id), sender, event, &mut head)?;
        drop(head);
        self.finish(staged, Some(&lock)).await
    }

    /// The room's head as stored (used when no head is in memory).
    fn load_head(&self, room_id: &RoomId) -> Result<Option<Head>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(None);
        };
        let Some(current) = self.current_state(short_room)? else {
            return Ok(None);
        };
        let shorts = self.timeline.extremities(short_room)?;
        let mut extremities = Vec::new();
        let mut depth = 0u64;
        for (short, id) in shorts.iter().zip(self.ids.event_ids(&shorts)?) {
            let id = EventId::parse(id.ok_or_else(|| Error::internal("unknown extremity"))?)
                .map_err(|e| Error::internal(e.to_string()))?;
            depth = depth.max(u64::from(self.raw_event_by_short(*short, id.clone())?.depth));
            extremities.push((*short, id));
        }
        Ok(Some(Head {
            extremities,
            depth,
            current,
        }))
    }

    /// Waits until a staged event is durable, then publishes its position. If the write failed,
    /// the room's head is dropped so the next sender rebuilds it from what is stored.
    async fn finish(&self, staged: Staged, lock: Option<&AsyncMutex<Option<Head>>>) -> Result<Appended> {
        let written = staged.queued.durable().await;
        if let Some(target) = &staged.member_target {
            self.member_lists.invalidate(&staged.appended.room_id, target);
        }
        if staged.directory_relevant {
            self.directory.room_changed(&staged.appended.room_id);
        }
        locked(&self.pending).remove(&staged.short_event);
        if let Some(txn) = &staged.txn {
            locked(&self.pending_txns).remove(txn);
        }
        match written {
            Ok(()) => {
                staged.ticket.complete();
                self.notifier.flush(self.positions.watermark());
                Ok(staged.appended)
            }
            Err(e) => {
                if let Some(lock) = lock {
                    *lock.lock().await = None;
                }
                drop(staged.ticket);
                self.notifier.flush(self.positions.watermark());
                Err(e.into())
            }
        }
    }

    /// The write path proper, under the room's lock (or for a new room): builds the event on
    /// `head`, checks it, queues its batch and moves `head` past it. Nothing here waits.
    fn stage(
        &self,
        version: &RoomVersionId,
        room_id: Option<&RoomId>,
        sender: &UserId,
        event: NewEvent<'_>,
        head: &mut Option<Head>,
    ) -> Result<Staged> {
        let rules = events::rules(version)?;
        if event.kind == "m.room.power_levels" {
            validate_power_levels(&event.content)?;
        }
        if head.is_none()
            && let Some(room) = room_id
        {
            *head = self.load_head(room)?;
        }
        let empty = StateMap::new();
        let state = head.as_ref().map_or(&empty, |h| &h.current.state);
        if event.kind == "m.room.canonical_alias"
            && let Some(room_id) = room_id
        {
            let previous = self.lookup(state, event.kind, event.state_key.unwrap_or_default())?;
            let previous = previous.as_ref().map(|p| p.content.get());
            self.directory
                .check_canonical_alias(room_id, &event.content, previous)?;
        }

        // Auth events: the relevant subset of the current state.
        let content_raw = RawValue::from_string(ruma::CanonicalJsonValue::Object(event.content.clone()).to_string())
            .map_err(|e| Error::internal(e.to_string()))?;
        let kind = TimelineEventType::from(event.kind);
        let auth_types =
            state_res::auth_types_for_event(&kind, sender, event.state_key, &content_raw, &rules.authorization)
                .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?;
        let mut auth_events = Vec::new();
        for (auth_kind, auth_key) in &auth_types {
            if let Some(pdu) = self.lookup(state, &auth_kind.to_string(), auth_key)? {
                auth_events.push(pdu.event_id);
            }
        }

        // Prev events: the room's forward extremities; depth one past the deepest.
        let prev_events: Vec<OwnedEventId> = head
            .as_ref()
            .map(|h| h.extremities.iter().map(|(_, id)| id.clone()).collect())
            .unwrap_or_default();
        let depth = head.as_ref().map_or(0, |h| h.depth);

        let signed = events::build(
            &self.keys,
            self.server_name.as_str(),
            events::NewPdu {
                room_version: version,
                room_id,
                sender,
                kind: event.kind,
                state_key: event.state_key,
                content: event.content,
                prev_events,
                auth_events,
                depth: depth + 1,
                origin_server_ts: event.origin_server_ts.unwrap_or_else(util::now_ms),
                redacts: event.redacts,
            },
        )?;
        let pdu = Pdu::parse(signed.event_id.clone(), &signed.bytes)?;
        if event.kind == "m.room.create" && self.ids.room(signed.room_id.as_str())?.is_some() {
            return Err(Error::internal(format!("room id {} is already taken", signed.room_id)));
        }

        // The same checks a remote event gets: against its auth events, then the current state.
        let fetch_event = |id: &EventId| self.event(id).ok().flatten();
        state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, fetch_event)
            .map_err(|reason| Error::forbidden(format!("{} event is not authorized: {reason}", event.kind)))?;
        let fetch_state = |kind: &StateEventType, key: &str| self.lookup(state, &kind.to_string(), key).ok().flatten();
        state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, fetch_state)
            .map_err(|reason| Error::forbidden(format!("{} event is not authorized: {reason}", event.kind)))?;

        // One batch: the event, its place in the timeline and the state around it.
        let short_room = self.ids.room_or_create(signed.room_id.as_str())?;
        let short_event = self.ids.event_or_create(signed.event_id.as_str())?;
        let mut batch = self.db.batch();
        self.pdus.put(&mut batch, short_event, &signed.bytes);
        if let Some((user, device, txn)) = event.txn {
            self.transactions
                .put(&mut batch, user, device, txn, signed.event_id.as_str());
            sync_hooks::queue_event_txn(&self.db, &mut batch, short_event, (user, device, txn));
        }
        let before = match head.as_ref() {
            Some(head) => Arc::clone(&head.current),
            None => self.state.queue_snapshot(&mut batch, None, StateMap::new())?,
        };
        self.state.queue_before_event(&mut batch, short_event, before.id);
        if event.kind == "m.room.redaction" {
            let in_content = match signed.object.get("content") {
                Some(CanonicalJsonValue::Object(o)) => match o.get("redacts") {
                    Some(CanonicalJsonValue::String(id)) => Some(id.clone()),
                    _ => None,
                },
                _ => None,
            };
            let target = event.redacts.map(|id| id.to_string()).or(in_content);
            if let Some(target_short) = target.map(|t| self.ids.event(&t)).transpose()?.flatten() {
                self.pdus
                    .queue_redacted_by(&mut batch, target_short, signed.event_id.as_str());
            }
        }
        let after = if let Some(state_key) = event.state_key {
            let key = self.ids.state_key_or_create(event.kind, state_key)?;
            let mut after = before.state.clone();
            after.insert(key, short_event);
            let after = self.state.queue_snapshot(&mut batch, Some(&*before), after)?;
            self.state.queue_current(&mut batch, short_room, after.id);
            after
        } else {
            if head.is_none() {
                self.state.queue_current(&mut batch, short_room, before.id);
            }
            before
        };
        self.timeline
            .queue_set_extremities(&mut batch, short_room, &[short_event])?;
        let ticket = self.positions.allocate()?;
        let position = ticket.position();
        let mut member_target = None;
        if event.kind == "m.room.member"
            && let (Some(target), Some(CanonicalJsonValue::String(membership))) = (
                event.state_key,
                signed.object.get("content").and_then(|c| match c {
                    CanonicalJsonValue::Object(o) => o.get("membership"),
                    _ => None,
                }),
            )
        {
            let membership = Membership {
                membership: membership.clone(),
                position,
            };
            self.memberships
                .queue_set(&mut batch, target, signed.room_id.as_str(), &membership);
            member_target = OwnedUserId::try_from(target).ok();
        }
        self.notifier.mark(
            position,
            sync_hooks::concerns(signed.room_id.as_str(), event.kind, event.state_key),
        );
        self.timeline
            .queue_append(&mut batch, short_room, position, short_event);

        // Until it is durable, the event is served from memory and its transaction remembered.
        locked(&self.pending).insert(short_event, Arc::new(signed.bytes.clone()));
        let txn = event
            .txn
            .map(|(user, device, txn)| (user.to_owned(), device.to_owned(), txn.to_owned()));
        if let Some(txn) = &txn {
            locked(&self.pending_txns).insert(txn.clone(), signed.event_id.clone());
        }
        let queued = self.commits.enqueue(batch);
        *head = Some(Head {
            extremities: vec![(short_event, signed.event_id.clone())],
            depth: depth + 1,
            current: after,
        });
        Ok(Staged {
            appended: Appended {
                event_id: signed.event_id,
                room_id: signed.room_id,
                position,
            },
            short_event,
            txn,
            ticket,
            queued,
            member_target,
            directory_relevant: Directory::concerns(event.kind, event.state_key),
        })
    }
}
