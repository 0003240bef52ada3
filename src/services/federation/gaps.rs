//! The state before an event whose prev events stay unknown after `get_missing_events` (a gap
//! in the graph deeper than one round of it): the spec's "missing state is fetched with
//! `/state_ids` and `/event`".
//!
//! The origin is asked once for the state before the event (`/state_ids`); of the ids it names
//! (the state and its auth chain), those we do not hold are fetched: one `/event` each when the
//! transaction's request budget covers them, else all at once with `/state`. Each must come
//! back with the id asked for, valid signatures and hashes, in the room; together they are
//! stored as outliers, each checked against its own auth events (`Rooms::store_outliers`), and
//! the state must be accepted state events of the room holding its create event
//! (`Rooms::given_state`). An answer that fails any of this (an event its auth chain does not
//! allow, an auth chain that misses events, events of another room) is refused whole: nothing
//! of it is stored and the event is not accepted. An accepted answer is only the state before
//! the event: the event is still checked against it and against the room's current state.

use std::{collections::HashSet, sync::atomic::AtomicUsize};

use ruma::{
    EventId, OwnedEventId, RoomId, RoomVersionId, ServerName,
    api::federation::event::{get_event, get_room_state, get_room_state_ids},
    state_res::StateMap,
};

use super::{Federation, intake::spend};
use crate::{Error, Result, services::rooms::Rooms};

/// Most ids (state and auth chain together) taken from one answer.
const MAX_STATE_IDS: usize = 50_000;
/// Most events fetched to fill one gap.
const MAX_FETCHED: usize = 5_000;

impl Federation {
    /// The state before `event_id` as `origin` gives it, every event of it stored; spends
    /// requests from `budget` (403 when it runs out).
    pub(super) async fn state_before_gap(
        &self,
        rooms: &Rooms,
        origin: &ServerName,
        version: &RoomVersionId,
        room_id: &RoomId,
        event_id: &EventId,
        budget: &AtomicUsize,
    ) -> Result<StateMap<OwnedEventId>> {
        let out_of_budget = || Error::forbidden("No requests left for this transaction");
        if !spend(budget) {
            return Err(out_of_budget());
        }
        let request = get_room_state_ids::v1::Request::new(event_id.to_owned(), room_id.to_owned());
        let answer = self.send_signed(origin, request).await?;
        if answer.pdu_ids.len() + answer.auth_chain_ids.len() > MAX_STATE_IDS {
            return Err(Error::forbidden(format!(
                "{origin} named more than {MAX_STATE_IDS} events as the state"
            )));
        }
        let mut unknown: Vec<OwnedEventId> = Vec::new();
        let mut seen = HashSet::new();
        for id in answer.pdu_ids.iter().chain(&answer.auth_chain_ids) {
            if seen.insert(id) && rooms.event_json(id)?.is_none() {
                unknown.push(id.clone());
            }
        }
        if unknown.len() > MAX_FETCHED {
            return Err(Error::forbidden(format!(
                "The state before {event_id} holds more than {MAX_FETCHED} events we lack"
            )));
        }
        let left = budget.load(std::sync::atomic::Ordering::Relaxed);
        let fetched = if unknown.len() <= left {
            self.fetch_each(origin, version, room_id, &unknown, budget).await?
        } else {
            if !spend(budget) {
                return Err(out_of_budget());
            }
            self.fetch_whole_state(origin, version, room_id, event_id, &unknown)
                .await?
        };
        rooms.store_outliers(room_id, fetched).await?;
        rooms.given_state(room_id, &answer.pdu_ids)
    }

    /// `ids`, one `/event` each.
    async fn fetch_each(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        room_id: &RoomId,
        ids: &[OwnedEventId],
        budget: &AtomicUsize,
    ) -> Result<Vec<(OwnedEventId, Vec<u8>)>> {
        let mut fetched = Vec::with_capacity(ids.len());
        for id in ids {
            if !spend(budget) {
                return Err(Error::forbidden("No requests left for this transaction"));
            }
            let answer = self
                .send_signed(origin, get_event::v1::Request::new(id.clone()))
                .await?;
            let checked = self.checked_in_room(version, &answer.pdu, room_id).await?;
            if checked.event_id != *id {
                return Err(Error::forbidden(format!("{origin} answered {id} with another event")));
            }
            fetched.push((checked.event_id, checked.bytes));
        }
        Ok(fetched)
    }

    /// `wanted`, taken from one `/state` answer (the state before `event_id` and its auth
    /// chain as whole events); every one must be in it.
    async fn fetch_whole_state(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        room_id: &RoomId,
        event_id: &EventId,
        wanted: &[OwnedEventId],
    ) -> Result<Vec<(OwnedEventId, Vec<u8>)>> {
        let request = get_room_state::v1::Request::new(event_id.to_owned(), room_id.to_owned());
        let answer = self.send_signed(origin, request).await?;
        let mut wanted: HashSet<&EventId> = wanted.iter().map(|id| &**id).collect();
        let mut fetched = Vec::with_capacity(wanted.len());
        for raw in answer.pdus.iter().chain(&answer.auth_chain) {
            if wanted.is_empty() {
                break;
            }
            let checked = self.checked_in_room(version, raw, room_id).await?;
            if wanted.remove(&*checked.event_id) {
                fetched.push((checked.event_id, checked.bytes));
            }
        }
        if let Some(missing) = wanted.iter().next() {
            return Err(Error::forbidden(format!(
                "{origin}'s state before {event_id} lacks {missing}, which it named"
            )));
        }
        Ok(fetched)
    }
}
