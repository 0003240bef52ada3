//! The write path: building an event on the room's head under the room's lock, checking it
//! against the authorization rules, queueing its batch on the ordered commit queue, and
//! publishing it once durable (see the module documentation of [`super`]).

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId,
    UserId,
    events::{StateEventType, TimelineEventType},
    state_res,
};
use tokio::sync::Mutex as AsyncMutex;

use super::{
    Appended, Directory, NewEvent, Rooms, locked, pdu::Pdu, redaction, state::StateAt, sync_hooks,
    validate_power_levels,
};
use crate::{
    Error, Result,
    services::{events, sync::notifier::Key},
    storage::{
        Batch,
        commit_queue::Queued,
        positions::Ticket,
        tables::{
            membership::Membership,
            state::{Changes, Layer},
        },
    },
    util,
};

/// What the next event of a room builds on, kept in memory under the room's lock.
pub(super) struct Head {
    /// Forward extremities: short id and event id.
    pub(super) extremities: Vec<(u64, OwnedEventId)>,
    /// The greatest depth among them.
    pub(super) depth: u64,
    /// The current state's layer.
    pub(super) current: Arc<Layer>,
}

impl Head {
    /// The current state's layer.
    pub(super) fn current_layer(&self) -> Arc<Layer> {
        Arc::clone(&self.current)
    }

    /// Moves the current state to `layer` (a bulk import of state).
    pub(super) fn set_current_layer(&mut self, layer: Arc<Layer>) {
        self.current = layer;
    }
}

/// The most prev events an event names (the spec's limit on a PDU's `prev_events`).
const MAX_PREV_EVENTS: usize = 20;

/// An event built and checked, its writes added to a batch that is not queued yet; served
/// from memory until it is durable.
pub(super) struct Staged {
    pub(super) appended: Appended,
    pub(super) short_event: u64,
    pub(super) txn: Option<(String, String, String)>,
    pub(super) ticket: Ticket,
    /// A member event's target: the room's member list and the target's list of rooms change
    /// once it is durable.
    pub(super) member_target: Option<OwnedUserId>,
    /// The keys its position wakes (marked when its batch is queued).
    pub(super) concerns: Vec<Key>,
    /// Whether the event changes what the room directory shows of the room.
    pub(super) directory_relevant: bool,
    /// Whether it is this server's own event, to be sent to the other servers in the room.
    pub(super) forward: bool,
}

/// A durable local event for federation.
struct OutboundEvent {
    room_id: OwnedRoomId,
    event_id: OwnedEventId,
    short_event: u64,
    bytes: Arc<Vec<u8>>,
    /// A member event's target, whose server must hear of it too.
    target: Option<OwnedUserId>,
}

/// A room being created ([`Rooms::draft_room`]): its events are built and checked one by one
/// on a head kept here, and written together in one batch by [`RoomDraft::commit`]. Until
/// then nobody can read or reach the room; dropped uncommitted, it leaves nothing behind (at
/// most interned ids no stored event uses).
pub struct RoomDraft<'a> {
    rooms: &'a Rooms,
    version: RoomVersionId,
    creator: OwnedUserId,
    room_id: OwnedRoomId,
    head: Option<Head>,
    batch: Batch,
    staged: Vec<Staged>,
}

impl RoomDraft<'_> {
    /// The new room's id.
    pub fn room_id(&self) -> &RoomId {
        &self.room_id
    }

    /// Builds and checks the creator's next event in the room. After an error, drop the draft:
    /// its batch may hold part of the refused event.
    pub fn add(&mut self, event: NewEvent<'_>) -> Result<()> {
        let staged = self.rooms.stage(
            &self.version,
            Some(&self.room_id),
            &self.creator,
            event,
            &mut self.head,
            &mut self.batch,
        )?;
        self.staged.push(staged);
        Ok(())
    }

    /// The batch the room is written in, for other services' writes that belong to the new room
    /// (its alias, its directory listing).
    pub fn batch(&mut self) -> &mut Batch {
        &mut self.batch
    }

    /// Writes the room: every event and whatever else was queued, in one batch.
    pub async fn commit(mut self) -> Result<OwnedRoomId> {
        let batch = std::mem::replace(&mut self.batch, self.rooms.db.batch());
        let staged = std::mem::take(&mut self.staged);
        let queued = self.rooms.queue(batch, &staged);
        self.rooms.finish(staged, queued, None).await?;
        Ok(self.room_id.clone())
    }
}

impl Drop for RoomDraft<'_> {
    fn drop(&mut self) {
        self.rooms.abandon(std::mem::take(&mut self.staged));
    }
}

impl Rooms {
    /// Starts creating a room: builds and checks its `m.room.create` event, giving the new room
    /// id (derived from the event in room version 12, `!random:server` before). Nothing is
    /// written until [`RoomDraft::commit`].
    pub fn draft_room(
        &self,
        version: &RoomVersionId,
        creator: &UserId,
        content: CanonicalJsonObject,
    ) -> Result<RoomDraft<'_>> {
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
        let (mut head, mut batch) = (None, self.db.batch());
        let staged = self.stage(version, room_id.as_deref(), creator, event, &mut head, &mut batch)?;
        Ok(RoomDraft {
            rooms: self,
            version: version.clone(),
            creator: creator.to_owned(),
            room_id: staged.appended.room_id.clone(),
            head,
            batch,
            staged: vec![staged],
        })
    }

    /// Creates a room holding only its `m.room.create` event; returns the new room id.
    pub async fn create(
        &self,
        version: &RoomVersionId,
        creator: &UserId,
        content: CanonicalJsonObject,
    ) -> Result<OwnedRoomId> {
        self.draft_room(version, creator, content)?.commit().await
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
        let mut batch = self.db.batch();
        let staged = self.stage(&version, Some(room_id), sender, event, &mut head, &mut batch)?;
        // Queued under the lock, so the room's events reach the disk in the order they were built.
        let queued = self.queue(batch, std::slice::from_ref(&staged));
        drop(head);
        let appended = self.finish(vec![staged], queued, Some(&lock)).await?;
        appended
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("no event appended"))
    }

    /// The room's head as stored (used when no head is in memory).
    pub(super) fn load_head(&self, room_id: &RoomId) -> Result<Option<Head>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(None);
        };
        let Some(current) = self.state.current(short_room)? else {
            return Ok(None);
        };
        let current = self.state.layer(current)?;
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

    /// Hands staged events' batch to the commit queue, after marking their positions for the
    /// long-polls they concern.
    pub(super) fn queue(&self, batch: Batch, staged: &[Staged]) -> Queued {
        for event in staged {
            self.notifier.mark(event.ticket.position(), event.concerns.clone());
        }
        self.commits.enqueue(batch)
    }

    /// Waits until staged events are durable, then publishes their positions. If the write
    /// failed, the room's head is dropped so the next sender rebuilds it from what is stored.
    pub(super) async fn finish(
        &self,
        staged: Vec<Staged>,
        queued: Queued,
        lock: Option<&AsyncMutex<Option<Head>>>,
    ) -> Result<Vec<Appended>> {
        let written = queued.durable().await;
        let mut tickets = Vec::with_capacity(staged.len());
        let mut appended = Vec::with_capacity(staged.len());
        let mut outbound = Vec::new();
        for event in staged {
            if written.is_ok()
                && event.forward
                && self.outbound.get().is_some()
                && let Some(bytes) = locked(&self.pending).get(&event.short_event).cloned()
            {
                outbound.push(OutboundEvent {
                    room_id: event.appended.room_id.clone(),
                    event_id: event.appended.event_id.clone(),
                    short_event: event.short_event,
                    bytes,
                    target: event.member_target.clone(),
                });
            }
            if let Some(target) = &event.member_target {
                self.member_lists.invalidate(&event.appended.room_id, target);
            }
            if event.directory_relevant {
                self.directory.room_changed(&event.appended.room_id);
            }
            if written.is_ok() {
                self.tell_user_directory(&event);
            }
            self.forget_pending(&event);
            tickets.push(event.ticket);
            appended.push(event.appended);
        }
        match written {
            Ok(()) => {
                tickets.into_iter().for_each(Ticket::complete);
                self.notifier.flush(self.positions.watermark());
                self.send_outbound(outbound).await;
                Ok(appended)
            }
            Err(e) => {
                if let Some(lock) = lock {
                    *lock.lock().await = None;
                }
                drop(tickets);
                self.notifier.flush(self.positions.watermark());
                Err(e.into())
            }
        }
    }

    /// Hands durable local events of rooms with members elsewhere to federation
    /// ([`Self::federation_destinations`]). Each was marked unsent in its own batch (when it had
    /// destinations then), so a crash before federation queued it loses nothing
    /// ([`Self::unsent_local_events`]).
    async fn send_outbound(&self, events: Vec<OutboundEvent>) {
        let Some(sender) = self.outbound.get() else {
            return;
        };
        for event in events {
            let destinations = match self.federation_destinations(&event.room_id, event.target.as_deref()) {
                Ok(destinations) => destinations,
                Err(e) => {
                    tracing::warn!(room_id = %event.room_id, error = %e, "cannot read the room's servers");
                    continue;
                }
            };
            if destinations.is_empty() {
                self.forwarded(event.short_event);
                continue;
            }
            let event = super::Outbound {
                room_id: event.room_id,
                event_id: event.event_id,
                short_event: event.short_event,
                destinations,
                bytes: event.bytes,
            };
            if sender.send(event).await.is_err() {
                tracing::warn!("federation is not taking events any more");
            }
        }
    }

    /// Keeps the user directory current: a member event re-reads the member's joined rooms,
    /// other state the room directory shows re-reads whether the room is public.
    fn tell_user_directory(&self, event: &Staged) {
        let room_id = &event.appended.room_id;
        let told = match &event.member_target {
            Some(target) => self.user_directory.member_changed(self, room_id, target),
            None if event.directory_relevant => self.user_directory.room_state_changed(self, room_id),
            None => Ok(()),
        };
        if let Err(e) = told {
            tracing::warn!(%room_id, error = %e, "user directory not updated");
        }
    }

    /// Drops staged events that will never be queued (a room draft given up): they are no
    /// longer served from memory and their positions are abandoned.
    fn abandon(&self, staged: Vec<Staged>) {
        for event in &staged {
            self.forget_pending(event);
        }
    }

    /// Stops serving a staged event (and its transaction) from memory.
    fn forget_pending(&self, event: &Staged) {
        locked(&self.pending).remove(&event.short_event);
        if let Some(txn) = &event.txn {
            locked(&self.pending_txns).remove(txn);
        }
    }

    /// The write path proper, under the room's lock (or for a room being created): builds the
    /// event on `head`, checks it, adds its writes to `batch` and moves `head` past it. Nothing
    /// here waits. On an error `head` is unchanged and `batch` is to be dropped (it may hold
    /// part of the event).
    fn stage(
        &self,
        version: &RoomVersionId,
        room_id: Option<&RoomId>,
        sender: &UserId,
        mut event: NewEvent<'_>,
        head: &mut Option<Head>,
        batch: &mut Batch,
    ) -> Result<Staged> {
        let rules = events::rules(version)?;
        // A redaction sent through `/send` in a room version before 11 names its target in the
        // content; those versions keep it at the top level.
        let hoisted = if event.kind == "m.room.redaction" {
            redaction::hoist_redacts(&rules, &mut event.content)?
        } else {
            None
        };
        let redacts = event.redacts.or(hoisted.as_deref());
        if event.kind == "m.room.power_levels" {
            validate_power_levels(&event.content)?;
        }
        if head.is_none()
            && let Some(room) = room_id
        {
            *head = self.load_head(room)?;
        }
        let state = head
            .as_ref()
            .map_or_else(StateAt::default, |h| StateAt::layer(Arc::clone(&h.current)));
        let state = &state;
        if event.kind == "m.room.canonical_alias"
            && let Some(room_id) = room_id
        {
            let previous = self.lookup(state, event.kind, event.state_key.unwrap_or_default())?;
            let previous = previous.as_ref().map(|p| p.content.get());
            self.directory
                .check_canonical_alias(room_id, &event.content, previous)?;
        }

        // Auth events: the relevant subset of the current state.
        let content_raw =
            serde_json::value::to_raw_value(&event.content).map_err(|e| Error::internal(e.to_string()))?;
        let kind = TimelineEventType::from(event.kind);
        let auth_types =
            state_res::auth_types_for_event(&kind, sender, event.state_key, &content_raw, &rules.authorization)
                .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?;
        let mut auth_events = Vec::new();
        for (auth_kind, auth_key) in &auth_types {
            if let Some((_, event_id)) = self.state_entry(state, &auth_kind.to_string(), auth_key)? {
                auth_events.push(event_id);
            }
        }

        // Prev events: the room's forward extremities, the newest [`MAX_PREV_EVENTS`] of them
        // (other servers refuse more); depth one past the deepest.
        let extremities = head.as_ref().map(|h| h.extremities.as_slice()).unwrap_or_default();
        let (left_over, cited) = extremities.split_at(extremities.len().saturating_sub(MAX_PREV_EVENTS));
        let prev_events: Vec<OwnedEventId> = cited.iter().map(|(_, id)| id.clone()).collect();
        // The extremities it does not name stay extremities, with it.
        let mut new_extremities = left_over.to_vec();
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
                redacts,
                reference_hashes: Some(&|id: &EventId| self.reference_hash(id, &rules)),
            },
        )?;
        let pdu = Pdu::parse(signed.event_id.clone(), &signed.bytes)?;
        if event.kind == "m.room.create" && self.ids.room(signed.room_id.as_str())?.is_some() {
            return Err(Error::internal(format!("room id {} is already taken", signed.room_id)));
        }

        // The same checks a remote event gets: against its auth events, then the current state,
        // both as stored (never in a redacted form).
        let fetch_event = |id: &EventId| self.original_event(id).ok().flatten();
        state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, fetch_event)
            .map_err(|reason| Error::forbidden(format!("{} event is not authorized: {reason}", event.kind)))?;
        let fetch_state =
            |kind: &StateEventType, key: &str| self.original_lookup(state, &kind.to_string(), key).ok().flatten();
        state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, fetch_state)
            .map_err(|reason| Error::forbidden(format!("{} event is not authorized: {reason}", event.kind)))?;

        // A relation is checked (400 for one Synapse refuses) before anything is written.
        let relation = self.relation_of(&pdu)?;

        // A redaction takes effect (or not) in the state it is sent in.
        let redacted = if event.kind == "m.room.redaction" {
            self.redaction_effect(version, &rules, state, &pdu)?
        } else {
            None
        };

        // One batch: the event, its place in the timeline and the state around it.
        let short_room = self.ids.room_or_create(signed.room_id.as_str())?;
        let short_event = self.ids.queue_new_event(batch, signed.event_id.as_str())?;
        self.pdus.put(batch, short_event, &signed.bytes);
        if let Some((user, device, txn)) = event.txn {
            self.transactions
                .put(batch, user, device, txn, signed.event_id.as_str());
            sync_hooks::queue_event_txn(&self.db, batch, short_event, (user, device, txn));
        }
        let before = match head.as_ref() {
            Some(head) => Arc::clone(&head.current),
            None => self.state.queue_snapshot(batch, None, Changes::default())?,
        };
        self.state.queue_before_event(batch, short_event, before.id);
        if let Some(target) = redacted {
            self.pdus.queue_redacted_by(batch, target, signed.event_id.as_str());
            self.queue_search_removal(batch, target)?;
        }
        let after = if let Some(state_key) = event.state_key {
            let key = self.ids.state_key_or_create(event.kind, state_key)?;
            let change = Changes::one(key, short_event, event.kind == "m.room.member");
            let after = self.state.queue_snapshot(batch, Some(&before), change)?;
            self.state.queue_current(batch, short_room, after.id);
            after
        } else {
            if head.is_none() {
                self.state.queue_current(batch, short_room, before.id);
            }
            before
        };
        new_extremities.push((short_event, signed.event_id.clone()));
        let shorts: Vec<u64> = new_extremities.iter().map(|(short, _)| *short).collect();
        self.timeline.queue_set_extremities(batch, short_room, &shorts)?;
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
                .queue_set(batch, target, signed.room_id.as_str(), &membership);
            member_target = OwnedUserId::try_from(target).ok();
        }
        self.timeline.queue_append(batch, short_room, position, short_event);
        if let Some(relation) = relation {
            self.queue_relation(batch, (short_room, position, short_event), relation)?;
        }
        sync_hooks::queue_push_pending(
            &self.db,
            batch,
            position,
            signed.room_id.as_str(),
            signed.event_id.as_str(),
        );
        self.queue_search_postings(batch, short_room, position, short_event, &pdu);

        // Until it is durable, the event is served from memory and its transaction remembered.
        locked(&self.pending).insert(short_event, Arc::new(signed.bytes.clone()));
        let txn = event
            .txn
            .map(|(user, device, txn)| (user.to_owned(), device.to_owned(), txn.to_owned()));
        if let Some(txn) = &txn {
            locked(&self.pending_txns).insert(txn.clone(), signed.event_id.clone());
        }
        if self.outbound.get().is_some()
            && !self
                .federation_destinations(&signed.room_id, member_target.as_deref())?
                .is_empty()
        {
            self.pdus.queue_unsent(batch, short_event);
        }
        let concerns = sync_hooks::concerns(signed.room_id.as_str(), event.kind, event.state_key);
        *head = Some(Head {
            extremities: new_extremities,
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
            member_target,
            concerns,
            directory_relevant: Directory::concerns(event.kind, event.state_key),
            forward: true,
        })
    }
}
