//! Server-side search (spec "Server Side Search", `POST /search`, category `room_events`).
//!
//! **The index.** An inverted index per room in RocksDB (`storage::tables::search`,
//! `roomtermpos_posting`), chosen over tantivy by measuring both (numbers and reasons in
//! `benches/results/2026-12-07-search-index.md`). What is indexed, as in Synapse: `body` of
//! `m.room.message`, `name` of `m.room.name`, `topic` of `m.room.topic` (encrypted events have
//! no text to index). The text is cut into terms by [`tokenize`] (Unicode words, lowercase,
//! accents stripped). An event's postings are written in the event's own batch on the rooms
//! write path, so an event is searchable exactly when it is durable, and a redaction that
//! takes effect removes its target's postings in the redaction's batch. Databases from before
//! the index get it rebuilt at start ([`rebuild`], in the background, with progress in the
//! logs); searches meanwhile find what is indexed so far.
//!
//! **A query** reads, in every room the searcher is or was joined to, the postings of each
//! term up to the last position they may read (a former member's departure), the last term
//! also as a prefix; an event must hold every term. Terms are read longest first, and a
//! common one is point-read for the few candidates left (`room_matches`). Ranking is BM25's
//! term-frequency part (without the inverse document frequency, so an event's rank never
//! changes and pages stay stable while new messages arrive). Events of ignored users are left
//! out, as `/messages` leaves them out. Every candidate then goes through what every read goes
//! through: the redaction check (`served`), the request's filter and the per-event history
//! visibility (`rooms::visibility`); `count` counts what survives that (at most
//! [`MAX_CANDIDATES`] candidates are looked at, so it is exact below that and a lower bound
//! above). `next_batch` names the last result returned (and the room, for a room group's
//! token); the next page continues strictly after it.

pub mod tokenize;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId, api::client::filter::RoomEventFilter};

use crate::{
    Error, Result,
    services::rooms::{Rooms, Selection, pdu::Pdu, visibility::HistoryFilter},
};

/// Field bits of a posting.
pub const FIELD_BODY: u8 = 1;
/// `content.name` of `m.room.name`.
pub const FIELD_NAME: u8 = 2;
/// `content.topic` of `m.room.topic`.
pub const FIELD_TOPIC: u8 = 4;
/// Every field.
pub const ALL_FIELDS: u8 = FIELD_BODY | FIELD_NAME | FIELD_TOPIC;

/// Most postings read per term and room.
const MAX_POSTINGS: usize = 50_000;
/// Candidates few enough to look the remaining terms up for each (rather than read them).
const POINT_READS: usize = 1024;
/// Most candidates (events holding every term) ordered and checked per query.
pub const MAX_CANDIDATES: usize = 10_000;
/// Most results per page.
pub const MAX_LIMIT: usize = 100;
/// Most events of context on each side of a result.
pub const MAX_CONTEXT: usize = 100;

/// The indexed field of an event and its terms (`None`: nothing to index).
pub fn index_text(kind: &str, content: &str) -> Option<(u8, Vec<String>)> {
    let (field, key) = match kind {
        "m.room.message" => (FIELD_BODY, "body"),
        "m.room.name" => (FIELD_NAME, "name"),
        "m.room.topic" => (FIELD_TOPIC, "topic"),
        _ => return None,
    };
    let content: serde_json::Map<String, serde_json::Value> = serde_json::from_str(content).ok()?;
    let text = content.get(key)?.as_str()?;
    let terms = tokenize::terms(text);
    (!terms.is_empty()).then_some((field, terms))
}

/// How results are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// By relevance, then newest first.
    Rank,
    /// Newest first.
    Recent,
}

/// A `room_events` search.
pub struct Query<'a> {
    /// The search term as the client sent it.
    pub term: &'a str,
    /// Which fields to search ([`FIELD_BODY`] …).
    pub fields: u8,
    /// The order.
    pub order: Order,
    /// Rooms, senders, types and the page size.
    pub filter: &'a RoomEventFilter,
    /// Events of context around each result: (before, after, with profiles).
    pub context: Option<(usize, usize, bool)>,
    /// Whether to return the state of the rooms with results.
    pub include_state: bool,
    /// The `next_batch` the client sent.
    pub next_batch: Option<&'a str>,
    /// Users the searcher ignores: their events are neither results nor context.
    pub ignored: &'a HashSet<OwnedUserId>,
}

/// The context of one result.
pub struct Context {
    /// Events before it, newest first.
    pub before: Vec<Pdu>,
    /// Events after it, oldest first.
    pub after: Vec<Pdu>,
    /// Token of the start of the context.
    pub start: String,
    /// Token of the end of the context.
    pub end: String,
    /// Senders' (display name, avatar URL) from their member events after the context.
    pub profiles: BTreeMap<OwnedUserId, (Option<String>, Option<String>)>,
}

/// One result.
pub struct Hit {
    /// The event, as the searcher sees it.
    pub event: Pdu,
    /// Its rank.
    pub rank: f64,
    /// Its context, when asked for.
    pub context: Option<Context>,
}

/// A page of results.
pub struct Answer {
    /// The results of this page, in order.
    pub results: Vec<Hit>,
    /// Visible results in total (see the module notes).
    pub count: u64,
    /// The words that matched (as indexed).
    pub highlights: Vec<String>,
    /// Token of the next page, if there is one.
    pub next_batch: Option<String>,
    /// Per room with results on this page: the token continuing in that room only.
    pub room_next_batch: BTreeMap<OwnedRoomId, String>,
    /// Current state of the rooms with results, as the searcher may see it.
    pub state: BTreeMap<OwnedRoomId, Vec<Pdu>>,
}

/// An event holding every term.
#[derive(Clone)]
struct Candidate {
    room: usize,
    position: u64,
    short_event: u64,
    score: u64,
    /// The full term the prefix (last) term matched.
    prefixed: Option<Arc<str>>,
}

impl Candidate {
    /// Sort key: greatest first.
    fn key(&self, order: Order) -> (u64, u64) {
        match order {
            Order::Rank => (self.score, self.position),
            Order::Recent => (0, self.position),
        }
    }
}

/// A `next_batch` token: `{r|p}{room or 0}_{score}_{position}`, the last result returned.
#[derive(Debug, PartialEq, Eq)]
struct Batch {
    order: Order,
    room: Option<OwnedRoomId>,
    key: (u64, u64),
}

impl Batch {
    fn encode(&self) -> String {
        let tag = if self.order == Order::Rank { 'r' } else { 'p' };
        let room = self.room.as_ref().map_or(String::new(), |r| r.to_string());
        format!("{tag}{}_{}_{room}", self.key.0, self.key.1)
    }

    fn parse(text: &str) -> Option<Batch> {
        let order = match text.get(..1)? {
            "r" => Order::Rank,
            "p" => Order::Recent,
            _ => return None,
        };
        let mut parts = text[1..].splitn(3, '_');
        let number = |s: &str| {
            (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        let score = number(parts.next()?)?;
        let position = number(parts.next()?)?;
        let room = match parts.next()? {
            "" => None,
            room => Some(RoomId::parse(room).ok()?),
        };
        Some(Batch {
            order,
            room,
            key: (score, position),
        })
    }
}

/// Reads a client's `next_batch`, or 400 `M_INVALID_PARAM`.
fn parse_batch(text: &str, order: Order) -> Result<Batch> {
    match Batch::parse(text) {
        Some(batch) if batch.order == order => Ok(batch),
        Some(_) => Err(Error::invalid_param("next_batch was handed out for another order_by")),
        None => Err(Error::invalid_param("Invalid next_batch token")),
    }
}

/// One room being searched.
struct Room<'r> {
    id: OwnedRoomId,
    history: HistoryFilter<'r>,
}

/// Runs a search for `user_id`.
pub fn search(rooms: &Rooms, user_id: &UserId, query: &Query<'_>) -> Result<Answer> {
    let batch = query.next_batch.map(|t| parse_batch(t, query.order)).transpose()?;
    let limit = query
        .filter
        .limit
        .map_or(10, |l| usize::try_from(u64::from(l)).unwrap_or(MAX_LIMIT))
        .min(MAX_LIMIT);
    let mut terms = tokenize::terms(query.term);
    // The last term is also a prefix (`deplo` finds `deploy`); repeats count once.
    let mut seen = std::collections::HashSet::new();
    terms.retain(|t| seen.insert(t.clone()));
    let mut answer = Answer {
        results: Vec::new(),
        count: 0,
        highlights: Vec::new(),
        next_batch: None,
        room_next_batch: BTreeMap::new(),
        state: BTreeMap::new(),
    };
    if terms.is_empty() || query.fields == 0 {
        return Ok(answer);
    }

    // The rooms: those the user is or was joined to (a former member up to their departure),
    // narrowed by the filter and by a room group's token.
    let mut searched = Vec::new();
    for (room_id, member) in rooms.memberships_of(user_id)?.iter() {
        if !matches!(member.membership.as_str(), "join" | "leave" | "ban")
            || !crate::services::sync::filter::event_filter_room(query.filter, room_id)
            || batch
                .as_ref()
                .and_then(|b| b.room.as_ref())
                .is_some_and(|r| r != room_id)
        {
            continue;
        }
        let scope = match rooms.read_scope(room_id, user_id) {
            Ok(scope) => scope,
            Err(e) if e.status().as_u16() == 403 => continue,
            Err(e) => return Err(e),
        };
        searched.push(Room {
            id: room_id.clone(),
            history: rooms.history_filter(user_id, scope),
        });
    }

    // Candidates: events of each room holding every term in a searched field.
    let mut candidates = Vec::new();
    for (index, room) in searched.iter().enumerate() {
        let up_to = room.history.scope().up_to;
        let found = room_matches(rooms, &room.id, &terms, query.fields, up_to)?;
        candidates.extend(
            found
                .into_iter()
                .map(|(position, (score, short_event, matched))| Candidate {
                    room: index,
                    position,
                    short_event,
                    score: (score * 1_000_000.0) as u64,
                    prefixed: matched,
                }),
        );
    }
    candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.key(query.order)));
    candidates.truncate(MAX_CANDIDATES);

    // What the searcher may see of them: not redacted, passing the filter, visible.
    let mut visible = Vec::new();
    for chunk in candidates.chunks(256) {
        let shorts: Vec<u64> = chunk.iter().map(|c| c.short_event).collect();
        let events = rooms.search_events(&shorts)?;
        for (candidate, event) in chunk.iter().zip(events) {
            if event.redacted_because.is_none()
                && event.matches(query.filter)
                && !query.ignored.contains(&event.sender)
                && searched[candidate.room].history.allows(candidate.position, &event)
            {
                visible.push(candidate.clone());
            }
        }
    }
    answer.count = visible.len() as u64;
    let mut highlights: Vec<String> = terms.clone();
    highlights.extend(visible.iter().filter_map(|c| c.prefixed.as_deref().map(str::to_owned)));
    highlights.sort();
    highlights.dedup();
    answer.highlights = highlights;

    // The page: the visible results after the token.
    let start = match &batch {
        Some(b) => visible.partition_point(|c| c.key(query.order) >= b.key),
        None => 0,
    };
    let page: Vec<Candidate> = visible.iter().skip(start).take(limit).cloned().collect();
    if let Some(last) = page.last()
        && start + page.len() < visible.len()
    {
        answer.next_batch = Some(
            Batch {
                order: query.order,
                room: batch.as_ref().and_then(|b| b.room.clone()),
                key: last.key(query.order),
            }
            .encode(),
        );
    }
    // Per room on the page: a token continuing in that room, when it has more.
    let rest = &visible[(start + page.len()).min(visible.len())..];
    for candidate in &page {
        let room = &searched[candidate.room];
        let last_of_room = page.iter().rev().find(|c| c.room == candidate.room);
        if let Some(last) = last_of_room
            && rest.iter().any(|c| c.room == candidate.room)
        {
            answer.room_next_batch.insert(
                room.id.clone(),
                Batch {
                    order: query.order,
                    room: Some(room.id.clone()),
                    key: last.key(query.order),
                }
                .encode(),
            );
        }
    }

    let shorts: Vec<u64> = page.iter().map(|c| c.short_event).collect();
    let events = rooms.search_events(&shorts)?;
    for (candidate, event) in page.iter().zip(events) {
        let room = &searched[candidate.room];
        let context = match query.context {
            Some((before, after, profiles)) => Some(context(
                rooms,
                room,
                query.ignored,
                candidate.position,
                &event,
                (before, after, profiles),
            )?),
            None => None,
        };
        if query.include_state && !answer.state.contains_key(&room.id) {
            let state = rooms.visible_state(&room.id, room.history.scope(), Selection::All)?;
            answer.state.insert(room.id.clone(), state);
        }
        answer.results.push(Hit {
            event,
            rank: candidate.score as f64 / 1_000_000.0,
            context,
        });
    }
    Ok(answer)
}

/// Per event position: (score, short event, the term the prefix matched).
type Matches = HashMap<u64, (f64, u64, Option<Arc<str>>)>;

/// The postings of one term as matches: those in a searched field, the best term per event
/// for a prefix.
fn matches_of(hits: Vec<crate::storage::tables::search::Hit>, fields: u8, within: Option<&Matches>) -> Matches {
    let mut matches = Matches::new();
    for (matched, position, posting) in hits {
        if posting.field & fields == 0 || within.is_some_and(|w| !w.contains_key(&position)) {
            continue;
        }
        let score = bm25(posting.frequency, posting.length);
        match matches.entry(position) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((score, posting.short_event, matched));
            }
            // Several terms with the prefix in one event: the best one counts.
            std::collections::hash_map::Entry::Occupied(mut o) if score > o.get().0 => {
                o.insert((score, posting.short_event, matched));
            }
            std::collections::hash_map::Entry::Occupied(_) => {}
        }
    }
    matches
}

/// Keeps the events of `found` that `other` matched too, adding up their scores.
fn intersect(mut found: Matches, other: &Matches) -> Matches {
    found.retain(|position, _| other.contains_key(position));
    for (position, entry) in found.iter_mut() {
        let (score, _, matched) = &other[position];
        entry.0 += score;
        if matched.is_some() {
            entry.2 = matched.clone();
        }
    }
    found
}

/// The events of one room holding every term (the last one also as a prefix) in a searched
/// field, up to position `up_to`.
///
/// The terms are read longest first (longer words are rarer, as a rule), each in full (up to
/// [`MAX_POSTINGS`]), and intersected; once at most [`POINT_READS`] candidates are left, each
/// further exact term is read only if it has at most eight postings per candidate, and
/// otherwise looked up for just those events (point reads), so a common word next to a rarer
/// one costs a few hundred reads, not a scan of the common word. The prefix (the last term)
/// is always read in full.
fn room_matches(rooms: &Rooms, room_id: &RoomId, terms: &[String], fields: u8, up_to: u64) -> Result<Matches> {
    let last = terms.len() - 1;
    let mut order: Vec<usize> = (0..terms.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(terms[i].len()));
    let mut found: Option<Matches> = None;
    for i in order {
        let matches = match &found {
            Some(so_far) if so_far.is_empty() => return Ok(Matches::new()),
            Some(so_far) if i != last && so_far.len() <= POINT_READS => {
                // A term hardly more common than the candidates is read (a scan is cheaper per
                // posting); a common one is looked up for the candidates only.
                let bound = (so_far.len() * 8).max(64);
                let hits = rooms.search_postings(room_id, &terms[i], false, up_to, bound)?;
                if hits.len() < bound {
                    matches_of(hits, fields, Some(so_far))
                } else {
                    point_reads(rooms, room_id, &terms[i], so_far)?
                }
            }
            _ => {
                let hits = rooms.search_postings(room_id, &terms[i], i == last, up_to, MAX_POSTINGS)?;
                matches_of(hits, fields, found.as_ref())
            }
        };
        found = Some(match found {
            None => matches,
            Some(so_far) => intersect(so_far, &matches),
        });
    }
    Ok(found.unwrap_or_default())
}

/// The postings of an exact term for the events of `found` only, read one by one.
fn point_reads(rooms: &Rooms, room_id: &RoomId, term: &str, found: &Matches) -> Result<Matches> {
    let positions: Vec<u64> = found.keys().copied().collect();
    let postings = rooms.search_lookup(room_id, term, &positions)?;
    let hits = positions
        .into_iter()
        .zip(postings)
        .filter_map(|(position, posting)| posting.map(|p| (None, position, p)))
        .collect();
    // An event has one indexed field, and the candidates were found in a searched one.
    Ok(matches_of(hits, ALL_FIELDS, None))
}

/// BM25's term-frequency part (k1 = 1.2, b = 0.75, an average text of 12 terms).
fn bm25(frequency: u8, length: u8) -> f64 {
    let (tf, len) = (f64::from(frequency), f64::from(length.max(1)));
    tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / 12.0))
}

/// The events around a result the searcher may see, with the tokens around them and, when
/// asked, the senders' profiles as of the end of the context (Synapse's rule).
fn context(
    rooms: &Rooms,
    room: &Room<'_>,
    ignored: &HashSet<OwnedUserId>,
    position: u64,
    event: &Pdu,
    (before, after, profiles): (usize, usize, bool),
) -> Result<Context> {
    let keep = |pos: u64, pdu: &Pdu| !ignored.contains(&pdu.sender) && room.history.allows(pos, pdu);
    let (events_before, _) = if before == 0 {
        (Vec::new(), None)
    } else {
        rooms.timeline_page(&room.id, (0, position - 1), true, before.min(MAX_CONTEXT), keep)?
    };
    let (events_after, _) = if after == 0 {
        (Vec::new(), None)
    } else {
        rooms.timeline_page(
            &room.id,
            (position, room.history.scope().up_to),
            false,
            after.min(MAX_CONTEXT),
            keep,
        )?
    };
    let start = events_before.last().map_or(position, |(pos, _)| *pos).saturating_sub(1);
    let end = events_after.last().map_or(position, |(pos, _)| *pos);
    let mut profile_map = BTreeMap::new();
    if profiles {
        let last = events_after.last().map_or(event, |(_, pdu)| pdu);
        let mut senders: Vec<&str> = std::iter::once(event)
            .chain(events_before.iter().map(|(_, p)| p))
            .chain(events_after.iter().map(|(_, p)| p))
            .map(|p| p.sender.as_str())
            .collect();
        senders.sort_unstable();
        senders.dedup();
        for member in rooms.members_after(last, senders)? {
            let Some(user) = member.state_key.as_deref().and_then(|u| UserId::parse(u).ok()) else {
                continue;
            };
            profile_map.insert(
                user,
                (member.content_str("displayname"), member.content_str("avatar_url")),
            );
        }
    }
    Ok(Context {
        before: events_before.into_iter().map(|(_, p)| p).collect(),
        after: events_after.into_iter().map(|(_, p)| p).collect(),
        start: rooms.room_token(&room.id, start)?,
        end: rooms.room_token(&room.id, end)?,
        profiles: profile_map,
    })
}

/// Indexes the events written before the index existed (databases from before it), once,
/// logging progress; later starts find it done and return at once. Run in the background:
/// new events are indexed by the write path meanwhile.
pub fn rebuild(rooms: &Rooms) -> Result<()> {
    if rooms.search_index_built()? {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let up_to = rooms.watermark();
    tracing::info!(up_to, "search index: indexing the events of existing rooms");
    let (mut cursor, mut read, mut indexed) = ((0, 0), 0usize, 0usize);
    let mut logged = std::time::Instant::now();
    loop {
        let (next, n) = rooms.search_index_existing(cursor, up_to, 1000)?;
        let Some(next) = next else { break };
        read += 1000;
        indexed += n;
        cursor = next;
        if logged.elapsed() >= std::time::Duration::from_secs(5) {
            tracing::info!(indexed, room = cursor.0, "search index: rebuilding");
            logged = std::time::Instant::now();
        }
    }
    rooms.search_index_mark_built()?;
    tracing::info!(
        indexed,
        timeline_entries_approx = read,
        ms = started.elapsed().as_millis() as u64,
        "search index: rebuilt"
    );
    Ok(())
}

/// The candidate sets of the event ids on a page, grouped (for `groupings`): by room and by
/// sender, each group with the event ids in page order and its order (1 for the group of the
/// first result).
pub fn groups<K: Ord + Clone>(hits: &[Hit], key: impl Fn(&Pdu) -> K) -> BTreeMap<K, (u64, Vec<OwnedEventId>)> {
    let mut out: BTreeMap<K, (u64, Vec<OwnedEventId>)> = BTreeMap::new();
    for hit in hits {
        let next = out.len() as u64 + 1;
        out.entry(key(&hit.event))
            .or_insert_with(|| (next, Vec::new()))
            .1
            .push(hit.event.event_id.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_tokens_round_trip_and_junk_is_refused() {
        let b = Batch {
            order: Order::Rank,
            room: Some(RoomId::parse("!a:b.c").unwrap()),
            key: (12, 34),
        };
        assert_eq!(Batch::parse(&b.encode()), Some(b));
        let b = Batch {
            order: Order::Recent,
            room: None,
            key: (0, 7),
        };
        assert_eq!(b.encode(), "p0_7_");
        assert_eq!(Batch::parse("p0_7_"), Some(b));
        for junk in [
            "",
            "x0_1_",
            "p_1_",
            "p0_",
            "p0_1",
            "p0_1_notaroom",
            "p+1_2_",
            "p1_99999999999999999999999_",
        ] {
            assert_eq!(Batch::parse(junk), None, "{junk}");
        }
        assert!(parse_batch("r1_2_", Order::Recent).is_err());
    }

    #[test]
    fn only_the_searchable_fields_are_indexed() {
        assert_eq!(
            index_text("m.room.message", r#"{"body":"Hello Wörld","msgtype":"m.text"}"#),
            Some((FIELD_BODY, vec!["hello".to_owned(), "world".to_owned()]))
        );
        assert_eq!(
            index_text("m.room.topic", r#"{"topic":"Rust"}"#).unwrap().0,
            FIELD_TOPIC
        );
        assert_eq!(index_text("m.room.name", r#"{"name":"Den"}"#).unwrap().0, FIELD_NAME);
        assert_eq!(index_text("m.room.encrypted", r#"{"ciphertext":"abc"}"#), None);
        assert_eq!(index_text("m.room.message", r#"{"body":5}"#), None);
        assert_eq!(index_text("m.room.message", r#"{"body":"..."}"#), None);
    }

    /// A database from before the index (simulated by emptying it) is indexed by the rebuild,
    /// redacted events left out; the rebuild runs once.
    #[tokio::test]
    async fn the_rebuild_indexes_rooms_written_before_the_index() {
        use crate::services::{
            Services,
            rooms::{NewEvent, create::Preset, tests::named_room},
        };
        let dir = tempfile::tempdir().unwrap();
        let services = Services::for_tests(dir.path(), 8 << 20);
        let rooms = &services.rooms;
        let alice = UserId::parse("@alice:localhost").unwrap();
        let room = rooms
            .create_room(&alice, named_room("Otter den", Preset::PrivateChat, false))
            .await
            .unwrap();
        let message = |body: &str| NewEvent::message(serde_json::json!({"msgtype": "m.text", "body": body}));
        for i in 0..2500 {
            let mut body = format!("otter number {i}");
            // Three common words (more than 1,024 postings each but `betamax`) whose first two leave 300.
            for (word, has) in [("alphabet", i % 2 == 1), ("betamax", i < 600), ("gamma", i % 5 != 0)] {
                if has {
                    body = format!("{body} {word}");
                }
            }
            rooms.append(&room, &alice, message(&body)).await.unwrap();
        }
        let secret = rooms.append(&room, &alice, message("otter secret")).await.unwrap();
        rooms
            .redact(&room, &alice, &secret.event_id, None, ("@alice:localhost", "D", "r1"))
            .await
            .unwrap();
        let filter = RoomEventFilter::default();
        let ignored = HashSet::new();
        let query = |term| Query {
            ignored: &ignored,
            term,
            fields: ALL_FIELDS,
            order: Order::Recent,
            filter: &filter,
            context: None,
            include_state: false,
            next_batch: None,
        };
        assert_eq!(search(rooms, &alice, &query("otter")).unwrap().count, 2501);
        // A rare prefix (7, 70–79, 700–799), two common terms read in full, and a rare exact
        // term first, then point reads of a common one, with a common prefix read in full.
        assert_eq!(search(rooms, &alice, &query("otter 7")).unwrap().count, 111);
        assert_eq!(search(rooms, &alice, &query("otter number")).unwrap().count, 2500);
        let answer = search(rooms, &alice, &query("number 1234 ott")).unwrap();
        assert_eq!(answer.count, 1);
        assert_eq!(answer.highlights, ["1234", "number", "ott", "otter"]);
        assert_eq!(search(rooms, &alice, &query("number 1234 den")).unwrap().count, 0);
        // The longest words are read in full; for the 300 events left (odd, below 600),
        // `number` (2,500 postings, more than eight per candidate) is point-read and `gamma`
        // (2,000) read; 240 of them are not multiples of 5.
        assert_eq!(
            search(rooms, &alice, &query("alphabet betamax number otter"))
                .unwrap()
                .count,
            300
        );
        assert_eq!(
            search(rooms, &alice, &query("alphabet betamax gamma otter"))
                .unwrap()
                .count,
            240
        );

        rooms.search_index_clear().unwrap();
        assert_eq!(search(rooms, &alice, &query("otter")).unwrap().count, 0);
        assert!(!rooms.search_index_built().unwrap());
        rebuild(rooms).unwrap();
        assert!(rooms.search_index_built().unwrap());
        let answer = search(rooms, &alice, &query("otter")).unwrap();
        assert_eq!(
            answer.count, 2501,
            "every message and the room name, not the redacted one"
        );
        assert_eq!(search(rooms, &alice, &query("secret")).unwrap().count, 0);
        assert_eq!(search(rooms, &alice, &query("den")).unwrap().count, 1);
        // A later start finds it built and does nothing.
        rooms.search_index_clear().unwrap();
        rooms.search_index_mark_built().unwrap();
        rebuild(rooms).unwrap();
        assert_eq!(search(rooms, &alice, &query("otter")).unwrap().count, 0);
    }

    #[test]
    fn ranking_prefers_more_occurrences_and_shorter_texts() {
        assert!(bm25(2, 10) > bm25(1, 10));
        assert!(bm25(1, 5) > bm25(1, 50));
    }
}
