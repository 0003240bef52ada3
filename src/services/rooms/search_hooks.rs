//! The rooms side of server-side search (`services::search`): the write path queues an
//! event's postings in the event's own batch, a redaction that takes effect queues the removal
//! of its target's postings in the redaction's batch, and the rebuild at start indexes what
//! was written before the index existed. The queries read postings and events through here.

use ruma::{EventId, RoomId};

use super::{Rooms, pdu::Pdu};
use crate::{
    Error, Result,
    services::search::index_text,
    storage::{
        Batch,
        tables::search::{Hit, Posting},
    },
};

/// The postings of one event's indexed text: (term, posting).
fn postings_of(pdu: &Pdu, short_event: u64) -> Vec<(String, Posting)> {
    let Some((field, terms)) = index_text(&pdu.kind.to_string(), pdu.content.get()) else {
        return Vec::new();
    };
    let length = terms.len().min(255) as u8;
    let mut counted: Vec<(String, u32)> = Vec::new();
    let mut sorted = terms;
    sorted.sort_unstable();
    for term in sorted {
        match counted.last_mut() {
            Some((last, n)) if *last == term => *n += 1,
            _ => counted.push((term, 1)),
        }
    }
    counted
        .into_iter()
        .map(|(term, n)| {
            let posting = Posting {
                short_event,
                field,
                frequency: n.min(255) as u8,
                length,
            };
            (term, posting)
        })
        .collect()
}

impl Rooms {
    /// Write path: queues the postings of a new event (at `position` of `short_room`).
    pub(super) fn queue_search_postings(
        &self,
        batch: &mut Batch,
        short_room: u64,
        position: u64,
        short_event: u64,
        pdu: &Pdu,
    ) {
        for (term, posting) in postings_of(pdu, short_event) {
            self.search.queue_put(batch, short_room, &term, position, posting);
        }
    }

    /// Write path of a redaction that takes effect: queues the removal of the postings of the
    /// redacted event `target` (computed again from its stored, never rewritten, text).
    pub(super) fn queue_search_removal(&self, batch: &mut Batch, target: u64) -> Result<()> {
        let Some((short_room, position)) = self.timeline.position_of(target)? else {
            // Not in a timeline (yet): nothing of it was indexed in a durable batch.
            return Ok(());
        };
        let Some(id) = self.ids.event_id(target)? else {
            return Ok(());
        };
        let id = EventId::parse(id).map_err(|e| Error::internal(e.to_string()))?;
        let Some(original) = self.stored_event(target, id)? else {
            return Ok(());
        };
        for (term, _) in postings_of(&original, target) {
            self.search.queue_delete(batch, short_room, &term, position);
        }
        Ok(())
    }

    /// Postings of `term` (or, with `prefix`, of every term starting with it) in a room at
    /// positions up to `up_to`; at most `limit`, the newest first for an exact term.
    pub(crate) fn search_postings(
        &self,
        room_id: &RoomId,
        term: &str,
        prefix: bool,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<Hit>> {
        let Some(room) = self.ids.room(room_id.as_str())? else {
            return Ok(Vec::new());
        };
        Ok(if prefix {
            self.search.prefixed(room, term, up_to, limit)?
        } else {
            self.search.postings(room, term, up_to, limit)?
        })
    }

    /// The postings of `term` for the events at `positions` of a room (point reads), in the
    /// order of `positions`.
    pub(crate) fn search_lookup(
        &self,
        room_id: &RoomId,
        term: &str,
        positions: &[u64],
    ) -> Result<Vec<Option<Posting>>> {
        let Some(room) = self.ids.room(room_id.as_str())? else {
            return Ok(vec![None; positions.len()]);
        };
        Ok(self.search.lookup(room, term, positions)?)
    }

    /// Events by short id as clients see them (redacted ones carry `redacted_because`).
    pub(crate) fn search_events(&self, shorts: &[u64]) -> Result<Vec<Pdu>> {
        let events = self.stored_events(shorts)?;
        self.served(shorts.iter().copied().zip(events).collect())
    }

    /// Whether the rebuild of the index has run on this database.
    pub(crate) fn search_index_built(&self) -> Result<bool> {
        Ok(self.search.built()?)
    }

    /// Empties the search index as if the database predated it (for tests of the rebuild).
    #[cfg(test)]
    pub(crate) fn search_index_clear(&self) -> Result<()> {
        Ok(self.search.clear()?)
    }

    /// Records that the rebuild is done.
    pub(crate) fn search_index_mark_built(&self) -> Result<()> {
        Ok(self.search.mark_built()?)
    }

    /// Rebuild: indexes up to `limit` timeline entries after `cursor` (room, position) with
    /// positions up to `up_to`, in one batch. Returns the last entry read (`None`: done) and
    /// how many events were indexed. An event whose redaction committed while this batch was
    /// being written is unindexed again right after (a redaction's own removal may have come
    /// first).
    pub(crate) fn search_index_existing(
        &self,
        cursor: (u64, u64),
        up_to: u64,
        limit: usize,
    ) -> Result<(Option<(u64, u64)>, usize)> {
        let entries = self.search.timeline_after(cursor, limit)?;
        let Some(&(last_room, last_pos, _)) = entries.last() else {
            return Ok((None, 0));
        };
        let entries: Vec<(u64, u64, u64)> = entries.into_iter().filter(|(_, pos, _)| *pos <= up_to).collect();
        let shorts: Vec<u64> = entries.iter().map(|(_, _, short)| *short).collect();
        let events = self.stored_events(&shorts)?;
        let marks = self.pdus.redacted_by_many(&shorts)?;
        let mut batch = self.search.batch();
        let mut indexed = Vec::new();
        for ((room, pos, short), (pdu, mark)) in entries.iter().zip(events.iter().zip(marks)) {
            if mark.is_some() {
                continue;
            }
            let postings = postings_of(pdu, *short);
            if postings.is_empty() {
                continue;
            }
            for (term, posting) in &postings {
                self.search.queue_put(&mut batch, *room, term, *pos, *posting);
            }
            indexed.push((*room, *pos, postings));
        }
        batch.commit_blocking()?;
        let shorts: Vec<u64> = indexed.iter().map(|(_, _, p)| p[0].1.short_event).collect();
        let marks = self.pdus.redacted_by_many(&shorts)?;
        let mut undo = self.search.batch();
        for ((room, pos, postings), mark) in indexed.iter().zip(marks) {
            if mark.is_some() {
                for (term, _) in postings {
                    self.search.queue_delete(&mut undo, *room, term, *pos);
                }
            }
        }
        if !undo.is_empty() {
            undo.commit_blocking()?;
        }
        Ok((Some((last_room, last_pos)), indexed.len()))
    }
}
