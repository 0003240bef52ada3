//! History from before this server joined a room, fetched from another server (`/backfill`):
//! stored below the room's earliest timeline position, newest first. The positions below a
//! remote room's first event are unused in that room (the timeline is keyed by room and
//! position) and below every client's token for it, so backfilled events show in `/messages`
//! going back and never as new in `/sync`. A join over federation first skips
//! [`HISTORY_SLOTS`] positions ([`Rooms::reserve_history`]), so at least that much history
//! fits below the join even on a young server. They are checked against their own auth events
//! (a failure stores them as rejected, outside the timeline) and read with the state before
//! the earliest event already there (the history visibility then in force).

use ruma::{EventId, OwnedEventId, RoomId};

use super::{Rooms, pdu::Pdu};
use crate::{Error, Result, services::events, storage::tables::pdus::Outcome};

/// Positions skipped before a join over federation: room for that many events of history.
pub(super) const HISTORY_SLOTS: u64 = 1_000_000;

impl Rooms {
    /// Skips [`HISTORY_SLOTS`] stream positions (never handed out, so readers pass them):
    /// called right before a room joined over federation gets its first event.
    pub fn reserve_history(&self) -> Result<()> {
        Ok(self.positions.skip(HISTORY_SLOTS)?)
    }

    /// The room's earliest event in the timeline, if any.
    pub fn earliest_event(&self, room_id: &RoomId) -> Result<Option<Pdu>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(None);
        };
        let Some(&(_, short)) = self.timeline.range(short_room, 0, u64::MAX, false, 1)?.first() else {
            return Ok(None);
        };
        let Some(id) = self.ids.event_id(short)? else {
            return Ok(None);
        };
        let id = EventId::parse(id).map_err(|e| Error::internal(e.to_string()))?;
        self.stored_event(short, id)
    }

    /// Stores `events` (checked for signatures and hashes) as history before the room's
    /// earliest timeline event; returns how many were added.
    pub async fn store_backfilled(&self, room_id: &RoomId, mut events: Vec<(OwnedEventId, Vec<u8>)>) -> Result<usize> {
        let lock = self.room_lock(room_id);
        let _turn = lock.lock().await;
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = events::rules(&version)?;
        let short_room = self
            .ids
            .room(room_id.as_str())?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let Some(&(mut position, earliest)) = self.timeline.range(short_room, 0, u64::MAX, false, 1)?.first() else {
            return Ok(0);
        };
        let Some(state_layer) = self.state.before_event(earliest)? else {
            return Ok(0);
        };
        let mut parsed = Vec::with_capacity(events.len());
        for (event_id, bytes) in events.drain(..) {
            // Already in the timeline: skipped. Stored without a place (an outlier, such as the
            // state a join brought): placed now.
            if let Some(short) = self.ids.event(event_id.as_str())?
                && self.timeline.position_of(short)?.is_some()
            {
                continue;
            }
            let pdu = Pdu::parse(event_id.clone(), &bytes)?;
            if pdu.room()? != room_id {
                return Err(Error::bad_json(format!("{event_id} belongs to another room")));
            }
            parsed.push((u64::from(pdu.depth), pdu, bytes));
        }
        // Newest first, so positions fall with the depth.
        parsed.sort_by_key(|p| std::cmp::Reverse(p.0));
        let mut batch = self.db.batch();
        let mut stored = 0;
        for (_, pdu, bytes) in parsed {
            if position <= 1 {
                break;
            }
            let short = self.ids.event_or_create(pdu.event_id.as_str())?;
            self.pdus.put(&mut batch, short, &bytes);
            if let Err(reason) = self.check_by_auth_events(&rules, &pdu, |_| None) {
                self.pdus.queue_outcome(&mut batch, short, Outcome::Rejected, &reason);
                continue;
            }
            position -= 1;
            self.state.queue_before_event(&mut batch, short, state_layer);
            self.timeline.queue_append(&mut batch, short_room, position, short);
            stored += 1;
        }
        self.commits.enqueue(batch).durable().await?;
        Ok(stored)
    }
}
