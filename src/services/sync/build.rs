//! Assembling one `/sync` answer at a fixed point of the stream: every read is bounded by the
//! watermark taken at the start, which becomes the `next_batch` position.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
};

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::{
        filter::{FilterDefinition, LazyLoadOptions, RoomEventFilter},
        sync::sync_events::{
            UnreadNotificationsCount,
            v3::{
                InviteState, InvitedRoom, JoinedRoom, KnockedRoom, LeftRoom, RoomSummary, State, StateEvents, Timeline,
            },
        },
    },
    events::StateEventType,
    serde::Raw,
};
use serde_json::{Value, json};

use super::{
    Token,
    filter::{Lists, event_filter_room, project, room_allowed},
};
use crate::{
    Error, Result,
    services::{
        Services,
        account_data::Change,
        rooms::{Selection, pdu::Pdu, relations::Reader},
        sync::notifier::Key,
    },
    storage::tables::membership::Membership,
};

/// Default number of timeline events per room.
const DEFAULT_LIMIT: u64 = 10;
/// Largest timeline limit honoured.
const MAX_LIMIT: u64 = 500;
/// State types shown in an invite or knock (spec "Stripped state").
pub(crate) const STRIPPED: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// A JSON value as a typed raw event.
pub(crate) fn raw<T>(value: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(value).map_err(|e| Error::internal(e.to_string()))?,
    ))
}

/// One build's fixed inputs.
struct Ctx<'a> {
    services: &'a Services,
    user_id: &'a UserId,
    device_id: Option<&'a str>,
    since: Option<Token>,
    filter: &'a FilterDefinition,
    full_state: bool,
    /// `use_state_after` (spec v1.16): rooms carry `state_after`, the state up to the end of
    /// the timeline, instead of `state`, the state up to its start.
    state_after: bool,
    up_to: u64,
    /// The ephemeral value the answer's token ends at (read first, like `up_to`).
    ephemeral_up_to: u64,
    ignored: Arc<HashSet<OwnedUserId>>,
    /// Account data written since the token (all of it is read for an initial sync).
    changes: Vec<Change>,
    /// Whether anything stored for the user alone (account data, to-device messages) may have
    /// changed since the token.
    user_news: bool,
}

/// A room's timeline for one answer.
struct Page {
    /// Oldest first.
    events: Vec<(u64, Pdu)>,
    /// Whether events before them were left out.
    limited: bool,
    /// State events of the range the timeline left out, newest first, when its scan covered
    /// the whole range (`None`: it did not).
    skipped_state: Option<Vec<(u64, Pdu)>>,
}

/// Builds the answer for `since` (initial when `None`).
pub fn build(
    services: &Services,
    (user_id, device_id): (&UserId, Option<&str>),
    since: Option<Token>,
    filter: &FilterDefinition,
    (full_state, state_after): (bool, bool),
) -> Result<ruma::api::client::sync::sync_events::v3::Response> {
    let rooms = &services.rooms;
    // Fixed first: nothing above these is read, and the token says so.
    let up_to = rooms.watermark();
    let ephemeral = rooms.notifier().ephemeral();
    let user_news = since.is_none_or(|s| !rooms.notifier().quiet_since(&Key::user(user_id), s.position));
    let ctx = Ctx {
        services,
        user_id,
        device_id,
        since,
        filter,
        full_state,
        state_after,
        up_to,
        ephemeral_up_to: ephemeral,
        ignored: services.account_data.ignored_users(user_id)?,
        changes: match since {
            Some(since) if user_news => services.account_data.changes(user_id, since.position, up_to)?,
            _ => Vec::new(),
        },
        user_news,
    };
    let next = Token {
        position: up_to.max(since.map_or(0, |s| s.position)),
        ephemeral: ephemeral.max(since.map_or(0, |s| s.ephemeral)),
    };
    let mut response = ruma::api::client::sync::sync_events::v3::Response::new(next.to_string());
    let mut shared_rooms = Vec::new();
    for (room_id, membership) in rooms.memberships_of(user_id)?.iter().cloned() {
        if !room_allowed(&filter.room, &room_id) {
            continue;
        }
        let Some((membership, position)) = ctx.membership_at(&room_id, membership)? else {
            continue;
        };
        let changed = since.is_none_or(|s| position > s.position);
        match membership.as_str() {
            "join" => {
                shared_rooms.push(room_id.clone());
                // Sent whole only when the user was not joined at the token (a profile change
                // is a member event too, and must not resend what the client has).
                let room_since = match since {
                    Some(s) if !changed || ctx.was_joined(&room_id, s.position)? => Some(s.position),
                    _ => None,
                };
                if let Some(joined) = ctx.joined(&room_id, room_since)? {
                    response.rooms.join.insert(room_id, joined);
                }
            }
            "invite" if changed => {
                let Some(member) = ctx.member_event(&room_id)? else {
                    // An invite to a room this server does not have (over federation).
                    if let Some((invite, state)) = ctx.services.rooms.remote_invite(&room_id, ctx.user_id)?
                        && !ctx.ignored.contains(&invite.sender)
                    {
                        let mut invited = InvitedRoom::new();
                        invited.invite_state = InviteState::from(remote_stripped_state(&invite, state)?);
                        response.rooms.invite.insert(room_id, invited);
                    }
                    continue;
                };
                if ctx.ignored.contains(&member.sender) {
                    continue;
                }
                let mut invited = InvitedRoom::new();
                invited.invite_state = InviteState::from(ctx.stripped(&room_id, &member)?);
                response.rooms.invite.insert(room_id, invited);
            }
            "knock" if changed => {
                let mut knocked = KnockedRoom::new();
                match ctx.member_event(&room_id)? {
                    Some(member) if member.content_str("membership").as_deref() == Some("knock") => {
                        knocked.knock_state.events = ctx.stripped(&room_id, &member)?;
                    }
                    // A knock on a room this server is not in (over federation), with the
                    // stripped state the room's server answered.
                    _ => match ctx.services.rooms.remote_knock(&room_id, ctx.user_id)? {
                        Some(knock) => {
                            knocked.knock_state.events = remote_stripped_state(&knock.event, knock.stripped)?
                        }
                        None => continue,
                    },
                }
                response.rooms.knock.insert(room_id, knocked);
            }
            "leave" | "ban" if (since.is_some() && changed) || (since.is_none() && filter.room.include_leave) => {
                if rooms.is_forgotten(&room_id, user_id)? {
                    continue;
                }
                if let Some(left) = ctx.left(&room_id, position)? {
                    response.rooms.leave.insert(room_id, left);
                }
            }
            _ => {}
        }
    }
    response.account_data.events = ctx.global_account_data()?;
    response.presence.events = ctx.presence(&shared_rooms)?;
    e2ee(&ctx, &mut response)?;
    Ok(response)
}

/// The end-to-end encryption parts: one-time key counts and unused fallback key types of the
/// device, its to-device messages, and the device lists that changed since the token.
fn e2ee(ctx: &Ctx<'_>, response: &mut ruma::api::client::sync::sync_events::v3::Response) -> Result<()> {
    let (services, user_id, since, up_to) = (ctx.services, ctx.user_id, ctx.since, ctx.up_to);
    let keys = &services.keys;
    let after = since.map_or(0, |s| s.position);
    if let Some(device) = ctx.device_id {
        let counts = keys.key_counts(user_id, device)?;
        for (algorithm, count) in &counts.one_time {
            let count = UInt::try_from(*count).unwrap_or(UInt::MAX);
            response
                .device_one_time_keys_count
                .insert(algorithm.as_str().into(), count);
        }
        response.device_unused_fallback_key_types =
            Some(counts.unused_fallback.iter().map(|a| a.as_str().into()).collect());
        if ctx.user_news {
            response.to_device.events = keys
                .to_device_messages(user_id, device, after, up_to)?
                .into_iter()
                .map(Raw::from_json)
                .collect();
        }
    }
    if since.is_some() {
        let (changed, left) = keys.device_list_changes(&services.rooms, user_id, after, up_to)?;
        response.device_lists.changed = changed;
        response.device_lists.left = left;
    }
    Ok(())
}

/// Account-data entries as events, those the filter's type lists allow.
fn account_data_events<'a, T>(entries: impl Iterator<Item = &'a Change>, lists: &Lists) -> Result<Vec<Raw<T>>> {
    entries
        .filter(|c| lists.allows(&c.kind, None))
        .map(|c| {
            let content: Value = serde_json::from_str(c.content.get()).map_err(|e| Error::internal(e.to_string()))?;
            raw(&json!({"type": c.kind, "content": content}))
        })
        .collect()
}

impl Ctx<'_> {
    /// A room event in the client format, cut to the filter's `event_fields`.
    fn client_event<T>(&self, pdu: &Pdu) -> Result<Raw<T>> {
        client_event(
            self.services,
            (self.user_id, self.device_id),
            pdu,
            self.filter.event_fields.as_deref(),
        )
    }

    fn after(&self) -> Option<u64> {
        self.since.map(|s| s.position)
    }

    /// The user's membership of a room as of the build's watermark and the position of the
    /// member event that set it. The index says so unless that event is still being written
    /// (above the watermark), when the state at the watermark holds the membership that applies.
    fn membership_at(&self, room_id: &RoomId, indexed: Membership) -> Result<Option<(String, u64)>> {
        if indexed.position != 0 && indexed.position <= self.up_to {
            return Ok(Some((indexed.membership, indexed.position)));
        }
        let Some(member) = self.member_event(room_id)? else {
            return Ok(None);
        };
        let position = self.services.rooms.position_of(&member.event_id)?.unwrap_or(0);
        Ok(Some((member.content_str("membership").unwrap_or_default(), position)))
    }

    /// The user's member event as of the build's watermark.
    fn member_event(&self, room_id: &RoomId) -> Result<Option<Pdu>> {
        let rooms = &self.services.rooms;
        let Some(member) = rooms.state_event(room_id, &StateEventType::RoomMember, self.user_id.as_str())? else {
            return Ok(None);
        };
        if rooms.position_of(&member.event_id)?.unwrap_or(0) <= self.up_to {
            return Ok(Some(member));
        }
        // Rare: only while the member event is in flight.
        rooms.member_at(room_id, self.user_id, self.up_to)
    }

    /// Whether the user was joined to the room at stream position `position`.
    fn was_joined(&self, room_id: &RoomId, position: u64) -> Result<bool> {
        let member = self.services.rooms.member_at(room_id, self.user_id, position)?;
        Ok(member.is_some_and(|m| m.content_str("membership").as_deref() == Some("join")))
    }

    /// A page of the timeline in `(after, up_to]`, oldest first, and whether it was cut.
    fn timeline(&self, room_id: &RoomId, after: u64, up_to: u64, keep: &dyn Fn(u64, &Pdu) -> bool) -> Result<Page> {
        let rooms = &self.services.rooms;
        let tl = &self.filter.room.timeline;
        if !event_filter_room(tl, room_id) {
            return Ok(Page {
                events: Vec::new(),
                limited: false,
                skipped_state: None,
            });
        }
        let limit = tl.limit.map_or(DEFAULT_LIMIT, u64::from).min(MAX_LIMIT) as usize;
        // State events the timeline leaves out (its filter, ignored senders, visibility) are
        // noted on the way, for the `state` section.
        let skipped = RefCell::new(Vec::new());
        let keep_noting = |pos: u64, pdu: &Pdu| {
            let kept = keep(pos, pdu);
            if !kept && pdu.is_state() {
                skipped.borrow_mut().push((pos, pdu.clone()));
            }
            kept
        };
        // One more than the limit: if it is there, the timeline is cut (with a limit of 0, that
        // says there were events).
        let (mut events, rest) = rooms.timeline_page(room_id, (after, up_to), true, limit + 1, keep_noting)?;
        let limited = events.len() > limit;
        events.truncate(limit);
        // (The timeline serves events as they stand: redacted ones redacted, state events with
        // what they replaced.)
        events.reverse();
        Ok(Page {
            events,
            limited,
            // Complete only when the scan covered the whole range.
            skipped_state: (!limited && rest.is_none()).then(|| skipped.into_inner()),
        })
    }

    fn event_kept(&self, pdu: &Pdu) -> bool {
        pdu.matches(&self.filter.room.timeline) && !self.ignored.contains(&pdu.sender)
    }

    /// A joined room; `room_since` is `None` when the room is sent whole (initial sync, or
    /// joined since the token). `None` when an incremental sync has nothing for it.
    fn joined(&self, room_id: &RoomId, room_since: Option<u64>) -> Result<Option<JoinedRoom>> {
        let rooms = &self.services.rooms;
        let history = rooms.history_filter(self.user_id, rooms.read_scope(room_id, self.user_id)?);
        let keep = |pos: u64, pdu: &Pdu| self.event_kept(pdu) && history.allows(pos, pdu);
        let (after, end) = (room_since.unwrap_or(0), self.up_to);
        let mut page = self.timeline(room_id, after, end, &keep)?;
        // Bundled aggregations when the client lacks part of the timeline (as Synapse).
        if page.limited || room_since.is_none() {
            let reader = Reader {
                history: &history,
                ignored: &self.ignored,
            };
            rooms.bundle(&reader, page.events.iter_mut().map(|(_, pdu)| pdu))?;
        }
        let (events, limited) = (&page.events, page.limited);
        let start = events.first().map_or(self.up_to, |(pos, _)| pos - 1);
        let full = room_since.is_none() || self.full_state || limited;
        let whole = room_since.is_none();
        let full_at = if self.state_after { end } else { start };
        let state = self.state(
            room_id,
            &page,
            (full.then_some(full_at), whole),
            (after, end),
            &|pos, pdu| history.allows(pos, pdu),
        )?;

        let mut joined = JoinedRoom::new();
        let account_data = self.room_account_data(room_id, room_since)?;
        let ephemeral = self.ephemeral(room_id, room_since)?;
        let members_changed = full
            || events.iter().any(|(_, p)| p.kind.to_string() == "m.room.member")
            || state.iter().any(|p| p.kind.to_string() == "m.room.member");
        if room_since.is_some()
            && events.is_empty()
            && state.is_empty()
            && account_data.is_empty()
            && ephemeral.is_empty()
        {
            return Ok(None);
        }
        joined.timeline = self.timeline_section(room_id, page.events, limited, start)?;
        joined.state = self.state_section(&state)?;
        joined.account_data.events = account_data;
        joined.ephemeral.events = ephemeral;
        if members_changed {
            joined.summary = self.summary(room_id)?;
        }
        let counts = |(notify, highlight): (u64, u64)| {
            let mut unread = UnreadNotificationsCount::new();
            unread.highlight_count = Some(UInt::try_from(highlight).unwrap_or(UInt::MAX));
            unread.notification_count = Some(UInt::try_from(notify).unwrap_or(UInt::MAX));
            unread
        };
        if self.filter.room.timeline.unread_thread_notifications {
            // Thread events count per thread, apart from the main timeline's.
            let (main, threads) = self.services.unread_thread_counts(room_id, self.user_id, self.up_to)?;
            joined.unread_notifications = counts(main);
            joined.unread_thread_notifications = threads.into_iter().map(|(root, c)| (root, counts(c))).collect();
        } else {
            joined.unread_notifications = counts(self.services.unread_counts(room_id, self.user_id, self.up_to)?);
        }
        Ok(Some(joined))
    }

    fn timeline_section(
        &self,
        room_id: &RoomId,
        events: Vec<(u64, Pdu)>,
        limited: bool,
        start: u64,
    ) -> Result<Timeline> {
        let mut timeline = Timeline::new();
        timeline.limited = limited;
        timeline.prev_batch = Some(self.services.rooms.room_token(room_id, start)?);
        timeline.events = events
            .iter()
            .map(|(_, pdu)| self.client_event(pdu))
            .collect::<Result<_>>()?;
        Ok(timeline)
    }

    /// The room's state section, `state` or (`use_state_after`) `state_after`.
    fn state_section(&self, state: &[Pdu]) -> Result<State> {
        let events = StateEvents::from(state.iter().map(|p| self.client_event(p)).collect::<Result<Vec<_>>>()?);
        Ok(if self.state_after {
            State::After(events)
        } else {
            State::Before(events)
        })
    }

    /// The `state` section: the full state at `full_at` (the position before the timeline, or
    /// its end for `state_after`), or for an incremental sync the state events after `after`
    /// the timeline does not show (for `state_after`: all of them, shown or not);
    /// filtered by the state filter, with lazy-loaded members cut to the timeline's senders
    /// (and, unless redundant ones are asked for, to those not sent before: `whole` says the
    /// room is being sent whole, so none counts as sent).
    fn state(
        &self,
        room_id: &RoomId,
        page: &Page,
        (full_at, whole): (Option<u64>, bool),
        (after, end): (u64, u64),
        visible: &dyn Fn(u64, &Pdu) -> bool,
    ) -> Result<Vec<Pdu>> {
        let events = &page.events;
        let rooms = &self.services.rooms;
        let sf: &RoomEventFilter = &self.filter.room.state;
        if !event_filter_room(sf, room_id) {
            return Ok(Vec::new());
        }
        let shown: HashSet<&ruma::EventId> = events.iter().map(|(_, p)| &*p.event_id).collect();
        let lazy = match sf.lazy_load_options {
            LazyLoadOptions::Enabled {
                include_redundant_members,
            } => Some(include_redundant_members),
            LazyLoadOptions::Disabled => None,
        };
        // Lazy loading wants the members of the timeline's senders and the user's own.
        let mut wanted: BTreeSet<String> = events.iter().map(|(_, p)| p.sender.to_string()).collect();
        wanted.insert(self.user_id.to_string());
        let selection = match lazy {
            Some(_) => Selection::MembersOf(&wanted),
            None => Selection::All,
        };
        let mut state = match full_at {
            Some(at) => rooms.state_at_position(room_id, at, selection)?,
            None => {
                // State changes since the token that the (filtered) timeline does not show,
                // the latest per state key: those its scan noted, or else read again.
                let keep = |pos: u64, pdu: &Pdu| {
                    pdu.is_state() && (self.state_after || !shown.contains(&*pdu.event_id)) && visible(pos, pdu)
                };
                let changes = match &page.skipped_state {
                    Some(skipped) if !self.state_after => {
                        skipped.iter().filter(|(pos, pdu)| keep(*pos, pdu)).cloned().collect()
                    }
                    _ => rooms.timeline_page(room_id, (after, end), true, 100, keep)?.0,
                };
                let mut latest: BTreeMap<(String, String), Pdu> = BTreeMap::new();
                for (_, pdu) in changes {
                    let key = (pdu.kind.to_string(), pdu.state_key.clone().unwrap_or_default());
                    latest.entry(key).or_insert(pdu);
                }
                latest.into_values().collect()
            }
        };
        state.retain(|p| p.matches(sf));
        if let Some(include_redundant_members) = lazy {
            state.retain(|p| {
                p.kind.to_string() != "m.room.member" || p.state_key.as_ref().is_some_and(|k| wanted.contains(k))
            });
            // Members of senders the state does not hold yet (an incremental sync).
            let present: HashSet<String> = state
                .iter()
                .filter(|p| p.kind.to_string() == "m.room.member")
                .filter_map(|p| p.state_key.clone())
                .chain(
                    events
                        .iter()
                        .filter(|(_, p)| p.kind.to_string() == "m.room.member")
                        .filter_map(|(_, p)| p.state_key.clone()),
                )
                .collect();
            if full_at.is_none() {
                for user in wanted
                    .iter()
                    .filter(|u| !present.contains(*u) && **u != self.user_id.as_str())
                {
                    if let Some(member) = rooms.state_event(room_id, &StateEventType::RoomMember, user)? {
                        state.push(member);
                    }
                }
            }
            if !include_redundant_members && let Some(device) = self.device_id {
                let fresh = self.full_state || whole;
                self.services
                    .lazy_members
                    .leave_out_sent((self.user_id, device), room_id, fresh, &mut state);
            }
        }
        Ok(state)
    }

    /// `m.heroes` and member counts.
    fn summary(&self, room_id: &RoomId) -> Result<RoomSummary> {
        let members = self.services.rooms.members(room_id)?;
        let mut summary = RoomSummary::new();
        summary.joined_member_count = Some(UInt::try_from(members.count("join")).unwrap_or(UInt::MAX));
        summary.invited_member_count = Some(UInt::try_from(members.count("invite")).unwrap_or(UInt::MAX));
        let others = |wanted: &[&str]| -> Vec<OwnedUserId> {
            members
                .iter()
                .filter(|(u, m)| *u != self.user_id && wanted.contains(m))
                .map(|(u, _)| u.to_owned())
                .take(5)
                .collect()
        };
        summary.heroes = others(&["join", "invite"]);
        if summary.heroes.is_empty() {
            summary.heroes = others(&["leave", "ban"]);
        }
        Ok(summary)
    }

    /// `m.typing` and `m.receipt` for a room, filtered by the ephemeral filter.
    fn ephemeral(
        &self,
        room_id: &RoomId,
        room_since: Option<u64>,
    ) -> Result<Vec<Raw<ruma::events::AnySyncEphemeralRoomEvent>>> {
        let ef = &self.filter.room.ephemeral;
        if !event_filter_room(ef, room_id) {
            return Ok(Vec::new());
        }
        let lists = Lists::of_room_events(ef);
        let mut out = Vec::new();
        let since_eph = if room_since.is_some() {
            self.since.map(|s| s.ephemeral)
        } else {
            None
        };
        if lists.allows("m.typing", None)
            && let Some(users) = self
                .services
                .typing
                .changed_since(room_id, since_eph, self.ephemeral_up_to)
        {
            let users: Vec<&OwnedUserId> = users.iter().filter(|u| !self.ignored.contains(*u)).collect();
            out.push(raw(&json!({"type": "m.typing", "content": {"user_ids": users}}))?);
        }
        if lists.allows("m.receipt", None) {
            let skip = |u: &UserId| self.ignored.contains(u) || !lists.allows("m.receipt", Some(u));
            if let Some(content) =
                self.services
                    .receipts
                    .content_since(room_id, self.user_id, room_since, self.up_to, &skip)?
            {
                out.push(raw(&json!({"type": "m.receipt", "content": content}))?);
            }
        }
        Ok(out)
    }

    /// Stripped state for an invite or knock: the room's descriptive state, the member event of
    /// whoever sent the invite (so clients can say who invited; Synapse sends it too), and
    /// last the member event itself.
    fn stripped(&self, room_id: &RoomId, member: &Pdu) -> Result<Vec<Raw<ruma::events::AnyStrippedStateEvent>>> {
        stripped_state(self.services, room_id, member)
    }

    /// A room left (or banned from) since the token, or for an initial sync with
    /// `include_leave`: the timeline up to the departure.
    fn left(&self, room_id: &RoomId, departure: u64) -> Result<Option<LeftRoom>> {
        let rooms = &self.services.rooms;
        let end = departure.min(self.up_to);
        // Never joined: the room still moves to `leave`, so it leaves the client's invites, with
        // the non-member's view (their own departure) and no state.
        let (scope, member) = rooms.read_scope_or_outsider(room_id, self.user_id, end);
        let history = rooms.history_filter(self.user_id, scope);
        let keep = |pos: u64, pdu: &Pdu| self.event_kept(pdu) && history.allows(pos, pdu);
        let after = self.after().unwrap_or(0);
        let page = self.timeline(room_id, after, end, &keep)?;
        let (events, limited) = (&page.events, page.limited);
        let start = events.first().map_or(end, |(pos, _)| pos - 1);
        let full = self.since.is_none() || self.full_state || limited;
        let full_at = if self.state_after { end } else { start };
        let state = if member {
            self.state(
                room_id,
                &page,
                (full.then_some(full_at), self.since.is_none()),
                (after, end),
                &|pos, pdu| history.allows(pos, pdu),
            )?
        } else {
            Vec::new()
        };
        let mut left = LeftRoom::new();
        left.timeline = self.timeline_section(room_id, page.events, limited, start)?;
        left.state = self.state_section(&state)?;
        left.account_data.events = self.room_account_data(room_id, self.after())?;
        Ok(Some(left))
    }

    /// Room account data changed since the token (all of it when the room is sent whole).
    fn room_account_data(
        &self,
        room_id: &RoomId,
        room_since: Option<u64>,
    ) -> Result<Vec<Raw<ruma::events::AnyRoomAccountDataEvent>>> {
        let af = &self.filter.room.account_data;
        if !event_filter_room(af, room_id) {
            return Ok(Vec::new());
        }
        let lists = Lists::of_room_events(af);
        let in_room = |c: &&Change| c.room_id.as_deref() == Some(room_id.as_str());
        match room_since {
            // Incremental: what was written since the token.
            Some(_) => account_data_events(self.changes.iter().filter(in_room), &lists),
            None => {
                let data = self.services.account_data.list(self.user_id, Some(room_id.as_str()))?;
                account_data_events(data.iter(), &lists)
            }
        }
    }

    /// Global account data changed since the token (all of it for an initial sync).
    fn global_account_data(&self) -> Result<Vec<Raw<ruma::events::AnyGlobalAccountDataEvent>>> {
        let lists = Lists::of(&self.filter.account_data);
        match self.after() {
            Some(_) => account_data_events(self.changes.iter().filter(|c| c.room_id.is_none()), &lists),
            None => {
                let data = self.services.account_data.list(self.user_id, None)?;
                account_data_events(data.iter(), &lists)
            }
        }
    }

    /// Presence of users sharing a joined room with the user (and their own), changed since
    /// the token.
    fn presence(&self, shared_rooms: &[OwnedRoomId]) -> Result<Vec<Raw<ruma::events::presence::PresenceEvent>>> {
        let lists = Lists::of(&self.filter.presence);
        let rooms = &self.services.rooms;
        let mut out = Vec::new();
        for (user, status) in self
            .services
            .presence
            .changed_since(self.since.map(|s| s.ephemeral), self.ephemeral_up_to)
        {
            if self.ignored.contains(&user) || !lists.allows("m.presence", Some(&user)) {
                continue;
            }
            let mut shares = user == self.user_id;
            for room in shared_rooms {
                shares = shares || rooms.members(room)?.is_joined(&user);
            }
            if !shares {
                continue;
            }
            let mut content = json!({
                "presence": status.state.as_str(),
                "last_active_ago": status.last_active_ago,
                "currently_active": status.currently_active,
            });
            if let Some(msg) = status.status_msg {
                content["status_msg"] = msg.into();
            }
            out.push(raw(&json!({"type": "m.presence", "sender": user, "content": content}))?);
        }
        Ok(out)
    }
}

/// Stripped state for an invite or knock: the room's descriptive state, the member event of
/// whoever sent the invite (so clients can say who invited; Synapse sends it too), and last the
/// member event itself. (Shared with sliding sync.)
pub(crate) fn stripped_state(
    services: &Services,
    room_id: &RoomId,
    member: &Pdu,
) -> Result<Vec<Raw<ruma::events::AnyStrippedStateEvent>>> {
    let rooms = &services.rooms;
    let mut out = Vec::new();
    let strip = |p: &Pdu| -> Result<Value> {
        let content: Value = serde_json::from_str(p.content.get()).map_err(|e| Error::internal(e.to_string()))?;
        Ok(json!({
            "type": p.kind.to_string(),
            "state_key": p.state_key.clone().unwrap_or_default(),
            "content": content,
            "sender": p.sender,
        }))
    };
    for kind in STRIPPED {
        if let Some(pdu) = rooms.state_event(room_id, &StateEventType::from(*kind), "")? {
            out.push(raw(&strip(&pdu)?)?);
        }
    }
    let sender = member.sender.as_str();
    if member.state_key.as_deref() != Some(sender)
        && let Some(inviter) = rooms.state_event(room_id, &StateEventType::RoomMember, sender)?
    {
        out.push(raw(&strip(&inviter)?)?);
    }
    out.push(raw(&strip(member)?)?);
    Ok(out)
}

/// Stripped state for an invite to a room this server does not have: what the inviting server
/// sent, and last the invite itself. (Shared with sliding sync.)
pub(crate) fn remote_stripped_state(
    invite: &Pdu,
    state: Vec<Value>,
) -> Result<Vec<Raw<ruma::events::AnyStrippedStateEvent>>> {
    let content: Value = serde_json::from_str(invite.content.get()).map_err(|e| Error::internal(e.to_string()))?;
    let own = json!({
        "type": "m.room.member",
        "state_key": invite.state_key.clone().unwrap_or_default(),
        "content": content,
        "sender": invite.sender,
    });
    state
        .iter()
        .filter(|e| e["type"] != "m.room.member" || e["state_key"] != own["state_key"])
        .chain([&own])
        .map(raw)
        .collect()
}

/// A room event in the client format for `user_id`'s device (their own events carry
/// `unsigned.transaction_id`), cut to `event_fields`. (Shared with sliding sync.)
pub(crate) fn client_event<T>(
    services: &Services,
    (user_id, device_id): (&UserId, Option<&str>),
    pdu: &Pdu,
    event_fields: Option<&[String]>,
) -> Result<Raw<T>> {
    let txn = match device_id {
        Some(device) if pdu.sender == user_id => services.rooms.transaction_of(&pdu.event_id, user_id, device)?,
        _ => None,
    };
    if txn.is_none() && event_fields.is_none() {
        return Ok(Raw::from_json(pdu.to_client_json()?));
    }
    let mut event = pdu.to_client()?;
    if let Some(txn) = txn {
        event["unsigned"]["transaction_id"] = txn.into();
    }
    raw(&project(event, event_fields))
}
