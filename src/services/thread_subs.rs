//! Thread subscriptions (MSC4306) and their change log for sliding sync (MSC4308).
//!
//! Each user's subscriptions live on the global stream (`tables::streams`, family `threadsubs`,
//! scope the user, item `room SEP thread root`, value a postcard [`Record`]): every change
//! takes a stream position, which is also the `bump_stamp` clients see, and the log keeps one
//! entry per thread (its latest state), so "what changed after position N" is one range scan
//! and an unsubscription stays recorded. The user's long-polls are woken on every change.
//!
//! The automatic-subscription conflict rule uses logical time: an automatic subscription whose
//! cause event sits at or below the position of a recorded unsubscription of that thread (the
//! user unsubscribed after the event arrived) is refused with 409; the same request after a
//! newer event in the thread is accepted. Changes are made under a lock per user (several
//! devices subscribe concurrently on a mention).
//!
//! The push rules' `thread_subscription` condition reads [`ThreadSubs::is_subscribed`]
//! through [`ThreadSubs::push_lookup`] (a point read, so ruma's evaluation stays ready at once).

use std::sync::Arc;

use ruma::{
    EventId, OwnedEventId, OwnedRoomId, RoomId, UserId, api::client::threads::get_thread_subscriptions_changes,
    push::PushConditionRoomCtx,
};
use serde::{Deserialize, Serialize};

use super::sync::{
    commit_on_stream,
    notifier::{Key, Notifier},
};
use crate::{
    Error, Result,
    storage::{Db, codec, positions::Positions, tables::streams::StreamTable},
};

/// The change-log family.
const FAMILY: &str = "threadsubs";
/// The table name used in codec errors.
const TABLE: &str = "threadsubs";
/// Lock shards (changes of one user are serialized).
const SHARDS: usize = 64;

/// A thread's subscription state as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Subscribed (`false`: an unsubscription is recorded).
    pub subscribed: bool,
    /// Made automatically by a client (meaningful when subscribed).
    pub automatic: bool,
}

/// One thread's latest change.
#[derive(Clone, Debug)]
pub struct Change {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The thread root.
    pub thread_root: OwnedEventId,
    /// The state after the change.
    pub record: Record,
    /// Its stream position (the `bump_stamp`).
    pub position: u64,
}

/// What a subscription request asks.
#[derive(Clone, Copy, Debug)]
pub enum Subscribe {
    /// A manual subscription.
    Manual,
    /// An automatic subscription caused by an event at this stream position.
    Automatic {
        /// The cause event's stream position.
        cause_position: u64,
    },
}

/// The thread-subscription service.
pub struct ThreadSubs {
    db: Arc<Db>,
    stream: StreamTable,
    positions: Arc<Positions>,
    notifier: Arc<Notifier>,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// `push.thread_subscription_rules`.
    push_rules: bool,
}

fn item(room_id: &RoomId, root: &EventId) -> Vec<u8> {
    codec::key(&[room_id.as_str().as_bytes(), root.as_str().as_bytes()])
}

/// The conflict error of an automatic subscription older than an unsubscription.
fn conflict() -> Error {
    Error::new(
        http::StatusCode::CONFLICT,
        ruma::api::error::ErrorKind::ConflictingUnsubscription,
        "Automatic subscription obsoleted by an unsubscription request.",
    )
}

impl ThreadSubs {
    /// Builds the service.
    pub fn new(db: Arc<Db>, positions: Arc<Positions>, notifier: Arc<Notifier>, push_rules: bool) -> Self {
        Self {
            push_rules,
            stream: StreamTable::new(Arc::clone(&db), FAMILY),
            db,
            positions,
            notifier,
            locks: (0..SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    fn lock(&self, user_id: &UserId) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        user_id.hash(&mut hasher);
        &self.locks[(hasher.finish() as usize) % SHARDS]
    }

    /// The thread's recorded state and its position.
    pub fn get(&self, user_id: &UserId, room_id: &RoomId, root: &EventId) -> Result<Option<(Record, u64)>> {
        let Some(entry) = self.stream.get(user_id.as_str(), &item(room_id, root))? else {
            return Ok(None);
        };
        let record: Record = codec::decode(TABLE, &entry.value)?;
        Ok(Some((record, entry.position)))
    }

    /// Queues removal of every subscription of a user (deactivation).
    pub fn queue_clear(&self, batch: &mut crate::storage::Batch, user_id: &UserId) -> Result<()> {
        Ok(self.stream.queue_clear(batch, user_id.as_str())?)
    }

    /// Whether the user is subscribed to the thread.
    pub fn is_subscribed(&self, user_id: &UserId, room_id: &RoomId, root: &EventId) -> bool {
        matches!(self.get(user_id, room_id, root), Ok(Some((r, _))) if r.subscribed)
    }

    async fn write(&self, user_id: &UserId, room_id: &RoomId, root: &EventId, record: Record) -> Result<u64> {
        let value = codec::encode(TABLE, &record)?;
        let key = item(room_id, root);
        commit_on_stream(
            &self.db,
            &self.positions,
            &self.notifier,
            vec![Key::user(user_id)],
            |batch, position| Ok(self.stream.queue_put(batch, user_id.as_str(), &key, position, &value)?),
        )
        .await
    }

    /// Subscribes (MSC4306 `PUT`): a manual subscription overrides an automatic one; an
    /// automatic one leaves an existing subscription as it is and is refused (409) when the
    /// user unsubscribed after its cause event. Returns whether anything changed.
    pub async fn subscribe(&self, user_id: &UserId, room_id: &RoomId, root: &EventId, how: Subscribe) -> Result<bool> {
        let _guard = self.lock(user_id).lock().await;
        let existing = self.get(user_id, room_id, root)?;
        let record = match (how, existing) {
            (Subscribe::Manual, Some((r, _))) if r.subscribed && !r.automatic => return Ok(false),
            (Subscribe::Manual, _) => Record {
                subscribed: true,
                automatic: false,
            },
            (Subscribe::Automatic { .. }, Some((r, _))) if r.subscribed => return Ok(false),
            (Subscribe::Automatic { cause_position }, Some((_, unsubscribed_at)))
                if cause_position <= unsubscribed_at =>
            {
                return Err(conflict());
            }
            (Subscribe::Automatic { .. }, _) => Record {
                subscribed: true,
                automatic: true,
            },
        };
        self.write(user_id, room_id, root, record).await?;
        Ok(true)
    }

    /// Unsubscribes (MSC4306 `DELETE`); idempotent: nothing is written when the thread is not
    /// subscribed. Returns whether anything changed.
    pub async fn unsubscribe(&self, user_id: &UserId, room_id: &RoomId, root: &EventId) -> Result<bool> {
        let _guard = self.lock(user_id).lock().await;
        match self.get(user_id, room_id, root)? {
            Some((r, _)) if r.subscribed => {}
            _ => return Ok(false),
        }
        let record = Record {
            subscribed: false,
            automatic: false,
        };
        self.write(user_id, room_id, root, record).await?;
        Ok(true)
    }

    /// The newest `limit` changes at positions in `after < position <= up_to`, newest first,
    /// and whether older ones in that range were left out.
    pub fn changes(&self, user_id: &UserId, after: u64, up_to: u64, limit: usize) -> Result<(Vec<Change>, bool)> {
        let entries = self.stream.newest(user_id.as_str(), after, up_to, limit + 1)?;
        let more = entries.len() > limit;
        let mut out = Vec::new();
        for entry in entries.into_iter().take(limit) {
            let mut parts = codec::split(&entry.item);
            let (Some(room), Some(root)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(room_id), Ok(thread_root)) = (
                OwnedRoomId::try_from(String::from_utf8_lossy(room).into_owned()),
                OwnedEventId::try_from(String::from_utf8_lossy(root).into_owned()),
            ) else {
                continue;
            };
            out.push(Change {
                room_id,
                thread_root,
                record: codec::decode(TABLE, &entry.value)?,
                position: entry.position,
            });
        }
        Ok((out, more))
    }

    /// The push-rule context with the `thread_subscription` lookup of its user in its room
    /// (unchanged when `push.thread_subscription_rules` is off: without a lookup the
    /// condition never holds, so neither thread rule applies).
    pub fn push_lookup(self: &Arc<Self>, context: PushConditionRoomCtx) -> PushConditionRoomCtx {
        if !self.push_rules {
            return context;
        }
        let user_id = context.user_id.clone();
        let room_id = context.room_id.clone();
        let subs = Arc::clone(self);
        context.with_has_thread_subscription_fn(move |root: &EventId| {
            let subscribed = subs.is_subscribed(&user_id, &room_id, root);
            Box::pin(std::future::ready(subscribed))
        })
    }
}

/// Subscribed threads per room, as MSC4308 answers them.
pub type SubscribedMap = std::collections::BTreeMap<
    OwnedRoomId,
    std::collections::BTreeMap<OwnedEventId, get_thread_subscriptions_changes::unstable::ThreadSubscription>,
>;
/// Unsubscribed threads per room, as MSC4308 answers them.
pub type UnsubscribedMap = std::collections::BTreeMap<
    OwnedRoomId,
    std::collections::BTreeMap<OwnedEventId, get_thread_subscriptions_changes::unstable::ThreadUnsubscription>,
>;

/// One window of changes, newest first, in MSC4308's shape.
#[derive(Debug, Default)]
pub struct Page {
    /// Threads subscribed (or changed to manual).
    pub subscribed: SubscribedMap,
    /// Threads unsubscribed.
    pub unsubscribed: UnsubscribedMap,
    /// The token of the older changes left out (`prev_batch` / `end`).
    pub older: Option<String>,
}

impl Page {
    /// Whether the window holds nothing.
    pub fn is_empty(&self) -> bool {
        self.subscribed.is_empty() && self.unsubscribed.is_empty() && self.older.is_none()
    }
}

/// A backpagination token: the changes at positions in `lower < position <= upper` are left.
/// Written `t{upper}_{lower}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageToken {
    /// The newest position left (inclusive).
    pub upper: u64,
    /// The position the window ends at (exclusive).
    pub lower: u64,
}

impl PageToken {
    /// Parses `t{upper}_{lower}` (or a bare position, read as `upper` with no lower end).
    pub fn parse(token: &str) -> Option<PageToken> {
        if let Some(rest) = token.strip_prefix('t') {
            let (upper, lower) = rest.split_once('_')?;
            return Some(PageToken {
                upper: upper.parse().ok()?,
                lower: lower.parse().ok()?,
            });
        }
        Some(PageToken {
            upper: token.parse().ok()?,
            lower: 0,
        })
    }
}

impl std::fmt::Display for PageToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "t{}_{}", self.upper, self.lower)
    }
}

impl ThreadSubs {
    /// The newest `limit` changes in `after < position <= up_to` in MSC4308's shape, with a
    /// token for the older ones when some were left out.
    pub fn page(&self, user_id: &UserId, after: u64, up_to: u64, limit: usize) -> Result<Page> {
        use get_thread_subscriptions_changes::unstable::{ThreadSubscription, ThreadUnsubscription};
        let (changes, more) = self.changes(user_id, after, up_to, limit.max(1))?;
        let mut page = Page::default();
        let stamp = |p: u64| ruma::UInt::try_from(p).unwrap_or(ruma::UInt::MAX);
        if more && let Some(oldest) = changes.last() {
            page.older = Some(
                PageToken {
                    upper: oldest.position - 1,
                    lower: after,
                }
                .to_string(),
            );
        }
        for change in changes {
            if change.record.subscribed {
                page.subscribed.entry(change.room_id).or_default().insert(
                    change.thread_root,
                    ThreadSubscription::new(change.record.automatic, stamp(change.position)),
                );
            } else {
                page.unsubscribed
                    .entry(change.room_id)
                    .or_default()
                    .insert(change.thread_root, ThreadUnsubscription::new(stamp(change.position)));
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip() {
        let token = PageToken { upper: 41, lower: 7 };
        assert_eq!(token.to_string(), "t41_7");
        assert_eq!(PageToken::parse("t41_7"), Some(token));
        assert_eq!(PageToken::parse("12"), Some(PageToken { upper: 12, lower: 0 }));
        assert_eq!(PageToken::parse("3_99"), None);
        assert_eq!(PageToken::parse("t1"), None);
        assert_eq!(PageToken::parse("garbage"), None);
    }
}
