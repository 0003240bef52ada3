//! Reads of room state: a state (the current one, the one before an event, the one after it)
//! as a [`StateAt`] over the stored layers, looked up key by key or read whole, and the one
//! function that turns a state into the events a client sees, whole or with only some members
//! ([`Selection`]: lazy-loaded members cost what they select, not the size of the room).

use std::{collections::BTreeSet, sync::Arc};

use ruma::{EventId, OwnedEventId, RoomId, events::StateEventType};

use super::{Rooms, pdu::Pdu};
use crate::{
    Error, Result,
    storage::tables::state::{Layer, StateMap},
};

/// A state to read: a stored layer and, for the state right after a state event, that event
/// on top (`None` layer: the empty state a room starts from).
#[derive(Clone, Debug, Default)]
pub(crate) struct StateAt {
    pub(super) top: Option<Arc<Layer>>,
    /// (short state key, short event id, is a member event) on top of the layer.
    pub(super) extra: Option<(u64, u64, bool)>,
}

impl StateAt {
    /// Whether both name the same state the same way (the same layer and event on top).
    pub(crate) fn same_as(&self, other: &StateAt) -> bool {
        self.top.as_ref().map(|l| l.id) == other.top.as_ref().map(|l| l.id) && self.extra == other.extra
    }

    /// The state a stored layer describes.
    pub(crate) fn layer(top: Arc<Layer>) -> Self {
        Self {
            top: Some(top),
            extra: None,
        }
    }

    /// The layer below any event on top.
    pub(crate) fn top(&self) -> Option<&Arc<Layer>> {
        self.top.as_ref()
    }
}

/// Which events of a state to read.
#[derive(Clone, Copy, Debug)]
pub enum Selection<'a> {
    /// All of them.
    All,
    /// Every event but member events, and the member events of these users (lazy-loaded
    /// members).
    MembersOf(&'a BTreeSet<String>),
}

impl Rooms {
    /// The current state of a room (`None` if Hearth has no such room).
    pub(super) fn current_state(&self, short_room: u64) -> Result<Option<StateAt>> {
        match self.state.current(short_room)? {
            Some(id) => Ok(Some(StateAt::layer(self.state.layer(id)?))),
            None => Ok(None),
        }
    }

    /// The state before an event, by its short id (`None` for the create event's, and for
    /// an event Hearth has no state for).
    pub(super) fn state_before(&self, short_event: u64) -> Result<Option<StateAt>> {
        match self.state.before_event(short_event)? {
            Some(id) => Ok(Some(StateAt::layer(self.state.layer(id)?))),
            None => Ok(None),
        }
    }

    /// The state right after `pdu`: the state before it, with the event itself when it is a
    /// state event.
    pub(super) fn state_after_event(&self, pdu: &Pdu) -> Result<StateAt> {
        let short = self
            .ids
            .event(pdu.event_id.as_str())?
            .ok_or_else(|| Error::not_found("Event not found"))?;
        let mut state = self
            .state_before(short)?
            .ok_or_else(|| Error::internal("event without state"))?;
        if let Some(key) = &pdu.state_key {
            let kind = pdu.kind.to_string();
            let short_key = self.ids.state_key_or_create(&kind, key)?;
            state.extra = Some((short_key, short, kind == "m.room.member"));
        }
        Ok(state)
    }

    /// The short event id a state holds under a short state key.
    pub(super) fn state_get(&self, state: &StateAt, key: u64) -> Result<Option<u64>> {
        if let Some((extra_key, event, _)) = state.extra
            && extra_key == key
        {
            return Ok(Some(event));
        }
        match &state.top {
            Some(top) => Ok(self.state.get(top, key)?),
            None => Ok(None),
        }
    }

    /// The event a state holds under `(kind, state_key)`: its short id and id.
    pub(super) fn state_entry(
        &self,
        state: &StateAt,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<(u64, OwnedEventId)>> {
        let Some(key) = self.ids.state_key(kind, state_key)? else {
            return Ok(None);
        };
        let Some(short_event) = self.state_get(state, key)? else {
            return Ok(None);
        };
        let event_id = self
            .ids
            .event_id(short_event)?
            .ok_or_else(|| Error::internal("state names an unknown event"))?;
        let event_id = EventId::parse(event_id).map_err(|e| Error::internal(e.to_string()))?;
        Ok(Some((short_event, event_id)))
    }

    /// One event of a state exactly as stored, never redacted: what the authorization rules
    /// and power levels read, so a redaction never changes a room's rules.
    pub(super) fn original_lookup(&self, state: &StateAt, kind: &str, state_key: &str) -> Result<Option<Pdu>> {
        match self.state_entry(state, kind, state_key)? {
            Some((short, id)) => self.raw_event_by_short(short, id).map(Some),
            None => Ok(None),
        }
    }

    /// One event of a state as clients see it (redacted when it was).
    pub(super) fn lookup(&self, state: &StateAt, kind: &str, state_key: &str) -> Result<Option<Pdu>> {
        match self.state_entry(state, kind, state_key)? {
            Some((short, id)) => self.event_by_short(short, id).map(Some),
            None => Ok(None),
        }
    }

    /// One event of the room's current state, as clients see it.
    pub fn state_event(&self, room_id: &RoomId, kind: &StateEventType, state_key: &str) -> Result<Option<Pdu>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(None);
        };
        let Some(current) = self.current_state(short_room)? else {
            return Ok(None);
        };
        self.lookup(&current, &kind.to_string(), state_key)
    }

    /// Some events of the room's current state, by `(type, state_key)`, in the order asked,
    /// read from one snapshot (`None` if Hearth has no such room). The events are read and
    /// served (redactions) in one go, as `served_state` does, not one lookup each: the push
    /// worker asks for every recipient's member event of each event.
    pub fn state_events(&self, room_id: &RoomId, wanted: &[(&str, &str)]) -> Result<Option<Vec<Option<Pdu>>>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(None);
        };
        let Some(current) = self.current_state(short_room)? else {
            return Ok(None);
        };
        let mut found = Vec::with_capacity(wanted.len());
        for (kind, state_key) in wanted {
            let short = match self.ids.state_key(kind, state_key)? {
                Some(key) => self.state_get(&current, key)?,
                None => None,
            };
            found.push(short);
        }
        let shorts: Vec<u64> = found.iter().flatten().copied().collect();
        let events = self.stored_events(&shorts)?;
        let mut served = self.served(shorts.into_iter().zip(events).collect())?.into_iter();
        Ok(Some(
            found
                .into_iter()
                .map(|short| short.and_then(|_| served.next()))
                .collect(),
        ))
    }

    /// Events of the room's current state, as clients see them.
    pub fn current_state_selected(&self, room_id: &RoomId, selection: Selection<'_>) -> Result<Vec<Pdu>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(Vec::new());
        };
        let Some(current) = self.current_state(short_room)? else {
            return Ok(Vec::new());
        };
        self.served_state(&current, selection)
    }

    /// Every event of the room's current state, as clients see them.
    pub fn full_state(&self, room_id: &RoomId) -> Result<Vec<Pdu>> {
        self.current_state_selected(room_id, Selection::All)
    }

    /// The room's current state events of one type other than members, as clients see them
    /// (the space hierarchy's `m.space.child` events): members are never read, the others
    /// are told apart by their (cached) short state keys.
    pub fn current_state_of_type(&self, room_id: &RoomId, kind: &str) -> Result<Vec<Pdu>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(Vec::new());
        };
        let Some(current) = self.current_state(short_room)? else {
            return Ok(Vec::new());
        };
        let Some(top) = current.top() else {
            return Ok(Vec::new());
        };
        let mut shorts = Vec::new();
        for (key, short_event) in self.state.others(top)? {
            if self.ids.state_key_of(key)?.is_some_and(|(k, _)| k == kind) {
                shorts.push(short_event);
            }
        }
        let events = self.stored_events(&shorts)?;
        self.served(shorts.into_iter().zip(events).collect())
    }

    /// The room state right after an event (the state before it, plus the event itself when
    /// it is a state event), as clients see it.
    pub fn state_after(&self, pdu: &Pdu, selection: Selection<'_>) -> Result<Vec<Pdu>> {
        let state = self.state_after_event(pdu)?;
        self.served_state(&state, selection)
    }

    /// The member events of `users` in the state right after `pdu`, as clients see them: the
    /// lazy-loaded members of a page of events, each a lookup in the state's layers.
    pub fn members_after<'u>(&self, pdu: &Pdu, users: impl IntoIterator<Item = &'u str>) -> Result<Vec<Pdu>> {
        let state = self.state_after_event(pdu)?;
        let mut members = Vec::new();
        for user in users {
            if let Some(member) = self.lookup(&state, "m.room.member", user)? {
                members.push(member);
            }
        }
        Ok(members)
    }

    /// The events of a state a selection asks for, as clients see them: the one way states
    /// are read for clients (`/state`, `/members`, `/joined_members`, `/context`, `/sync`,
    /// sliding sync), so each is served redacted when it was, as the timeline serves it.
    /// With [`Selection::MembersOf`], the non-member entries are read apart from the members
    /// (see `storage::tables::state`) and each wanted member is one lookup.
    pub(super) fn served_state(&self, state: &StateAt, selection: Selection<'_>) -> Result<Vec<Pdu>> {
        let mut entries: StateMap = match (&state.top, selection) {
            (None, _) => StateMap::new(),
            (Some(top), Selection::All) => self.state.entries(top)?,
            (Some(top), Selection::MembersOf(users)) => {
                let mut entries = self.state.others(top)?;
                for user in users {
                    if let Some(key) = self.ids.state_key("m.room.member", user)?
                        && let Some(event) = self.state.get(top, key)?
                    {
                        entries.insert(key, event);
                    }
                }
                entries
            }
        };
        if let Some((key, event, member)) = state.extra {
            let wanted = match selection {
                Selection::All => true,
                Selection::MembersOf(users) => {
                    !member
                        || self
                            .ids
                            .state_key_of(key)?
                            .is_some_and(|(_, user)| users.contains(&user))
                }
            };
            if wanted {
                entries.insert(key, event);
            }
        }
        let shorts: Vec<u64> = entries.values().copied().collect();
        let events = self.stored_events(&shorts)?;
        self.served(shorts.into_iter().zip(events).collect())
    }
}
