//! Account data: per-user JSON objects by event type, global or per room.
//!
//! Every write takes a position on the global stream and is logged under it (`tables::streams`,
//! family `accountdata`, scope the user, item room SEP type), so an incremental sync returns the
//! entries written since its token; the user's long-polls are woken.
//!
//! Every sync reads the user's `m.ignored_user_list`; the parsed list is kept per user and
//! read again only when the notifier saw a change for the user since it was read.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use ruma::{OwnedUserId, UserId};
use serde_json::value::RawValue;

use super::sync::{
    commit_on_stream,
    notifier::{Key, Notifier},
};
use crate::{
    Error, Result,
    storage::{
        Batch, Db, codec,
        positions::Positions,
        tables::{account_data::AccountDataTable, streams::StreamTable},
    },
};

/// Types the server manages itself; clients may not write them through account data.
const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

/// The account-data service.
pub struct AccountData {
    db: Arc<Db>,
    table: AccountDataTable,
    stream: StreamTable,
    positions: Arc<Positions>,
    notifier: Arc<Notifier>,
    /// Per user: the ignored users, and the stream position they were read at.
    ignored: quick_cache::sync::Cache<OwnedUserId, (u64, Arc<HashSet<OwnedUserId>>)>,
}

/// One account-data entry that changed.
pub struct Change {
    /// Its room (`None`: global).
    pub room_id: Option<String>,
    /// Its type.
    pub kind: String,
    /// Its content.
    pub content: Box<RawValue>,
}

impl AccountData {
    /// Builds the service.
    pub fn new(db: Arc<Db>, positions: Arc<Positions>, notifier: Arc<Notifier>) -> Self {
        Self {
            table: AccountDataTable::new(Arc::clone(&db)),
            stream: StreamTable::new(Arc::clone(&db), "accountdata"),
            db,
            positions,
            notifier,
            ignored: quick_cache::sync::Cache::new(10_000),
        }
    }

    /// The users in `user_id`'s `m.ignored_user_list` (their events and invites are left out
    /// of what `user_id` reads).
    pub fn ignored_users(&self, user_id: &UserId) -> Result<Arc<HashSet<OwnedUserId>>> {
        // Every account-data write marks the user on the notifier before its position
        // completes: a list read at a watermark stands while nothing was marked above it.
        if let Some((read_at, list)) = self.ignored.get(user_id)
            && self.notifier.quiet_since(&Key::user(user_id), read_at)
        {
            return Ok(list);
        }
        let read_at = self.positions.watermark();
        #[derive(serde::Deserialize)]
        struct List {
            #[serde(default)]
            ignored_users: BTreeMap<OwnedUserId, serde::de::IgnoredAny>,
        }
        let list: HashSet<OwnedUserId> = match self.get(user_id, None, "m.ignored_user_list")? {
            Some(raw) => serde_json::from_str::<List>(raw.get())
                .map(|l| l.ignored_users.into_keys().collect())
                .unwrap_or_default(),
            None => HashSet::new(),
        };
        let list = Arc::new(list);
        self.ignored.insert(user_id.to_owned(), (read_at, Arc::clone(&list)));
        Ok(list)
    }

    /// One entry's content.
    pub fn get(&self, user_id: &UserId, room_id: Option<&str>, kind: &str) -> Result<Option<Box<RawValue>>> {
        self.table
            .get(user_id.as_str(), room_id, kind)?
            .map(|bytes| {
                RawValue::from_string(String::from_utf8_lossy(&bytes).into_owned())
                    .map_err(|e| Error::internal(format!("stored account data: {e}")))
            })
            .transpose()
    }

    /// Stores one entry; `content` must be a JSON object.
    pub async fn set(&self, user_id: &UserId, room_id: Option<&str>, kind: &str, content: &RawValue) -> Result<()> {
        if SERVER_MANAGED.contains(&kind) {
            return Err(Error::new(
                http::StatusCode::METHOD_NOT_ALLOWED,
                ruma::api::error::ErrorKind::BadJson,
                format!("Cannot set {kind} through this API"),
            ));
        }
        if kind.is_empty() || kind.len() > 255 {
            return Err(Error::invalid_param("Account data types are 1-255 bytes"));
        }
        if !content.get().trim_start().starts_with('{') {
            return Err(Error::bad_json("Account data content must be a JSON object"));
        }
        self.set_managed(user_id, room_id, kind, content).await
    }

    /// Stores one entry without the checks on client writes (server-managed types such as
    /// `m.fully_read`), on the stream.
    pub async fn set_managed(
        &self,
        user_id: &UserId,
        room_id: Option<&str>,
        kind: &str,
        content: &RawValue,
    ) -> Result<()> {
        let item = codec::key(&[room_id.unwrap_or("").as_bytes(), kind.as_bytes()]);
        commit_on_stream(
            &self.db,
            &self.positions,
            &self.notifier,
            vec![Key::user(user_id)],
            |batch, position| {
                self.table
                    .put(batch, user_id.as_str(), room_id, kind, content.get().as_bytes());
                Ok(self.stream.queue_put(batch, user_id.as_str(), &item, position, &[])?)
            },
        )
        .await?;
        Ok(())
    }

    /// Every entry of a user in one scope (global when `room_id` is `None`).
    pub fn list(&self, user_id: &UserId, room_id: Option<&str>) -> Result<Vec<Change>> {
        self.table
            .list(user_id.as_str(), room_id)?
            .into_iter()
            .map(|(kind, bytes)| {
                Ok(Change {
                    room_id: room_id.map(str::to_owned),
                    kind,
                    content: raw(bytes)?,
                })
            })
            .collect()
    }

    /// The entries written at stream positions in `after < position <= up_to`.
    pub fn changes(&self, user_id: &UserId, after: u64, up_to: u64) -> Result<Vec<Change>> {
        let mut out = Vec::new();
        for entry in self.stream.since(user_id.as_str(), after, up_to)? {
            let mut parts = codec::split(&entry.item);
            let (Some(room), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let room = (!room.is_empty()).then(|| String::from_utf8_lossy(room).into_owned());
            let kind = String::from_utf8_lossy(kind).into_owned();
            if let Some(content) = self.get(user_id, room.as_deref(), &kind)? {
                out.push(Change {
                    room_id: room,
                    kind,
                    content,
                });
            }
        }
        Ok(out)
    }

    /// Queues removal of everything a user stored (deactivation).
    pub fn queue_clear(&self, batch: &mut Batch, user_id: &UserId) -> Result<()> {
        Ok(self.table.delete_all(batch, user_id.as_str())?)
    }
}

fn raw(bytes: Vec<u8>) -> Result<Box<RawValue>> {
    RawValue::from_string(String::from_utf8_lossy(&bytes).into_owned())
        .map_err(|e| Error::internal(format!("stored account data: {e}")))
}
