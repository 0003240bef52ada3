//! Who may read what in a room: read access for members, former members and (in
//! `world_readable` rooms) everyone, and the history-visibility rules applied to each event
//! (spec "Room History Visibility", server behaviour).
//!
//! Visibility is decided by the room state *before* each event. Consecutive events share that
//! state until a state event changes it, so the decision is made once per (state snapshot,
//! reader) and kept in a bounded cache shared by all requests (`Rooms::history_decisions`).

use ruma::{OwnedEventId, OwnedUserId, RoomId, UserId, events::StateEventType};

use super::{Rooms, Selection, pdu::Pdu};
use crate::{Error, Result};

/// How far a user may read a room.
#[derive(Clone, Debug)]
pub struct ReadScope {
    /// The last stream position they may read: the live end, or their departure.
    pub up_to: u64,
    /// Up to which stream position they count as a member, for history `shared` with
    /// members: the live end for a member, the departure for a former member, `None` for
    /// someone who never joined.
    pub member_until: Option<u64>,
    /// For a former member: the event by which they left (or were kicked or banned). State
    /// reads then see the room as it was right after it.
    pub departed_with: Option<OwnedEventId>,
}

/// The history-visibility check for one reader.
pub struct HistoryFilter<'a> {
    rooms: &'a Rooms,
    user_id: OwnedUserId,
    scope: ReadScope,
}

/// (state snapshot id, reader) → (history visibility, the reader's membership) in that state.
pub(super) type HistoryDecisions = quick_cache::sync::Cache<(u64, OwnedUserId), (String, Option<String>)>;

impl Rooms {
    /// [`Rooms::read_scope`], or for a user who never joined (an invite rejected or withdrawn,
    /// a knock withdrawn or refused) what the history rules show a non-member up to `end`:
    /// their own departure, always. `true` when the user had a read scope of their own.
    pub fn read_scope_or_outsider(&self, room_id: &RoomId, user_id: &UserId, end: u64) -> (ReadScope, bool) {
        match self.read_scope(room_id, user_id) {
            Ok(scope) => (scope, true),
            Err(_) => (
                ReadScope {
                    up_to: end,
                    member_until: None,
                    departed_with: None,
                },
                false,
            ),
        }
    }

    /// What `user_id` may read of a room: members read everything up to the live end; former
    /// members read up to their departure (Synapse's rule for departed users); anyone reads a
    /// room whose history is `world_readable`. Everyone else gets 403.
    pub fn read_scope(&self, room_id: &RoomId, user_id: &UserId) -> Result<ReadScope> {
        let watermark = self.watermark();
        let world_readable = || -> Result<bool> { Ok(self.history_visibility(room_id)? == "world_readable") };
        match self.membership(room_id, user_id)?.as_deref() {
            Some("join") => {
                return Ok(ReadScope {
                    up_to: watermark,
                    member_until: Some(u64::MAX),
                    departed_with: None,
                });
            }
            Some("leave" | "ban") if !self.is_forgotten(room_id, user_id)? => {
                // Only someone who was joined is a former member: rejecting an invite or
                // withdrawing a knock opens no history.
                if let Some(departure) = self.state_event(room_id, &StateEventType::RoomMember, user_id.as_str())?
                    && self.was_joined_before(&departure)?
                {
                    let departed_at = self.position_of(&departure.event_id)?.unwrap_or(0);
                    // A room that is world-readable now is open to its end, but history
                    // shared with members stays closed past the departure.
                    if world_readable()? {
                        return Ok(ReadScope {
                            up_to: watermark,
                            member_until: Some(departed_at),
                            departed_with: None,
                        });
                    }
                    return Ok(ReadScope {
                        up_to: departed_at,
                        member_until: Some(departed_at),
                        departed_with: Some(departure.event_id),
                    });
                }
            }
            _ => {}
        }
        if self.room_version(room_id)?.is_some() && world_readable()? {
            return Ok(ReadScope {
                up_to: watermark,
                member_until: None,
                departed_with: None,
            });
        }
        Err(Error::forbidden(format!("{user_id} is not in the room {room_id}")))
    }

    /// Whether the target of a membership event was joined right before it.
    fn was_joined_before(&self, member_event: &Pdu) -> Result<bool> {
        let Some(user) = member_event.state_key.as_deref() else {
            return Ok(false);
        };
        let Some(short) = self.ids.event(member_event.event_id.as_str())? else {
            return Ok(false);
        };
        let Some(before) = self.state_before(short)? else {
            return Ok(false);
        };
        let previous = self.lookup(&before, "m.room.member", user)?;
        Ok(previous.and_then(|p| p.content_str("membership")).as_deref() == Some("join"))
    }

    /// The room's current `history_visibility` (`shared` when unset or not understood).
    pub fn history_visibility(&self, room_id: &RoomId) -> Result<String> {
        let event = self.state_event(room_id, &StateEventType::RoomHistoryVisibility, "")?;
        Ok(normalise(
            event.as_ref().and_then(|e| e.content_str("history_visibility")),
        ))
    }

    /// The room state a reader sees: the current state, or for a former member the state
    /// right after their departure.
    pub fn visible_state(&self, room_id: &RoomId, scope: &ReadScope, selection: Selection<'_>) -> Result<Vec<Pdu>> {
        match &scope.departed_with {
            None => self.current_state_selected(room_id, selection),
            Some(departure) => {
                let pdu = self
                    .event(departure)?
                    .ok_or_else(|| Error::internal("departure event missing"))?;
                self.state_after(&pdu, selection)
            }
        }
    }

    /// The room state right after the last event at or before stream position `position`
    /// (the state a sync token or pagination token points at), the events `selection` asks for.
    /// With no event there (a room joined over federation has none before the join: its
    /// state came with the join), the state before the room's first event after `position`.
    pub fn state_at_position(&self, room_id: &RoomId, position: u64, selection: Selection<'_>) -> Result<Vec<Pdu>> {
        if let Some((_, pdu)) = self.timeline(room_id, 0, position, true, 1)?.pop() {
            return self.state_after(&pdu, selection);
        }
        let Some((_, first)) = self.timeline(room_id, position, u64::MAX, false, 1)?.pop() else {
            return Ok(Vec::new());
        };
        let Some(short) = self.ids.event(first.event_id.as_str())? else {
            return Ok(Vec::new());
        };
        match self.state_before(short)? {
            Some(state) => self.served_state(&state, selection),
            None => Ok(Vec::new()),
        }
    }

    /// The room state at a pagination point as `history`'s reader may see it: the state right
    /// after the room's last event at or before `position` (clamped to what the reader reads),
    /// when the reader may see that event; 403 when not (Synapse's rule for `/members?at=`).
    pub fn visible_state_at(&self, room_id: &RoomId, history: &HistoryFilter<'_>, position: u64) -> Result<Vec<Pdu>> {
        match self
            .timeline(room_id, 0, position.min(history.scope.up_to), true, 1)?
            .pop()
        {
            Some((at, pdu)) if history.allows(at, &pdu) => self.state_after(&pdu, Selection::All),
            Some(_) => Err(Error::forbidden(
                "You may not see the room at that point of its history",
            )),
            None => Ok(Vec::new()),
        }
    }

    /// The history-visibility check for `user_id` reading with `scope`.
    pub fn history_filter(&self, user_id: &UserId, scope: ReadScope) -> HistoryFilter<'_> {
        HistoryFilter {
            rooms: self,
            user_id: user_id.to_owned(),
            scope,
        }
    }
}

impl HistoryFilter<'_> {
    /// The scope the filter reads with.
    pub fn scope(&self) -> &ReadScope {
        &self.scope
    }

    /// The reader.
    pub fn user_id(&self) -> &ruma::UserId {
        &self.user_id
    }

    /// An event of `room_id` by id, with its position, when the reader may see it: 404 when
    /// it is not an event of that room, 403 when history visibility hides it.
    pub fn visible_event(&self, room_id: &RoomId, event_id: &ruma::EventId) -> Result<(u64, Pdu)> {
        let not_found = || Error::not_found("Event not found");
        let pdu = self
            .rooms
            .event(event_id)?
            .filter(|p| p.room().is_ok_and(|r| r == room_id));
        let pdu = pdu.ok_or_else(not_found)?;
        let position = self.rooms.position_of(event_id)?.ok_or_else(not_found)?;
        if !self.allows(position, &pdu) {
            return Err(Error::forbidden("You don't have permission to access that event"));
        }
        Ok((position, pdu))
    }

    /// Whether the reader may see `pdu` (which must be in the timeline at `position`).
    /// A storage error hides the event (and is logged) rather than failing the whole page.
    pub fn allows(&self, position: u64, pdu: &Pdu) -> bool {
        if position > self.scope.up_to {
            return false;
        }
        match self.decide(position, pdu) {
            Ok(allowed) => allowed,
            Err(e) => {
                tracing::error!(event_id = %pdu.event_id, error = %e, "history visibility check failed");
                false
            }
        }
    }

    /// The spec's rules for one event, with the state before it (and after it, for a change
    /// of visibility or of the reader's own membership).
    fn decide(&self, position: u64, pdu: &Pdu) -> Result<bool> {
        let (visibility, membership) = self.before(pdu)?;
        let allowed = |visibility: &str, membership: Option<&str>| {
            visibility == "world_readable"
                || membership == Some("join")
                || (visibility == "shared" && self.scope.member_until.is_some_and(|until| position <= until))
                || (visibility == "invited" && membership == Some("invite"))
        };
        if allowed(&visibility, membership.as_deref()) {
            return Ok(true);
        }
        // A change of visibility, or of the reader's own membership, is visible when the state
        // before *or after* it allows it.
        let kind = pdu.kind.to_string();
        if kind == "m.room.history_visibility" {
            let after = normalise(pdu.content_str("history_visibility"));
            return Ok(allowed(&after, membership.as_deref()));
        }
        if kind == "m.room.member" && pdu.state_key.as_deref() == Some(self.user_id.as_str()) {
            let after = pdu.content_str("membership");
            // Leaving an invite or a knock (rejected, withdrawn) is always the reader's to see,
            // as in Synapse: it is how the room leaves their client's invites.
            if after.as_deref() == Some("leave") && matches!(membership.as_deref(), Some("invite" | "knock")) {
                return Ok(true);
            }
            return Ok(allowed(&visibility, after.as_deref()));
        }
        Ok(false)
    }

    /// History visibility and the reader's membership in the state before `pdu`.
    fn before(&self, pdu: &Pdu) -> Result<(String, Option<String>)> {
        let rooms = self.rooms;
        let Some(short) = rooms.ids.event(pdu.event_id.as_str())? else {
            return Err(Error::internal("event without short id"));
        };
        let Some(snapshot) = rooms.state.before_event(short)? else {
            // The create event: nothing precedes it.
            return Ok(("shared".to_owned(), None));
        };
        // State snapshots never change, so a decision for one holds for good.
        let key = (snapshot, self.user_id.clone());
        if let Some(known) = rooms.history_decisions.get(&key) {
            return Ok(known);
        }
        let state = super::state::StateAt::layer(rooms.state.layer(snapshot)?);
        let visibility = rooms.lookup(&state, "m.room.history_visibility", "")?;
        let visibility = normalise(visibility.as_ref().and_then(|e| e.content_str("history_visibility")));
        let membership = rooms
            .lookup(&state, "m.room.member", self.user_id.as_str())?
            .and_then(|e| e.content_str("membership"));
        let decided = (visibility, membership);
        rooms.history_decisions.insert(key, decided.clone());
        Ok(decided)
    }
}

/// Unset or unknown history visibility counts as `shared`.
fn normalise(visibility: Option<String>) -> String {
    match visibility.as_deref() {
        Some("world_readable" | "shared" | "invited" | "joined") => visibility.unwrap_or_default(),
        _ => "shared".to_owned(),
    }
}
