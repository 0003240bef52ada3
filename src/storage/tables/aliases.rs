//! The room directory's data: `alias_aliasrecord` (local alias → postcard [`AliasRecord`]: the
//! room and who made the alias), `roomalias_empty` (room id SEP alias → nothing: a room's local
//! aliases) and `roomid_published` (room id → nothing: the rooms published in the directory).
//! An alias and its reverse entry are always written in the same batch.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{ALIAS_ALIASRECORD, ROOMALIAS_EMPTY, ROOMID_PUBLISHED},
};

/// One local alias, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AliasRecord {
    /// The room the alias points at.
    pub room_id: String,
    /// The user who created it (may delete it whatever their power in the room).
    pub creator: String,
}

/// Typed access to aliases and the published-room set.
#[derive(Clone)]
pub struct AliasesTable {
    db: Arc<Db>,
}

impl AliasesTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// The record of a local alias.
    pub fn get(&self, alias: &str) -> StorageResult<Option<AliasRecord>> {
        self.db
            .get(ALIAS_ALIASRECORD, alias.as_bytes())?
            .map(|v| codec::decode(ALIAS_ALIASRECORD, &v))
            .transpose()
    }

    /// Stores an alias and its reverse entry durably.
    pub async fn put(&self, alias: &str, record: &AliasRecord) -> StorageResult<()> {
        let mut batch = self.db.batch();
        self.queue_put(&mut batch, alias, record)?;
        batch.commit().await
    }

    /// Queues an alias and its reverse entry.
    pub fn queue_put(&self, batch: &mut Batch, alias: &str, record: &AliasRecord) -> StorageResult<()> {
        batch.put(
            ALIAS_ALIASRECORD,
            alias.as_bytes(),
            &codec::encode(ALIAS_ALIASRECORD, record)?,
        );
        batch.put(
            ROOMALIAS_EMPTY,
            &codec::key(&[record.room_id.as_bytes(), alias.as_bytes()]),
            b"",
        );
        Ok(())
    }

    /// Removes an alias and its reverse entry durably.
    pub async fn delete(&self, alias: &str, room_id: &str) -> StorageResult<()> {
        let mut batch = self.db.batch();
        batch.delete(ALIAS_ALIASRECORD, alias.as_bytes());
        batch.delete(ROOMALIAS_EMPTY, &codec::key(&[room_id.as_bytes(), alias.as_bytes()]));
        batch.commit().await
    }

    /// Points every alias of `from` (and its directory listing) at `to`, in one batch (room
    /// upgrades).
    pub async fn move_room(&self, from: &str, to: &str) -> StorageResult<usize> {
        let aliases = self.of_room(from)?;
        let mut batch = self.db.batch();
        for alias in &aliases {
            let Some(mut record) = self.get(alias)? else { continue };
            record.room_id = to.to_owned();
            batch.put(
                ALIAS_ALIASRECORD,
                alias.as_bytes(),
                &codec::encode(ALIAS_ALIASRECORD, &record)?,
            );
            batch.delete(ROOMALIAS_EMPTY, &codec::key(&[from.as_bytes(), alias.as_bytes()]));
            batch.put(ROOMALIAS_EMPTY, &codec::key(&[to.as_bytes(), alias.as_bytes()]), b"");
        }
        if self.is_published(from)? {
            batch.delete(ROOMID_PUBLISHED, from.as_bytes());
            batch.put(ROOMID_PUBLISHED, to.as_bytes(), b"");
        }
        batch.commit().await?;
        Ok(aliases.len())
    }

    /// The local aliases of a room, in byte order.
    pub fn of_room(&self, room_id: &str) -> StorageResult<Vec<String>> {
        let prefix = codec::prefix(&[room_id.as_bytes()]);
        Ok(self
            .db
            .scan_prefix(ROOMALIAS_EMPTY, &prefix)?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect())
    }

    /// Publishes a room in the directory or withdraws it, durably.
    pub async fn set_published(&self, room_id: &str, published: bool) -> StorageResult<()> {
        let mut batch = self.db.batch();
        self.queue_published(&mut batch, room_id, published);
        batch.commit().await
    }

    /// Queues the publication of a room in the directory or its withdrawal.
    pub fn queue_published(&self, batch: &mut Batch, room_id: &str, published: bool) {
        if published {
            batch.put(ROOMID_PUBLISHED, room_id.as_bytes(), b"");
        } else {
            batch.delete(ROOMID_PUBLISHED, room_id.as_bytes());
        }
    }

    /// Whether a room is published.
    pub fn is_published(&self, room_id: &str) -> StorageResult<bool> {
        Ok(self.db.get(ROOMID_PUBLISHED, room_id.as_bytes())?.is_some())
    }

    /// Every published room.
    pub fn published(&self) -> StorageResult<Vec<String>> {
        Ok(self
            .db
            .scan_prefix(ROOMID_PUBLISHED, b"")?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    #[tokio::test]
    async fn aliases_are_indexed_both_ways_and_published_rooms_listed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let t = AliasesTable::new(Arc::clone(&db));
        let record = |room: &str| AliasRecord {
            room_id: room.into(),
            creator: "@a:x".into(),
        };
        t.put("#b:x", &record("!r1")).await.unwrap();
        t.put("#a:x", &record("!r1")).await.unwrap();
        t.put("#c:x", &record("!r10")).await.unwrap();
        assert_eq!(t.get("#b:x").unwrap(), Some(record("!r1")));
        assert_eq!(t.of_room("!r1").unwrap(), vec!["#a:x", "#b:x"]);
        t.delete("#a:x", "!r1").await.unwrap();
        assert_eq!(t.get("#a:x").unwrap(), None);
        assert_eq!(t.of_room("!r1").unwrap(), vec!["#b:x"]);
        assert_eq!(t.of_room("!r10").unwrap(), vec!["#c:x"]);

        t.set_published("!r1", true).await.unwrap();
        t.set_published("!r2", true).await.unwrap();
        t.set_published("!r2", false).await.unwrap();
        assert!(t.is_published("!r1").unwrap() && !t.is_published("!r2").unwrap());
        assert_eq!(t.published().unwrap(), vec!["!r1"]);
    }
}
