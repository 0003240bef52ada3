//! Reading a room's timeline by stream position: pages (optionally filtered), events as
//! clients see them (redacted; state events with what they replaced), and the event nearest a
//! timestamp.

use ruma::{EventId, RoomId};

use super::{Rooms, pdu::Pdu};
use crate::{
    Error, Result,
    services::tokens::{AnyToken, RoomToken, SyncToken, invalid},
};

impl Rooms {
    /// Up to `limit` events of a room with `after < position <= up_to`, oldest first or newest
    /// first when `backwards`, with their positions.
    pub fn timeline(
        &self,
        room_id: &RoomId,
        after: u64,
        up_to: u64,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(u64, Pdu)>> {
        let raw = self.timeline_raw(room_id, after, up_to, backwards, limit)?;
        let places: Vec<(u64, u64)> = raw.iter().map(|(pos, short, _)| (*pos, *short)).collect();
        let served = self.served(raw.into_iter().map(|(_, short, pdu)| (short, pdu)).collect())?;
        places
            .into_iter()
            .zip(served)
            .map(|((pos, short), pdu)| Ok((pos, self.with_replaced_state(short, pdu)?)))
            .collect()
    }

    /// The positions of up to `limit` events of a room with `after < position <= up_to`, oldest
    /// first or newest first when `backwards` (no event is read).
    pub fn timeline_positions(
        &self,
        room_id: &RoomId,
        after: u64,
        up_to: u64,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<u64>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(Vec::new());
        };
        Ok(self
            .timeline
            .range(short_room, after, up_to, backwards, limit)?
            .into_iter()
            .map(|(pos, _)| pos)
            .collect())
    }

    /// The newest `limit` events with `after < position <= up_to`, oldest first, exactly as
    /// stored (no redaction applied): for server-side evaluation such as the unread counts,
    /// which count at most that many and want the latest.
    pub fn timeline_undecorated(
        &self,
        room_id: &RoomId,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Pdu)>> {
        Ok(self
            .timeline_raw(room_id, after, up_to, true, limit)?
            .into_iter()
            .rev()
            .map(|(pos, _, pdu)| (pos, pdu))
            .collect())
    }

    /// A served state event with what it replaced (`unsigned.prev_content`, `prev_sender`,
    /// `replaces_state`), as a timeline shows it.
    fn with_replaced_state(&self, short: u64, mut pdu: Pdu) -> Result<Pdu> {
        let Some(state_key) = pdu.state_key.clone() else {
            return Ok(pdu);
        };
        let Some(before) = self.state_before(short)? else {
            return Ok(pdu);
        };
        let Some(previous) = self.lookup(&before, &pdu.kind.to_string(), &state_key)? else {
            return Ok(pdu);
        };
        let content: serde_json::Value =
            serde_json::from_str(previous.content.get()).map_err(|e| Error::internal(e.to_string()))?;
        pdu.unsigned_extra.insert("prev_content".into(), content);
        pdu.unsigned_extra
            .insert("prev_sender".into(), previous.sender.as_str().into());
        pdu.unsigned_extra
            .insert("replaces_state".into(), previous.event_id.as_str().into());
        Ok(pdu)
    }

    /// [`Self::timeline`] as stored: position, short event id, event.
    fn timeline_raw(
        &self,
        room_id: &RoomId,
        after: u64,
        up_to: u64,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(u64, u64, Pdu)>> {
        let Some(short_room) = self.ids.room(room_id.as_str())? else {
            return Ok(Vec::new());
        };
        let entries = self.timeline.range(short_room, after, up_to, backwards, limit)?;
        let shorts: Vec<u64> = entries.iter().map(|(_, e)| *e).collect();
        let events = self.stored_events(&shorts)?;
        Ok(entries
            .into_iter()
            .zip(events)
            .map(|((pos, short), pdu)| (pos, short, pdu))
            .collect())
    }

    /// A page of a room's timeline between two stream positions (`after < position <= up_to`),
    /// holding up to `limit` events that `keep` accepts, newest first when `backwards`. Returns
    /// the page and the token where the next page starts (`None` when the range is exhausted).
    /// Scans at most 20 raw pages per call (the first of `limit` events, later ones larger), so
    /// a filter matching nothing cannot make one request walk a whole room.
    pub fn timeline_page(
        &self,
        room_id: &RoomId,
        (after, up_to): (u64, u64),
        backwards: bool,
        limit: usize,
        keep: impl Fn(u64, &Pdu) -> bool,
    ) -> Result<(Vec<(u64, Pdu)>, Option<u64>)> {
        if limit == 0 {
            // Nothing asked (`/context?limit=0`): nothing read, and the range stays where it is.
            let next = (after < up_to).then_some(if backwards { up_to } else { after });
            return Ok((Vec::new(), next));
        }
        let (mut low, mut high) = (after, up_to);
        // Read what the page needs; when `keep` rejects events, read more per round.
        let mut batch = limit.clamp(1, 500);
        let mut page = Vec::new();
        for _ in 0..20 {
            let raw = self.timeline(room_id, low, high, backwards, batch)?;
            let exhausted = raw.len() < batch;
            for (pos, pdu) in raw {
                // The cursor moves past every scanned event, kept or not.
                if backwards {
                    high = pos - 1
                } else {
                    low = pos
                }
                if keep(pos, &pdu) {
                    page.push((pos, pdu));
                    if page.len() == limit {
                        let more = low < high;
                        return Ok((page, more.then_some(if backwards { high } else { low })));
                    }
                }
            }
            if exhausted || low >= high {
                return Ok((page, None));
            }
            batch = (batch * 4).min(500);
        }
        Ok((page, Some(if backwards { high } else { low })))
    }

    /// The event closest to `ts` at or after it (`forwards`) or at or before it, among
    /// positions up to `up_to`. Local events are stamped in stream order, so timestamps grow
    /// with positions and a binary search over positions finds it in a few dozen reads.
    pub fn event_near_timestamp(
        &self,
        room_id: &RoomId,
        ts: u64,
        forwards: bool,
        up_to: u64,
    ) -> Result<Option<(u64, Pdu)>> {
        let first_after = |position: u64| -> Result<Option<(u64, Pdu)>> {
            Ok(self.timeline(room_id, position, up_to, false, 1)?.pop())
        };
        // P(x): the first event after x is at or past ts (or there is none). P is monotone, so
        // the smallest x with P(x) is found by bisection, and the first event after it is the
        // first event at or past ts.
        let at_or_past = |event: &Option<(u64, Pdu)>| {
            event
                .as_ref()
                .is_none_or(|(_, pdu)| u64::from(pdu.origin_server_ts.get()) >= ts)
        };
        let (mut low, mut high) = (0u64, up_to);
        while low < high {
            let mid = low + (high - low) / 2;
            let event = first_after(mid)?;
            if at_or_past(&event) {
                high = mid;
            } else {
                // P is false up to that event's position too.
                low = (mid + 1).max(event.map_or(0, |(pos, _)| pos));
            }
        }
        let found = first_after(low)?;
        if forwards {
            return Ok(found);
        }
        // Backwards: that event if it is exactly at ts, else the one before it.
        let before = found.as_ref().map_or(up_to, |(pos, _)| *pos);
        if let Some((_, pdu)) = &found
            && u64::from(pdu.origin_server_ts.get()) == ts
        {
            return Ok(found);
        }
        Ok(self
            .timeline(room_id, 0, before.saturating_sub(u64::from(found.is_some())), true, 1)?
            .pop())
    }

    /// The token clients page `room_id` from at `position` (`services::tokens`).
    pub fn room_token(&self, room_id: &RoomId, position: u64) -> Result<String> {
        let room = self
            .ids
            .room(room_id.as_str())?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        Ok(RoomToken { position, room }.to_string())
    }

    /// The stream position a pagination token names for a read of `room_id`: any token this
    /// server hands out, a room token only for its own room; `param` names the parameter for
    /// the 400 `M_INVALID_PARAM` of a token that is malformed, of another room, or ahead of
    /// the stream. What the reader may see at that point is the caller's visibility check.
    pub fn pagination_point(&self, room_id: &RoomId, param: &str, text: &str) -> Result<u64> {
        let token = AnyToken::parse(text).ok_or_else(|| invalid(param, text, "not a token this server hands out"))?;
        if let AnyToken::Room(token) = token
            && Some(token.room) != self.ids.room(room_id.as_str())?
        {
            return Err(invalid(param, text, "it belongs to another room"));
        }
        self.not_ahead(param, text, token.position())
    }

    /// A `/sync` token (or `keys/changes` bound) as read back: refused when malformed, a room
    /// token, or ahead of the stream; an ephemeral value ahead of the counter is taken as now.
    pub fn sync_point(&self, param: &str, text: &str) -> Result<SyncToken> {
        let token = SyncToken::parse(param, text)?;
        Ok(SyncToken {
            position: self.not_ahead(param, text, token.position)?,
            ephemeral: token.ephemeral.min(self.notifier().ephemeral()),
        })
    }

    /// `position` unless it is past the watermark (no such token was ever handed out).
    fn not_ahead(&self, param: &str, text: &str, position: u64) -> Result<u64> {
        if position > self.watermark() {
            return Err(invalid(param, text, "it is ahead of this server's stream"));
        }
        Ok(position)
    }

    /// Where an event sits in its room's timeline: its stream position.
    pub fn position_of(&self, event_id: &EventId) -> Result<Option<u64>> {
        let Some(short) = self.ids.event(event_id.as_str())? else {
            return Ok(None);
        };
        Ok(self.timeline.position_of(short)?.map(|(_, pos)| pos))
    }
}
