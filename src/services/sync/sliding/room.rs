//! One room of a sliding-sync answer: for an invite its stripped state; for a room the user is
//! or was in, the timeline (the latest `timeline_limit` events the history-visibility rules let
//! them see, or those since the connection last had the room), `required_state` (all of it
//! when the room is new to the connection or its config changed, else the state that changed),
//! name, avatar, heroes, member counts, unread counts and the bump stamp. The reads are those of
//! `/sync`: the timeline pages, the state at a position, the unread counts.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
};

use ruma::{
    JsOption, OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::sync::sync_events::{UnreadNotificationsCount, v5::response},
    events::StateEventType,
};

use super::{
    conn::{RoomConfig, RoomSent},
    lists::Candidate,
};
use crate::{
    Result,
    services::{
        Services,
        rooms::{Selection, pdu::Pdu},
        sync::{
            build::{client_event, remote_stripped_state, stripped_state},
            notifier::Key,
        },
    },
};

/// Largest timeline limit honoured.
pub const MAX_TIMELINE: u64 = 500;
/// Most state changes read for an incremental room before reading its whole state instead.
const MAX_STATE_CHANGES: usize = 100;

/// One answer's fixed inputs.
pub struct Build<'a> {
    /// The services.
    pub services: &'a Services,
    /// The user.
    pub user_id: &'a UserId,
    /// Their device.
    pub device_id: &'a str,
    /// The watermark the answer reads to.
    pub up_to: u64,
    /// The ephemeral value it reads to.
    pub ephemeral_up_to: u64,
    /// Where the connection's previous answer ended.
    pub after: Option<u64>,
    /// Users the user ignores.
    pub ignored: Arc<HashSet<OwnedUserId>>,
    /// Rooms `m.direct` names.
    pub direct: HashSet<OwnedRoomId>,
}

/// What `required_state` asks for.
struct Wanted<'a> {
    entries: &'a BTreeSet<(String, String)>,
    exclude: &'a BTreeSet<(String, String)>,
    user_id: &'a str,
    lazy: bool,
}

impl<'a> Wanted<'a> {
    fn new(config: &'a RoomConfig, user_id: &'a str) -> Self {
        let lazy = config
            .required_state
            .iter()
            .any(|(t, k)| t == "m.room.member" && k == "$LAZY");
        Wanted {
            entries: &config.required_state,
            exclude: &config.exclude,
            user_id,
            lazy,
        }
    }

    /// The users whose member events the room's state section can hold: `None` when any
    /// member's can (a wildcard state key for members, or a wildcard type without `$LAZY`),
    /// else those named, `$ME`, and with `$LAZY` the timeline's `people`.
    fn member_keys(&self, people: &BTreeSet<String>) -> Option<BTreeSet<String>> {
        let mut keys = BTreeSet::new();
        for (t, k) in self.entries {
            let members = t == "m.room.member" || (t == "*" && !self.lazy);
            match k.as_str() {
                _ if !members => {}
                "*" => return None,
                "$ME" => {
                    keys.insert(self.user_id.to_owned());
                }
                "$LAZY" => keys.extend(people.iter().cloned()),
                _ => {
                    keys.insert(k.clone());
                }
            }
        }
        Some(keys)
    }

    fn matches(&self, kind: &str, key: &str) -> bool {
        let excluded = self
            .exclude
            .iter()
            .any(|(t, k)| (t == "*" || t == kind) && (k == "*" || k == key || (k == "$ME" && key == self.user_id)));
        !excluded
            && self.entries.iter().any(|(t, k)| {
                let key_ok = k == "*" || k == key || (k == "$ME" && key == self.user_id);
                if t == "*" {
                    // With `$LAZY`, wildcards leave members to the lazy rule.
                    key_ok && !(self.lazy && kind == "m.room.member")
                } else {
                    t == kind && key_ok
                }
            })
    }
}

/// A room to send.
pub struct Built {
    /// Its fields.
    pub room: response::Room,
    /// Whether the timeline was resent longer because the timeline limit grew.
    pub expanded_timeline: bool,
    /// Whether the room's name was removed since the client had it.
    pub name_removed: bool,
}

fn count(n: u64) -> UInt {
    UInt::try_from(n).unwrap_or(UInt::MAX)
}

impl Build<'_> {
    /// The room's answer (`None`: nothing new for a room the connection has) with whether its
    /// timeline was expanded, and what the connection then has of it.
    pub fn room(
        &self,
        candidate: &Candidate,
        config: &RoomConfig,
        prev: Option<&RoomSent>,
    ) -> Result<(Option<Built>, RoomSent)> {
        if candidate.membership == "invite" {
            let (room, sent) = self.invite(candidate, config, prev)?;
            let built = room.map(|room| Built {
                room,
                expanded_timeline: false,
                name_removed: false,
            });
            return Ok((built, sent));
        }
        let services = self.services;
        let rooms = &services.rooms;
        let room_id: &RoomId = &candidate.room_id;
        let joined = candidate.membership == "join";
        let end = if joined {
            self.up_to
        } else {
            candidate.position.min(self.up_to)
        };
        // Sent before as a room the user is or was in: only what changed since (a room joined
        // again after leaving is sent whole).
        let prev = prev.filter(|p| p.membership != "invite" && !(joined && p.membership != "join"));
        let initial = prev.is_none();
        let config_changed = prev
            .is_some_and(|p| p.config.required_state != config.required_state || p.config.exclude != config.exclude);
        let expanded = prev.is_some_and(|p| config.timeline_limit > p.config.timeline_limit);
        let membership_changed = prev.is_some_and(|p| p.membership != candidate.membership);
        if let Some(prev) = prev
            && !config_changed
            && !expanded
            && !membership_changed
            && rooms.notifier().quiet_since(&Key::room(room_id), prev.up_to)
            && rooms.notifier().quiet_since(&Key::receipts(room_id), prev.up_to)
        {
            let mut kept = prev.clone();
            kept.up_to = self.up_to;
            kept.ephemeral = self.ephemeral_up_to;
            kept.config = config.clone();
            return Ok((None, kept));
        }
        // A departure already sent: nothing after it is for the user.
        if let Some(prev) = prev
            && !joined
            && !config_changed
            && !expanded
            && !membership_changed
        {
            let mut kept = prev.clone();
            kept.up_to = self.up_to;
            kept.ephemeral = self.ephemeral_up_to;
            kept.config = config.clone();
            return Ok((None, kept));
        }

        let (scope, member) = rooms.read_scope_or_outsider(room_id, self.user_id, end);
        let history = rooms.history_filter(self.user_id, scope);
        let ignored = &self.ignored;
        let keep = |pos: u64, pdu: &Pdu| !ignored.contains(&pdu.sender) && history.allows(pos, pdu);

        // Timeline: the latest events, or those since the room was last sent.
        let limit = config.timeline_limit.min(MAX_TIMELINE) as usize;
        let after = match prev {
            Some(prev) if !expanded => prev.up_to.min(end),
            _ => 0,
        };
        let (mut events, _) = if after < end {
            rooms.timeline_page(room_id, (after, end), true, limit + 1, keep)?
        } else {
            (Vec::new(), None)
        };
        let limited = events.len() > limit;
        events.truncate(limit);
        events.reverse();
        // Bundled aggregations when the client lacks part of the timeline, as /sync v2.
        if limited || after == 0 {
            let reader = crate::services::rooms::relations::Reader {
                history: &history,
                ignored,
            };
            rooms.bundle(&reader, events.iter_mut().map(|(_, pdu)| pdu))?;
        }

        // State: all of it (then cut to what is wanted) or what changed since; of the members
        // only those `required_state` can want, when it names them.
        let wanted = Wanted::new(config, self.user_id.as_str());
        let mut people: BTreeSet<String> = BTreeSet::new();
        for (_, pdu) in &events {
            people.insert(pdu.sender.to_string());
            if pdu.kind.to_string() == "m.room.member"
                && let Some(target) = &pdu.state_key
            {
                people.insert(target.clone());
            }
        }
        let member_keys = wanted.member_keys(&people);
        let selection = match &member_keys {
            Some(keys) => Selection::MembersOf(keys),
            None => Selection::All,
        };
        let full = initial || config_changed || !joined;
        let all_state = if full && member {
            rooms.state_at_position(room_id, end, selection)?
        } else {
            Vec::new()
        };
        let changes: Vec<Pdu> = match prev {
            Some(prev) if !full && prev.up_to < end => {
                let (changes, more) =
                    rooms.timeline_page(room_id, (prev.up_to, end), true, MAX_STATE_CHANGES, |pos, pdu| {
                        pdu.is_state() && history.allows(pos, pdu)
                    })?;
                if more.is_some() {
                    rooms.state_at_position(room_id, end, selection)?
                } else {
                    let mut latest: BTreeMap<(String, String), Pdu> = BTreeMap::new();
                    for (_, pdu) in changes {
                        let key = (pdu.kind.to_string(), pdu.state_key.clone().unwrap_or_default());
                        latest.entry(key).or_insert(pdu);
                    }
                    latest.into_values().collect()
                }
            }
            _ => Vec::new(),
        };
        let source = if full { &all_state } else { &changes };
        let mut state: Vec<&Pdu> = source
            .iter()
            .filter(|p| wanted.matches(&p.kind.to_string(), p.state_key.as_deref().unwrap_or_default()))
            .collect();
        // `$LAZY`: the members of the timeline's senders (and targets) not sent yet.
        let mut lazy_sent = match prev {
            Some(prev) if !full => (*prev.lazy_sent).clone(),
            _ => BTreeSet::new(),
        };
        let mut lazy_extra = Vec::new();
        if wanted.lazy && member {
            for person in people {
                if lazy_sent.contains(&person) {
                    continue;
                }
                if state
                    .iter()
                    .any(|p| p.kind.to_string() == "m.room.member" && p.state_key.as_deref() == Some(&person))
                {
                    lazy_sent.insert(person);
                    continue;
                }
                let found = if full {
                    all_state
                        .iter()
                        .find(|p| p.kind.to_string() == "m.room.member" && p.state_key.as_deref() == Some(&person))
                        .cloned()
                } else {
                    rooms.state_event(room_id, &StateEventType::RoomMember, &person)?
                };
                if let Some(found) = found {
                    lazy_extra.push(found);
                }
                lazy_sent.insert(person);
            }
        }
        state.extend(lazy_extra.iter());

        let counts = if joined {
            Some(services.unread_counts(room_id, self.user_id, self.up_to)?)
        } else {
            None
        };
        let counts_changed = prev.is_none_or(|p| p.counts != counts);
        let sent = RoomSent {
            membership: candidate.membership.clone(),
            up_to: self.up_to,
            ephemeral: self.ephemeral_up_to,
            config: config.clone(),
            counts,
            lazy_sent: Arc::new(lazy_sent),
        };
        if !initial && !expanded && !membership_changed && events.is_empty() && state.is_empty() && !counts_changed {
            return Ok((None, sent));
        }

        let mut room = response::Room::new();
        if initial {
            room.initial = Some(true);
        }
        let name_source = if full { &all_state } else { &changes };
        let mut name_removed = false;
        for pdu in name_source.iter().filter(|p| p.state_key.as_deref() == Some("")) {
            match pdu.kind.to_string().as_str() {
                "m.room.name" => {
                    room.name = pdu.content_str("name").filter(|n| !n.is_empty());
                    name_removed = room.name.is_none() && !initial;
                }
                "m.room.avatar" => {
                    room.avatar = match pdu.content_str("url").map(OwnedMxcUri::from) {
                        Some(url) => JsOption::Some(url),
                        None => JsOption::Null,
                    }
                }
                _ => {}
            }
        }
        if initial && self.direct.contains(room_id) {
            room.is_dm = Some(true);
        }
        let members_changed = full
            || events.iter().any(|(_, p)| p.kind.to_string() == "m.room.member")
            || changes.iter().any(|p| p.kind.to_string() == "m.room.member");
        if joined {
            let members = rooms.members(room_id)?;
            room.joined_count = Some(count(members.count("join") as u64));
            room.invited_count = Some(count(members.count("invite") as u64));
            if members_changed {
                room.heroes = Some(self.heroes(room_id, &members)?);
            }
        }
        if let Some((notify, highlight)) = counts {
            let mut unread = UnreadNotificationsCount::new();
            unread.notification_count = Some(count(notify));
            unread.highlight_count = Some(count(highlight));
            room.unread_notifications = unread;
        }
        let start = events.first().map_or(end, |(pos, _)| pos - 1);
        room.prev_batch = Some(rooms.room_token(room_id, start)?);
        // An expanded timeline resends events the client has: `limited` makes it start over.
        room.limited = limited || (expanded && !events.is_empty());
        room.num_live = Some(count(
            events
                .iter()
                .filter(|(pos, _)| self.after.is_some_and(|a| *pos > a))
                .count() as u64,
        ));
        room.bump_stamp = Some(count(candidate.bump));
        let who = (self.user_id, Some(self.device_id));
        room.timeline = events
            .iter()
            .map(|(_, pdu)| client_event(services, who, pdu, None))
            .collect::<Result<_>>()?;
        room.required_state = state
            .iter()
            .map(|pdu| client_event(services, who, pdu, None))
            .collect::<Result<_>>()?;
        Ok((
            Some(Built {
                room,
                expanded_timeline: expanded && !events.is_empty(),
                name_removed,
            }),
            sent,
        ))
    }

    fn invite(
        &self,
        candidate: &Candidate,
        config: &RoomConfig,
        prev: Option<&RoomSent>,
    ) -> Result<(Option<response::Room>, RoomSent)> {
        let sent = RoomSent {
            membership: "invite".into(),
            up_to: self.up_to,
            ephemeral: self.ephemeral_up_to,
            config: config.clone(),
            counts: None,
            lazy_sent: Arc::default(),
        };
        if prev.is_some_and(|p| p.membership == "invite") {
            return Ok((None, sent));
        }
        let rooms = &self.services.rooms;
        let (member, invite_state) = match rooms.member_at(&candidate.room_id, self.user_id, self.up_to)? {
            Some(member) => {
                let state = stripped_state(self.services, &candidate.room_id, &member)?;
                (member, state)
            }
            // An invite to a room this server does not have (over federation).
            None => match rooms.remote_invite(&candidate.room_id, self.user_id)? {
                Some((invite, state)) => {
                    let state = remote_stripped_state(&invite, state)?;
                    (invite, state)
                }
                None => return Ok((None, sent)),
            },
        };
        if self.ignored.contains(&member.sender) {
            return Ok((None, sent));
        }
        let mut room = response::Room::new();
        room.initial = Some(true);
        room.invite_state = Some(invite_state);
        room.bump_stamp = Some(count(candidate.bump));
        let direct = serde_json::from_str::<serde_json::Value>(member.content.get())
            .is_ok_and(|c| c["is_direct"].as_bool() == Some(true));
        if direct || self.direct.contains(&candidate.room_id) {
            room.is_dm = Some(true);
        }
        Ok((Some(room), sent))
    }

    /// Up to five other members (joined or invited first, else former ones) with their names
    /// and avatars.
    fn heroes(
        &self,
        room_id: &RoomId,
        members: &crate::services::rooms::members::RoomMembers,
    ) -> Result<Vec<response::Hero>> {
        let others = |wanted: &[&str]| -> Vec<OwnedUserId> {
            members
                .iter()
                .filter(|(u, m)| *u != self.user_id && wanted.contains(m))
                .map(|(u, _)| u.to_owned())
                .take(5)
                .collect()
        };
        let mut users = others(&["join", "invite"]);
        if users.is_empty() {
            users = others(&["leave", "ban"]);
        }
        let mut heroes = Vec::new();
        for user in users {
            let mut hero = response::Hero::new(user.clone());
            if let Some(member) =
                self.services
                    .rooms
                    .state_event(room_id, &StateEventType::RoomMember, user.as_str())?
            {
                hero.name = member.content_str("displayname");
                hero.avatar = member.content_str("avatar_url").map(OwnedMxcUri::from);
            }
            heroes.push(hero);
        }
        Ok(heroes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(include: &[(&str, &str)], exclude: &[(&str, &str)]) -> RoomConfig {
        let set = |pairs: &[(&str, &str)]| pairs.iter().map(|(t, k)| (t.to_string(), k.to_string())).collect();
        RoomConfig {
            timeline_limit: 1,
            required_state: set(include),
            exclude: set(exclude),
        }
    }

    #[test]
    fn required_state_patterns() {
        let me = "@me:x";
        let c = config(&[("m.room.name", ""), ("m.room.member", "$ME")], &[]);
        let w = Wanted::new(&c, me);
        assert!(w.matches("m.room.name", ""));
        assert!(!w.matches("m.room.topic", ""));
        assert!(w.matches("m.room.member", me));
        assert!(!w.matches("m.room.member", "@other:x"));
        assert!(!w.lazy);

        // Everything, members lazily: the wildcard leaves members to the lazy rule.
        let c = config(&[("*", "*"), ("m.room.member", "$LAZY")], &[]);
        let w = Wanted::new(&c, me);
        assert!(w.lazy);
        assert!(w.matches("m.room.topic", ""));
        assert!(!w.matches("m.room.member", "@other:x"));

        // A type's every key; excluded entries go.
        let c = config(&[("*", "*")], &[("m.room.create", "*")]);
        let w = Wanted::new(&c, me);
        assert!(!w.matches("m.room.create", ""));
        assert!(w.matches("m.room.member", "@other:x"));
    }
}
