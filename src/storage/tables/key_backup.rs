//! Server-side key backup: backup versions (`userversion_backup`) and the room keys stored in
//! each (`userversionroomsession_backupkey`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{USERVERSION_BACKUP, USERVERSIONROOMSESSION_BACKUPKEY},
};

/// One backup version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupVersionRecord {
    /// `{"algorithm": …, "auth_data": …}` as JSON.
    pub algorithm: Vec<u8>,
    /// Bumped on every change of the version's keys.
    pub etag: u64,
    /// Deleted versions keep their number (never reused) but hold nothing.
    pub deleted: bool,
}

/// Typed access to key backups.
#[derive(Clone)]
pub struct KeyBackupTable {
    db: Arc<Db>,
}

fn version_key(user_id: &str, version: u64) -> Vec<u8> {
    codec::key(&[user_id.as_bytes(), &codec::u64_bytes(version)])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl KeyBackupTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// One version.
    pub fn version(&self, user_id: &str, version: u64) -> StorageResult<Option<BackupVersionRecord>> {
        self.db
            .get(USERVERSION_BACKUP, &version_key(user_id, version))?
            .map(|b| codec::decode(USERVERSION_BACKUP, &b))
            .transpose()
    }

    /// The highest version number ever created (deleted ones included), and its record.
    pub fn last_version(&self, user_id: &str) -> StorageResult<Option<(u64, BackupVersionRecord)>> {
        let prefix = codec::prefix(&[user_id.as_bytes()]);
        let mut end = prefix.clone();
        end.extend_from_slice(&[0xFF; 9]);
        let Some((key, value)) = self
            .db
            .scan_range(USERVERSION_BACKUP, &prefix, &end, true, 1)?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let version = codec::read_u64(USERVERSION_BACKUP, &key[prefix.len()..])?;
        Ok(Some((version, codec::decode(USERVERSION_BACKUP, &value)?)))
    }

    /// Queues storing a version record.
    pub fn put_version(
        &self,
        batch: &mut Batch,
        user_id: &str,
        version: u64,
        record: &BackupVersionRecord,
    ) -> StorageResult<()> {
        batch.put(
            USERVERSION_BACKUP,
            &version_key(user_id, version),
            &codec::encode(USERVERSION_BACKUP, record)?,
        );
        Ok(())
    }

    fn prefix(user_id: &str, version: u64, room_id: Option<&str>) -> Vec<u8> {
        match room_id {
            Some(room) => codec::prefix(&[user_id.as_bytes(), &codec::u64_bytes(version), room.as_bytes()]),
            None => codec::prefix(&[user_id.as_bytes(), &codec::u64_bytes(version)]),
        }
    }

    /// One session's key.
    pub fn key(&self, user_id: &str, version: u64, room_id: &str, session_id: &str) -> StorageResult<Option<Vec<u8>>> {
        let mut key = Self::prefix(user_id, version, Some(room_id));
        key.extend_from_slice(session_id.as_bytes());
        self.db.get(USERVERSIONROOMSESSION_BACKUPKEY, &key)
    }

    /// Keys of a version (of one room when given): (room id, session id, JSON).
    pub fn keys(
        &self,
        user_id: &str,
        version: u64,
        room_id: Option<&str>,
    ) -> StorageResult<Vec<(String, String, Vec<u8>)>> {
        let base = Self::prefix(user_id, version, None);
        let prefix = Self::prefix(user_id, version, room_id);
        let mut out = Vec::new();
        for (key, value) in self.db.scan_prefix(USERVERSIONROOMSESSION_BACKUPKEY, &prefix)? {
            let mut parts = codec::split(&key[base.len()..]);
            if let (Some(room), Some(session)) = (parts.next(), parts.next()) {
                out.push((text(room), text(session), value.into_vec()));
            }
        }
        Ok(out)
    }

    /// Number of keys in a version.
    pub fn count(&self, user_id: &str, version: u64) -> StorageResult<u64> {
        Ok(self
            .db
            .scan_prefix(USERVERSIONROOMSESSION_BACKUPKEY, &Self::prefix(user_id, version, None))?
            .len() as u64)
    }

    /// Queues storing one session's key.
    pub fn put_key(
        &self,
        batch: &mut Batch,
        user_id: &str,
        version: u64,
        (room_id, session_id): (&str, &str),
        json: &[u8],
    ) {
        let mut key = Self::prefix(user_id, version, Some(room_id));
        key.extend_from_slice(session_id.as_bytes());
        batch.put(USERVERSIONROOMSESSION_BACKUPKEY, &key, json);
    }

    /// Queues removal of keys: the whole version, one room, or one session.
    pub fn delete_keys(
        &self,
        batch: &mut Batch,
        user_id: &str,
        version: u64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> StorageResult<()> {
        let mut prefix = Self::prefix(user_id, version, room_id);
        if let Some(session) = session_id {
            prefix.extend_from_slice(session.as_bytes());
            batch.delete(USERVERSIONROOMSESSION_BACKUPKEY, &prefix);
            return Ok(());
        }
        for (key, _) in self.db.scan_prefix(USERVERSIONROOMSESSION_BACKUPKEY, &prefix)? {
            batch.delete(USERVERSIONROOMSESSION_BACKUPKEY, &key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    #[test]
    fn versions_and_keys_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let t = KeyBackupTable::new(Arc::clone(&db));
        assert!(t.last_version("@a:x").unwrap().is_none());
        let record = BackupVersionRecord {
            algorithm: b"{}".to_vec(),
            etag: 0,
            deleted: false,
        };
        let mut batch = db.batch();
        t.put_version(&mut batch, "@a:x", 1, &record).unwrap();
        t.put_version(&mut batch, "@a:x", 2, &record).unwrap();
        t.put_version(&mut batch, "@ab:x", 9, &record).unwrap();
        t.put_key(&mut batch, "@a:x", 2, ("!r:x", "s1"), b"k1");
        t.put_key(&mut batch, "@a:x", 2, ("!r:x", "s2"), b"k2");
        t.put_key(&mut batch, "@a:x", 2, ("!q:x", "s1"), b"k3");
        batch.commit_blocking().unwrap();
        assert_eq!(t.last_version("@a:x").unwrap().unwrap().0, 2);
        assert_eq!(t.count("@a:x", 2).unwrap(), 3);
        assert_eq!(t.keys("@a:x", 2, Some("!r:x")).unwrap().len(), 2);
        assert_eq!(t.key("@a:x", 2, "!q:x", "s1").unwrap(), Some(b"k3".to_vec()));
        let mut batch = db.batch();
        t.delete_keys(&mut batch, "@a:x", 2, Some("!r:x"), Some("s1")).unwrap();
        batch.commit_blocking().unwrap();
        assert_eq!(t.count("@a:x", 2).unwrap(), 2);
        let mut batch = db.batch();
        t.delete_keys(&mut batch, "@a:x", 2, None, None).unwrap();
        batch.commit_blocking().unwrap();
        assert_eq!(t.count("@a:x", 2).unwrap(), 0);
    }
}
