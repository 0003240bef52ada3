//! The user directory (spec client-server-api "User directory",
//! `POST /user_directory/search`): finding people by display name or user id.
//!
//! Who can be found: with `user_directory.search_all_users` every active local account (and
//! every user of another server the index holds);
//! otherwise (Synapse's default) the users who share a room with the searcher (both joined) and
//! the users joined to a public room (join rule `public` or history `world_readable`, Synapse's
//! test). Deactivated accounts are never found.
//!
//! Matching is by word prefix, ignoring case and accents: the display name and the user id's
//! localpart are cut into words (runs of letters and digits, after Unicode NFKD decomposition
//! with the combining marks dropped, then lowercased), and every word of the search term must
//! begin some word of the user's. "jo" finds "Jöhn Smith" and `@jon:server`; "smi" finds
//! "Jöhn Smith"; "jo smi" finds him too. A term written as a user id (`@jon:server`) is
//! searched by its localpart.
//!
//! Results are ranked: a display name equal to the term, then one starting with it, then any
//! display-name word match, then localpart-only matches; within each, users for whom every
//! term word is a whole word first ("user12" before "user120"), then users sharing a room with
//! the searcher, then by display name and user id.
//!
//! # The index lives in memory
//!
//! Users of other servers joined to a room one of ours is in have an entry too, with the
//! display name and avatar of their latest member event there (Synapse's directory does the
//! same; at most [`MAX_REMOTE_USERS`], dropped when they have no joined room left); they are
//! added when a local user joins such a room, at rebuild, and by their member events.
//!
//! Every active local account has one entry: its display name and avatar, its words, and the
//! rooms it has joined (interned to small numbers); per room, whether it is public and who is
//! joined; per entry, whether it sits in a public room. The words are in one ordered set whose
//! keys hold a word's first bytes inline, so a search is a range scan of the words starting
//! with the term; who shares a room with the searcher is one bit set built from the searcher's
//! rooms, so only visible candidates are looked at. With 10,000 users (the unit test, optimised
//! build) a one-word term takes 1-40 µs, and a one-letter term that every user matches about
//! 70 µs with `search_all_users` off and 330 µs with it on; no disk is read.
//!
//! It is rebuilt at start from the accounts, profiles and membership index (a profile and a
//! membership read per account; the time taken is logged) instead of being stored: it is derived data
//! only, so it can never disagree with what it derives from after a crash, and there is no
//! schema to migrate. It is bounded by the number of active accounts (a few hundred bytes
//! each, plus 4 bytes per joined room), which registration controls; no request can add an
//! entry otherwise. It is kept current by hooks: account creation and deactivation, profile
//! changes, and, from the rooms write path once an event is durable, member events (the user's
//! joined rooms are re-read, so hooks racing each other still leave the truth) and changes of a
//! room's join rule or history visibility.

use std::{
    collections::{BTreeSet, HashMap},
    sync::RwLock,
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, events::StateEventType};
use serde_json::{Map, Value};
use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};

use super::{accounts::Accounts, profile::Profiles, rooms::Rooms};
use crate::Result;

/// Most results a search returns, whatever the client asks (Synapse's cap).
pub const MAX_LIMIT: usize = 50;
/// Users of other servers the index holds at most (found through rooms shared with ours).
pub const MAX_REMOTE_USERS: usize = 100_000;

/// One search hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The user.
    pub user_id: OwnedUserId,
    /// Their display name.
    pub display_name: Option<String>,
    /// Their avatar.
    pub avatar_url: Option<String>,
}

/// The service.
pub struct UserDirectory {
    search_all_users: bool,
    index: RwLock<Index>,
}

#[derive(Default)]
struct Index {
    /// Entries by slot; `None` for a free slot.
    people: Vec<Option<Person>>,
    free: Vec<u32>,
    slot_of: HashMap<OwnedUserId, u32>,
    /// Every word of every person.
    words: BTreeSet<WordKey>,
    /// Rooms interned to numbers; by number, whether each is public and its joined slots.
    room_no: HashMap<OwnedRoomId, u32>,
    public: Vec<bool>,
    members: Vec<Vec<u32>>,
    /// By slot: joined to a public room.
    in_public: Vec<bool>,
    /// Entries of other servers' users.
    remote: usize,
}

/// Bytes of a word kept inline in its key.
const HEAD: usize = 8;

/// A person's word in the ordered set. Its first bytes are inline (zero-padded: words never
/// hold a zero byte, so the order is the words' order), so a scan for a short prefix compares
/// without following a pointer.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct WordKey {
    head: [u8; HEAD],
    word: Box<str>,
    slot: u32,
}

fn head_of(word: &str) -> [u8; HEAD] {
    let mut head = [0; HEAD];
    let n = word.len().min(HEAD);
    head[..n].copy_from_slice(&word.as_bytes()[..n]);
    head
}

impl WordKey {
    fn new(word: &str, slot: u32) -> Self {
        Self {
            head: head_of(word),
            word: word.into(),
            slot,
        }
    }

    fn starts_with(&self, prefix: &str, prefix_head: &[u8; HEAD]) -> bool {
        if prefix.len() <= HEAD {
            self.head[..prefix.len()] == prefix.as_bytes()[..]
        } else {
            self.head == *prefix_head && self.word.starts_with(prefix)
        }
    }
}

/// A set of slots, one bit each.
struct SlotSet(Vec<u64>);

impl SlotSet {
    fn new(slots: usize) -> Self {
        Self(vec![0; slots.div_ceil(64)])
    }

    /// Adds a slot; false if it was there.
    fn insert(&mut self, slot: u32) -> bool {
        let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }

    fn contains(&self, slot: u32) -> bool {
        self.0[slot as usize / 64] & (1u64 << (slot % 64)) != 0
    }
}

struct Person {
    user_id: OwnedUserId,
    display_name: Option<String>,
    avatar_url: Option<String>,
    /// The display name folded as words are.
    name_key: String,
    /// The display name's words, then the localpart's.
    words: Vec<Box<str>>,
    name_words: usize,
    /// Joined rooms, sorted.
    rooms: Vec<u32>,
}

/// Folds text for matching: NFKD, combining marks dropped, lowercase.
pub fn fold(text: &str) -> String {
    text.nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The words of folded text: runs of letters and digits.
fn words_of(folded: &str) -> impl Iterator<Item = &str> {
    folded.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty())
}

/// Display name and avatar from a profile object.
fn shown(profile: &Map<String, Value>) -> (Option<String>, Option<String>) {
    let text = |key: &str| {
        profile
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    (text("displayname"), text("avatar_url"))
}

impl Person {
    fn new(user_id: OwnedUserId, display_name: Option<String>, avatar_url: Option<String>, rooms: Vec<u32>) -> Self {
        let name_key = display_name.as_deref().map(fold).unwrap_or_default();
        fn add(words: &mut Vec<Box<str>>, word: &str) {
            if !words.iter().any(|w| &**w == word) {
                words.push(word.into());
            }
        }
        let mut words: Vec<Box<str>> = Vec::new();
        words_of(&name_key).for_each(|w| add(&mut words, w));
        let name_words = words.len();
        let localpart = fold(user_id.localpart());
        words_of(&localpart).for_each(|w| add(&mut words, w));
        add(&mut words, &localpart);
        Self {
            user_id,
            display_name,
            avatar_url,
            name_key,
            words,
            name_words,
            rooms,
        }
    }
}

impl Index {
    fn room_no(&mut self, rooms: &Rooms, room_id: &RoomId) -> Result<u32> {
        if let Some(no) = self.room_no.get(room_id) {
            return Ok(*no);
        }
        let public = is_public(rooms, room_id)?;
        Ok(self.add_room(room_id, public))
    }

    fn add_room(&mut self, room_id: &RoomId, public: bool) -> u32 {
        let no = self.public.len() as u32;
        self.public.push(public);
        self.members.push(Vec::new());
        self.room_no.insert(room_id.to_owned(), no);
        no
    }

    fn insert(&mut self, person: Person) {
        self.remove(&person.user_id.clone());
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.people.push(None);
                self.in_public.push(false);
                (self.people.len() - 1) as u32
            }
        };
        for word in &person.words {
            self.words.insert(WordKey::new(word, slot));
        }
        for room in &person.rooms {
            self.members[*room as usize].push(slot);
        }
        self.in_public[slot as usize] = person.rooms.iter().any(|r| self.public[*r as usize]);
        self.slot_of.insert(person.user_id.clone(), slot);
        self.people[slot as usize] = Some(person);
    }

    fn remove(&mut self, user_id: &UserId) -> Option<Person> {
        let slot = self.slot_of.remove(user_id)?;
        let person = self.people[slot as usize].take()?;
        for word in &person.words {
            self.words.remove(&WordKey::new(word, slot));
        }
        for room in &person.rooms {
            self.members[*room as usize].retain(|s| *s != slot);
        }
        self.in_public[slot as usize] = false;
        self.free.push(slot);
        Some(person)
    }

    /// Replaces a person's joined rooms (sorted).
    fn set_rooms(&mut self, user_id: &UserId, rooms: Vec<u32>) {
        let Some(&slot) = self.slot_of.get(user_id) else {
            return;
        };
        let Some(person) = self.people[slot as usize].as_mut() else {
            return;
        };
        let old = std::mem::replace(&mut person.rooms, rooms);
        let new = &person.rooms;
        for room in old.iter().filter(|r| new.binary_search(r).is_err()) {
            self.members[*room as usize].retain(|s| *s != slot);
        }
        for room in new.iter().filter(|r| old.binary_search(r).is_err()) {
            self.members[*room as usize].push(slot);
        }
        self.in_public[slot as usize] = new.iter().any(|r| self.public[*r as usize]);
    }

    /// Sets whether a room is public, and with it its members' flags.
    fn set_public(&mut self, no: u32, public: bool) {
        if self.public[no as usize] == public {
            return;
        }
        self.public[no as usize] = public;
        for &slot in &self.members[no as usize] {
            if let Some(person) = &self.people[slot as usize] {
                self.in_public[slot as usize] = person.rooms.iter().any(|r| self.public[*r as usize]);
            }
        }
    }
}

/// Synapse's test of a public room: join rule `public`, or history `world_readable`.
fn is_public(rooms: &Rooms, room_id: &RoomId) -> Result<bool> {
    let join_rule = rooms
        .state_event(room_id, &StateEventType::RoomJoinRules, "")?
        .and_then(|e| e.content_str("join_rule"));
    if join_rule.as_deref() == Some("public") {
        return Ok(true);
    }
    let history = rooms
        .state_event(room_id, &StateEventType::RoomHistoryVisibility, "")?
        .and_then(|e| e.content_str("history_visibility"));
    Ok(history.as_deref() == Some("world_readable"))
}

/// How well a person matches (lower is better).
fn tier(person: &Person, term_key: &str, term_words: &[&str]) -> u8 {
    if !person.name_key.is_empty() && person.name_key == term_key {
        0
    } else if !person.name_key.is_empty() && person.name_key.starts_with(term_key) {
        1
    } else if term_words
        .iter()
        .all(|t| person.words[..person.name_words].iter().any(|w| w.starts_with(t)))
    {
        2
    } else {
        3
    }
}

/// A match: its tier, whether some term word is not a whole word of the user's, whether the
/// user shares no room with the searcher (each `false` first), and the user.
type Hit<'a> = (u8, bool, bool, &'a Person);

impl UserDirectory {
    /// An empty directory; [`Self::rebuild`] fills it.
    pub fn new(search_all_users: bool) -> Self {
        Self {
            search_all_users,
            index: RwLock::new(Index::default()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds the index from every active account, its profile and its joined rooms.
    pub fn rebuild(&self, accounts: &Accounts, profiles: &Profiles, rooms: &Rooms) -> Result<()> {
        let started = std::time::Instant::now();
        let mut index = Index::default();
        for user_id in accounts.active_users()? {
            let (display_name, avatar_url) = profiles.get(&user_id)?.as_ref().map(shown).unwrap_or_default();
            let mut joined = Vec::new();
            for (room_id, member) in rooms.memberships_of(&user_id)?.iter() {
                if member.membership == "join" {
                    joined.push(index.room_no(rooms, room_id)?);
                }
            }
            joined.sort_unstable();
            index.insert(Person::new(user_id, display_name, avatar_url, joined));
        }
        let users = index.slot_of.len();
        let local_rooms: Vec<OwnedRoomId> = index.room_no.keys().cloned().collect();
        *self.write() = index;
        for room_id in local_rooms {
            self.add_remote_members(rooms, &room_id)?;
        }
        tracing::info!(users, elapsed = ?started.elapsed(), "user directory built");
        Ok(())
    }

    /// A new account (with the profile it starts with, and any room it joined already: its
    /// token works as soon as the account is stored, before this is called).
    pub fn account_created(&self, profiles: &Profiles, rooms: &Rooms, user_id: &UserId) -> Result<()> {
        let (display_name, avatar_url) = profiles.get(user_id)?.as_ref().map(shown).unwrap_or_default();
        let memberships = rooms.memberships_of(user_id)?;
        let mut index = self.write();
        let mut joined = Vec::new();
        for (room_id, member) in memberships.iter() {
            if member.membership == "join" {
                joined.push(index.room_no(rooms, room_id)?);
            }
        }
        joined.sort_unstable();
        index.insert(Person::new(user_id.to_owned(), display_name, avatar_url, joined));
        Ok(())
    }

    /// A deactivated account: no longer found.
    pub fn account_deactivated(&self, user_id: &UserId) {
        self.write().remove(user_id);
    }

    /// The user's profile now reads `profile` (accounts not in the directory are ignored).
    pub fn profile_changed(&self, user_id: &UserId, profile: &Map<String, Value>) {
        let (display_name, avatar_url) = shown(profile);
        let mut index = self.write();
        if let Some(old) = index.remove(user_id) {
            index.insert(Person::new(old.user_id, display_name, avatar_url, old.rooms));
        }
    }

    /// A member event for `user_id` in `room_id` is durable: the user's joined rooms are read
    /// again (called by the rooms write path). A user of another server is added, renamed
    /// (from this member event's content) or dropped with their last joined room; a local
    /// user joining a room brings the room's joined users of other servers in.
    pub fn member_changed(&self, rooms: &Rooms, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        if user_id.server_name() != rooms.server_name() {
            return self.remote_member_changed(rooms, room_id, user_id);
        }
        if !self.read().slot_of.contains_key(user_id) {
            return Ok(());
        }
        if rooms.membership(room_id, user_id)?.as_deref() == Some("join") {
            self.add_remote_members(rooms, room_id)?;
        }
        let memberships = rooms.memberships_of(user_id)?;
        let mut index = self.write();
        // The room itself may be new to the index.
        index.room_no(rooms, room_id)?;
        let mut joined = Vec::new();
        for (room, member) in memberships.iter() {
            if member.membership == "join" {
                joined.push(index.room_no(rooms, room)?);
            }
        }
        joined.sort_unstable();
        joined.dedup();
        index.set_rooms(user_id, joined);
        Ok(())
    }

    /// The joined users of other servers in `room_id` not yet in the index, added with the
    /// names their member events give.
    fn add_remote_members(&self, rooms: &Rooms, room_id: &RoomId) -> Result<()> {
        let members = rooms.members(room_id)?;
        let ours = rooms.server_name();
        let missing: Vec<OwnedUserId> = {
            let index = self.read();
            members
                .with("join")
                .filter(|u| u.server_name() != ours && !index.slot_of.contains_key(*u))
                .map(|u| u.to_owned())
                .collect()
        };
        for user in missing {
            self.remote_member_changed(rooms, room_id, &user)?;
        }
        Ok(())
    }

    /// [`Self::member_changed`] for a user of another server.
    fn remote_member_changed(&self, rooms: &Rooms, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        let memberships = rooms.memberships_of(user_id)?;
        let joined_here = memberships
            .iter()
            .any(|(room, member)| room == room_id && member.membership == "join");
        let named = if joined_here {
            rooms
                .state_event(room_id, &ruma::events::StateEventType::RoomMember, user_id.as_str())?
                .and_then(|event| serde_json::from_str::<Map<String, Value>>(event.content.get()).ok())
                .map(|content| shown(&content))
        } else {
            None
        };
        let mut index = self.write();
        let mut joined = Vec::new();
        for (room, member) in memberships.iter() {
            if member.membership == "join" {
                joined.push(index.room_no(rooms, room)?);
            }
        }
        joined.sort_unstable();
        joined.dedup();
        let old = index.remove(user_id);
        if old.is_some() {
            index.remote -= 1;
        }
        if joined.is_empty() || (old.is_none() && index.remote >= MAX_REMOTE_USERS) {
            return Ok(());
        }
        let (display_name, avatar_url) = match (named, old) {
            (Some(named), _) => named,
            (None, Some(old)) => (old.display_name, old.avatar_url),
            (None, None) => (None, None),
        };
        index.insert(Person::new(user_id.to_owned(), display_name, avatar_url, joined));
        index.remote += 1;
        Ok(())
    }

    /// An event that may change whether a room is public is durable (called by the rooms write
    /// path for state the room directory shows).
    pub fn room_state_changed(&self, rooms: &Rooms, room_id: &RoomId) -> Result<()> {
        let public = is_public(rooms, room_id)?;
        let mut index = self.write();
        match index.room_no.get(room_id) {
            Some(no) => {
                let no = *no;
                index.set_public(no, public);
            }
            None => {
                index.add_room(room_id, public);
            }
        }
        Ok(())
    }

    /// Up to `limit` users `searcher` may find with `term`, best first, and whether more
    /// matched. The order: display name equal to the term, starting with it, matching by words,
    /// then localpart-only matches; within each, whole-word matches first, then users sharing
    /// a room with the searcher, then by display name and user id.
    pub fn search(&self, searcher: &UserId, term: &str, limit: usize) -> (Vec<Found>, bool) {
        let limit = limit.min(MAX_LIMIT);
        let term = term.trim();
        // A user id is searched by its localpart.
        let term = match term.strip_prefix('@').and_then(|t| t.split_once(':')) {
            Some((localpart, _)) => localpart,
            None => term.strip_prefix('@').unwrap_or(term),
        };
        let term_key = fold(term);
        let mut term_words: Vec<&str> = words_of(&term_key).collect();
        if term_words.is_empty() {
            return (Vec::new(), false);
        }
        // The longest word picks the candidates; the others filter them.
        term_words.sort_by_key(|w| std::cmp::Reverse(w.len()));
        let index = self.read();
        let searcher_slot = index.slot_of.get(searcher).copied();
        // Who shares a room with the searcher (not the searcher).
        let mut sharers = SlotSet::new(index.people.len());
        if let Some(person) = searcher_slot.and_then(|slot| index.people[slot as usize].as_ref()) {
            for room in &person.rooms {
                for &slot in &index.members[*room as usize] {
                    sharers.insert(slot);
                }
            }
        }
        let mut seen = SlotSet::new(index.people.len());
        if let Some(slot) = searcher_slot {
            // Found only through a public room, never as their own room-mate.
            sharers.0[slot as usize / 64] &= !(1u64 << (slot % 64));
            if self.search_all_users {
                seen.insert(slot);
            }
        }
        let first = term_words[0];
        let first_head = head_of(first);
        let start = WordKey::new(first, 0);
        let mut hits: Vec<Hit<'_>> = Vec::new();
        for key in index
            .words
            .range(start..)
            .take_while(|key| key.starts_with(first, &first_head))
        {
            let slot = key.slot;
            if !seen.insert(slot) {
                continue;
            }
            let shares = sharers.contains(slot);
            if !(self.search_all_users || shares || index.in_public[slot as usize]) {
                continue;
            }
            let Some(person) = index.people[slot as usize].as_ref() else {
                continue;
            };
            if !term_words[1..]
                .iter()
                .all(|t| person.words.iter().any(|w| w.starts_with(t)))
            {
                continue;
            }
            let exact = term_words.iter().all(|t| person.words.iter().any(|w| **w == **t));
            hits.push((tier(person, &term_key, &term_words), !exact, !shares, person));
        }
        let limited = hits.len() > limit;
        let key = |(tier, inexact, apart, _): &Hit<'_>| (*tier, *inexact, *apart);
        let order = |a: &Hit<'_>, b: &Hit<'_>| {
            key(a)
                .cmp(&key(b))
                .then_with(|| a.3.name_key.is_empty().cmp(&b.3.name_key.is_empty()))
                .then_with(|| a.3.name_key.cmp(&b.3.name_key))
                .then_with(|| a.3.user_id.cmp(&b.3.user_id))
        };
        if limited && limit > 0 {
            hits.select_nth_unstable_by(limit - 1, order);
        }
        hits.truncate(limit);
        hits.sort_by(order);
        let found = hits
            .into_iter()
            .map(|(_, _, _, p)| Found {
                user_id: p.user_id.clone(),
                display_name: p.display_name.clone(),
                avatar_url: p.avatar_url.clone(),
            })
            .collect();
        (found, limited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(index: &mut Index, user: &str, name: Option<&str>, rooms: Vec<u32>) {
        for r in &rooms {
            while index.public.len() <= *r as usize {
                index.public.push(false);
                index.members.push(Vec::new());
            }
        }
        let user_id = OwnedUserId::try_from(user).unwrap();
        index.insert(Person::new(user_id, name.map(str::to_owned), None, rooms));
    }

    fn names(found: &[Found]) -> Vec<&str> {
        found.iter().map(|f| f.user_id.as_str()).collect()
    }

    #[test]
    fn folding_ignores_case_and_accents() {
        assert_eq!(fold("Jöhn SMITH"), "john smith");
        assert_eq!(fold("Ångström Çedille"), "angstrom cedille");
        assert_eq!(words_of(&fold("jon.doe_2")).collect::<Vec<_>>(), ["jon", "doe", "2"]);
    }

    #[test]
    fn word_prefixes_match_and_rank() {
        let directory = UserDirectory::new(true);
        {
            let mut index = directory.write();
            person(&mut index, "@me:hs", Some("Me"), vec![0]);
            person(&mut index, "@john:hs", Some("Jöhn Smith"), vec![]);
            person(&mut index, "@jon:hs", None, vec![]);
            person(&mut index, "@x:hs", Some("Jo"), vec![]);
            person(&mut index, "@bob.jordan:hs", Some("Bob"), vec![0]);
        }
        let me = ruma::user_id!("@me:hs");
        let (found, limited) = directory.search(me, "jo", 10);
        assert!(!limited);
        // Exact name, then name prefix, then localpart-only (room sharers first), no name last.
        assert_eq!(names(&found), ["@x:hs", "@john:hs", "@bob.jordan:hs", "@jon:hs"]);
        assert_eq!(names(&directory.search(me, "SMI", 10).0), ["@john:hs"]);
        assert_eq!(names(&directory.search(me, "jo smi", 10).0), ["@john:hs"]);
        assert_eq!(names(&directory.search(me, "@jon:hs", 10).0), ["@jon:hs"]);
        assert!(
            directory.search(me, "me", 10).0.is_empty(),
            "never yourself with search_all_users"
        );
        let (found, limited) = directory.search(me, "jo", 2);
        assert!(limited);
        assert_eq!(names(&found), ["@x:hs", "@john:hs"]);
        assert!(directory.search(me, "  ", 10).0.is_empty());
    }

    #[test]
    fn without_search_all_users_only_room_sharers_and_public_rooms() {
        let directory = UserDirectory::new(false);
        {
            let mut index = directory.write();
            person(&mut index, "@me:hs", Some("Me"), vec![0]);
            person(&mut index, "@anna.shared:hs", None, vec![0, 2]);
            person(&mut index, "@anna.public:hs", None, vec![1]);
            person(&mut index, "@anna.stranger:hs", None, vec![2]);
            index.set_public(1, true);
        }
        let me = ruma::user_id!("@me:hs");
        let (found, _) = directory.search(me, "anna", 10);
        assert_eq!(names(&found), ["@anna.shared:hs", "@anna.public:hs"]);
    }

    #[test]
    fn ten_thousand_users_search_quickly() {
        for search_all_users in [false, true] {
            ten_thousand_users(search_all_users);
        }
    }

    fn ten_thousand_users(search_all_users: bool) {
        let directory = UserDirectory::new(search_all_users);
        {
            let mut index = directory.write();
            index.public = vec![false; 100];
            index.members = vec![Vec::new(); 100];
            index.public[7] = true;
            for i in 0..10_000u32 {
                let name = format!("User{i} Family{}", i % 97);
                person(&mut index, &format!("@user{i}:hs"), Some(&name), vec![i % 100]);
            }
        }
        let me = ruma::user_id!("@user0:hs");
        let mut total = 0;
        for term in ["u", "user12", "family3", "user1 family1", "nobody"] {
            let mut fastest = std::time::Duration::MAX;
            for _ in 0..5 {
                let started = std::time::Instant::now();
                total += directory.search(me, term, 10).0.len();
                fastest = fastest.min(started.elapsed());
            }
            // Not a timing assertion; printed for the curious (`--nocapture`).
            println!("{term:?} over 10,000 users (search_all_users {search_all_users}): {fastest:?} (fastest of 5)");
        }
        assert!(total > 0);
        if search_all_users {
            let (found, limited) = directory.search(me, "user12", 50);
            assert!(limited && found.len() == 50 && found[0].user_id == "@user12:hs");
            return;
        }
        // Visible: room 0 (shared with user0) and room 7 (public); room-mates first.
        let (found, limited) = directory.search(me, "user1", 50);
        assert!(!limited && found.len() == 22, "{found:?}");
        let room = |f: &Found| f.user_id.localpart()[4..].parse::<u32>().unwrap() % 100;
        assert!(found[..11].iter().all(|f| room(f) == 0) && found[11..].iter().all(|f| room(f) == 7));
        assert_eq!(found[0].user_id, "@user100:hs");
        let (found, limited) = directory.search(me, "family", 5);
        assert!(limited && found.len() == 5);
    }
}
