//! Events from other servers: the authorization steps of the spec's "Checks performed on
//! receipt of a PDU", and the event's place in the room. The federation service has checked the
//! format, the signatures and the content hash, and made sure the auth and prev events are
//! stored (or fetched the state before the event), before it calls [`Rooms::receive_remote`].
//!
//! 1. The event is checked against its own auth events (the list, then every rule with the
//!    state they form: [`Rooms::check_by_auth_events`]): a failure rejects it.
//! 2. The state before it comes from its prev events: the state after the one prev event, or the
//!    resolution (the room version's algorithm: ruma-state-res for v2 and v2.1, `state_res_v1`
//!    for room version 1) of the states after each; when its prev events are missing, the state
//!    the caller fetched from the sender. The event is checked against that state: a failure
//!    rejects it.
//! 3. It is checked against the room's current state: a failure soft-fails it (stored and part
//!    of the graph, never shown to clients, never a forward extremity).
//! 4. Accepted, it gets a stream position like a local event, the state after it (with itself
//!    for a state event) and the room's new current state: the state after it when it follows
//!    every forward extremity, else the resolution of the states after each forward extremity
//!    (it and those it does not follow). Its prev events stop being extremities; it becomes one.
//!
//! Rejected and soft-failed events are stored with their outcome (`tables::pdus::Outcome`), so
//! receiving one again costs nothing, and are never served as accepted.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    EventId, OwnedEventId, OwnedUserId, RoomId,
    events::StateEventType,
    room_version_rules::{RoomVersionRules, StateResolutionVersion},
    state_res::{self, StateMap, utils::event_id_set::EventIdSet},
};

use super::{Appended, Directory, Rooms, locked, pdu::Pdu, state::StateAt, sync_hooks, write::Staged};
use crate::{
    Error, Result,
    services::{events, sync::notifier::Key},
    storage::{
        Batch,
        tables::{
            membership::Membership,
            pdus::Outcome,
            state::{Changes, Layer, REMOVED},
        },
    },
};

/// Auth chains are walked at most this far (events), in state resolution.
const MAX_AUTH_CHAIN: usize = 100_000;

/// What became of an event from another server.
#[derive(Debug)]
pub enum Received {
    /// Accepted: in the timeline at this position.
    Accepted(Appended),
    /// Stored but not shown: the room's current state does not allow it.
    SoftFailed(String),
    /// Refused by the authorization rules (stored as refused).
    Rejected(String),
    /// Already stored.
    Known,
}

impl Rooms {
    /// Adds `bytes` (a PDU whose format, signatures and hashes were checked) to `room_id`. Its
    /// auth events must be stored; its prev events too, unless `given_before` is the state
    /// before it (fetched from the sender, every event of it stored). 404 when a prev event is
    /// unknown and no state is given.
    pub async fn receive_remote(
        &self,
        room_id: &RoomId,
        event_id: OwnedEventId,
        bytes: Vec<u8>,
        given_before: Option<StateMap<OwnedEventId>>,
    ) -> Result<Received> {
        if let Some(short) = self.ids.event(event_id.as_str())? {
            if self.pdus.get(short)?.is_some() {
                return Ok(Received::Known);
            }
            if locked(&self.pending).contains_key(&short) {
                // A concurrent receipt (a transaction and `/invite` carrying the same event) is
                // writing it: "known" only once that is durable, as whoever hears it may act on
                // what the event changed (the invitee declining the invite at once).
                drop(self.room_lock(room_id).lock().await);
                self.commits.enqueue(self.db.batch()).durable().await?;
                return Ok(Received::Known);
            }
        }
        let pdu = Pdu::parse(event_id.clone(), &bytes)
            .map_err(|e| Error::bad_json(format!("{event_id} is not a valid event: {e}")))?;
        if pdu.room()? != room_id {
            return Err(Error::bad_json(format!("{event_id} belongs to another room")));
        }
        let lock = self.room_lock(room_id);
        let mut guard = lock.lock().await;
        if guard.is_none() {
            *guard = self.load_head(room_id)?;
        }
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = events::rules(&version)?;
        let Some(head) = guard.as_mut() else {
            return Err(Error::not_found("Unknown room"));
        };
        let short_room = self
            .ids
            .room(room_id.as_str())?
            .ok_or_else(|| Error::not_found("Unknown room"))?;

        let mut batch = self.db.batch();
        let short_event = self.ids.event_or_create(event_id.as_str())?;
        self.pdus.put(&mut batch, short_event, &bytes);
        if let Err(reason) = self.check_by_auth_events(&rules, &pdu, |_| None) {
            return self.store_outcome(batch, short_event, Outcome::Rejected, reason).await;
        }
        let before = match self.state_after_prevs(&rules, &pdu, &mut batch)? {
            Some(layer) => layer,
            None => match given_before {
                Some(state) => self.layer_for(&mut batch, &head.current, &state)?,
                None => {
                    return Err(Error::not_found(format!("The prev events of {event_id} are unknown")));
                }
            },
        };
        self.state.queue_before_event(&mut batch, short_event, before.id);
        let before_at = StateAt::layer(Arc::clone(&before));
        let check_against = |state: &StateAt| {
            state_res::check_state_dependent_auth_rules(
                &rules.authorization,
                &pdu,
                |kind: &StateEventType, key: &str| self.original_lookup(state, &kind.to_string(), key).ok().flatten(),
            )
        };
        if let Err(reason) = check_against(&before_at) {
            return self
                .store_outcome(batch, short_event, Outcome::Rejected, reason.to_string())
                .await;
        }
        if let Err(reason) = check_against(&StateAt::layer(Arc::clone(&head.current))) {
            return self
                .store_outcome(batch, short_event, Outcome::SoftFailed, reason.to_string())
                .await;
        }

        // The state after it, and the room's new current state.
        let kind = pdu.kind.to_string();
        let after = match &pdu.state_key {
            Some(key) => {
                let short_key = self.ids.state_key_or_create(&kind, key)?;
                let change = Changes::one(short_key, short_event, kind == "m.room.member");
                self.state.queue_snapshot(&mut batch, Some(&before), change)?
            }
            None => before,
        };
        let prevs: HashSet<&EventId> = pdu.prev_events.iter().map(|id| &**id).collect();
        let follows_all = head.extremities.iter().all(|(_, id)| prevs.contains(&**id));
        let old_current = Arc::clone(&head.current);
        let mut extremities: Vec<(u64, OwnedEventId)> = head
            .extremities
            .iter()
            .filter(|(_, id)| !prevs.contains(&**id))
            .cloned()
            .collect();
        let current = if follows_all {
            Arc::clone(&after)
        } else {
            // The room's state is the resolution of the states after its forward extremities
            // (resolving the old current state with the new one instead would depend on the
            // order events came in: state resolution is not associative).
            // Extremities with the same state (forks of messages) count once: resolution
            // of a state with itself changes nothing, and a server forking a room many times
            // over must not multiply the work of every event after.
            let mut states = vec![StateAt::layer(Arc::clone(&after))];
            for (_, id) in &extremities {
                let state = match self.original_event(id)? {
                    Some(extremity) => self.state_after_event(&extremity).ok(),
                    None => None,
                };
                let state = state.unwrap_or_else(|| StateAt::layer(Arc::clone(&old_current)));
                if !states.iter().any(|known| known.same_as(&state)) {
                    states.push(state);
                }
            }
            let maps = states
                .iter()
                .map(|state| self.ruma_state(state))
                .collect::<Result<Vec<_>>>()?;
            let resolved = self.resolve(&rules, maps, Some(&pdu))?;
            self.layer_for(&mut batch, &old_current, &resolved)?
        };
        if current.id != old_current.id {
            self.state.queue_current(&mut batch, short_room, current.id);
        }
        extremities.push((short_event, event_id.clone()));
        let shorts: Vec<u64> = extremities.iter().map(|(short, _)| *short).collect();
        self.timeline.queue_set_extremities(&mut batch, short_room, &shorts)?;

        // Its place in the timeline, and what follows from it.
        let ticket = self.positions.allocate()?;
        let position = ticket.position();
        self.timeline
            .queue_append(&mut batch, short_room, position, short_event);
        let member_changes = if follows_all {
            match (&pdu.state_key, kind == "m.room.member") {
                (Some(target), true) => vec![(target.clone(), short_event)],
                _ => Vec::new(),
            }
        } else {
            self.member_changes(&old_current, &current)?
        };
        for (user, changed) in &member_changes {
            let membership = if *changed == short_event {
                pdu.content_str("membership")
            } else {
                self.event_id_of(*changed)
                    .and_then(|id| self.original_event(&id))?
                    .and_then(|p| p.content_str("membership"))
            };
            if let Some(membership) = membership {
                let position = if *changed == short_event { position } else { 0 };
                self.memberships
                    .queue_set(&mut batch, user, room_id.as_str(), &Membership { membership, position });
            }
        }
        if let Ok(Some(relation)) = self.relation_of(&pdu) {
            self.queue_relation(&mut batch, (short_room, position, short_event), relation)?;
        }
        if kind == "m.room.redaction"
            && let Some(target) = self.redaction_effect(&version, &rules, &before_at, &pdu)?
        {
            self.pdus.queue_redacted_by(&mut batch, target, event_id.as_str());
            self.queue_search_removal(&mut batch, target)?;
        }
        sync_hooks::queue_push_pending(&self.db, &mut batch, position, room_id.as_str(), event_id.as_str());
        self.queue_search_postings(&mut batch, short_room, position, short_event, &pdu);
        locked(&self.pending).insert(short_event, Arc::new(bytes));

        let mut concerns = sync_hooks::concerns(room_id.as_str(), &kind, pdu.state_key.as_deref());
        for (user, _) in &member_changes {
            let key = Key::User(user.clone());
            if !concerns.contains(&key) {
                concerns.push(key);
            }
        }
        let depth = u64::from(pdu.depth);
        head.extremities = extremities;
        head.depth = head.depth.max(depth);
        head.current = current;
        let staged = Staged {
            appended: Appended {
                event_id,
                room_id: room_id.to_owned(),
                position,
            },
            short_event,
            txn: None,
            ticket,
            member_target: match (&pdu.state_key, kind == "m.room.member") {
                (Some(target), true) => OwnedUserId::try_from(target.as_str()).ok(),
                _ => None,
            },
            concerns,
            directory_relevant: Directory::concerns(&kind, pdu.state_key.as_deref()) || !member_changes.is_empty(),
            forward: false,
        };
        let queued = self.queue(batch, std::slice::from_ref(&staged));
        drop(guard);
        let appended = self.finish(vec![staged], queued, Some(&lock)).await?;
        for (user, _) in &member_changes {
            if let Ok(user) = OwnedUserId::try_from(user.as_str()) {
                self.member_lists.invalidate(room_id, &user);
            }
        }
        appended
            .into_iter()
            .next()
            .map(Received::Accepted)
            .ok_or_else(|| Error::internal("no event appended"))
    }

    /// The room's forward extremities (the events the next one will follow).
    pub fn forward_extremities(&self, room_id: &RoomId) -> Result<Vec<OwnedEventId>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(Vec::new());
        };
        let shorts = self.timeline.extremities(short_room)?;
        Ok(self
            .ids
            .event_ids(&shorts)?
            .into_iter()
            .flatten()
            .filter_map(|id| EventId::parse(id).ok())
            .collect())
    }

    /// Stores an event fetched from another server as an auth event of another (checked for
    /// signatures and hashes; its own auth events stored) as an outlier: no state, no timeline
    /// position. Rejected when its auth events do not allow it. Returns whether it is usable.
    pub async fn store_outlier(&self, room_id: &RoomId, event_id: OwnedEventId, bytes: Vec<u8>) -> Result<bool> {
        if let Some(pdu) = self.original_event(&event_id)? {
            return Ok(!pdu.rejected);
        }
        let pdu = Pdu::parse(event_id.clone(), &bytes)
            .map_err(|e| Error::bad_json(format!("{event_id} is not a valid event: {e}")))?;
        if pdu.room()? != room_id {
            return Err(Error::bad_json(format!("{event_id} belongs to another room")));
        }
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = events::rules(&version)?;
        let mut batch = self.db.batch();
        let short_event = self.ids.event_or_create(event_id.as_str())?;
        self.pdus.put(&mut batch, short_event, &bytes);
        if let Err(reason) = self.check_by_auth_events(&rules, &pdu, |_| None) {
            self.store_outcome(batch, short_event, Outcome::Rejected, reason)
                .await?;
            return Ok(false);
        }
        self.commits.enqueue(batch).durable().await?;
        Ok(true)
    }

    /// The authorization rules applied to `pdu` with the state its own auth events form (the
    /// spec's "passes authorization rules based on the event's auth events"): the list of auth
    /// events itself, then every rule that reads the state, read from them. `given` finds the
    /// events not stored yet (an answer being stored whole); the rest come from storage.
    pub(super) fn check_by_auth_events(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        given: impl Fn(&EventId) -> Option<Pdu>,
    ) -> std::result::Result<(), String> {
        let fetch = |id: &EventId| given(id).or_else(|| self.original_event(id).ok().flatten());
        state_res::check_state_independent_auth_rules(&rules.authorization, pdu, fetch)?;
        let mut by_key: HashMap<(String, String), Pdu> = HashMap::with_capacity(pdu.auth_events.len() + 1);
        let mut auth_ids: Vec<OwnedEventId> = pdu.auth_events.clone();
        // Room version 12 leaves the create event out of the list: the room id names it.
        if rules.authorization.room_create_event_id_as_room_id
            && let Ok(room) = pdu.room()
            && let Ok(create) = EventId::parse(format!("${}", &room.as_str()[1..]))
        {
            auth_ids.push(create);
        }
        for id in &auth_ids {
            if let Some(event) = fetch(id)
                && let Some(state_key) = event.state_key.clone()
            {
                by_key.insert((event.kind.to_string(), state_key), event);
            }
        }
        state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind: &StateEventType, key: &str| {
            by_key.get(&(kind.to_string(), key.to_owned())).cloned()
        })
    }

    /// Stores an event that was not accepted, with why.
    async fn store_outcome(&self, mut batch: Batch, short: u64, outcome: Outcome, reason: String) -> Result<Received> {
        self.pdus.queue_outcome(&mut batch, short, outcome, &reason);
        self.commits.enqueue(batch).durable().await?;
        Ok(match outcome {
            Outcome::Rejected => Received::Rejected(reason),
            Outcome::SoftFailed => Received::SoftFailed(reason),
        })
    }

    fn event_id_of(&self, short: u64) -> Result<OwnedEventId> {
        let id = self
            .ids
            .event_id(short)?
            .ok_or_else(|| Error::internal("state names an unknown event"))?;
        EventId::parse(id).map_err(|e| Error::internal(e.to_string()))
    }

    /// The state before `pdu` from its prev events (`None` if one is unknown or has no state:
    /// an outlier), as a layer (queued in `batch` when it is new).
    fn state_after_prevs(&self, rules: &RoomVersionRules, pdu: &Pdu, batch: &mut Batch) -> Result<Option<Arc<Layer>>> {
        let mut afters = Vec::with_capacity(pdu.prev_events.len());
        for prev in &pdu.prev_events {
            let Some(prev) = self.original_event(prev)? else {
                return Ok(None);
            };
            if prev.rejected {
                continue;
            }
            let Some(short) = self.ids.event(prev.event_id.as_str())? else {
                return Ok(None);
            };
            if self.state.before_event(short)?.is_none() {
                return Ok(None);
            }
            let after = self.state_after_event(&prev)?;
            // Prev events with the same state count once (up to 20 prev events, each a state).
            if !afters.iter().any(|known: &StateAt| known.same_as(&after)) {
                afters.push(after);
            }
        }
        let Some(first) = afters.first().cloned() else {
            return Ok(None);
        };
        let Some(base) = first.top.clone() else {
            return Ok(None);
        };
        if afters.len() == 1 {
            return Ok(Some(match first.extra {
                None => base,
                Some((key, event, member)) => {
                    self.state
                        .queue_snapshot(batch, Some(&base), Changes::one(key, event, member))?
                }
            }));
        }
        let maps = afters.iter().map(|s| self.ruma_state(s)).collect::<Result<Vec<_>>>()?;
        let resolved = self.resolve(rules, maps, None)?;
        Ok(Some(self.layer_for(batch, &base, &resolved)?))
    }

    /// A state as ruma-state-res reads it: (type, state key) → event id.
    fn ruma_state(&self, state: &StateAt) -> Result<StateMap<OwnedEventId>> {
        let mut entries = match &state.top {
            Some(top) => self.state.entries(top)?,
            None => Default::default(),
        };
        if let Some((key, event, _)) = state.extra {
            entries.insert(key, event);
        }
        let shorts: Vec<u64> = entries.values().copied().collect();
        let ids = self.ids.event_ids(&shorts)?;
        let mut map = StateMap::with_capacity(entries.len());
        for ((key, _), id) in entries.iter().zip(ids) {
            let (kind, state_key) = self
                .ids
                .state_key_of(*key)?
                .ok_or_else(|| Error::internal("unknown state key"))?;
            let id = EventId::parse(id.ok_or_else(|| Error::internal("state names an unknown event"))?)
                .map_err(|e| Error::internal(e.to_string()))?;
            map.insert((StateEventType::from(kind), state_key), id);
        }
        Ok(map)
    }

    /// A layer over `base` holding exactly `state` (every event of it stored).
    fn layer_for(&self, batch: &mut Batch, base: &Arc<Layer>, state: &StateMap<OwnedEventId>) -> Result<Arc<Layer>> {
        let existing = self.state.entries(base)?;
        let mut wanted = HashMap::with_capacity(state.len());
        let mut changes = Changes::default();
        for ((kind, state_key), event_id) in state {
            let kind = kind.to_string();
            let key = self.ids.state_key_or_create(&kind, state_key)?;
            let event = self
                .ids
                .event(event_id.as_str())?
                .ok_or_else(|| Error::not_found(format!("The state event {event_id} is unknown")))?;
            wanted.insert(key, ());
            if existing.get(&key) != Some(&event) {
                changes.push(key, event, kind == "m.room.member");
            }
        }
        for key in existing.keys().filter(|k| !wanted.contains_key(k)) {
            let member = self
                .ids
                .state_key_of(*key)?
                .is_some_and(|(kind, _)| kind == "m.room.member");
            changes.push(*key, REMOVED, member);
        }
        Ok(self.state.queue_snapshot(batch, Some(base), changes)?)
    }

    /// Member entries that differ between two states: (user, short event now held).
    fn member_changes(&self, old: &Arc<Layer>, new: &Arc<Layer>) -> Result<Vec<(String, u64)>> {
        let (old, new) = (self.state.entries(old)?, self.state.entries(new)?);
        let mut changed = Vec::new();
        for (key, event) in &new {
            if old.get(key) != Some(event)
                && let Some((kind, user)) = self.ids.state_key_of(*key)?
                && kind == "m.room.member"
            {
                changed.push((user, *event));
            }
        }
        Ok(changed)
    }

    /// Every event reachable from `roots` through `auth_events` (the roots included), at most
    /// [`MAX_AUTH_CHAIN`].
    pub(super) fn auth_chain_ids(
        &self,
        roots: impl IntoIterator<Item = OwnedEventId>,
        incoming: Option<&Pdu>,
    ) -> Result<HashSet<OwnedEventId>> {
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut todo: Vec<OwnedEventId> = roots.into_iter().collect();
        while let Some(id) = todo.pop() {
            if seen.len() >= MAX_AUTH_CHAIN {
                return Err(Error::forbidden("The auth chain is too long"));
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(pdu) = self.event_or_incoming(&id, incoming) {
                todo.extend(pdu.auth_events.iter().filter(|a| !seen.contains(*a)).cloned());
            }
        }
        Ok(seen)
    }

    /// A stored event as the rules read it, or `incoming` (the event being received, which is
    /// not stored yet but takes part in the resolution of the state after it).
    fn event_or_incoming(&self, id: &EventId, incoming: Option<&Pdu>) -> Option<Pdu> {
        match incoming {
            Some(pdu) if pdu.event_id == id => Some(pdu.clone()),
            _ => self.original_event(id).ok().flatten(),
        }
    }

    /// State resolution of `maps` by the room version's algorithm; `incoming` is the event being
    /// received when one of the states is the state after it.
    fn resolve(
        &self,
        rules: &RoomVersionRules,
        maps: Vec<StateMap<OwnedEventId>>,
        incoming: Option<&Pdu>,
    ) -> Result<StateMap<OwnedEventId>> {
        let res_rules = match &rules.state_res {
            StateResolutionVersion::V2(res_rules) => res_rules,
            StateResolutionVersion::V1 => {
                let fetch = |id: &EventId| self.event_or_incoming(id, incoming);
                return Ok(super::state_res_v1::resolve(&rules.authorization, &maps, fetch));
            }
            _ => return Err(Error::forbidden("Unknown state resolution algorithm")),
        };
        let auth_chains = maps
            .iter()
            .map(|map| {
                self.auth_chain_ids(map.values().cloned(), incoming)
                    .map(|set| set.into_iter().collect::<EventIdSet<OwnedEventId>>())
            })
            .collect::<Result<Vec<_>>>()?;
        let fetch = |id: &EventId| self.event_or_incoming(id, incoming);
        let subgraph = |conflicted: &StateMap<Vec<OwnedEventId>>| self.conflicted_subgraph(conflicted, incoming).ok();
        state_res::resolve(&rules.authorization, res_rules, &maps, auth_chains, fetch, subgraph)
            .map_err(|e| Error::forbidden(format!("State resolution failed: {e}")))
    }

    /// The conflicted state subgraph (state resolution v2.1): the events that are both reachable
    /// from a conflicted event through `auth_events` and reach a conflicted event that way.
    fn conflicted_subgraph(
        &self,
        conflicted: &StateMap<Vec<OwnedEventId>>,
        incoming: Option<&Pdu>,
    ) -> Result<EventIdSet<OwnedEventId>> {
        let roots: BTreeSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
        let chain = self.auth_chain_ids(roots.iter().cloned(), incoming)?;
        // Whether each event of the chain reaches a conflicted event (itself included).
        let mut reaches: HashMap<OwnedEventId, bool> = HashMap::with_capacity(chain.len());
        for id in &chain {
            let mut stack = vec![(id.clone(), false)];
            while let Some((current, expanded)) = stack.pop() {
                if reaches.contains_key(&current) {
                    continue;
                }
                let parents: Vec<OwnedEventId> = self
                    .event_or_incoming(&current, incoming)
                    .map(|p| p.auth_events.into_iter().filter(|a| chain.contains(a)).collect())
                    .unwrap_or_default();
                if expanded || parents.iter().all(|p| reaches.contains_key(p)) {
                    let value = roots.contains(&current) || parents.iter().any(|p| reaches.get(p) == Some(&true));
                    reaches.insert(current, value);
                } else {
                    stack.push((current, true));
                    stack.extend(parents.into_iter().map(|p| (p, false)));
                }
            }
        }
        Ok(reaches
            .into_iter()
            .filter(|(_, reaches)| *reaches)
            .map(|(id, _)| id)
            .collect())
    }
}

impl Rooms {
    /// The template of an event a user of another server asks us to build (`make_join`,
    /// `make_leave`, `make_knock`): on the room's forward extremities, with the auth events the
    /// current state gives, and allowed by the authorization rules as if it were sent now (403
    /// with the reason otherwise). A join under a `restricted` rule names one of our members
    /// with the power to invite (`join_authorised_via_users_server`), whose server then signs
    /// the event in `send_join`. Returns the room version and the unsigned event.
    pub async fn event_template(
        &self,
        room_id: &RoomId,
        sender: &ruma::UserId,
        kind: &str,
        state_key: &str,
        mut content: ruma::CanonicalJsonObject,
    ) -> Result<(ruma::RoomVersionId, ruma::CanonicalJsonObject)> {
        use ruma::CanonicalJsonValue as V;
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = events::rules(&version)?;
        let joining = kind == "m.room.member" && matches!(content.get("membership"), Some(V::String(m)) if m == "join");
        if joining
            && !matches!(self.membership(room_id, sender)?.as_deref(), Some("join" | "invite"))
            && let Some(authoriser) = self.restricted_join_authoriser(room_id, sender)?
        {
            content.insert(
                "join_authorised_via_users_server".into(),
                V::String(authoriser.to_string()),
            );
        }
        let lock = self.room_lock(room_id);
        let mut guard = lock.lock().await;
        if guard.is_none() {
            *guard = self.load_head(room_id)?;
        }
        let Some(head) = guard.as_ref() else {
            return Err(Error::not_found("Unknown room"));
        };
        let state = StateAt::layer(Arc::clone(&head.current));
        let content_raw = serde_json::value::to_raw_value(&content).map_err(|e| Error::internal(e.to_string()))?;
        let auth_types = state_res::auth_types_for_event(
            &ruma::events::TimelineEventType::from(kind),
            sender,
            Some(state_key),
            &content_raw,
            &rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?;
        let mut auth_events = Vec::new();
        for (auth_kind, auth_key) in &auth_types {
            if let Some((_, event_id)) = self.state_entry(&state, &auth_kind.to_string(), auth_key)? {
                auth_events.push(event_id);
            }
        }
        let prev_events: Vec<OwnedEventId> = head.extremities.iter().map(|(_, id)| id.clone()).collect();
        let hash = |id: &EventId| self.reference_hash(id, &rules);
        let int = |n: u64| V::Integer(ruma::Int::try_from(n).unwrap_or_default());
        let mut object = ruma::CanonicalJsonObject::new();
        object.insert("type".into(), V::String(kind.to_owned()));
        object.insert("sender".into(), V::String(sender.to_string()));
        object.insert("state_key".into(), V::String(state_key.to_owned()));
        object.insert("content".into(), V::Object(content));
        object.insert("room_id".into(), V::String(room_id.to_string()));
        object.insert(
            "prev_events".into(),
            events::event_references(&prev_events, &rules, Some(&hash)),
        );
        object.insert(
            "auth_events".into(),
            events::event_references(&auth_events, &rules, Some(&hash)),
        );
        object.insert("depth".into(), int(head.depth + 1));
        object.insert("origin_server_ts".into(), int(crate::util::now_ms()));
        object.insert("origin".into(), V::String(sender.server_name().to_string()));
        // Checked as it will be when it comes back signed.
        let bytes = serde_json::to_vec(&object).map_err(|e| Error::internal(e.to_string()))?;
        let pdu = Pdu::parse(
            EventId::parse("$template").map_err(|e| Error::internal(e.to_string()))?,
            &bytes,
        )?;
        let fetch_event = |id: &EventId| self.original_event(id).ok().flatten();
        state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, fetch_event)
            .and_then(|()| {
                state_res::check_state_dependent_auth_rules(
                    &rules.authorization,
                    &pdu,
                    |k: &StateEventType, key: &str| self.original_lookup(&state, &k.to_string(), key).ok().flatten(),
                )
            })
            .map_err(|reason| Error::forbidden(format!("The room does not allow this: {reason}")))?;
        Ok((version, object))
    }
}
