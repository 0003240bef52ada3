//! The push worker: one background task that
//!
//! 1. **evaluates** every new room event (the `pos_pushpending` entries the rooms write path
//!    adds to each event's batch, taken once they are below the watermark) with the push
//!    rules of each joined member but the sender (and of an invitee) who has a pusher, and
//!    records, in one batch that also removes the entry, one queued push per pusher of each
//!    user it notifies (and the event in the queue of each interested application service:
//!    `services::appservice::transactions`);
//! 2. **delivers** the queued pushes to the push gateways (`POST /_matrix/push/v1/notify`), in
//!    stream order per pusher, different pushers in parallel.
//!
//! Delivery follows Synapse's HTTP pusher: a push the user has read by then (a read receipt at
//! or after the event) or whose pusher is gone is dropped; a failed request (no connection, a
//! timeout, a non-2xx answer) is retried after a back-off of 1 s doubling up to 1 h, with the
//! later pushes of that pusher waiting behind it, and given up once the pusher has been
//! failing for 24 h; a pushkey the gateway lists as `rejected` loses its pusher.
//!
//! **Delivery is at least once, as in Synapse**: the entry is deleted in the batch written
//! after the gateway answered (one batch per pusher and round), so a crash between the answer
//! and that batch sends the push again after the restart (Synapse likewise advances a pusher's `last_stream_ordering` only
//! after the send). Nothing queued is lost: queue entries and back-off state are in RocksDB.
//! Memory is bounded: at most [`PENDING_BATCH`] events, and [`PER_PUSHER`] pushes of each of
//! [`QUEUE_PUSHERS`] pushers (taken round-robin), are read per round.

use std::{
    sync::{Arc, Weak, atomic::Ordering},
    time::Duration,
};

use futures_util::FutureExt;
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    api::client::push::{Pusher, PusherKind},
    events::StateEventType,
    push::{Action, FlattenedJson, PushConditionRoomCtx, PushFormat, Ruleset},
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{
    Result,
    services::{Services, media::fetch, rooms::pdu::Pdu, sync::notifier::Key},
    storage::tables::push::{QueueEntry, QueuedPush},
    util::now_ms,
};

/// Events evaluated per round.
pub const PENDING_BATCH: usize = 64;
/// How long new events wait for others to join them before a round evaluates them.
const GATHER: Duration = Duration::from_millis(10);
/// Pushers served per delivery round (in parallel).
pub const QUEUE_PUSHERS: usize = 64;
/// Queued pushes of one pusher read per round.
pub const PER_PUSHER: usize = 32;
/// First retry delay after a failed push.
pub const INITIAL_BACKOFF_MS: u64 = 1000;
/// Longest retry delay.
pub const MAX_BACKOFF_MS: u64 = 60 * 60 * 1000;
/// A pusher failing this long gives up its oldest push (and starts again with the next).
pub const GIVE_UP_AFTER_MS: u64 = 24 * 60 * 60 * 1000;
/// Largest gateway answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Most rooms counted for a push's unread badge.
const BADGE_ROOMS: usize = 1000;

/// Starts the worker on the current runtime. It holds the services weakly and stops once they
/// are dropped.
pub fn spawn(services: &Arc<Services>) {
    let waiter = services.rooms.notifier().register([Key::Push]);
    let wake = Arc::clone(&services.push.wake);
    let weak = Arc::downgrade(services);
    tokio::spawn(async move {
        loop {
            let Some(next) = round(&weak).await else {
                return;
            };
            let sleep = match next {
                Round::Busy => continue,
                Round::IdleUntil(due) => Duration::from_millis(due.saturating_sub(now_ms()).clamp(10, 60_000)),
                Round::Idle => Duration::from_secs(60),
            };
            tokio::select! {
                _ = waiter.changed() => {
                    // New events: let those sent meanwhile join them, so a busy room costs a
                    // round per batch of events rather than one per event.
                    tokio::time::sleep(GATHER).await;
                }
                _ = wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    });
}

enum Round {
    /// More events wait: go on at once.
    Busy,
    /// A push waits for its retry at this time (ms).
    IdleUntil(u64),
    /// Nothing to do.
    Idle,
}

async fn round(weak: &Weak<Services>) -> Option<Round> {
    let services = weak.upgrade()?;
    // Evaluation is CPU work (every recipient's rules for every event): it runs on a blocking
    // thread, never on the runtime that answers requests and signals.
    let evaluating = Arc::clone(&services);
    let evaluated = match tokio::task::spawn_blocking(move || evaluating.evaluate_pending()).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "push evaluation failed");
            0
        }
        Err(e) => {
            tracing::warn!(error = %e, "push evaluation task failed");
            0
        }
    };
    let due = match Arc::clone(&services).deliver_due().await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "push delivery failed");
            Some(now_ms() + INITIAL_BACKOFF_MS)
        }
    };
    Some(if evaluated >= PENDING_BATCH {
        Round::Busy
    } else {
        due.map_or(Round::Idle, Round::IdleUntil)
    })
}

/// The tweaks of a push's actions (`{"sound": "default", "highlight": true}`).
fn tweaks(actions: &[Action]) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for action in actions {
        if let Ok(Value::Object(o)) = serde_json::to_value(action)
            && let Some(Value::String(name)) = o.get("set_tweak")
        {
            out.insert(name.clone(), o.get("value").cloned().unwrap_or(Value::Bool(true)));
        }
    }
    out
}

/// The actions of the first of `rules` that applies to an event (flattened), as
/// `Ruleset::get_actions` finds them (the event is never the recipient's own here); `None` when
/// the evaluation would wait, which it never does (the thread-subscription lookup is a point
/// read).
fn first_match<'r>(rules: &'r Ruleset, event: &FlattenedJson, context: &PushConditionRoomCtx) -> Option<&'r [Action]> {
    for rule in rules {
        if rule.applies(event, context).now_or_never()? {
            return Some(rule.actions());
        }
    }
    Some(&[])
}

/// What evaluating an event writes: a push for a user's pusher (user, app id, pushkey).
struct Write(String, String, String, QueuedPush);

enum Outcome {
    /// Delivered or dropped: the entry is gone.
    Done,
    /// Delivered, and the pusher is gone (its pushkey was rejected): stop its group.
    Stop,
    /// Failed: retry at this time (ms); later pushes of the pusher wait.
    Retry(u64),
}

impl Services {
    /// Evaluates up to [`PENDING_BATCH`] events below the watermark; how many it took.
    fn evaluate_pending(&self) -> Result<usize> {
        // Every position up to the watermark is durable or abandoned, so nothing new can
        // appear at or below it: what one look leaves behind is all done.
        let after = self.push.pending_after.load(Ordering::Acquire);
        let watermark = self.rooms.watermark();
        let pending = self.push.table.pending((after, watermark), PENDING_BATCH)?;
        let done_up_to = match pending.last() {
            Some((last, _, _)) if pending.len() >= PENDING_BATCH => *last,
            _ => watermark,
        };
        if pending.is_empty() {
            self.push.pending_after.fetch_max(done_up_to, Ordering::AcqRel);
            return Ok(0);
        }
        // One batch for the round: every event's results with the removal of its entry.
        let mut batch = self.batch();
        for (position, room_id, event_id) in &pending {
            self.push.table.queue_delete_pending(&mut batch, *position);
            self.queue_for_appservices(&mut batch, *position, room_id, event_id);
            match self.evaluate_event(room_id, event_id) {
                Ok(writes) => {
                    for Write(user, app_id, pushkey, push) in writes {
                        self.push
                            .table
                            .queue_push(&mut batch, *position, (&user, &app_id, &pushkey), &push)?
                    }
                }
                // One unreadable event must not stop the others: it is logged and skipped.
                Err(e) => {
                    tracing::warn!(%room_id, %event_id, error = %e, "push rules could not be evaluated for an event")
                }
            }
        }
        // Unsynced: a crash that loses this batch keeps the entries it removes, so the events
        // are evaluated again after the restart (pushes are at least once anyway); the next
        // synced write, or RocksDB's own WAL flushes, make it durable.
        batch.commit_unsynced()?;
        self.appservice_events_queued();
        self.push.pending_after.fetch_max(done_up_to, Ordering::AcqRel);
        Ok(pending.len())
    }

    /// Queues an event for the application services interested in it, in the batch that
    /// takes it off the pending list (`services::appservice::transactions`).
    fn queue_for_appservices(&self, batch: &mut crate::storage::Batch, position: u64, room_id: &str, event_id: &str) {
        if self.appservices.all().is_empty() {
            return;
        }
        let (Ok(room), Ok(id)) = (RoomId::parse(room_id), ruma::EventId::parse(event_id)) else {
            return;
        };
        let queued = self
            .rooms
            .event(&id)
            .and_then(|pdu| pdu.map_or(Ok(()), |pdu| self.queue_appservice_event(batch, position, &room, &pdu)));
        if let Err(e) = queued {
            tracing::warn!(%room_id, %event_id, error = %e, "event not queued for application services");
        }
    }

    /// The pushes one event makes: for each recipient with a pusher whose rules say it
    /// notifies them, one per pusher. Recipients without pushers cost one cache lookup
    /// (`/notifications` and the unread counts evaluate their rules when they ask).
    fn evaluate_event(&self, room_id: &str, event_id: &str) -> Result<Vec<Write>> {
        let mut writes = Vec::new();
        let (Ok(room_id), Ok(event_id)) = (OwnedRoomId::try_from(room_id), OwnedEventId::try_from(event_id)) else {
            return Ok(writes);
        };
        let Some(pdu) = self.rooms.event(&event_id)? else {
            return Ok(writes);
        };
        let sender = pdu.sender.clone();
        let mut targets: Vec<(OwnedUserId, super::PusherKeys)> = Vec::new();
        let mut add_target = |user_id: &UserId| -> Result<()> {
            let keys = self.push.pusher_keys(user_id)?;
            if !keys.is_empty() {
                targets.push((user_id.to_owned(), keys));
            }
            Ok(())
        };
        if pdu.kind.to_string() == "m.room.member" {
            // A member event is evaluated for its target only, as Synapse does: nobody's rules
            // react to others' joins in practice (the default `.m.rule.member_event` silences
            // them), and evaluating every member's rules for every join would make filling a
            // big room quadratic. The target counts when someone else changed their
            // membership and they are in the room, or are invited (`.m.rule.invite_for_me`).
            let target = pdu.state_key.as_deref().and_then(|s| OwnedUserId::try_from(s).ok());
            if let Some(target) = target.filter(|t| *t != sender) {
                let invited = pdu.content_str("membership").as_deref() == Some("invite");
                if invited || self.rooms.membership(&room_id, &target)?.as_deref() == Some("join") {
                    add_target(&target)?;
                }
            }
        } else {
            for user_id in self.rooms.members(&room_id)?.with("join").filter(|u| *u != sender) {
                add_target(user_id)?;
            }
        }
        if targets.is_empty() {
            return Ok(writes);
        }
        let joined = self.rooms.members(&room_id)?.count("join");
        let event: Raw<ruma::events::AnySyncTimelineEvent> = Raw::from_json(pdu.to_client_json()?);
        // Flattened once for every recipient (ruma's `Ruleset::get_actions` would flatten it
        // again for each); the rules are still evaluated by ruma (`AnyPushRuleRef::applies`).
        let flattened = FlattenedJson::from_raw(&event);
        // What every recipient's context shares is read once; their display names come from
        // one snapshot of the room's state.
        let shared = self.room_push_context(&room_id, &sender, joined)?;
        let mut recipients = Vec::with_capacity(targets.len());
        for (user_id, keys) in targets {
            if !self.account_data.ignored_users(&user_id)?.contains(&sender) {
                recipients.push((user_id, keys));
            }
        }
        let wanted: Vec<(&str, &str)> = recipients.iter().map(|(u, _)| ("m.room.member", u.as_str())).collect();
        let member_events = self.rooms.state_events(&room_id, &wanted)?.unwrap_or_default();
        let mut member_events = member_events.into_iter();
        for (user_id, keys) in recipients {
            let display_name = member_events
                .next()
                .flatten()
                .and_then(|m| m.content_str("displayname"));
            let rules = self.push_rules(&user_id)?;
            let context = self.user_push_context(&shared, &room_id, &user_id, display_name);
            // The evaluation does no asynchronous I/O (the thread-subscription lookup is a
            // point read), so its future is ready at once.
            let Some(actions) = first_match(&rules, &flattened, &context) else {
                continue;
            };
            if !actions.iter().any(Action::should_notify) {
                continue;
            }
            let actions_json =
                serde_json::to_string(actions).map_err(|e| crate::Error::internal(format!("actions: {e}")))?;
            for (app_id, pushkey) in keys.iter() {
                writes.push(Write(
                    user_id.to_string(),
                    app_id.clone(),
                    pushkey.clone(),
                    QueuedPush {
                        room_id: room_id.to_string(),
                        event_id: event_id.to_string(),
                        actions_json: actions_json.clone(),
                        attempts: 0,
                        next_try_ms: 0,
                        failing_since_ms: 0,
                    },
                ));
            }
        }
        Ok(writes)
    }

    /// Delivers the due pushes of the next [`QUEUE_PUSHERS`] pushers with queued pushes; the
    /// time the earliest waiting one is due, if any waits.
    async fn deliver_due(self: Arc<Self>) -> Result<Option<u64>> {
        // Pushers are read round-robin from where the last round stopped, so pushers in
        // back-off at the front of the queue never starve the others.
        let from = std::mem::take(&mut *self.push.queue_cursor.lock().unwrap_or_else(|p| p.into_inner()));
        let (mut groups, next) = self.push.table.queued(&from, QUEUE_PUSHERS, PER_PUSHER)?;
        if next.is_none() && !from.is_empty() {
            let (more, _) = self.push.table.queued(&[], QUEUE_PUSHERS - groups.len(), PER_PUSHER)?;
            groups.extend(more.into_iter().filter(|g| g[0].key.as_slice() < from.as_slice()));
        }
        *self.push.queue_cursor.lock().unwrap_or_else(|p| p.into_inner()) = next.clone().unwrap_or_default();
        let now = now_ms();
        let mut next_due: Option<u64> = None;
        // A pusher with a full page may have more queued: look again at once.
        if groups.iter().any(|g| g.len() >= PER_PUSHER) {
            next_due = Some(now);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for group in groups {
            let head = group[0].push.next_try_ms;
            if head > now {
                next_due = Some(next_due.map_or(head, |d| d.min(head)));
                continue;
            }
            let services = Arc::clone(&self);
            tasks.spawn(async move {
                // What the group's attempts record goes in one batch, written when the group
                // stops (a crash before it re-sends those pushes: at least once).
                let mut batch = services.batch();
                let mut retry = None;
                let mut rejected = None;
                for entry in group {
                    match services.deliver_one(&mut batch, &entry).await {
                        Ok(Outcome::Done) => {}
                        Ok(Outcome::Stop) => {
                            rejected = OwnedUserId::try_from(entry.user_id).ok();
                            break;
                        }
                        Ok(Outcome::Retry(at)) => {
                            retry = Some(at);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "push delivery failed");
                            retry = Some(now_ms() + INITIAL_BACKOFF_MS);
                            break;
                        }
                    }
                }
                match batch.commit().await {
                    Err(e) => {
                        tracing::warn!(error = %e, "push delivery could not be recorded");
                        retry = Some(now_ms() + INITIAL_BACKOFF_MS);
                    }
                    Ok(()) => {
                        if let Some(user_id) = rejected {
                            services.push.pushers_changed(&user_id);
                        }
                    }
                }
                retry
            });
        }
        while let Some(done) = tasks.join_next().await {
            if let Ok(Some(at)) = done {
                next_due = Some(next_due.map_or(at, |d| d.min(at)));
            }
        }
        // Pushers beyond this round: look again soon.
        if next.is_some() {
            next_due = Some(next_due.map_or(now, |d| d.min(now)));
        }
        Ok(next_due)
    }

    /// Tries one queued push; what it records goes into `batch`.
    async fn deliver_one(&self, batch: &mut crate::storage::Batch, entry: &QueueEntry) -> Result<Outcome> {
        let table = &self.push.table;
        let mut drop_entry = |reason: &'static str| {
            tracing::debug!(user = %entry.user_id, event = %entry.push.event_id, reason, "push dropped");
            table.queue_delete_push(batch, &entry.key);
            Ok(Outcome::Done)
        };
        let Some(record) = table.pusher(&entry.user_id, &entry.app_id, &entry.pushkey)? else {
            return drop_entry("pusher removed");
        };
        let (Ok(user_id), Ok(room_id), Ok(event_id)) = (
            OwnedUserId::try_from(entry.user_id.as_str()),
            OwnedRoomId::try_from(entry.push.room_id.as_str()),
            OwnedEventId::try_from(entry.push.event_id.as_str()),
        ) else {
            return drop_entry("unreadable entry");
        };
        if self.read_up_to(&room_id, &user_id)? >= entry.position {
            return drop_entry("already read");
        }
        let Some(pdu) = self.rooms.event(&event_id)? else {
            return drop_entry("event gone");
        };
        let Ok(pusher) = serde_json::from_str::<Pusher>(&record.json) else {
            return drop_entry("unreadable pusher");
        };
        let PusherKind::Http(http) = &pusher.kind else {
            return drop_entry("not an http pusher");
        };
        let actions: Vec<Action> = serde_json::from_str(&entry.push.actions_json).unwrap_or_default();
        let body = self.notify_body(&pdu, &room_id, &user_id, &pusher, &actions, record.pushkey_ts_ms)?;
        let body = serde_json::to_vec(&body).map_err(|e| crate::Error::internal(format!("push body: {e}")))?;
        let answer = fetch::post_json(&http.url, &self.push.policy, &body, MAX_ANSWER_BYTES, self.push.timeout).await;
        let now = now_ms();
        match answer {
            Ok((status, answer)) if (200..300).contains(&status) => {
                #[derive(serde::Deserialize, Default)]
                struct Answer {
                    #[serde(default)]
                    rejected: Vec<String>,
                }
                let answer: Answer = serde_json::from_slice(&answer).unwrap_or_default();
                table.queue_delete_push(batch, &entry.key);
                if answer.rejected.contains(&entry.pushkey) {
                    tracing::info!(user = %entry.user_id, app_id = %entry.app_id, "pushkey rejected by the gateway: pusher removed");
                    table.queue_delete_pusher(batch, &entry.user_id, &entry.app_id, &entry.pushkey);
                    return Ok(Outcome::Stop);
                }
                Ok(Outcome::Done)
            }
            failed => {
                let reason = match failed {
                    Ok((status, _)) => format!("the gateway answered {status}"),
                    Err(e) => e.to_string(),
                };
                let mut push = entry.push.clone();
                if push.failing_since_ms == 0 {
                    push.failing_since_ms = now;
                }
                if now.saturating_sub(push.failing_since_ms) > GIVE_UP_AFTER_MS {
                    tracing::warn!(user = %entry.user_id, app_id = %entry.app_id, "giving up on a push after a day of failures");
                    return drop_entry("gave up");
                }
                let delay = INITIAL_BACKOFF_MS
                    .saturating_mul(1u64 << push.attempts.min(32))
                    .min(MAX_BACKOFF_MS);
                push.attempts = push.attempts.saturating_add(1);
                push.next_try_ms = now + delay;
                tracing::info!(user = %entry.user_id, app_id = %entry.app_id, %reason, delay_ms = delay, "push failed: will retry");
                table.queue_update_push(batch, &entry.key, &push)?;
                Ok(Outcome::Retry(push.next_try_ms))
            }
        }
    }

    /// The unread badge of a push: the number of rooms with unread notifications (Synapse's
    /// default, `push.group_unread_count_by_room`).
    fn badge(&self, user_id: &UserId) -> Result<u64> {
        let watermark = self.rooms.watermark();
        let mut rooms = 0;
        for (room_id, member) in self.rooms.memberships_of(user_id)?.iter().take(BADGE_ROOMS) {
            if member.membership == "join" && self.unread_counts(room_id, user_id, watermark)?.0 > 0 {
                rooms += 1;
            }
        }
        Ok(rooms)
    }

    /// The body of `POST /_matrix/push/v1/notify` for one event and pusher, as Synapse builds
    /// it: only ids and counts with `data.format = "event_id_only"`, else the event's type,
    /// sender, content, the sender's display name and the room's name.
    fn notify_body(
        &self,
        pdu: &Pdu,
        room_id: &RoomId,
        user_id: &UserId,
        pusher: &Pusher,
        actions: &[Action],
        pushkey_ts_ms: u64,
    ) -> Result<Value> {
        let PusherKind::Http(http) = &pusher.kind else {
            return Ok(Value::Null);
        };
        let tweaks = tweaks(actions);
        let kind = pdu.kind.to_string();
        let high =
            kind == "m.room.encrypted" || tweaks.contains_key("sound") || actions.iter().any(Action::is_highlight);
        let badge = self.badge(user_id)?;
        let mut data = match serde_json::to_value(http) {
            Ok(Value::Object(o)) => o,
            _ => serde_json::Map::new(),
        };
        data.remove("url");
        let mut device = json!({
            "app_id": pusher.ids.app_id,
            "pushkey": pusher.ids.pushkey,
            "pushkey_ts": pushkey_ts_ms / 1000,
            "data": data,
        });
        let mut notification = json!({
            "event_id": pdu.event_id,
            "room_id": room_id,
            "prio": if high { "high" } else { "low" },
            "counts": {"unread": badge},
        });
        if http.format == Some(PushFormat::EventIdOnly) {
            // No tweaks with event_id_only (Synapse).
        } else {
            if !tweaks.is_empty() {
                device["tweaks"] = Value::Object(tweaks);
            }
            notification["type"] = json!(kind);
            notification["sender"] = json!(pdu.sender);
            if kind == "m.room.member"
                && let Some(state_key) = &pdu.state_key
            {
                notification["membership"] = json!(pdu.content_str("membership"));
                notification["user_is_target"] = json!(state_key == user_id.as_str());
            }
            if let Ok(content) = serde_json::from_str::<Value>(pdu.content.get())
                && content.as_object().is_some_and(|o| !o.is_empty())
            {
                notification["content"] = content;
            }
            if let Some(name) = self
                .rooms
                .state_event(room_id, &StateEventType::RoomMember, pdu.sender.as_str())?
                .and_then(|m| m.content_str("displayname"))
                .filter(|n| !n.is_empty())
            {
                notification["sender_display_name"] = json!(name);
            }
            let room_name = match self
                .rooms
                .state_event(room_id, &StateEventType::RoomName, "")?
                .and_then(|e| e.content_str("name"))
                .filter(|n| !n.is_empty())
            {
                Some(name) => Some(name),
                None => self
                    .rooms
                    .state_event(room_id, &StateEventType::RoomCanonicalAlias, "")?
                    .and_then(|e| e.content_str("alias"))
                    .filter(|n| !n.is_empty()),
            };
            if let Some(name) = room_name {
                notification["room_name"] = json!(name);
            }
        }
        notification["devices"] = json!([device]);
        Ok(json!({ "notification": notification }))
    }
}

#[cfg(test)]
mod tests {
    use ruma::push::{Action, Tweak};

    use super::tweaks;

    #[test]
    fn tweaks_come_from_set_tweak_actions() {
        let actions = vec![
            Action::Notify,
            Action::SetTweak(Tweak::Sound("default".into())),
            Action::SetTweak(Tweak::Highlight(ruma::push::HighlightTweakValue::Yes)),
        ];
        let t = tweaks(&actions);
        assert_eq!(t.get("sound").unwrap(), "default");
        assert!(t.contains_key("highlight"));
    }
}
