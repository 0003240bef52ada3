//! Event relationships (spec "Forming relationships between events", "Event replacements",
//! "Threading", "Reference relations"): the relations index written with each event, the
//! bundled aggregations (`unsigned["m.relations"]`) added to served events, `/relations` and
//! `/threads`.
//!
//! An event whose content has `m.relates_to` with a `rel_type` and an `event_id` of a known
//! event of the same room is indexed under its parent, by its stream position, in the batch
//! that stores it (`tables::relations`). Relations to unknown events, or to events of another
//! room, are refused with 400 as Synapse does, and so is a thread started from an event that
//! itself relates to another (spec "Validation of `m.thread` relationships").
//!
//! Aggregations are made per reader: only children the reader may see (the same history
//! visibility check every read uses), not sent by a user they ignore, and not redacted (a
//! redacted child has lost its `m.relates_to`, so the relationship is broken; it is no longer
//! listed nor aggregated, as in Synapse). Serving an event costs one `multi_get` on the "has
//! children" marks for the whole page; only parents with children are scanned, one prefix
//! scan each, reading at most [`MAX_CHILDREN`] children.

use std::collections::{BTreeMap, HashSet};

use ruma::{EventId, OwnedEventId, OwnedUserId, RoomId};
use serde_json::{Value, json};

use super::{Rooms, pdu::Pdu, visibility::HistoryFilter};
use crate::{
    Error, Result,
    storage::{Batch, tables::relations::Relation},
};

/// Most children of one parent read for an aggregation (the newest) or a `/relations` answer
/// (from where the page starts).
pub const MAX_CHILDREN: usize = 10_000;
/// How deep `/relations?recurse=true` follows relations of relations (as Synapse).
pub const RECURSION_DEPTH: u64 = 3;

/// Who reads, for aggregations and listings: their history-visibility check and the users
/// they ignore.
pub struct Reader<'a> {
    /// The reader's history-visibility check.
    pub history: &'a HistoryFilter<'a>,
    /// Users whose events the reader does not get.
    pub ignored: &'a HashSet<OwnedUserId>,
}

/// A `/relations` query.
pub struct RelationsQuery<'a> {
    /// Only children with this `rel_type`.
    pub rel_type: Option<&'a str>,
    /// Only children of this event type (with `rel_type`).
    pub event_type: Option<&'a str>,
    /// Newest first (the default).
    pub backwards: bool,
    /// Start of the range (a stream position; exclusive forwards, inclusive backwards).
    pub from: Option<u64>,
    /// End of the range.
    pub to: Option<u64>,
    /// Most events answered.
    pub limit: usize,
    /// Follow relations of relations, [`RECURSION_DEPTH`] deep.
    pub recurse: bool,
}

/// The `m.relates_to` of event content: (`rel_type`, `event_id`), when it has both.
pub fn relates_to(content: &serde_json::value::RawValue) -> Option<(String, OwnedEventId)> {
    #[derive(serde::Deserialize)]
    struct Content {
        #[serde(rename = "m.relates_to")]
        relates_to: Option<Value>,
    }
    let relates_to = serde_json::from_str::<Content>(content.get()).ok()?.relates_to?;
    let rel_type = relates_to.get("rel_type")?.as_str()?;
    let event_id = EventId::parse(relates_to.get("event_id")?.as_str()?).ok()?;
    Some((rel_type.to_owned(), event_id))
}

fn bad_relation(message: &str) -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        ruma::api::error::ErrorKind::Unknown,
        message,
    )
}

/// A child as a reader may see it, with its stream position and index record.
struct Child {
    position: u64,
    relation: Relation,
    pdu: Pdu,
}

impl Rooms {
    /// On the write path, before a position is taken: the parent (short id) and index record
    /// of a new event that relates to another, or `None`; 400 for a relation to an unknown
    /// event, to an event of another room, or a thread started from a relation.
    pub(super) fn relation_of(&self, pdu: &Pdu) -> Result<Option<(u64, Relation)>> {
        let Some((rel_type, parent_id)) = relates_to(&pdu.content) else {
            return Ok(None);
        };
        let parent = match self.ids.event(parent_id.as_str())? {
            Some(short) => self.stored_event(short, parent_id.clone())?.map(|p| (short, p)),
            None => None,
        };
        let Some((parent_short, parent)) = parent else {
            return Err(bad_relation("Can't send relation to unknown event"));
        };
        if parent.room()? != pdu.room()? {
            return Err(bad_relation("Relations must be in the same room"));
        }
        if rel_type == "m.thread" && relates_to(&parent.content).is_some() {
            return Err(bad_relation("Cannot start threads from an event with a relation"));
        }
        Ok(Some((
            parent_short,
            Relation {
                child: 0,
                rel_type,
                kind: pdu.kind.to_string(),
            },
        )))
    }

    /// Queues the index entries of a new event that relates to `parent`.
    pub(super) fn queue_relation(
        &self,
        batch: &mut Batch,
        (room, position, child): (u64, u64, u64),
        (parent, mut relation): (u64, Relation),
    ) -> Result<()> {
        relation.child = child;
        if relation.rel_type == "m.thread" {
            self.relations.queue_thread_reply(batch, room, position, parent);
        }
        Ok(self.relations.queue_put(batch, room, parent, position, &relation)?)
    }

    /// The thread an event is in (spec "Threaded read receipts"): the root of its `m.thread`
    /// relation, or of the first one found following its relations up to three hops; `None`
    /// for the main timeline (thread roots and their other children included).
    pub fn thread_of(&self, pdu: &Pdu) -> Result<Option<OwnedEventId>> {
        let mut relation = relates_to(&pdu.content);
        for hop in 0..3 {
            let Some((rel_type, parent)) = relation else {
                return Ok(None);
            };
            if rel_type == "m.thread" {
                return Ok(Some(parent));
            }
            if hop == 2 {
                break;
            }
            relation = match self.event(&parent)? {
                Some(parent) => relates_to(&parent.content),
                None => None,
            };
        }
        Ok(None)
    }

    /// Whether a threaded receipt for `thread` (`main` or a root's id) may name `event_id`
    /// (receipts.yaml: 400 when "the `event_id` is not related to the `thread_id`"): an
    /// event of the main timeline for `main`; for a thread, its root, an event of it, or an
    /// event relating to the root (as Synapse). An unknown event passes (the caller's 404).
    pub fn in_thread(&self, event_id: &EventId, thread: &str) -> Result<bool> {
        let Some(pdu) = self.event(event_id)? else {
            return Ok(true);
        };
        let of = self.thread_of(&pdu)?;
        if thread == "main" {
            return Ok(of.is_none());
        }
        Ok(event_id.as_str() == thread
            || of.is_some_and(|root| root.as_str() == thread)
            || relates_to(&pdu.content).is_some_and(|(_, parent)| parent.as_str() == thread))
    }

    /// Indexes the relations of events stored before the index existed: once, at start, when
    /// the index is not marked complete (nothing is written concurrently then).
    pub(super) fn index_relations(&self) -> Result<()> {
        if self.relations.indexed()? {
            return Ok(());
        }
        let mut start = (0u64, 0u64);
        let mut indexed = 0usize;
        loop {
            let entries = self.timeline.scan_all(start, 1000)?;
            let Some(&(room, position, _)) = entries.last() else {
                break;
            };
            start = (room, position + 1);
            let shorts: Vec<u64> = entries.iter().map(|(_, _, short)| *short).collect();
            let events = self.stored_events(&shorts)?;
            let mut batch = self.db.batch();
            for ((room, position, short), pdu) in entries.into_iter().zip(events) {
                let Some((rel_type, parent_id)) = relates_to(&pdu.content) else {
                    continue;
                };
                let Some(parent) = self.ids.event(parent_id.as_str())? else {
                    continue;
                };
                // A parent of another room is never read under this room's prefix.
                let relation = Relation {
                    child: short,
                    rel_type,
                    kind: pdu.kind.to_string(),
                };
                self.queue_relation(&mut batch, (room, position, short), (parent, relation))?;
                indexed += 1;
            }
            batch.commit_blocking().map_err(Error::from)?;
        }
        let mut batch = self.db.batch();
        self.relations.queue_indexed(&mut batch);
        batch.commit_blocking().map_err(Error::from)?;
        if indexed > 0 {
            tracing::info!(
                indexed,
                "indexed the relations of events stored before the relations index"
            );
        }
        Ok(())
    }

    /// The children of `parent` in `range` the reader may see (not redacted, not from an
    /// ignored user), oldest first or newest first when `backwards`, up to [`MAX_CHILDREN`]
    /// read.
    fn visible_children(
        &self,
        reader: &Reader<'_>,
        room: u64,
        parent: u64,
        range: (u64, u64),
        backwards: bool,
    ) -> Result<Vec<Child>> {
        let entries = self.relations.children(room, parent, range, backwards, MAX_CHILDREN)?;
        self.visible(reader, entries)
    }

    /// Index entries as the reader may see them (see [`Self::visible_children`]), in order.
    fn visible(&self, reader: &Reader<'_>, entries: Vec<(u64, Relation)>) -> Result<Vec<Child>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let shorts: Vec<u64> = entries.iter().map(|(_, r)| r.child).collect();
        let stored = shorts.iter().copied().zip(self.stored_events(&shorts)?).collect();
        let served = self.served(stored)?;
        Ok(entries
            .into_iter()
            .zip(served)
            .filter(|((position, _), pdu)| {
                pdu.redacted_because.is_none()
                    && !reader.ignored.contains(&pdu.sender)
                    && reader.history.allows(*position, pdu)
            })
            .map(|((position, relation), pdu)| Child {
                position,
                relation,
                pdu,
            })
            .collect())
    }

    /// Adds the bundled aggregations (`unsigned["m.relations"]`) the reader gets to served
    /// events: the latest valid edit (`m.replace`), the thread summary (`m.thread`) and the
    /// references (`m.reference`). State events get none (spec).
    pub fn bundle<'p>(&self, reader: &Reader<'_>, events: impl IntoIterator<Item = &'p mut Pdu>) -> Result<()> {
        self.bundle_at(reader, events.into_iter().collect(), 0)
    }

    fn bundle_at(&self, reader: &Reader<'_>, events: Vec<&mut Pdu>, depth: u8) -> Result<()> {
        let mut candidates = Vec::new();
        let mut shorts = Vec::new();
        for pdu in events {
            if pdu.is_state() {
                continue;
            }
            if let Some(short) = self.ids.event(pdu.event_id.as_str())? {
                shorts.push(short);
                candidates.push(pdu);
            }
        }
        if shorts.is_empty() {
            return Ok(());
        }
        let have = self.relations.have_children(&shorts)?;
        for ((pdu, short), has) in candidates.into_iter().zip(shorts).zip(have) {
            if !has {
                continue;
            }
            let Some(room) = self.ids.room(pdu.room()?.as_str())? else {
                continue;
            };
            // The newest MAX_CHILDREN, oldest first.
            let mut children = self.visible_children(reader, room, short, (0, u64::MAX), true)?;
            children.reverse();
            let aggregations = self.aggregate(reader, pdu, children, depth)?;
            if !aggregations.is_empty() {
                pdu.unsigned_extra
                    .insert("m.relations".into(), Value::Object(aggregations));
            }
        }
        Ok(())
    }

    /// The aggregations of `parent` from its visible children (oldest first).
    fn aggregate(
        &self,
        reader: &Reader<'_>,
        parent: &Pdu,
        children: Vec<Child>,
        depth: u8,
    ) -> Result<serde_json::Map<String, Value>> {
        let mut out = serde_json::Map::new();
        let parent_relation = relates_to(&parent.content);
        let mut by_type: BTreeMap<&str, Vec<&Child>> = BTreeMap::new();
        for child in &children {
            by_type.entry(child.relation.rel_type.as_str()).or_default().push(child);
        }
        // Edits: of an unredacted event that is no edit itself, by its sender, of its type,
        // with `m.new_content` (spec "Validity of replacement events"); the latest by
        // `origin_server_ts`, then event id.
        let editable = parent.redacted_because.is_none()
            && !parent.is_state()
            && parent_relation.as_ref().is_none_or(|(rel, _)| rel != "m.replace");
        if editable
            && let Some(edit) = by_type
                .get("m.replace")
                .into_iter()
                .flatten()
                .filter(|c| valid_edit(parent, &c.pdu))
                .max_by(|a, b| {
                    (a.pdu.origin_server_ts, &a.pdu.event_id).cmp(&(b.pdu.origin_server_ts, &b.pdu.event_id))
                })
        {
            out.insert("m.replace".into(), edit.pdu.to_client()?);
        }
        // Threads: only an event that relates to nothing can be a root.
        if parent_relation.is_none()
            && let Some(thread) = by_type.get("m.thread")
            && let Some(latest) = thread.last()
        {
            let user = reader.history.user_id();
            let participated = parent.sender == user || thread.iter().any(|c| c.pdu.sender == user);
            let mut latest = latest.pdu.clone();
            if depth == 0 {
                self.bundle_at(reader, vec![&mut latest], depth + 1)?;
            }
            out.insert(
                "m.thread".into(),
                json!({
                    "latest_event": latest.to_client()?,
                    "count": thread.len(),
                    "current_user_participated": participated,
                }),
            );
        }
        if let Some(references) = by_type.get("m.reference") {
            let chunk: Vec<Value> = references.iter().map(|c| json!({"event_id": c.pdu.event_id})).collect();
            out.insert("m.reference".into(), json!({ "chunk": chunk }));
        }
        Ok(out)
    }

    /// `GET /relations`: the children of `parent_id` (and with `recurse`, their children,
    /// [`RECURSION_DEPTH`] deep) the reader may see, with their bundled aggregations, and the
    /// position the next page starts after. 404 when the parent is no event of the room the
    /// reader may see.
    pub fn relations(
        &self,
        reader: &Reader<'_>,
        room_id: &RoomId,
        parent_id: &EventId,
        query: &RelationsQuery<'_>,
    ) -> Result<(Vec<Pdu>, Option<u64>)> {
        let not_found = || Error::not_found("Unknown parent event");
        let parent = self
            .event(parent_id)?
            .filter(|p| p.room().is_ok_and(|r| r == room_id))
            .ok_or_else(not_found)?;
        let position = self.position_of(parent_id)?.ok_or_else(not_found)?;
        if !reader.history.allows(position, &parent) {
            return Err(not_found());
        }
        let room = self.ids.room(room_id.as_str())?.ok_or_else(not_found)?;
        let parent_short = self.ids.event(parent_id.as_str())?.ok_or_else(not_found)?;
        let up_to = reader.history.scope().up_to;
        let (after, until) = if query.backwards {
            (query.to.unwrap_or(0), query.from.unwrap_or(up_to).min(up_to))
        } else {
            (query.from.unwrap_or(0), query.to.unwrap_or(up_to).min(up_to))
        };
        // Candidates: the index entries in range (relations of relations are found through
        // children outside the range too).
        let mut candidates = Vec::new();
        let mut parents = vec![parent_short];
        let levels = if query.recurse { RECURSION_DEPTH } else { 1 };
        for _ in 0..levels {
            let mut next = Vec::new();
            for parent in parents {
                // At most MAX_CHILDREN candidates in all, however wide the tree.
                let room_left = MAX_CHILDREN.saturating_sub(candidates.len());
                if room_left == 0 {
                    break;
                }
                let range = if query.recurse { (0, up_to) } else { (after, until) };
                // Read from the end the page starts at, so a capped read keeps what it needs.
                let children = self
                    .relations
                    .children(room, parent, range, query.backwards, room_left)?;
                for (position, relation) in children {
                    next.push(relation.child);
                    candidates.push((position, relation));
                }
            }
            if candidates.len() >= MAX_CHILDREN || next.is_empty() {
                break;
            }
            parents = next;
        }
        candidates.retain(|(position, relation)| {
            *position > after
                && *position <= until
                && query.rel_type.is_none_or(|t| t == relation.rel_type)
                && query.event_type.is_none_or(|t| t == relation.kind)
        });
        candidates.sort_by_key(|(position, _)| *position);
        candidates.dedup_by_key(|(position, _)| *position);
        if query.backwards {
            candidates.reverse();
        }
        let limit = query.limit.max(1);
        let mut page = Vec::new();
        let mut last = None;
        for chunk in candidates.chunks(limit.clamp(8, 500)) {
            for child in self.visible(reader, chunk.to_vec())? {
                last = Some(child.position);
                page.push(child.pdu);
                if page.len() == limit {
                    break;
                }
            }
            if page.len() == limit {
                break;
            }
        }
        // A full page whose last event is not the last candidate has a next page (the
        // candidates after it are read again from there).
        let next = match last {
            Some(last) if page.len() == limit && candidates.last().is_some_and(|(p, _)| *p != last) => {
                Some(if query.backwards { last - 1 } else { last })
            }
            _ => None,
        };
        self.bundle(reader, page.iter_mut())?;
        Ok((page, next))
    }

    /// `GET /threads`: the room's thread roots the reader may see, by latest activity (newest
    /// first) at or before position `from`, with their bundled aggregations; only those the
    /// reader took part in when `participated`. Returns the position the next page starts at.
    pub fn threads(
        &self,
        reader: &Reader<'_>,
        room_id: &RoomId,
        participated: bool,
        from: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Pdu>, Option<u64>)> {
        let Some(room) = self.ids.room(room_id.as_str())? else {
            return Ok((Vec::new(), None));
        };
        let up_to = reader.history.scope().up_to;
        let mut high = from.unwrap_or(up_to).min(up_to);
        let mut seen = HashSet::new();
        let mut page = Vec::new();
        // Bounded: at most 20 reads of 500 replies per request.
        for _ in 0..20 {
            let replies = self.relations.thread_replies(room, (0, high), 500)?;
            let exhausted = replies.len() < 500;
            for (position, root) in replies {
                high = position - 1;
                if !seen.insert(root) {
                    continue;
                }
                // Only at its latest reply (an earlier page had it when that is later).
                let latest = self.latest_thread_reply(room, root)?;
                if latest != Some(position) {
                    continue;
                }
                let Some(root_id) = self.ids.event_id(root)? else {
                    continue;
                };
                let root_id = EventId::parse(root_id).map_err(|e| Error::internal(e.to_string()))?;
                let Some(mut pdu) = self.event(&root_id)? else {
                    continue;
                };
                let Some(root_position) = self.position_of(&root_id)? else {
                    continue;
                };
                if !reader.history.allows(root_position, &pdu) {
                    continue;
                }
                self.bundle(reader, [&mut pdu])?;
                let took_part = pdu
                    .unsigned_extra
                    .get("m.relations")
                    .and_then(|r| r.get("m.thread"))
                    .and_then(|t| t.get("current_user_participated"))
                    .and_then(Value::as_bool)
                    .unwrap_or(pdu.sender == reader.history.user_id());
                if participated && !took_part {
                    continue;
                }
                // The root of an ignored user is shown redacted (threads_list.yaml), as a
                // client aggregating the thread itself would have it.
                if reader.ignored.contains(&pdu.sender) {
                    pdu = self.content_redacted(pdu)?;
                }
                page.push(pdu);
                if page.len() == limit.max(1) {
                    return Ok((page, (high > 0).then_some(high)));
                }
            }
            if exhausted || high == 0 {
                return Ok((page, None));
            }
        }
        Ok((page, Some(high)))
    }
}

impl Rooms {
    /// The position of the latest reply of the thread `root` (its newest `m.thread` child):
    /// among its 64 newest children, else its newest [`MAX_CHILDREN`].
    fn latest_thread_reply(&self, room: u64, root: u64) -> Result<Option<u64>> {
        for limit in [64, MAX_CHILDREN] {
            let children = self.relations.children(room, root, (0, u64::MAX), true, limit)?;
            let read = children.len();
            if let Some((position, _)) = children.into_iter().find(|(_, r)| r.rel_type == "m.thread") {
                return Ok(Some(position));
            }
            if read < limit {
                break;
            }
        }
        Ok(None)
    }

    /// An event with its content redacted by its room version's rules (no redaction event).
    fn content_redacted(&self, mut pdu: Pdu) -> Result<Pdu> {
        let version = self.room_version(&pdu.room()?)?.unwrap_or(ruma::RoomVersionId::V1);
        let rules = crate::services::events::rules(&version)?;
        let mut content = pdu.content_object()?;
        ruma::canonical_json::redact_content_in_place(&mut content, &rules.redaction, pdu.kind.to_string());
        pdu.content = serde_json::value::RawValue::from_string(ruma::CanonicalJsonValue::Object(content).to_string())
            .map_err(|e| Error::internal(e.to_string()))?;
        Ok(pdu)
    }
}

/// Whether `edit` validly replaces `original` (spec "Validity of replacement events"; the
/// same room is given by the index).
fn valid_edit(original: &Pdu, edit: &Pdu) -> bool {
    if edit.sender != original.sender || edit.kind != original.kind || edit.is_state() {
        return false;
    }
    // An encrypted edit carries `m.new_content` in its payload, which the server cannot see.
    if edit.kind.to_string() == "m.room.encrypted" {
        return true;
    }
    serde_json::from_str::<serde_json::Map<String, Value>>(edit.content.get())
        .is_ok_and(|c| c.get("m.new_content").is_some_and(Value::is_object))
}

#[cfg(test)]
mod tests {
    use ruma::UserId;
    use serde_json::{json, value::RawValue};

    use super::relates_to;
    use crate::{
        services::{
            Services,
            rooms::{NewEvent, create::Preset, tests::named_room},
        },
        storage::schema::{GLOBAL, ROOMPARENTPOS_RELATION, ROOMPOS_THREADROOT, SHORTEVENTID_HASRELATIONS},
    };

    fn message(content: serde_json::Value) -> NewEvent<'static> {
        NewEvent::message(content)
    }

    #[tokio::test]
    async fn events_stored_before_the_index_are_indexed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let services = Services::for_tests(dir.path(), 1 << 20);
        let rooms = &services.rooms;
        let alice = UserId::parse("@alice:localhost").unwrap();
        let room = rooms
            .create_room(&alice, named_room("r", Preset::PrivateChat, false))
            .await
            .unwrap();
        let root = rooms
            .append(&room, &alice, message(json!({"body": "root"})))
            .await
            .unwrap();
        let relates = json!({"rel_type": "m.thread", "event_id": root.event_id});
        let reply = rooms
            .append(
                &room,
                &alice,
                message(json!({"body": "reply", "m.relates_to": relates})),
            )
            .await
            .unwrap();
        let short_room = rooms.ids.room(room.as_str()).unwrap().unwrap();
        let short_root = rooms.ids.event(root.event_id.as_str()).unwrap().unwrap();
        let short_reply = rooms.ids.event(reply.event_id.as_str()).unwrap().unwrap();
        let listed = || {
            rooms
                .relations
                .children(short_room, short_root, (0, u64::MAX), false, 10)
                .unwrap()
        };
        assert_eq!(listed().len(), 1);
        // As a database written before the index existed: no entries and no mark.
        let mut batch = rooms.db.batch();
        for table in [ROOMPARENTPOS_RELATION, SHORTEVENTID_HASRELATIONS, ROOMPOS_THREADROOT] {
            batch.delete_range(table, &[], &[0xFF; 32]);
        }
        batch.delete(GLOBAL, b"relations_indexed");
        batch.commit_blocking().unwrap();
        assert!(listed().is_empty());
        assert!(!rooms.relations.indexed().unwrap());

        rooms.index_relations().unwrap();
        let listed = listed();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].0, listed[0].1.child), (reply.position, short_reply));
        assert_eq!(listed[0].1.rel_type, "m.thread");
        assert_eq!(
            rooms.relations.have_children(&[short_root, short_reply]).unwrap(),
            [true, false]
        );
        assert_eq!(
            rooms.relations.thread_replies(short_room, (0, u64::MAX), 10).unwrap(),
            [(reply.position, short_root)]
        );
        assert!(rooms.relations.indexed().unwrap());
    }

    #[test]
    fn relates_to_needs_a_rel_type_and_an_event_id() {
        let read = |json: &str| relates_to(&RawValue::from_string(json.to_owned()).unwrap());
        assert_eq!(
            read(r#"{"m.relates_to":{"rel_type":"m.thread","event_id":"$a"}}"#).map(|(r, e)| (r, e.to_string())),
            Some(("m.thread".to_owned(), "$a".to_owned()))
        );
        assert_eq!(read(r#"{"m.relates_to":{"m.in_reply_to":{"event_id":"$a"}}}"#), None);
        assert_eq!(
            read(r#"{"m.relates_to":{"rel_type":"m.thread","event_id":"nope"}}"#),
            None
        );
        assert_eq!(read(r#"{"m.relates_to":{"rel_type":7,"event_id":"$a"}}"#), None);
        assert_eq!(read(r#"{"m.relates_to":"x"}"#), None);
        assert_eq!(read(r#"{"body":"x"}"#), None);
    }
}
