//! Server-side key backup (spec "Server-side key backups"): numbered backup versions, each
//! holding encrypted room keys by room and session. Only the current version (the latest not
//! deleted) takes new keys; a stored key is replaced only by a better one (verified beats
//! unverified, then the lower `first_message_index`, then the lower `forwarded_count`). Every
//! change of a version's keys bumps its `etag`.

use std::sync::Arc;

use http::StatusCode;
use ruma::{
    UserId,
    api::error::{ErrorKind, WrongRoomKeysVersionErrorData},
};
use serde_json::{Value, value::RawValue};

use crate::{
    Error, Result,
    storage::{
        Db,
        tables::key_backup::{BackupVersionRecord, KeyBackupTable},
    },
};

/// A backup version as reported to clients.
pub struct VersionInfo {
    /// The version id.
    pub version: String,
    /// `{"algorithm": …, "auth_data": …}`.
    pub algorithm: Box<RawValue>,
    /// Number of keys stored.
    pub count: u64,
    /// Changes whenever the keys change.
    pub etag: String,
}

/// One room key to store: room id, session id, the key data.
pub type RoomKey = (String, String, Box<RawValue>);

/// The key-backup service.
pub struct KeyBackup {
    db: Arc<Db>,
    table: KeyBackupTable,
    lock: tokio::sync::Mutex<()>,
}

fn unknown_version(version: &str) -> Error {
    Error::not_found(format!("Unknown backup version {version}"))
}

fn parse_version(version: &str) -> Result<u64> {
    version.parse().map_err(|_| unknown_version(version))
}

/// The fields a key is ranked by: (is_verified, first_message_index, forwarded_count).
fn rank(key: &Value) -> Option<(bool, u64, u64)> {
    Some((
        key.get("is_verified")?.as_bool()?,
        key.get("first_message_index")?.as_u64()?,
        key.get("forwarded_count")?.as_u64()?,
    ))
}

/// Whether `new` should replace `old`.
fn better((v1, i1, f1): (bool, u64, u64), (v0, i0, f0): (bool, u64, u64)) -> bool {
    if v1 != v0 {
        return v1;
    }
    if i1 != i0 {
        return i1 < i0;
    }
    f1 < f0
}

fn algorithm_name(json: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(json).ok()?["algorithm"]
        .as_str()
        .map(str::to_owned)
}

fn check_algorithm(raw: &RawValue) -> Result<Vec<u8>> {
    let value: Value = serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(e.to_string()))?;
    if !value["algorithm"].is_string() || !value["auth_data"].is_object() {
        return Err(Error::bad_json(
            "A backup needs an `algorithm` string and an `auth_data` object",
        ));
    }
    let body = serde_json::json!({"algorithm": value["algorithm"], "auth_data": value["auth_data"]});
    serde_json::to_vec(&body).map_err(|e| Error::internal(e.to_string()))
}

impl KeyBackup {
    /// Builds the service.
    pub fn new(db: Arc<Db>) -> Self {
        Self {
            table: KeyBackupTable::new(Arc::clone(&db)),
            db,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The current version: the latest one not deleted.
    fn current(&self, user_id: &UserId) -> Result<Option<(u64, BackupVersionRecord)>> {
        let Some((mut version, record)) = self.table.last_version(user_id.as_str())? else {
            return Ok(None);
        };
        if !record.deleted {
            return Ok(Some((version, record)));
        }
        while version > 1 {
            version -= 1;
            if let Some(record) = self.table.version(user_id.as_str(), version)?
                && !record.deleted
            {
                return Ok(Some((version, record)));
            }
        }
        Ok(None)
    }

    fn existing(&self, user_id: &UserId, version: &str) -> Result<(u64, BackupVersionRecord)> {
        let number = parse_version(version)?;
        match self.table.version(user_id.as_str(), number)? {
            Some(record) if !record.deleted => Ok((number, record)),
            _ => Err(unknown_version(version)),
        }
    }

    fn info(&self, user_id: &UserId, version: u64, record: BackupVersionRecord) -> Result<VersionInfo> {
        Ok(VersionInfo {
            version: version.to_string(),
            algorithm: RawValue::from_string(String::from_utf8_lossy(&record.algorithm).into_owned())
                .map_err(|e| Error::internal(e.to_string()))?,
            count: self.table.count(user_id.as_str(), version)?,
            etag: record.etag.to_string(),
        })
    }

    /// Creates a new version, which becomes the current one.
    pub async fn create_version(&self, user_id: &UserId, algorithm: &RawValue) -> Result<String> {
        let algorithm = check_algorithm(algorithm)?;
        let _guard = self.lock.lock().await;
        let version = self.table.last_version(user_id.as_str())?.map_or(1, |(v, _)| v + 1);
        let mut batch = self.db.batch();
        let record = BackupVersionRecord {
            algorithm,
            etag: 0,
            deleted: false,
        };
        self.table.put_version(&mut batch, user_id.as_str(), version, &record)?;
        batch.commit().await?;
        Ok(version.to_string())
    }

    /// One version (`None`: the current one).
    pub fn version_info(&self, user_id: &UserId, version: Option<&str>) -> Result<VersionInfo> {
        let (number, record) = match version {
            Some(version) => self.existing(user_id, version)?,
            None => self
                .current(user_id)?
                .ok_or_else(|| Error::not_found("No current backup version"))?,
        };
        self.info(user_id, number, record)
    }

    /// Replaces a version's `auth_data`; its algorithm cannot change.
    pub async fn update_version(&self, user_id: &UserId, version: &str, algorithm: &RawValue) -> Result<()> {
        let algorithm = check_algorithm(algorithm)?;
        let _guard = self.lock.lock().await;
        let (number, mut record) = self.existing(user_id, version)?;
        if algorithm_name(&algorithm) != algorithm_name(&record.algorithm) {
            return Err(Error::invalid_param("A backup version's algorithm cannot change"));
        }
        record.algorithm = algorithm;
        let mut batch = self.db.batch();
        self.table.put_version(&mut batch, user_id.as_str(), number, &record)?;
        batch.commit().await?;
        Ok(())
    }

    /// Deletes a version and its keys (its number is never reused).
    pub async fn delete_version(&self, user_id: &UserId, version: &str) -> Result<()> {
        let _guard = self.lock.lock().await;
        let (number, mut record) = self.existing(user_id, version)?;
        record.deleted = true;
        let mut batch = self.db.batch();
        self.table
            .delete_keys(&mut batch, user_id.as_str(), number, None, None)?;
        self.table.put_version(&mut batch, user_id.as_str(), number, &record)?;
        batch.commit().await?;
        Ok(())
    }

    /// Stores keys in the current version, each only where it beats the stored one. Returns
    /// the version's `(etag, count)`.
    pub async fn put_keys(&self, user_id: &UserId, version: &str, keys: Vec<RoomKey>) -> Result<(String, u64)> {
        let mut parsed = Vec::with_capacity(keys.len());
        for (room, session, raw) in keys {
            let value: Value =
                serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("Key {session}: {e}")))?;
            let rank = rank(&value)
                .filter(|_| value["session_data"].is_object())
                .ok_or_else(|| {
                    Error::bad_json(format!(
                        "Key {session} needs first_message_index, forwarded_count, is_verified and session_data"
                    ))
                })?;
            parsed.push((room, session, value, rank));
        }
        let _guard = self.lock.lock().await;
        let (number, mut record) = self.existing(user_id, version)?;
        let current = self.current(user_id)?.map(|(v, _)| v);
        if current != Some(number) {
            return Err(Error::new(
                StatusCode::FORBIDDEN,
                ErrorKind::WrongRoomKeysVersion(WrongRoomKeysVersionErrorData::new(
                    current.map(|v| v.to_string()).unwrap_or_default(),
                )),
                format!("Backup version {version} is not the current one"),
            ));
        }
        let user = user_id.as_str();
        let mut batch = self.db.batch();
        let mut changed = false;
        for (room, session, value, new_rank) in parsed {
            if let Some(stored) = self.table.key(user, number, &room, &session)? {
                let stored: Value = serde_json::from_slice(&stored).map_err(|e| Error::internal(e.to_string()))?;
                if rank(&stored).is_some_and(|old| !better(new_rank, old)) {
                    continue;
                }
            }
            let json = serde_json::to_vec(&value).map_err(|e| Error::internal(e.to_string()))?;
            self.table.put_key(&mut batch, user, number, (&room, &session), &json);
            changed = true;
        }
        if changed {
            record.etag += 1;
            self.table.put_version(&mut batch, user, number, &record)?;
            batch.commit().await?;
        }
        Ok((record.etag.to_string(), self.table.count(user, number)?))
    }

    /// Keys of a version: all, one room's, or one session's, as (room, session, key).
    pub fn keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<(String, String, Box<RawValue>)>> {
        let (number, _) = self.existing(user_id, version)?;
        let keys = self.table.keys(user_id.as_str(), number, room_id)?;
        keys.into_iter()
            .filter(|(_, session, _)| session_id.is_none_or(|s| s == session))
            .map(|(room, session, json)| {
                let raw = RawValue::from_string(String::from_utf8_lossy(&json).into_owned())
                    .map_err(|e| Error::internal(e.to_string()))?;
                Ok((room, session, raw))
            })
            .collect()
    }

    /// Deletes keys of a version (all, one room's, one session's); returns `(etag, count)`.
    pub async fn delete_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<(String, u64)> {
        let _guard = self.lock.lock().await;
        let (number, mut record) = self.existing(user_id, version)?;
        let mut batch = self.db.batch();
        self.table
            .delete_keys(&mut batch, user_id.as_str(), number, room_id, session_id)?;
        record.etag += 1;
        self.table.put_version(&mut batch, user_id.as_str(), number, &record)?;
        batch.commit().await?;
        Ok((record.etag.to_string(), self.table.count(user_id.as_str(), number)?))
    }
}

#[cfg(test)]
mod tests {
    use super::better;

    #[test]
    fn better_keys_win_in_the_spec_order() {
        assert!(better((true, 9, 9), (false, 0, 0)));
        assert!(!better((false, 0, 0), (true, 9, 9)));
        assert!(better((false, 1, 9), (false, 2, 0)));
        assert!(better((false, 1, 0), (false, 1, 1)));
        assert!(!better((false, 1, 1), (false, 1, 1)));
    }
}
